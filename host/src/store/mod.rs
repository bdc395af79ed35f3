//! The storage seam: verified content by digest ([`blob_store`]: blobs read by range,
//! blobs staged while they download, manifests), tag records ([`tags`]), access records
//! ([`access`]) and the listing and removal the inventory works with ([`listing`]). It is
//! the local-disk implementation; the serving code (`crate::mirror`) calls these functions
//! and never sees a path, so another backend can stand behind the same calls. It knows
//! nothing of HTTP, upstreams or the mirror.
//!
//! Every path of the layout under the image path is built in [`layout`]; nothing outside
//! the store sees one.
//!
//! A file appears under `blobs/` or `manifests/` only after its sha256 matched, through a
//! temp file, fsync and rename; nothing there is ever rewritten.

pub mod access;
pub mod blob_store;
pub mod error;
pub mod layout;
pub mod listing;
pub mod tags;

pub use access::AccessRecord;
pub use blob_store::{BlobStore, Manifest, Staged, StoredBlob, probe_write};
pub use error::StoreError;
pub use layout::is_cache;
