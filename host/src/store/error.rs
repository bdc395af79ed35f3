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
    /// The bucket of an S3 store cannot be used (found when the store opens): `reason`
    /// says what failed, never with a secret.
    #[error("bucket {bucket} at {endpoint}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Its endpoint (or AWS region).
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// A request to the object store failed (or a conditional write kept losing).
    #[error("object store: {0}")]
    Remote(Arc<object_store::Error>),
    /// The disk failed.
    #[error(transparent)]
    Io(Arc<std::io::Error>),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(Arc::new(e))
    }
}

impl StoreError {
    /// Whether the backend beyond the local disk (the bucket) failed, rather than the disk.
    pub fn is_remote(&self) -> bool {
        matches!(self, StoreError::Remote(_) | StoreError::Bucket { .. })
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        StoreError::Remote(Arc::new(e))
    }
}
