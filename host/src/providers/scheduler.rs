//! Credential refresh scheduling: keeps ONE upstream credential per registry entry fresh
//! (and, for providers whose credentials are per repository, one per repository pulled).
//!
//! This module owns, for each registry entry whose auth comes from a provider:
//! - calling the provider ([`CredentialFetcher`]) on a blocking thread with a timeout (a hung
//!   provider is a failure; its thread is abandoned, logged, and counted);
//! - the schedule: first fetch at once, then every [`Schedule::every`], earlier when the
//!   provider's own expiry comes first, never sooner than [`Schedule::min_interval`] after the
//!   previous fetch; an expiry that is already past (or too close) at fetch time is treated
//!   as unknown, so it can never cause a refresh storm;
//! - failures: the last good credential is kept while it is still valid, retries use capped
//!   exponential backoff with jitter, reset on success;
//! - the single-flight refresh after an upstream `401` ([`ManagedCredential::refresh_after_unauthorized`]);
//! - per-repository credentials (plugin-api 1.1, [`Credential::per_repository`], kubelet
//!   `cacheKeyType: Image`): when the registry-wide credential says so, each repository gets
//!   its own, fetched on its first pull with the repository in the request, kept until its
//!   expiry (or [`Schedule::every`] when it has none), fetched again after a 401 or once
//!   expired; these are not refreshed in the background (see [`PerRepository`]);
//! - status and counters ([`ManagedCredential::status`]), failures counted by
//!   [`ProviderErrorKind`], and the log lines, which carry the field `registry` (and `kind` on
//!   a failure) and never a secret.
//!
//! It does not own loading plugins, building `Authorization` headers or talking to upstreams.
//!
//! Times: scheduling uses `tokio::time::Instant` (so it follows a paused test clock); a
//! provider's `expires_at` (wall clock) is turned into a remaining lifetime once, when the
//! fetch returns.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ociregistry_plugin_api::{Credential, FetchReason, FetchRequest};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::error::{ProviderError, ProviderErrorKind};

/// What actually fetches a credential; blocking (plugins are called on blocking threads).
pub trait CredentialFetcher: Send + Sync + 'static {
    /// Fetches a fresh credential. The error message is safe to log (never a secret).
    fn fetch(&self) -> Result<Credential, ProviderError>;

    /// Fetches a fresh credential for `request` (repository, reason, deadline). The default
    /// ignores the request.
    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, ProviderError> {
        let _ = request;
        self.fetch()
    }
}

/// When to fetch. Values are normalised by [`ManagedCredential::spawn`] so that no setting
/// can make it spin: `every` and `min_interval` are at least 1s (and `min_interval` at most
/// `every`), the backoff at least 10ms, `fetch_timeout` at least 1ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Regular refresh interval (config `expiry`, default 12h).
    pub every: Duration,
    /// How long one provider call may take (default 30s).
    pub fetch_timeout: Duration,
    /// First retry delay after a failure (default 1s); doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// Largest retry delay (default 5m).
    pub backoff_max: Duration,
    /// Shortest time between the start of two scheduled fetches (default 30s), capped at
    /// `every`. A 401-triggered refresh is not subject to it.
    pub min_interval: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            every: Duration::from_secs(12 * 60 * 60),
            fetch_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            min_interval: Duration::from_secs(30),
        }
    }
}

/// The largest margin kept before a provider's expiry.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The margin is this fraction (1/N) of the remaining lifetime, capped at [`MAX_EXPIRY_MARGIN`].
const EXPIRY_MARGIN_DIVISOR: u32 = 10;
/// Fetch threads that timed out and are still running; past this no new fetch is started
/// (each attempt fails at once) so that a deadlocked provider cannot eat the blocking pool.
const MAX_HUNG_FETCHES: usize = 4;
const MIN_EVERY: Duration = Duration::from_secs(1);
/// `min_interval` is at least this, so a tiny provider lifetime cannot make refreshes spin.
const MIN_INTERVAL_FLOOR: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MIN_FETCH_TIMEOUT: Duration = Duration::from_millis(1);

impl Schedule {
    fn normalized(&self) -> Schedule {
        let every = self.every.max(MIN_EVERY);
        let backoff_initial = self.backoff_initial.max(MIN_BACKOFF);
        Schedule {
            every,
            fetch_timeout: self.fetch_timeout.max(MIN_FETCH_TIMEOUT),
            backoff_initial,
            backoff_max: self.backoff_max.max(backoff_initial),
            min_interval: self.min_interval.max(MIN_INTERVAL_FLOOR).min(every),
        }
    }
}

/// Why no credential can be handed out. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialUnavailable {
    /// No usable credential: none was ever obtained, or the last one expired, and fetching failed.
    #[error("no usable credential for registry {registry}: {reason}")]
    Unavailable {
        /// The registry entry.
        registry: String,
        /// The last failure reason (from the provider, or a timeout).
        reason: String,
    },
    /// The refresh triggered by an upstream 401 failed.
    #[error("refreshing the credential for registry {registry} after a 401 failed: {reason}")]
    RefreshFailed {
        /// The registry entry.
        registry: String,
        /// The failure reason.
        reason: String,
    },
    /// An upstream rejected the credential, but the provider was asked too recently (after a
    /// failure, or after earlier rejections): no provider call until the backoff step ends.
    #[error(
        "the upstream rejected the credential for registry {registry}; the provider is asked again in {retry_in:?} at the earliest (backoff)"
    )]
    BackingOff {
        /// The registry entry.
        registry: String,
        /// Time until the provider may be asked again.
        retry_in: Duration,
    },
    /// `ManagedCredential::shutdown` (tests) was called.
    #[error("credential refresh for registry {registry} has been shut down")]
    Stopped {
        /// The registry entry.
        registry: String,
    },
}

impl CredentialUnavailable {
    /// The failure reason, when there is one (tests).
    #[cfg(test)]
    pub fn reason(&self) -> Option<&str> {
        match self {
            CredentialUnavailable::Unavailable { reason, .. }
            | CredentialUnavailable::RefreshFailed { reason, .. } => Some(reason),
            CredentialUnavailable::BackingOff { .. } | CredentialUnavailable::Stopped { .. } => {
                None
            }
        }
    }
}

/// Why one provider call failed. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The provider returned an error.
    #[error(transparent)]
    Provider(ProviderError),
    /// The provider did not return in time; its thread was abandoned.
    #[error("the provider did not answer within {0:?}")]
    TimedOut(Duration),
    /// The provider panicked on its thread.
    #[error("the provider panicked")]
    Panicked,
    /// Too many earlier calls are still hung; no new one was started.
    #[error("{0} earlier provider calls are still hung; not starting another")]
    TooManyHung(usize),
}

impl FetchError {
    /// What kind of failure it was: the provider's own, or the host's for a timeout, a
    /// panic on the host's thread and too many hung calls.
    pub fn kind(&self) -> ProviderErrorKind {
        match self {
            FetchError::Provider(e) => e.kind(),
            FetchError::TimedOut(_) => ProviderErrorKind::TimedOut,
            FetchError::Panicked => ProviderErrorKind::Panicked,
            FetchError::TooManyHung(_) => ProviderErrorKind::Hung,
        }
    }
}

/// Coarse state for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialState {
    /// The first fetch has not finished yet.
    Pending,
    /// A usable credential is held and the last fetch succeeded.
    Valid,
    /// The last fetch failed, or the credential held is no longer valid.
    Failing,
    /// `ManagedCredential::shutdown` (tests) was called.
    Stopped,
}

impl fmt::Display for CredentialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialState::Pending => "pending",
            CredentialState::Valid => "valid",
            CredentialState::Failing => "failing",
            CredentialState::Stopped => "stopped",
        })
    }
}

/// A snapshot for status output. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStatus {
    /// The registry entry.
    pub registry: String,
    /// Coarse state.
    pub state: CredentialState,
    /// Whether [`ManagedCredential::current`] would hand out a credential now.
    pub usable: bool,
    /// The held credential's expiry as the provider reported it.
    pub expires_at: Option<SystemTime>,
    /// The provider's expiry was already past (or too close) at fetch time and is ignored.
    pub expiry_ignored: bool,
    /// The last failure reason, kept until the next success.
    pub last_error: Option<String>,
    /// The kind of the last failure, kept with `last_error`.
    pub last_error_kind: Option<ProviderErrorKind>,
    /// When the next fetch is due (None while one is running or after shutdown).
    pub next_refresh: Option<Instant>,
    /// Time from this snapshot to `next_refresh`.
    pub next_refresh_in: Option<Duration>,
    /// Successful fetches.
    pub refreshes: u64,
    /// Failed fetches (errors, timeouts, panics).
    pub failures: u64,
    /// `failures` by kind (kinds seen at least once).
    pub failures_by_kind: BTreeMap<ProviderErrorKind, u64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// A fetch is running now.
    pub fetch_in_progress: bool,
    /// Provider calls that timed out and whose threads are still running.
    pub hung_fetches: usize,
}

