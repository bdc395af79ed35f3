//! Image archives: `ociregistry load --archive` reads `docker save` tarballs and OCI image
//! layouts (a directory or a tar, gzip-compressed or not) into the cache, and
//! `ociregistry export` writes cached images out as one OCI image layout tar. It owns the
//! archive formats and the order in which imported content becomes visible; it does not
//! own the cache layout ([`crate::store`]), which images exist ([`crate::inventory`]) or
//! anything printed (the command line does that).
//!
//! - [`read`] streams an archive's entries into the store's staging, verifying every
//!   `blobs/sha256/<hex>` entry against its name while it is copied; nothing is visible yet.
//! - [`import`] makes sense of what was staged ([`layout`]: OCI `index.json`; [`docker`]:
//!   `docker save`'s `manifest.json`), names the images ([`names`], `--as`), and only when
//!   the whole archive is valid commits blobs, then manifests, then tags. Any error drops
//!   every staged file: nothing half-imported is ever visible.
//! - [`export`] writes the selected images as an OCI layout tar, streaming each blob out of
//!   the store and hashing it on the way; a blob that does not match its digest aborts the
//!   export and the partial file is removed.
//! - [`report`] draws the progress bars (or log lines when stderr is not a terminal).

pub mod docker;
pub mod error;
pub mod export;
pub mod import;
pub mod layout;
pub mod names;
pub mod read;
pub mod report;
#[cfg(test)]
mod tests;

pub use error::ArchiveError;
