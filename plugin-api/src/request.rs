//! What the host tells a provider at `create` and at each `fetch` (plugin-api 1.1).

use std::time::{Duration, SystemTime};

/// The registry entry a provider instance is created for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateContext {
    /// The entry's name as in the host's config (`registries[].name`), e.g. `ghcr.io`.
    /// Empty when a 1.1 plugin is created by a caller that has no registry (tests).
    pub registry: String,
    /// The entry's upstream URL, e.g. `https://ghcr.io`.
    pub url: String,
}

impl CreateContext {
    /// A context for registry entry `registry` at `url`.
    pub fn new(registry: impl Into<String>, url: impl Into<String>) -> Self {
        CreateContext {
            registry: registry.into(),
            url: url.into(),
        }
    }
}

/// Why the host asks for a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchReason {
    /// The regular refresh schedule (before the expiry, or every `every`).
    Scheduled,
    /// No credential was obtained yet (for this registry entry, or for this repository
    /// when the provider's credentials are per repository).
    FirstUse,
    /// The upstream rejected the credential (401), which was `credential_age` old.
    Rejected {
        /// How long ago the rejected credential was fetched.
        credential_age: Duration,
    },
}

/// One credential request from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchRequest {
    /// The repository being pulled (e.g. `team/app`), when a pull triggered the fetch.
    /// Scheduled refreshes and the first fetch at start-up have none.
    pub repository: Option<String>,
    /// Why.
    pub reason: FetchReason,
    /// When the host stops waiting (now + the provider timeout). Past it the result is
    /// discarded, so give up on slow work and return an error before it.
    pub deadline: SystemTime,
}

impl FetchRequest {
    /// A request for `reason`, answered before `deadline`, without a repository.
    pub fn new(reason: FetchReason, deadline: SystemTime) -> Self {
        FetchRequest {
            repository: None,
            reason,
            deadline,
        }
    }

    /// The same request for `repository`.
    pub fn for_repository(mut self, repository: impl Into<String>) -> Self {
        self.repository = Some(repository.into());
        self
    }

    /// Time left before the deadline (zero once past).
    pub fn time_left(&self) -> Duration {
        self.deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}