/// One registry entry's credential, refreshed in the background. Cheap to clone; shared by
/// all pulls to one registry. The refresh task stops when
/// the last clone is dropped (tests also stop it with `shutdown`).
#[derive(Clone)]
pub struct ManagedCredential {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    registry: String,
    /// The provider's name (for messages); empty when unknown (tests).
    provider: String,
    fetcher: Arc<dyn CredentialFetcher>,
    schedule: Schedule,
    state: watch::Sender<State>,
    /// Wakes the refresh task when a 401 refresh is requested.
    wake: Notify,
    hung: Arc<AtomicUsize>,
    per_repository: PerRepository,
}

/// Per-repository credentials of one registry entry, by repository. One fetch at a time per
/// registry entry (the lock is held across it, which makes concurrent first pulls of one
/// repository share a fetch); at most [`MAX_PER_REPOSITORY`] entries (expired ones are
/// dropped first, then all).
#[derive(Default)]
pub struct PerRepository {
    entries: tokio::sync::Mutex<std::collections::HashMap<String, RepoCredential>>,
}

struct RepoCredential {
    credential: Credential,
    obtained: Instant,
    valid_until: Instant,
}

/// Upper bound on per-repository credentials kept for one registry entry.
pub const MAX_PER_REPOSITORY: usize = 1024;

#[derive(Default)]
struct State {
    credential: Option<Credential>,
    /// When `credential` was obtained.
    obtained: Option<Instant>,
    /// The repository of the pull whose 401 requested the pending refresh.
    requested_for: Option<String>,
    /// Effective expiry of `credential`; None = unknown (or ignored).
    valid_until: Option<Instant>,
    expiry_ignored: bool,
    /// Fetch attempts started / finished.
    started: u64,
    completed: u64,
    in_flight: bool,
    refresh_requested: bool,
    last_ok: bool,
    last_error: Option<String>,
    last_error_kind: Option<ProviderErrorKind>,
    next_refresh: Option<Instant>,
    refreshes: u64,
    failures: u64,
    failures_by_kind: BTreeMap<ProviderErrorKind, u64>,
    consecutive_failures: u32,
    warned_stale_expiry: bool,
    stopped: bool,
    /// 401-triggered refreshes in a row (reset after a quiet `backoff_max`).
    unauthorized_streak: u32,
    /// When the last 401-triggered refresh was started.
    last_unauthorized_refresh: Option<Instant>,
    /// No 401-triggered refresh before this.
    unauthorized_not_before: Option<Instant>,
}

impl State {
    /// How long a 401-triggered refresh must still wait: while a failed fetch's retry is
    /// pending (the failure backoff), and until the backoff step after the previous
    /// 401-triggered refresh has passed. None: it may run now.
    fn unauthorized_backoff(&self, now: Instant) -> Option<Duration> {
        let failure_retry = self
            .next_refresh
            .filter(|_| self.consecutive_failures > 0 && !self.last_ok);
        [failure_retry, self.unauthorized_not_before]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .max()
            .map(|t| t - now)
    }

    fn usable(&self, now: Instant) -> Option<&Credential> {
        let valid = self.valid_until.is_none_or(|until| now < until);
        self.credential.as_ref().filter(|_| valid)
    }

    fn unavailable(&self, registry: &str) -> CredentialUnavailable {
        if self.stopped {
            return CredentialUnavailable::Stopped {
                registry: registry.to_owned(),
            };
        }
        let reason = match (&self.last_error, self.credential.is_some()) {
            (Some(e), true) if !self.last_ok => {
                format!("the credential expired and refreshing it failed: {e}")
            }
            (Some(e), _) if !self.last_ok => e.clone(),
            _ if self.credential.is_some() => {
                "the credential expired; a refresh is in progress".to_owned()
            }
            _ => "no credential has been obtained yet".to_owned(),
        };
        CredentialUnavailable::Unavailable {
            registry: registry.to_owned(),
            reason,
        }
    }
}

impl fmt::Debug for ManagedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedCredential")
            .field("registry", &self.inner.shared.registry)
            .field("state", &self.status().state)
            .finish_non_exhaustive()
    }
}

impl ManagedCredential {
    /// Starts the background refresh task (first fetch immediately). `registry` is used in
    /// log lines.
    ///
    /// # Panics
    ///
    /// Like `tokio::spawn`, when called outside a Tokio runtime (which needs the time driver).
    #[cfg(test)]
    pub fn spawn(
        registry: String,
        fetcher: Arc<dyn CredentialFetcher>,
        schedule: Schedule,
    ) -> Self {
        Self::spawn_for(registry, String::new(), fetcher, schedule)
    }

    /// [`ManagedCredential::spawn`] naming the provider (for messages).
    pub fn spawn_for(
        registry: String,
        provider: String,
        fetcher: Arc<dyn CredentialFetcher>,
        schedule: Schedule,
    ) -> Self {
        let (state, _) = watch::channel(State::default());
        let shared = Arc::new(Shared {
            registry,
            provider,
            fetcher,
            schedule: schedule.normalized(),
            state,
            wake: Notify::new(),
            hung: Arc::new(AtomicUsize::new(0)),
            per_repository: PerRepository::default(),
        });
        let task = tokio::spawn(run(Arc::clone(&shared))).abort_handle();
        ManagedCredential {
            inner: Arc::new(Handle { shared, task }),
        }
    }

    /// The credential to use now. Waits only when no credential has ever been obtained and
    /// the first fetch is still running (at most `fetch_timeout`); if none exists (first
    /// fetch failed, or the last one expired and refreshing failed) returns an error at once,
    /// with the last failure reason.
    #[cfg(test)]
    pub async fn current(&self) -> Result<Credential, CredentialUnavailable> {
        self.current_for(None).await
    }

    /// [`ManagedCredential::current`] for a pull of `repository`: when the provider's
    /// credentials are per repository, the one of that repository (fetched now, with the
    /// repository in the request, if none is held or it expired).
    pub async fn current_for(
        &self,
        repository: Option<&str>,
    ) -> Result<Credential, CredentialUnavailable> {
        let registry_wide = self.registry_wide().await?;
        match repository {
            Some(repo) if registry_wide.per_repository => {
                self.repository_credential(repo, None).await
            }
            _ => Ok(registry_wide),
        }
    }

    async fn registry_wide(&self) -> Result<Credential, CredentialUnavailable> {
        let shared = &self.inner.shared;
        let mut rx = shared.state.subscribe();
        loop {
            {
                let st = rx.borrow_and_update();
                if st.stopped {
                    return Err(st.unavailable(&shared.registry));
                }
                if let Some(c) = st.usable(Instant::now()) {
                    return Ok(c.clone());
                }
                if st.completed > 0 {
                    return Err(st.unavailable(&shared.registry));
                }
            }
            if rx.changed().await.is_err() {
                return Err(CredentialUnavailable::Stopped {
                    registry: shared.registry.clone(),
                });
            }
        }
    }

    /// The upstream answered 401 with `rejected`. Single-flight: if the current credential
    /// already differs from `rejected`, returns the current one; otherwise one immediate
    /// refresh is triggered (shared by all concurrent callers; a fetch already running is
    /// joined instead) and its result returned. The regular schedule continues from it.
    ///
    /// Bounded by the failure backoff: while a failed fetch waits for its retry, or within
    /// the backoff step after the previous 401-triggered refresh (the same doubling, capped,
    /// jittered delays; the streak resets after a quiet `backoff_max`), no provider call is
    /// made and [`CredentialUnavailable::BackingOff`] is returned at once.
    #[cfg(test)]
    pub async fn refresh_after_unauthorized(
        &self,
        rejected: &Credential,
    ) -> Result<Credential, CredentialUnavailable> {
        self.refresh_after_unauthorized_for(rejected, None).await
    }

