//! What can go wrong talking to an upstream, with its meaning kept (the server maps it to a
//! status and an OCI error code; nothing here is HTTP-shaped for clients). Every message
//! names the upstream and is safe to show: never a credential.

use super::policy::PolicyError;

/// What an upstream request was about, for a "not found".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A blob.
    Blob,
    /// A manifest.
    Manifest,
    /// A repository (tag list, referrers).
    Repository,
}

/// How an upstream turned a request down (from its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 404: it has no such thing.
    NotFound(Subject),
    /// 401: credentials needed.
    Unauthorized,
    /// 403: access denied.
    Denied,
    /// 429: rate-limited.
    TooManyRequests,
    /// 503: unavailable.
    Unavailable,
    /// Any other failure status.
    Other,
}

/// An upstream failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a failure status.
    #[error("{message}")]
    Refused {
        /// What the status meant.
        refusal: Refusal,
        /// What was refused, by whom.
        message: String,
        /// The upstream's `Retry-After`, to pass on.
        retry_after: Option<String>,
    },
    /// The token endpoint answered with a failure `status`.
    #[error("{message}")]
    TokenRefused {
        /// The token endpoint's status.
        status: u16,
        /// Which endpoint, and what it answered.
        message: String,
    },
    /// The upstream policy refused a host or address (of the registry or a redirect).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The upstream policy refused the token realm.
    #[error("token realm of {registry}: {source}")]
    RealmPolicy {
        /// The registry.
        registry: String,
        /// Why.
        source: PolicyError,
    },
    /// The credential provider has no credential for the registry yet.
    #[error("no credential for upstream {registry} yet: {reason}")]
    NoCredential {
        /// The registry.
        registry: String,
        /// The provider's reason.
        reason: String,
    },
    /// Unreachable, too slow, or it sent something unusable.
    #[error("{0}")]
    Failed(String),
    /// A body past the size limit.
    #[error("upstream {upstream} sent a manifest larger than {limit_mib} MiB; refused")]
    TooLarge {
        /// The upstream.
        upstream: String,
        /// The limit.
        limit_mib: usize,
    },
    /// The request could not be sent at all (a request that cannot be cloned).
    #[error("{0}")]
    Internal(String),
}

/// An upstream's body that broke off while it was read (what the transport said).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

impl From<reqwest::Error> for BodyError {
    fn from(e: reqwest::Error) -> Self {
        BodyError(super::describe(&e))
    }
}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> Self {
        BodyError(e.to_string())
    }
}

impl From<&str> for BodyError {
    fn from(s: &str) -> Self {
        BodyError(s.to_owned())
    }
}

/// Why an upstream could not be set up at start (see [`super::SetupError`]).
#[derive(Debug, thiserror::Error)]
pub enum SetupProblem {
    /// The name does not make a URL.
    #[error("not a usable host: {0}")]
    NotAHost(#[from] url::ParseError),
    /// A TLS file (`tls.ca`, `tls.cert`, `tls.key`) could not be read.
    #[error("{key} {}: {source}", path.display())]
    Read {
        /// Which setting.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `tls.ca` is not PEM.
    #[error("tls.ca {}: not a PEM certificate bundle: {source}", path.display())]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: reqwest::Error,
    },
    /// `tls.ca` holds no certificate.
    #[error("tls.ca {}: no certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
    /// `tls.cert` and `tls.key` do not make an identity.
    #[error("tls.cert/tls.key: not a usable PEM certificate and key: {0}")]
    Identity(reqwest::Error),
    /// The HTTP client could not be built (what the transport said).
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    /// A registry whose credential comes from a provider that was not set up.
    #[error("provider credential was not set up")]
    NoProvider,
}
