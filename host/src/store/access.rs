//! Access records: when a manifest was last pulled by digest, and through which
//! repositories (written by the inventory's flush, read by its scan):
//!
//! ```text
//! manifests/sha256/<hex>.access   {"accessedAt": 1714557600,
//!                                  "repositories": ["quay.io/org/app"]}
//! ```
//!
//! The access record is what lets `list` name the repository of a manifest pulled by
//! digest (the manifest store itself is content-addressed and knows no names).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::write_atomically_blocking;
use super::layout;
use super::staging::temp_path_in;

/// A manifest's access record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRecord {
    /// Last pull by digest, Unix seconds.
    #[serde(default)]
    pub accessed_at: u64,
    /// `registry/repository` names it was pulled through by digest.
    #[serde(default)]
    pub repositories: Vec<String>,
}

/// Reads the access record of manifest `hex` under the image path `root`; missing or
/// unreadable is `None` (blocking).
pub fn read(root: &Path, hex: &str) -> Option<AccessRecord> {
    let bytes = std::fs::read(layout::manifest_access(root, hex)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the access record of manifest `hex` through a temp file and rename (blocking).
pub fn write(root: &Path, hex: &str, rec: &AccessRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec(rec).map_err(io::Error::other)?;
    write_atomically_blocking(
        &temp_path_in(root, "access"),
        &layout::manifest_access(root, hex),
        &bytes,
    )
}

/// Removes the access record of manifest `hex` (gone already is fine; blocking).
pub fn remove(root: &Path, hex: &str) -> io::Result<()> {
    super::listing::remove(&layout::manifest_access(root, hex))
}