    /// [`ManagedCredential::refresh_after_unauthorized`] for a pull of `repository`, which
    /// the provider sees in its request. A per-repository credential is fetched again for
    /// that repository only (one fetch however many requests it rejected).
    pub async fn refresh_after_unauthorized_for(
        &self,
        rejected: &Credential,
        repository: Option<&str>,
    ) -> Result<Credential, CredentialUnavailable> {
        if let (true, Some(repo)) = (rejected.per_repository, repository) {
            return self.repository_credential(repo, Some(rejected)).await;
        }
        let shared = &self.inner.shared;
        let registry = &shared.registry;
        let schedule = &shared.schedule;
        let mut rx = shared.state.subscribe();
        let now = Instant::now();
        let mut decided: Option<Result<Credential, CredentialUnavailable>> = None;
        let mut target = 0;
        let mut wake = false;
        shared.state.send_if_modified(|st| {
            if st.stopped {
                decided = Some(Err(st.unavailable(registry)));
            } else if let Some(c) = st.usable(now).filter(|c| *c != rejected) {
                decided = Some(Ok(c.clone()));
            } else if st.in_flight {
                target = st.started;
            } else if st.refresh_requested {
                // Requested by another rejection, not started yet: join it.
                target = st.started + 1;
            } else if let Some(retry_in) = st.unauthorized_backoff(now) {
                decided = Some(Err(CredentialUnavailable::BackingOff {
                    registry: registry.clone(),
                    retry_in,
                }));
            } else {
                // One provider call per backoff step, however many requests are rejected.
                let quiet = st
                    .last_unauthorized_refresh
                    .is_none_or(|t| now.saturating_duration_since(t) > schedule.backoff_max);
                if quiet {
                    st.unauthorized_streak = 0;
                }
                st.unauthorized_streak = st.unauthorized_streak.saturating_add(1);
                st.last_unauthorized_refresh = Some(now);
                st.unauthorized_not_before = Some(
                    now + backoff_delay(
                        schedule,
                        st.unauthorized_streak,
                        &mut fastrand::Rng::new(),
                    ),
                );
                st.refresh_requested = true;
                st.requested_for = repository.map(str::to_owned);
                target = st.started + 1;
                wake = true;
            }
            false
        });
        if let Some(result) = decided {
            if let Err(CredentialUnavailable::BackingOff { retry_in, .. }) = &result {
                tracing::debug!(registry = %registry, retry_in = ?retry_in, "upstream rejected the credential; not asking the provider again before the backoff step ends");
            }
            return result;
        }
        if wake {
            tracing::info!(registry = %registry, "upstream rejected the credential; refreshing it now");
            shared.wake.notify_one();
        } else {
            tracing::debug!(registry = %registry, "upstream rejected the credential; joining the refresh in progress");
        }
        loop {
            if rx.changed().await.is_err() {
                return Err(CredentialUnavailable::Stopped {
                    registry: registry.clone(),
                });
            }
            let st = rx.borrow_and_update();
            if st.stopped {
                return Err(st.unavailable(registry));
            }
            let now = Instant::now();
            if st.completed >= target {
                if !st.last_ok {
                    return Err(CredentialUnavailable::RefreshFailed {
                        registry: registry.clone(),
                        reason: st.last_error.clone().unwrap_or_default(),
                    });
                }
                return st
                    .usable(now)
                    .cloned()
                    .ok_or_else(|| st.unavailable(registry));
            }
            if let Some(c) = st.usable(now).filter(|c| *c != rejected) {
                return Ok(c.clone());
            }
        }
    }

    /// The credential of `repository` (per-repository providers): the one held when valid
    /// and not `rejected`, otherwise fetched now (first use, expired, or rejected).
    async fn repository_credential(
        &self,
        repository: &str,
        rejected: Option<&Credential>,
    ) -> Result<Credential, CredentialUnavailable> {
        let shared = &self.inner.shared;
        let registry = &shared.registry;
        let mut entries = shared.per_repository.entries.lock().await;
        let now = Instant::now();
        let held = entries.get(repository);
        if let Some(h) = held.filter(|h| h.valid_until > now) {
            if rejected.is_none_or(|r| *r != h.credential) {
                return Ok(h.credential.clone());
            }
        }
        let reason = match (held, rejected) {
            (Some(h), Some(_)) => FetchReason::Rejected {
                credential_age: now.saturating_duration_since(h.obtained),
            },
            (Some(_), None) => FetchReason::Scheduled,
            (None, _) => FetchReason::FirstUse,
        };
        let s = &shared.schedule;
        let request = FetchRequest::new(reason, SystemTime::now() + s.fetch_timeout)
            .for_repository(repository);
        let result = fetch_with_timeout(
            Arc::clone(&shared.fetcher),
            request,
            s.fetch_timeout,
            &shared.hung,
            registry,
        )
        .await;
        let credential = result.map_err(|e| {
            tracing::warn!(registry = %registry, repository, kind = %e.kind(), error = %e, "per-repository credential fetch failed");
            CredentialUnavailable::Unavailable {
                registry: registry.clone(),
                reason: format!("repository {repository}: {e}"),
            }
        })?;
        let now = Instant::now();
        let valid_until =
            match classify_expiry(credential.expires_at, SystemTime::now(), s.min_interval) {
                Expiry::In(remaining) => {
                    now + remaining - (remaining / EXPIRY_MARGIN_DIVISOR).min(MAX_EXPIRY_MARGIN)
                }
                Expiry::Unknown | Expiry::Stale => now + s.every,
            };
        if entries.len() >= MAX_PER_REPOSITORY {
            entries.retain(|_, e| e.valid_until > now);
            if entries.len() >= MAX_PER_REPOSITORY {
                entries.clear();
            }
        }
        tracing::info!(registry = %registry, repository, valid_for = ?valid_until.saturating_duration_since(now), "per-repository credential fetched");
        entries.insert(
            repository.to_owned(),
            RepoCredential {
                credential: credential.clone(),
                obtained: now,
                valid_until,
            },
        );
        Ok(credential)
    }

    /// The provider's name; empty when not given.
    pub fn provider(&self) -> &str {
        &self.inner.shared.provider
    }

    /// State, expiry, last error, next refresh and counters.
    pub fn status(&self) -> CredentialStatus {
        let shared = &self.inner.shared;
        let st = shared.state.borrow();
        let now = Instant::now();
        let usable = !st.stopped && st.usable(now).is_some();
        let state = if st.stopped {
            CredentialState::Stopped
        } else if st.completed == 0 {
            CredentialState::Pending
        } else if usable && st.last_ok {
            CredentialState::Valid
        } else {
            CredentialState::Failing
        };
        CredentialStatus {
            registry: shared.registry.clone(),
            state,
            usable,
            expires_at: st.credential.as_ref().and_then(|c| c.expires_at),
            expiry_ignored: st.expiry_ignored,
            last_error: st.last_error.clone(),
            last_error_kind: st.last_error_kind,
            next_refresh: st.next_refresh,
            next_refresh_in: st.next_refresh.map(|t| t.saturating_duration_since(now)),
            refreshes: st.refreshes,
            failures: st.failures,
            failures_by_kind: st.failures_by_kind.clone(),
            consecutive_failures: st.consecutive_failures,
            fetch_in_progress: st.in_flight,
            hung_fetches: shared.hung.load(Ordering::SeqCst),
        }
    }

    /// Stops the background task. A provider call in progress is abandoned; callers waiting
    /// in [`current`](Self::current) or [`refresh_after_unauthorized`](Self::refresh_after_unauthorized)
    /// get [`CredentialUnavailable::Stopped`], and so do all later calls (tests: a server
    /// stops its providers by ending the process).
    #[cfg(test)]
    pub fn shutdown(&self) {
        self.inner.task.abort();
        let shared = &self.inner.shared;
        let newly = shared.state.send_if_modified(|st| {
            let newly = !st.stopped;
            st.stopped = true;
            st.in_flight = false;
            st.next_refresh = None;
            newly
        });
        if newly {
            tracing::debug!(registry = %shared.registry, "credential refresh stopped");
        }
    }
}

/// Calls `fetcher` once on a blocking thread with `timeout` (for `ociregistry providers --check`).
pub async fn fetch_once(
    fetcher: Arc<dyn CredentialFetcher>,
    timeout: Duration,
) -> Result<Credential, FetchError> {
    let request = FetchRequest::new(FetchReason::FirstUse, SystemTime::now() + timeout);
    fetch_with_timeout(
        fetcher,
        request,
        timeout,
        &Arc::new(AtomicUsize::new(0)),
        "(check)",
    )
    .await
}

const CALL_RUNNING: u8 = 0;
const CALL_DONE: u8 = 1;
const CALL_ABANDONED: u8 = 2;

/// Marks the call done when the blocking closure ends (normally or by panic); if the caller
/// had given up on it by then, un-counts it from `hung`.
struct CallEnd {
    phase: Arc<AtomicU8>,
    hung: Arc<AtomicUsize>,
    registry: String,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        if self
            .phase
            .compare_exchange(CALL_RUNNING, CALL_DONE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            self.hung.fetch_sub(1, Ordering::SeqCst);
            tracing::info!(registry = %self.registry, "an abandoned credential provider call finished late; its result was discarded");
        }
    }
}

