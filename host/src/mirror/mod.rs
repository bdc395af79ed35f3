//! The pull-through mirror: manifests and blobs from the store, else from the upstream.

pub mod blobs;
pub mod downloads;
pub mod hot;
pub mod manifests;
