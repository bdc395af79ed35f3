//! The storage seam: the [`Store`] trait the mirror works against ([`backend`]: verified
//! blobs read by range, blobs staged while they download, manifests, tag records) and its
//! filesystem implementation ([`fs`]) and its S3-compatible one ([`s3`]), with the local staging ([`staging`]) and file I/O
//! ([`files`]) it rests on. Every path of the cache layout is built in [`layout`]; nothing
//! outside the store sees one. It knows nothing of HTTP, upstreams or the mirror.
//!
//! The inventory (scan, prune, evict, access times) works through the trait as well: every
//! backend lists its content, removes it and hands out the inventory lock (the
//! filesystem's: [`listing`], [`access`], [`tags`]'s listing and [`lock`]).

pub mod access;
pub mod backend;
#[cfg(test)]
pub(crate) mod contract;
pub mod error;
mod files;
pub mod fs;
pub mod layout;
pub mod listing;
pub mod lock;
pub mod s3;
pub mod staging;
pub mod tags;

pub use access::AccessRecord;
pub use backend::{Claim, INVENTORY_LEASE_TTL, Lease, Manifest, Store, StoredBlob, TagKey};
pub use error::StoreError;
pub(crate) use files::read_chunk;
pub use fs::{FsStore, probe_write};
pub use layout::is_cache;
pub use staging::Staged;
