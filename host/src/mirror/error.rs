//! What can go wrong answering from the mirror: the upstream's and the store's failures,
//! and the mirror's own (no download slot, a download every client left, content that is
//! not cached in air-gapped mode, an upstream that sent something unusable). The server
//! maps each to a status and an OCI error code; the message is what the client reads.

use std::time::Duration;

use crate::oci::reference::Digest;
use crate::store::StoreError;
use crate::upstream::{Refusal, UpstreamError};

/// A mirror failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    /// The upstream failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Reading the store failed.
    #[error("cache error: {0}")]
    Cache(StoreError),
    /// Writing a download to the store failed.
    #[error("cache write failed: {0}")]
    CacheWrite(StoreError),
    /// The store refused up front (disk full).
    #[error(transparent)]
    Store(StoreError),
    /// No download slot came free within `upstreamFetchWait`.
    #[error(
        "too many upstream downloads running (maxUpstreamFetches {max_fetches}, maxUpstreamFetchesPerRegistry {max_per_registry}); none came free within {}s, retry later",
        wait.as_secs_f32()
    )]
    NoSlot {
        /// `maxUpstreamFetches`.
        max_fetches: usize,
        /// `maxUpstreamFetchesPerRegistry`.
        max_per_registry: usize,
        /// `upstreamFetchWait`.
        wait: Duration,
    },
    /// Every client of a download left, so it stopped.
    #[error("download of {0} cancelled: every client left")]
    Cancelled(Digest),
    /// A blob that is not cached, in air-gapped mode.
    #[error("blob {0} is not cached (air-gapped: upstreams are never contacted)")]
    BlobNotCached(Digest),
    /// A manifest (`what`: `manifest sha256:...` or `registry/repo:tag`) that is not cached,
    /// in air-gapped mode.
    #[error("{0} is not cached (air-gapped: upstreams are never contacted)")]
    ManifestNotCached(String),
    /// A blob the upstream announced larger than `maxBlobSize`.
    #[error(
        "blob {digest} from upstream {upstream} is {size} bytes, more than maxBlobSize ({max_size} bytes); not downloaded"
    )]
    BlobTooLarge {
        /// The blob.
        digest: Digest,
        /// The upstream.
        upstream: String,
        /// Its announced size.
        size: u64,
        /// `maxBlobSize`.
        max_size: u64,
    },
    /// The upstream sent a manifest that is not one (`what`: `repo:reference`).
    #[error("upstream {upstream} sent an unusable manifest for {what}: {reason}; not stored")]
    InvalidManifest {
        /// The upstream.
        upstream: String,
        /// Which manifest.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The upstream sent something unusable: wrong digest, short, cut off, too long.
    #[error("{0}")]
    BadUpstream(String),
    /// Something that should not happen (a task that died).
    #[error("{0}")]
    Internal(String),
}

impl MirrorError {
    /// `Retry-After` seconds the client is told to wait, for want of a download slot.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            MirrorError::NoSlot { wait, .. } => Some(wait.as_secs().max(1)),
            _ => None,
        }
    }

    /// Whether the upstream (or the way to it) is in trouble, rather than saying no: a
    /// cached copy may then be served instead.
    pub fn is_upstream_trouble(&self) -> bool {
        match self {
            MirrorError::Upstream(u) => match u {
                UpstreamError::Refused { refusal, .. } => {
                    matches!(
                        refusal,
                        Refusal::TooManyRequests | Refusal::Unavailable | Refusal::Other
                    )
                }
                UpstreamError::TokenRefused { status, .. } => !matches!(status, 401 | 403),
                UpstreamError::Policy(_) | UpstreamError::RealmPolicy { .. } => false,
                UpstreamError::NoCredential { .. }
                | UpstreamError::Failed(_)
                | UpstreamError::TooLarge { .. }
                | UpstreamError::Internal(_) => true,
            },
            MirrorError::BlobNotCached(_) | MirrorError::ManifestNotCached(_) => false,
            MirrorError::Cache(_)
            | MirrorError::CacheWrite(_)
            | MirrorError::Store(_)
            | MirrorError::NoSlot { .. }
            | MirrorError::Cancelled(_)
            | MirrorError::BlobTooLarge { .. }
            | MirrorError::InvalidManifest { .. }
            | MirrorError::BadUpstream(_)
            | MirrorError::Internal(_) => true,
        }
    }
}

impl From<crate::upstream::policy::PolicyError> for MirrorError {
    fn from(e: crate::upstream::policy::PolicyError) -> Self {
        MirrorError::Upstream(UpstreamError::Policy(e))
    }
}
