//! What can go wrong in the store.

use std::sync::Arc;

use crate::oci::reference::Digest;

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk holding the cache has too little room for what is about to be written.
    #[error(
        "cache disk full: {free_mib} MiB free, {needed_mib} MiB needed; cached content is still served"
    )]
    DiskFull {
        /// MiB free.
        free_mib: u64,
        /// MiB needed (with the reserve).
        needed_mib: u64,
    },
    /// Manifest bytes that do not hash to the digest they were to be stored under.
    #[error("manifest bytes do not hash to {0}")]
    Unverified(Digest),
    /// The disk failed.
    #[error(transparent)]
    Io(Arc<std::io::Error>),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(Arc::new(e))
    }
}