async fn fetch_with_timeout(
    fetcher: Arc<dyn CredentialFetcher>,
    request: FetchRequest,
    timeout: Duration,
    hung: &Arc<AtomicUsize>,
    registry: &str,
) -> Result<Credential, FetchError> {
    let already = hung.load(Ordering::SeqCst);
    if already >= MAX_HUNG_FETCHES {
        return Err(FetchError::TooManyHung(already));
    }
    let phase = Arc::new(AtomicU8::new(CALL_RUNNING));
    let end = CallEnd {
        phase: Arc::clone(&phase),
        hung: Arc::clone(hung),
        registry: registry.to_owned(),
    };
    let call = tokio::task::spawn_blocking(move || {
        let _end = end;
        fetcher.fetch_with(&request)
    });
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(credential))) => Ok(credential),
        Ok(Ok(Err(error))) => Err(FetchError::Provider(error)),
        Ok(Err(_join)) => Err(FetchError::Panicked),
        Err(_elapsed) => {
            hung.fetch_add(1, Ordering::SeqCst);
            let abandoned = phase
                .compare_exchange(
                    CALL_RUNNING,
                    CALL_ABANDONED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok();
            if abandoned {
                tracing::warn!(
                    registry = %registry,
                    timeout = ?timeout,
                    hung_calls = hung.load(Ordering::SeqCst),
                    "credential provider call timed out; abandoning its thread (it runs on until the provider returns)"
                );
            } else {
                hung.fetch_sub(1, Ordering::SeqCst);
            }
            Err(FetchError::TimedOut(timeout))
        }
    }
}

/// What a provider's `expires_at` means for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No expiry given.
    Unknown,
    /// Already past, or closer than the minimum interval: ignored (treated as unknown).
    Stale,
    /// Valid for this long from the end of the fetch.
    In(Duration),
}

fn classify_expiry(
    expires_at: Option<SystemTime>,
    wall_now: SystemTime,
    floor: Duration,
) -> Expiry {
    match expires_at {
        None => Expiry::Unknown,
        Some(at) => match at.duration_since(wall_now) {
            Ok(remaining) if remaining > floor => Expiry::In(remaining),
            _ => Expiry::Stale,
        },
    }
}

/// Next fetch after a success that started at `started` and finished at `now`.
fn next_refresh_after_success(
    s: &Schedule,
    started: Instant,
    now: Instant,
    expiry: Expiry,
) -> Instant {
    let regular = now + s.every;
    match expiry {
        Expiry::In(remaining) => {
            let margin = (remaining / EXPIRY_MARGIN_DIVISOR).min(MAX_EXPIRY_MARGIN);
            let early = now + (remaining - margin);
            let floor = started + s.min_interval;
            early.max(floor).min(regular)
        }
        Expiry::Unknown | Expiry::Stale => regular,
    }
}

/// Delay before retry number `failures` (1 = first retry): `initial * 2^(failures-1)` capped
/// at `backoff_max`, then jittered uniformly into `[d/2, d]`.
fn backoff_delay(s: &Schedule, failures: u32, rng: &mut fastrand::Rng) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let base = s.backoff_initial.saturating_mul(factor).min(s.backoff_max);
    let half = base / 2;
    half + half.mul_f64(rng.f64())
}

/// Applies `f` to the state unless stopped; notifies watchers. None when stopped.
fn update<R>(shared: &Shared, f: impl FnOnce(&mut State) -> R) -> Option<R> {
    let mut out = None;
    shared.state.send_if_modified(|st| {
        if st.stopped {
            return false;
        }
        out = Some(f(st));
        true
    });
    out
}

