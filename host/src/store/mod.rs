//! The on-disk cache: verified content by digest ([`blob_store`]), tag records
//! ([`tags`]) and the single-flight blob downloads that fill it while clients read along
//! ([`inflight`]).
//!
//! Layout under the image path:
//!
//! ```text
//! blobs/sha256/<hex>                         verified blob bytes
//! manifests/sha256/<hex>                     manifest bytes exactly as the upstream sent them
//! manifests/sha256/<hex>.type                their media type
//! manifests/sha256/<hex>.access              last pull by digest (see crate::inventory::access)
//! tags/<registry>/<repository>/@tags/<tag>.json   tag -> digest records
//! tmp/<pid>.<random>/                        one process's temp files (downloads in progress),
//!                                            under its flock; removed at start once unlocked
//! ```
//!
//! A file appears under `blobs/` or `manifests/` only after its sha256 matched, through a
//! temp file, fsync and rename; nothing there is ever rewritten.

pub mod blob_store;
pub mod tags;

pub use blob_store::{BlobStore, Manifest, StoredBlob};