async fn run(shared: Arc<Shared>) {
    let registry = shared.registry.as_str();
    let s = &shared.schedule;
    let mut rng = fastrand::Rng::new();
    loop {
        let started = Instant::now();
        let begun = update(&shared, |st| {
            let reason = match (st.refresh_requested, st.obtained) {
                (_, None) => FetchReason::FirstUse,
                (true, Some(at)) => FetchReason::Rejected {
                    credential_age: started.saturating_duration_since(at),
                },
                (false, Some(_)) => FetchReason::Scheduled,
            };
            let mut request = FetchRequest::new(reason, SystemTime::now() + s.fetch_timeout);
            if let Some(repo) = st.requested_for.take().filter(|_| st.refresh_requested) {
                request = request.for_repository(repo);
            }
            st.started += 1;
            st.in_flight = true;
            st.refresh_requested = false;
            st.next_refresh = None;
            request
        });
        let Some(request) = begun else {
            return;
        };
        let result = fetch_with_timeout(
            Arc::clone(&shared.fetcher),
            request,
            s.fetch_timeout,
            &shared.hung,
            registry,
        )
        .await;
        let now = Instant::now();
        let next = match result {
            Ok(credential) => {
                let expiry =
                    classify_expiry(credential.expires_at, SystemTime::now(), s.min_interval);
                let next = next_refresh_after_success(s, started, now, expiry);
                let Some(first_stale) = update(&shared, |st| {
                    let first_stale = expiry == Expiry::Stale && !st.warned_stale_expiry;
                    st.warned_stale_expiry |= expiry == Expiry::Stale;
                    st.credential = Some(credential);
                    st.obtained = Some(now);
                    st.valid_until = match expiry {
                        Expiry::In(remaining) => Some(now + remaining),
                        Expiry::Unknown | Expiry::Stale => None,
                    };
                    st.expiry_ignored = expiry == Expiry::Stale;
                    st.completed += 1;
                    st.in_flight = false;
                    st.last_ok = true;
                    st.last_error = None;
                    st.last_error_kind = None;
                    st.next_refresh = Some(next);
                    st.refreshes += 1;
                    st.consecutive_failures = 0;
                    first_stale
                }) else {
                    return;
                };
                if expiry == Expiry::Stale {
                    if first_stale {
                        tracing::warn!(
                            registry = %registry,
                            every = ?s.every,
                            "the provider's credential expiry is already past or too close; treating it as unknown and refreshing on the regular schedule"
                        );
                    } else {
                        tracing::debug!(registry = %registry, "provider expiry ignored again (past or too close)");
                    }
                }
                let expires_in = match expiry {
                    Expiry::In(remaining) => Some(remaining),
                    Expiry::Unknown | Expiry::Stale => None,
                };
                tracing::info!(
                    registry = %registry,
                    expires_in = ?expires_in,
                    next_refresh_in = ?next.saturating_duration_since(now),
                    "credential refreshed"
                );
                next
            }
            Err(error) => {
                let message = error.to_string();
                let kind = error.kind();
                let Some((delay, keeping)) = update(&shared, |st| {
                    st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                    let delay = backoff_delay(s, st.consecutive_failures, &mut rng);
                    st.completed += 1;
                    st.in_flight = false;
                    st.last_ok = false;
                    st.last_error = Some(message.clone());
                    st.last_error_kind = Some(kind);
                    st.next_refresh = Some(now + delay);
                    st.failures += 1;
                    *st.failures_by_kind.entry(kind).or_default() += 1;
                    (delay, st.usable(now).is_some())
                }) else {
                    return;
                };
                tracing::warn!(
                    registry = %registry,
                    kind = %kind,
                    error = %message,
                    retry_in = ?delay,
                    keeping_previous_credential = keeping,
                    "credential refresh failed"
                );
                now + delay
            }
        };
        // Sleep until due, or until a 401 refresh is requested.
        let mut rx = shared.state.subscribe();
        loop {
            {
                let st = rx.borrow_and_update();
                if st.stopped {
                    return;
                }
                if st.refresh_requested {
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                () = shared.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex, MutexGuard};

    use ociregistry_plugin_api::CredentialKind;

    const S: Duration = Duration::from_secs(1);
    const M: Duration = Duration::from_secs(60);
    const H: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    const REGISTRY: &str = "reg.example";

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn secret(n: usize) -> String {
        format!("s3cr3t-{n}")
    }

    fn cred(n: usize) -> Credential {
        Credential::basic("AWS", secret(n))
    }

    fn token(c: &Credential) -> String {
        match &c.kind {
            CredentialKind::Basic { secret, .. } => secret.expose().to_owned(),
            CredentialKind::Bearer { token } | CredentialKind::IdentityToken { token } => {
                token.expose().to_owned()
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What the fake does on one call.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Ok,
        /// Ok, with `expires_at` = wall-clock now + this many seconds (negative: in the past).
        Expiring(i64),
        Fail,
        /// Blocks until the fake's gate opens, then Ok.
        Hang,
        Panic,
    }

    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = lock(&self.open);
            while !*open {
                open = self.cv.wait(open).unwrap_or_else(|e| e.into_inner());
            }
        }
        fn open(&self) {
            *lock(&self.open) = true;
            self.cv.notify_all();
        }
    }

    /// Opens the gate when the test ends (even by panic), so hung blocking threads finish and
    /// the runtime can shut down.
    struct GateGuard(Arc<Gate>);

    impl Drop for GateGuard {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    type Script = Box<dyn Fn(usize) -> Step + Send + Sync>;

    struct Fake {
        script: Script,
        calls: Mutex<Vec<Instant>>,
        count: watch::Sender<usize>,
        gate: Arc<Gate>,
    }

    impl Fake {
        fn new(script: impl Fn(usize) -> Step + Send + Sync + 'static) -> (Arc<Fake>, GateGuard) {
            let gate = Arc::new(Gate::default());
            let fake = Arc::new(Fake {
                script: Box::new(script),
                calls: Mutex::new(Vec::new()),
                count: watch::channel(0).0,
                gate: Arc::clone(&gate),
            });
            (fake, GateGuard(gate))
        }

        fn calls(&self) -> usize {
            lock(&self.calls).len()
        }

        /// Virtual times of the calls (blocking threads run inside the runtime's context).
        fn times(&self) -> Vec<Instant> {
            lock(&self.calls).clone()
        }

        fn gaps(&self) -> Vec<Duration> {
            self.times().windows(2).map(|w| w[1] - w[0]).collect()
        }

        /// Lets (virtual) time run until the fake has been called `n` times.
        async fn wait_calls(&self, n: usize) {
            let mut rx = self.count.subscribe();
            tokio::time::timeout(365 * DAY, rx.wait_for(|c| *c >= n))
                .await
                .expect("fetcher not called in time")
                .expect("fake dropped");
        }
    }

    impl CredentialFetcher for Fake {
        fn fetch(&self) -> Result<Credential, ProviderError> {
            let n = {
                let mut calls = lock(&self.calls);
                calls.push(Instant::now());
                calls.len() - 1
            };
            self.count.send_replace(n + 1);
            match (self.script)(n) {
                Step::Ok => Ok(cred(n)),
                Step::Expiring(secs) => {
                    let offset = Duration::from_secs(secs.unsigned_abs());
                    let at = if secs >= 0 {
                        SystemTime::now() + offset
                    } else {
                        SystemTime::now() - offset
                    };
                    Ok(cred(n).expiring_at(at))
                }
                Step::Fail => Err(ProviderError::new(
                    "fake",
                    ProviderErrorKind::Failed,
                    format!("provider says no (call {n})"),
                )),
                Step::Hang => {
                    self.gate.wait();
                    Ok(cred(n))
                }
                Step::Panic => panic!("fake provider panics (test)"),
            }
        }
    }

    fn sched(every: Duration) -> Schedule {
        Schedule {
            every,
            ..Schedule::default()
        }
    }

    fn start(fake: &Arc<Fake>, schedule: Schedule) -> ManagedCredential {
        ManagedCredential::spawn(
            REGISTRY.to_owned(),
            Arc::clone(fake) as Arc<dyn CredentialFetcher>,
            schedule,
        )
    }

    /// Waits (letting virtual time run) until the status satisfies `f`.
    async fn wait_status(
        mc: &ManagedCredential,
        f: impl Fn(&CredentialStatus) -> bool,
    ) -> CredentialStatus {
        let mut rx = mc.inner.shared.state.subscribe();
        loop {
            let status = mc.status();
            if f(&status) {
                return status;
            }
            tokio::time::timeout(365 * DAY, rx.changed())
                .await
                .expect("status never reached")
                .expect("state dropped");
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn assert_within(d: Duration, lo: Duration, hi: Duration) {
        assert!(lo <= d && d <= hi, "{d:?} not within [{lo:?}, {hi:?}]");
    }

    /// Tolerance for expiries given in wall-clock time (converted once, real microseconds apart).
    fn assert_about(d: Duration, expected: Duration) {
        assert_within(d, expected.saturating_sub(S), expected + S);
    }

    // ---- a tiny tracing subscriber that records events (no extra crates) ----

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            lock(&self.0).push((*event.metadata().level(), fields.0));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    impl Capture {
        fn events(&self) -> Vec<(tracing::Level, String)> {
            lock(&self.0).clone()
        }
        fn count(&self, level: tracing::Level, needle: &str) -> usize {
            self.events()
                .iter()
                .filter(|(l, text)| *l == level && text.contains(needle))
                .count()
        }
    }

    // ---- pure scheduling rules ----

    #[test]
    fn schedule_defaults_and_normalisation() {
        let d = Schedule::default();
        assert_eq!(d.every, 12 * H);
        assert_eq!(d.fetch_timeout, 30 * S);
        assert_eq!(d.backoff_initial, S);
        assert_eq!(d.backoff_max, 5 * M);
        assert_eq!(d.min_interval, 30 * S);
        let zero = Schedule {
            every: Duration::ZERO,
            fetch_timeout: Duration::ZERO,
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            min_interval: Duration::ZERO,
        }
        .normalized();
        assert_eq!(zero.every, MIN_EVERY);
        assert_eq!(zero.backoff_initial, MIN_BACKOFF);
        assert_eq!(zero.backoff_max, MIN_BACKOFF);
        assert_eq!(zero.fetch_timeout, MIN_FETCH_TIMEOUT);
        assert_eq!(zero.min_interval, MIN_INTERVAL_FLOOR);
        // min_interval is capped at every.
        let capped = Schedule {
            every: 10 * S,
            ..Schedule::default()
        }
        .normalized();
        assert_eq!(capped.min_interval, 10 * S);
    }

    #[test]
    fn next_refresh_rules() {
        let s = Schedule::default().normalized();
        let t = Instant::now();
        // No expiry, or an ignored one: regular interval from the end of the fetch.
        assert_eq!(
            next_refresh_after_success(&s, t, t + S, Expiry::Unknown),
            t + S + 12 * H
        );
        assert_eq!(
            next_refresh_after_success(&s, t, t, Expiry::Stale),
            t + 12 * H
        );
        // 1h left: margin 10% = 6m capped at 5m.
        assert_eq!(
            next_refresh_after_success(&s, t, t, Expiry::In(H)),
            t + 55 * M
        );
        // 10m left: margin 1m.
        assert_eq!(
            next_refresh_after_success(&s, t, t, Expiry::In(10 * M)),
            t + 9 * M
        );
        // 32s left: 28.8s, raised to min_interval after the fetch's start.
        assert_eq!(
            next_refresh_after_success(&s, t, t + S, Expiry::In(32 * S)),
            t + 30 * S
        );
        // Expiry further than `every`: regular interval wins.
        assert_eq!(
            next_refresh_after_success(&s, t, t, Expiry::In(48 * H)),
            t + 12 * H
        );
    }

    #[test]
    fn expiry_classification() {
        let now = SystemTime::now();
        let floor = 30 * S;
        assert_eq!(classify_expiry(None, now, floor), Expiry::Unknown);
        assert_eq!(classify_expiry(Some(now - H), now, floor), Expiry::Stale);
        assert_eq!(classify_expiry(Some(now), now, floor), Expiry::Stale);
        assert_eq!(
            classify_expiry(Some(now + 30 * S), now, floor),
            Expiry::Stale
        );
        assert_eq!(classify_expiry(Some(now + H), now, floor), Expiry::In(H));
    }

    #[test]
    fn backoff_doubles_is_jittered_and_capped() {
        let s = Schedule::default().normalized();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            for (failures, base) in [(1, S), (2, 2 * S), (3, 4 * S), (9, 256 * S)] {
                assert_within(backoff_delay(&s, failures, &mut rng), base / 2, base);
            }
            for failures in [10, 31, 32, 33, 1000, u32::MAX] {
                assert_within(backoff_delay(&s, failures, &mut rng), 150 * S, 300 * S);
            }
        }
    }

    // ---- the task, under a paused clock ----
    //
    // With the current-thread runtime and a paused clock, tokio does not auto-advance time
    // while a `spawn_blocking` task is running (tokio/src/runtime/blocking/schedule.rs
    // inhibits auto-advance until the task is released). So a fetch that returns at once
    // takes zero virtual time, and a hung fetch freezes virtual time: those tests move the
    // clock by hand with `tokio::time::advance`, then open the gate so the thread ends.

    #[tokio::test(start_paused = true)]
    async fn first_fetch_is_immediate_and_current_waits_for_it() {
        let (fake, _gate) = Fake::new(|n| if n == 0 { Step::Hang } else { Step::Ok });
        let t0 = Instant::now();
        let mc = start(&fake, sched(H));
        let waiter = tokio::spawn({
            let mc = mc.clone();
            async move { mc.current().await }
        });
        fake.wait_calls(1).await;
        settle().await;
        assert!(
            !waiter.is_finished(),
            "current() must wait for the first fetch"
        );
        assert_eq!(mc.status().state, CredentialState::Pending);
        fake.gate.open();
        let c = waiter.await.unwrap().unwrap();
        assert_eq!(token(&c), secret(0));
        assert_eq!(fake.times(), vec![t0]);
        let st = mc.status();
        assert_eq!(st.state, CredentialState::Valid);
        assert_eq!((st.refreshes, st.failures), (1, 0));
        assert_eq!(st.next_refresh, Some(t0 + H));
    }

    #[tokio::test(start_paused = true)]
    async fn first_fetch_failure_errors_at_once_with_reason_then_retries() {
        let (fake, _gate) = Fake::new(|n| if n == 0 { Step::Fail } else { Step::Ok });
        let t0 = Instant::now();
        let mc = start(&fake, sched(H));
        let err = mc.current().await.unwrap_err();
        assert_eq!(Instant::now(), t0, "no waiting for a retry");
        assert!(
            matches!(err, CredentialUnavailable::Unavailable { .. }),
            "{err:?}"
        );
        assert_eq!(err.reason(), Some("provider says no (call 0)"));
        assert!(err.to_string().contains(REGISTRY));
        assert_eq!(mc.status().state, CredentialState::Failing);
        fake.wait_calls(2).await;
        assert_within(fake.gaps()[0], S / 2, S);
        wait_status(&mc, |s| s.refreshes == 1).await;
        assert_eq!(token(&mc.current().await.unwrap()), secret(1));
        let st = mc.status();
        assert_eq!(
            (st.state, st.failures, st.consecutive_failures),
            (CredentialState::Valid, 1, 0)
        );
        assert_eq!(st.last_error, None);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_every_interval_without_expiry() {
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let mc = start(&fake, sched(H));
        fake.wait_calls(4).await;
        assert_eq!(fake.gaps(), vec![H, H, H]);
        let st = wait_status(&mc, |s| s.refreshes == 4).await;
        assert_eq!(st.failures, 0);
        assert_eq!(token(&mc.current().await.unwrap()), secret(3));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_the_providers_expiry() {
        // 1h lifetime: refresh 5m (the cap) before it.
        let (fake, _gate) = Fake::new(|_| Step::Expiring(3600));
        let mc = start(&fake, sched(12 * H));
        let st = wait_status(&mc, |s| s.refreshes == 1).await;
        assert!(st.expires_at.is_some() && !st.expiry_ignored);
        assert_about(st.next_refresh_in.unwrap(), 55 * M);
        fake.wait_calls(3).await;
        for gap in fake.gaps() {
            assert_about(gap, 55 * M);
        }
        mc.shutdown();

        // 10m lifetime: margin 10% = 1m.
        let (fake, _gate) = Fake::new(|_| Step::Expiring(600));
        let _mc = start(&fake, sched(12 * H));
        fake.wait_calls(3).await;
        for gap in fake.gaps() {
            assert_about(gap, 9 * M);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn early_refresh_never_sooner_than_min_interval() {
        // 32s lifetime would mean a refresh after 28.8s; min_interval (30s) holds it back.
        let (fake, _gate) = Fake::new(|_| Step::Expiring(32));
        let _mc = start(&fake, sched(12 * H));
        fake.wait_calls(5).await;
        assert_eq!(fake.gaps(), vec![30 * S; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_or_too_close_expiry_is_ignored_and_never_storms() {
        let capture = Capture::default();
        let _log = tracing::subscriber::set_default(capture.clone());
        // moto: every token "expired an hour ago". Default schedule: every 12h.
        let (fake, _gate) = Fake::new(|_| Step::Expiring(-3600));
        let t0 = Instant::now();
        let mc = start(&fake, Schedule::default());
        tokio::time::sleep_until(t0 + 10 * DAY - H).await;
        assert_eq!(fake.calls(), 20, "one fetch per 12h over 10 days");
        assert!(fake.gaps().iter().all(|g| *g == 12 * H));
        let st = mc.status();
        assert_eq!(st.state, CredentialState::Valid);
        assert!(st.usable && st.expiry_ignored && st.expires_at.is_some());
        assert_eq!(token(&mc.current().await.unwrap()), secret(19));
        assert_eq!(
            capture.count(tracing::Level::WARN, "expiry"),
            1,
            "{:?}",
            capture.events()
        );
        mc.shutdown();

        // An expiry inside the minimum interval (5s left) is ignored the same way.
        let (fake, _gate) = Fake::new(|_| Step::Expiring(5));
        let t1 = Instant::now();
        let mc = start(&fake, sched(H));
        tokio::time::sleep_until(t1 + DAY - M).await;
        assert_eq!(fake.calls(), 24);
        assert!(mc.status().expiry_ignored);
        assert!(mc.current().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_credential_back_off_and_reset_on_success() {
        let (fake, _gate) = Fake::new(|n| match n {
            1..=5 | 7 => Step::Fail,
            _ => Step::Ok,
        });
        let mc = start(&fake, sched(H));
        assert_eq!(token(&mc.current().await.unwrap()), secret(0));
        let st = wait_status(&mc, |s| s.failures == 2 && !s.fetch_in_progress).await;
        assert_eq!(st.state, CredentialState::Failing);
        assert!(st.usable);
        assert_eq!(st.last_error.as_deref(), Some("provider says no (call 2)"));
        assert_eq!(
            token(&mc.current().await.unwrap()),
            secret(0),
            "last good kept"
        );
        fake.wait_calls(9).await;
        let gaps = fake.gaps();
        assert_eq!(gaps[0], H);
        for (i, base) in [S, 2 * S, 4 * S, 8 * S, 16 * S].into_iter().enumerate() {
            assert_within(gaps[1 + i], base / 2, base);
        }
        assert_eq!(gaps[6], H, "regular schedule after the success");
        assert_within(gaps[7], S / 2, S);
        let st = wait_status(&mc, |s| s.refreshes == 3).await;
        assert_eq!((st.failures, st.consecutive_failures), (6, 0));
        assert_eq!(token(&mc.current().await.unwrap()), secret(8));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped() {
        let (fake, _gate) = Fake::new(|_| Step::Fail);
        let schedule = Schedule {
            backoff_max: 8 * S,
            ..sched(H)
        };
        let mc = start(&fake, schedule);
        fake.wait_calls(40).await;
        let gaps = fake.gaps();
        assert!(gaps.iter().all(|g| *g <= 8 * S), "{gaps:?}");
        assert!(gaps[4..].iter().all(|g| *g >= 4 * S), "{gaps:?}");
        let st = wait_status(&mc, |s| s.failures == 40).await;
        assert_eq!(st.state, CredentialState::Failing);
        assert!(!st.usable);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_credential_is_dropped_while_refreshing_fails() {
        let (fake, _gate) = Fake::new(|n| {
            if n == 0 {
                Step::Expiring(600)
            } else {
                Step::Fail
            }
        });
        let t0 = Instant::now();
        let mc = start(&fake, sched(12 * H));
        assert_eq!(token(&mc.current().await.unwrap()), secret(0));
        tokio::time::sleep_until(t0 + 590 * S).await;
        assert!(fake.calls() > 1, "refreshing started before expiry");
        assert_eq!(
            token(&mc.current().await.unwrap()),
            secret(0),
            "still valid"
        );
        tokio::time::sleep_until(t0 + 601 * S).await;
        let err = mc.current().await.unwrap_err();
        let reason = err.reason().unwrap();
        assert!(
            reason.contains("expired") && reason.contains("provider says no"),
            "{reason}"
        );
        let st = mc.status();
        assert_eq!(st.state, CredentialState::Failing);
        assert!(!st.usable);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_fetch_times_out_keeps_the_old_credential_and_its_late_result_is_ignored() {
        let capture = Capture::default();
        let _log = tracing::subscriber::set_default(capture.clone());
        let (fake, _gate) = Fake::new(|n| if n == 1 { Step::Hang } else { Step::Ok });
        let t0 = Instant::now();
        let mc = start(&fake, sched(H));
        assert_eq!(token(&mc.current().await.unwrap()), secret(0));
        fake.wait_calls(2).await;
        let t1 = Instant::now();
        assert_eq!(t1 - t0, H);
        // Virtual time is frozen while the blocking call runs: move it by hand.
        tokio::time::advance(30 * S).await;
        let st = wait_status(&mc, |s| s.failures == 1).await;
        assert_eq!(st.state, CredentialState::Failing);
        assert!(st.usable);
        assert_eq!(st.hung_fetches, 1);
        assert!(st.last_error.unwrap().contains("did not answer within 30s"));
        assert_eq!(capture.count(tracing::Level::WARN, "abandoning"), 1);
        assert_eq!(
            token(&mc.current().await.unwrap()),
            secret(0),
            "old credential kept"
        );
        // Let the hung thread finish: its credential (call 1) must never be used.
        fake.gate.open();
        fake.wait_calls(3).await;
        assert_within(fake.times()[2] - (t1 + 30 * S), S / 2, S);
        let st = wait_status(&mc, |s| s.refreshes == 2).await;
        assert_eq!(st.hung_fetches, 0);
        assert_eq!(token(&mc.current().await.unwrap()), secret(2));
    }

    #[tokio::test(start_paused = true)]
    async fn hung_calls_are_bounded() {
        let (fake, _gate) = Fake::new(|_| Step::Hang);
        let schedule = Schedule {
            fetch_timeout: S,
            backoff_initial: S,
            backoff_max: S,
            ..sched(H)
        };
        let mc = start(&fake, schedule);
        for _ in 0..200 {
            let st = mc.status();
            if st
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("still hung"))
            {
                break;
            }
            tokio::time::advance(S / 2).await;
            settle().await;
        }
        fake.wait_calls(MAX_HUNG_FETCHES).await;
        let st = mc.status();
        assert_eq!(st.hung_fetches, MAX_HUNG_FETCHES);
        assert!(st.last_error.unwrap().contains("still hung"));
        assert_eq!(
            fake.calls(),
            MAX_HUNG_FETCHES,
            "no new thread while too many are hung"
        );
        assert!(st.failures > MAX_HUNG_FETCHES as u64);
    }

    /// Records each request; answers `n-<call>`, per repository when `per_repo`.
    struct Recorder {
        requests: Mutex<Vec<FetchRequest>>,
        per_repo: bool,
    }

    impl CredentialFetcher for Recorder {
        fn fetch(&self) -> Result<Credential, ProviderError> {
            unreachable!("the scheduler calls fetch_with")
        }
        fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, ProviderError> {
            let mut requests = lock(&self.requests);
            requests.push(request.clone());
            let c = Credential::bearer(format!(
                "{}-{}",
                requests.len(),
                request.repository.as_deref().unwrap_or("-")
            ));
            Ok(if self.per_repo {
                c.for_repository_only()
            } else {
                c
            })
        }
    }

    fn recorder(per_repo: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            requests: Mutex::new(Vec::new()),
            per_repo,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn requests_carry_the_reason_the_repository_and_the_deadline() {
        let rec = recorder(false);
        let schedule = Schedule {
            every: H,
            fetch_timeout: 7 * S,
            ..Schedule::default()
        };
        let mc = ManagedCredential::spawn(REGISTRY.into(), Arc::clone(&rec) as _, schedule);
        let first = mc.current_for(Some("team/app")).await.unwrap();
        assert_eq!(
            token(&first),
            "1--",
            "registry-wide: no repository at start-up"
        );
        tokio::time::sleep(H + S).await;
        tokio::time::sleep(10 * M).await;
        let rejected = mc.current().await.unwrap();
        let fresh = mc
            .refresh_after_unauthorized_for(&rejected, Some("team/app"))
            .await
            .unwrap();
        assert_eq!(token(&fresh), "3-team/app");
        let requests = lock(&rec.requests).clone();
        assert_eq!(requests[0].reason, FetchReason::FirstUse);
        assert_eq!(requests[0].repository, None);
        assert_eq!(requests[1].reason, FetchReason::Scheduled);
        assert_eq!(requests[1].repository, None);
        // Rejected 10 minutes after the scheduled refresh.
        let FetchReason::Rejected { credential_age } = requests[2].reason else {
            panic!("{:?}", requests[2].reason)
        };
        assert_about(credential_age, 10 * M + S);
        assert_eq!(requests[2].repository.as_deref(), Some("team/app"));
        // The deadline is the provider timeout away (wall clock; the paused clock is tokio's).
        let left = requests[2].time_left();
        assert!(left <= 7 * S && left > 5 * S, "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn per_repository_credentials_are_kept_per_repository() {
        let rec = recorder(true);
        let mc = ManagedCredential::spawn(REGISTRY.into(), Arc::clone(&rec) as _, sched(H));
        // The registry-wide fetch says "per repository": each repository gets its own.
        let a = mc.current_for(Some("a")).await.unwrap();
        assert_eq!(token(&a), "2-a");
        let b = mc.current_for(Some("b")).await.unwrap();
        assert_eq!(token(&b), "3-b");
        assert_eq!(token(&mc.current_for(Some("a")).await.unwrap()), "2-a");
        // Concurrent first pulls of one repository share one fetch.
        let pulls: Vec<_> = (0..10)
            .map(|_| {
                let mc = mc.clone();
                tokio::spawn(async move { mc.current_for(Some("c")).await })
            })
            .collect();
        for p in pulls {
            assert_eq!(token(&p.await.unwrap().unwrap()), "4-c");
        }
        // A rejection refetches that repository only, with the reason.
        let fresh = mc
            .refresh_after_unauthorized_for(&a, Some("a"))
            .await
            .unwrap();
        assert_eq!(token(&fresh), "5-a");
        assert_eq!(
            token(
                &mc.refresh_after_unauthorized_for(&a, Some("a"))
                    .await
                    .unwrap()
            ),
            "5-a"
        );
        // No expiry given: kept for `every`, then fetched again on the next pull.
        tokio::time::sleep(H + S).await;
        let calls_before = lock(&rec.requests).len();
        let again = mc.current_for(Some("b")).await.unwrap();
        let requests = lock(&rec.requests).clone();
        assert_eq!(token(&again), format!("{}-b", calls_before + 1));
        assert_eq!(requests.last().unwrap().reason, FetchReason::Scheduled);
        assert!(matches!(requests[4].reason, FetchReason::Rejected { .. }));
        assert_eq!(requests[1].reason, FetchReason::FirstUse);
        assert_eq!(requests[1].repository.as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_refresh_is_single_flight_and_the_schedule_follows_it() {
        let (fake, _gate) = Fake::new(|n| if n == 1 { Step::Hang } else { Step::Ok });
        let mc = start(&fake, sched(H));
        let rejected = mc.current().await.unwrap();
        tokio::time::sleep(10 * M).await;
        let t401 = Instant::now();
        let spawn_callers = |count: usize| -> Vec<tokio::task::JoinHandle<_>> {
            (0..count)
                .map(|_| {
                    let mc = mc.clone();
                    let rejected = rejected.clone();
                    tokio::spawn(async move { mc.refresh_after_unauthorized(&rejected).await })
                })
                .collect()
        };
        let mut callers = spawn_callers(50);
        fake.wait_calls(2).await;
        settle().await;
        // More callers arrive while the refresh is running: they join it.
        callers.extend(spawn_callers(50));
        settle().await;
        fake.gate.open();
        for caller in callers {
            assert_eq!(token(&caller.await.unwrap().unwrap()), secret(1));
        }
        assert_eq!(fake.calls(), 2, "one fetch for 100 callers");
        assert_eq!(fake.times()[1], t401, "immediate");
        // A late caller with the old credential gets the new one without a fetch.
        assert_eq!(
            token(&mc.refresh_after_unauthorized(&rejected).await.unwrap()),
            secret(1)
        );
        assert_eq!(fake.calls(), 2);
        // The regular schedule continues from the 401 refresh.
        fake.wait_calls(3).await;
        assert_eq!(fake.times()[2], t401 + H);
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_refresh_with_fast_fetches_is_one_fetch_per_rejection() {
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let mc = start(&fake, sched(H));
        for round in 0..3 {
            // Rejections far apart (past the backoff) each get their fetch.
            tokio::time::sleep(10 * M).await;
            let rejected = mc.current().await.unwrap();
            let callers: Vec<_> = (0..20)
                .map(|_| {
                    let mc = mc.clone();
                    let rejected = rejected.clone();
                    tokio::spawn(async move { mc.refresh_after_unauthorized(&rejected).await })
                })
                .collect();
            for caller in callers {
                assert_eq!(token(&caller.await.unwrap().unwrap()), secret(round + 1));
            }
            assert_eq!(fake.calls(), round + 2);
        }
        assert_eq!(mc.status().refreshes, 4);
    }

    /// Lower bounds of the start times of 401-triggered refreshes number 1, 2, ... when
    /// rejections never stop: each waits at least half its (doubling) backoff step.
    fn earliest_unauthorized_refreshes(s: &Schedule, within: Duration) -> usize {
        let mut at = Duration::ZERO;
        let mut n = 0;
        while at <= within {
            n += 1;
            let step = s
                .backoff_initial
                .saturating_mul(1 << (n - 1).min(20))
                .min(s.backoff_max);
            at += step / 2;
        }
        n
    }

    /// Rejections arriving every 10ms for `storm` from many callers, each presenting the
    /// credential it currently holds (the upstream rejects them all).
    async fn rejection_storm(
        mc: &ManagedCredential,
        storm: Duration,
    ) -> Vec<Result<Credential, CredentialUnavailable>> {
        let end = Instant::now() + storm;
        let mut callers = Vec::new();
        while Instant::now() < end {
            for _ in 0..5 {
                let mc = mc.clone();
                callers.push(tokio::spawn(async move {
                    let Ok(held) = mc.current().await else {
                        return Err(CredentialUnavailable::Stopped {
                            registry: String::new(),
                        });
                    };
                    mc.refresh_after_unauthorized(&held).await
                }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut out = Vec::new();
        for c in callers {
            out.push(c.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_storm_makes_one_provider_call_per_backoff_step() {
        // The provider always answers; the upstream rejects every credential.
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let schedule = sched(H);
        let mc = start(&fake, schedule.clone());
        mc.current().await.unwrap();
        let storm = 60 * S;
        let results = rejection_storm(&mc, storm).await;
        assert!(results.len() > 20_000, "{} rejections", results.len());
        let refreshes = fake.calls() - 1;
        let bound = earliest_unauthorized_refreshes(&schedule.normalized(), storm);
        assert!(
            (3..=bound).contains(&refreshes),
            "{refreshes} provider calls for {} rejections in {storm:?}; the backoff allows {bound}",
            results.len()
        );
        // Consecutive 401 refreshes are at least half a doubling step apart.
        for (i, gap) in fake.gaps().iter().skip(1).enumerate() {
            let step = schedule.backoff_initial * (1 << i);
            assert!(
                *gap >= step.min(schedule.backoff_max) / 2,
                "gap {i}: {gap:?}"
            );
        }
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(CredentialUnavailable::BackingOff { .. })))
        );
        // After a quiet spell longer than backoff_max, a rejection is refreshed at once.
        tokio::time::sleep(schedule.backoff_max + M).await;
        let before = fake.calls();
        let held = mc.current().await.unwrap();
        mc.refresh_after_unauthorized(&held).await.unwrap();
        assert_eq!(fake.calls(), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_storm_while_the_provider_fails_waits_for_the_failure_backoff() {
        // The first credential works for a while; then the provider fails every call and
        // the upstream rejects the credential held.
        let (fake, _gate) = Fake::new(|n| if n == 0 { Step::Ok } else { Step::Fail });
        let schedule = sched(H);
        let mc = start(&fake, schedule.clone());
        mc.current().await.unwrap();
        let storm = 60 * S;
        let results = rejection_storm(&mc, storm).await;
        // The first rejection calls the provider (it fails); after that only the scheduled
        // retries of the failure backoff do, whatever the rejections.
        let calls_after_first = fake.calls() - 1;
        let bound = earliest_unauthorized_refreshes(&schedule.normalized(), storm);
        assert!(
            (2..=bound).contains(&calls_after_first),
            "{calls_after_first} provider calls for {} rejections in {storm:?}; the backoff allows {bound}",
            results.len()
        );
        for (i, gap) in fake.gaps().iter().skip(1).enumerate() {
            let step = schedule.backoff_initial * (1 << i);
            assert!(
                *gap >= step.min(schedule.backoff_max) / 2,
                "gap {i}: {gap:?}"
            );
        }
        assert!(results.iter().all(Result::is_err));
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_with_an_outdated_credential_returns_the_current_one() {
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let mc = start(&fake, sched(H));
        mc.current().await.unwrap();
        let c = mc.refresh_after_unauthorized(&cred(99)).await.unwrap();
        assert_eq!(token(&c), secret(0));
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_refresh_failure_is_reported() {
        let (fake, _gate) = Fake::new(|n| if n == 1 { Step::Fail } else { Step::Ok });
        let mc = start(&fake, sched(H));
        let rejected = mc.current().await.unwrap();
        let err = mc.refresh_after_unauthorized(&rejected).await.unwrap_err();
        assert!(
            matches!(err, CredentialUnavailable::RefreshFailed { .. }),
            "{err:?}"
        );
        assert_eq!(err.reason(), Some("provider says no (call 1)"));
        // The old credential has no known expiry: still handed out; the retry replaces it.
        assert_eq!(token(&mc.current().await.unwrap()), secret(0));
        fake.wait_calls(3).await;
        wait_status(&mc, |s| s.refreshes == 2).await;
        assert_eq!(token(&mc.current().await.unwrap()), secret(2));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_refreshing_and_wakes_waiters() {
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let mc = start(&fake, sched(H));
        let c = mc.current().await.unwrap();
        mc.shutdown();
        tokio::time::sleep(10 * DAY).await;
        assert_eq!(fake.calls(), 1);
        assert!(matches!(
            mc.current().await,
            Err(CredentialUnavailable::Stopped { .. })
        ));
        assert!(matches!(
            mc.refresh_after_unauthorized(&c).await,
            Err(CredentialUnavailable::Stopped { .. })
        ));
        let st = mc.status();
        assert_eq!(
            (st.state, st.usable, st.next_refresh),
            (CredentialState::Stopped, false, None)
        );

        // Waiters on a first fetch that never ends are released by shutdown.
        let (fake, _gate) = Fake::new(|_| Step::Hang);
        let mc = start(&fake, sched(H));
        let waiter = tokio::spawn({
            let mc = mc.clone();
            async move { mc.current().await }
        });
        fake.wait_calls(1).await;
        settle().await;
        mc.shutdown();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(CredentialUnavailable::Stopped { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_stops_the_task() {
        let (fake, _gate) = Fake::new(|_| Step::Ok);
        let mc = start(&fake, sched(H));
        mc.current().await.unwrap();
        let clone = mc.clone();
        drop(mc);
        tokio::time::sleep(H + S).await;
        assert_eq!(fake.calls(), 2, "a clone keeps it running");
        drop(clone);
        tokio::time::sleep(10 * DAY).await;
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_provider_is_a_failure() {
        let (fake, _gate) = Fake::new(|n| if n == 0 { Step::Panic } else { Step::Ok });
        let mc = start(&fake, sched(H));
        let err = mc.current().await.unwrap_err();
        assert_eq!(err.reason(), Some("the provider panicked"));
        fake.wait_calls(2).await;
        wait_status(&mc, |s| s.refreshes == 1).await;
        assert_eq!(token(&mc.current().await.unwrap()), secret(1));
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_once_reports_result_error_and_timeout() {
        let (fake, _gate) = Fake::new(|n| match n {
            0 => Step::Ok,
            1 => Step::Fail,
            2 => Step::Panic,
            _ => Step::Hang,
        });
        let f = || Arc::clone(&fake) as Arc<dyn CredentialFetcher>;
        assert_eq!(token(&fetch_once(f(), 5 * S).await.unwrap()), secret(0));
        assert_eq!(
            fetch_once(f(), 5 * S).await.unwrap_err().to_string(),
            "provider says no (call 1)"
        );
        assert_eq!(
            fetch_once(f(), 5 * S).await.unwrap_err().to_string(),
            "the provider panicked"
        );
        let hung = tokio::spawn(fetch_once(f(), 5 * S));
        fake.wait_calls(4).await;
        tokio::time::advance(5 * S).await;
        let err = hung.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("did not answer within 5s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn failure_kinds_reach_the_status_and_the_log_line() {
        let capture = Capture::default();
        let _log = tracing::subscriber::set_default(capture.clone());
        let (fake, _gate) = Fake::new(|n| match n {
            0 => Step::Fail,
            1 => Step::Panic,
            _ => Step::Ok,
        });
        let mc = start(&fake, sched(H));
        let st = wait_status(&mc, |s| s.failures == 1 && !s.fetch_in_progress).await;
        assert_eq!(st.last_error_kind, Some(ProviderErrorKind::Failed));
        let st = wait_status(&mc, |s| s.failures == 2 && !s.fetch_in_progress).await;
        assert_eq!(st.last_error_kind, Some(ProviderErrorKind::Panicked));
        assert_eq!(
            st.failures_by_kind.into_iter().collect::<Vec<_>>(),
            [
                (ProviderErrorKind::Failed, 1),
                (ProviderErrorKind::Panicked, 1)
            ]
        );
        let st = wait_status(&mc, |s| s.refreshes == 1).await;
        assert_eq!((st.last_error, st.last_error_kind), (None, None));
        assert_eq!(st.failures_by_kind.values().sum::<u64>(), 2, "kept");
        assert_eq!(capture.count(tracing::Level::WARN, "kind=failed"), 1);
        assert_eq!(capture.count(tracing::Level::WARN, "kind=panicked"), 1);
        assert_eq!(
            FetchError::TimedOut(S).kind(),
            ProviderErrorKind::TimedOut,
            "the host's own failures have kinds too"
        );
        assert_eq!(FetchError::TooManyHung(4).kind(), ProviderErrorKind::Hung);
    }

    #[tokio::test(start_paused = true)]
    async fn logs_name_the_registry_and_never_show_a_secret() {
        let capture = Capture::default();
        let _log = tracing::subscriber::set_default(capture.clone());
        let (fake, _gate) = Fake::new(|n| match n {
            1 => Step::Fail,
            2 => Step::Expiring(-60),
            _ => Step::Expiring(3600),
        });
        let mc = start(&fake, sched(H));
        let c = mc.current().await.unwrap();
        mc.refresh_after_unauthorized(&c).await.unwrap_err();
        fake.wait_calls(4).await;
        let rejected = wait_status(&mc, |s| s.refreshes == 3).await;
        assert_eq!(rejected.failures, 1);
        let c = mc.current().await.unwrap();
        mc.refresh_after_unauthorized(&c).await.unwrap();
        assert!(!format!("{:?}", mc.status()).contains("s3cr3t"));
        assert!(!format!("{mc:?}").contains("s3cr3t"));
        let events = capture.events();
        assert!(events.len() >= 5, "{events:?}");
        for (level, text) in &events {
            assert!(!text.contains("s3cr3t"), "secret in log: {text}");
            if *level <= tracing::Level::INFO {
                assert!(
                    text.contains("registry=reg.example"),
                    "no registry field: {text}"
                );
            }
        }
        assert_eq!(
            capture.count(tracing::Level::WARN, "credential refresh failed"),
            1
        );
        assert_eq!(
            capture.count(tracing::Level::INFO, "credential refreshed"),
            4
        );
    }
}
