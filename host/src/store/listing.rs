//! The filesystem store as the inventory sees it ([`super::FsStore`]'s listing methods):
//! every blob and manifest file with its size and time, what they add up to ([`usage`],
//! for the disk gauges and `maxSize`), and their removal by a prune. Blocking; reading
//! only, fine while a server runs on the same directory. Tag records are listed by
//! [`super::tags`]. The listed types are every backend's.

use std::io;
use std::path::Path;

use super::layout;
use crate::metrics::ContentKind;

/// A stored blob.
#[derive(Debug, Clone)]
pub struct ListedBlob {
    /// Its sha256, hex.
    pub hex: String,
    /// Bytes on disk.
    pub size: u64,
    /// When it was stored (Unix seconds).
    pub stored: u64,
}

/// A stored manifest.
#[derive(Debug, Clone)]
pub struct ListedManifest {
    /// Its sha256, hex.
    pub hex: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its media type (recorded, or sniffed from the bytes).
    pub media_type: String,
    /// When it was stored (Unix seconds).
    pub created: u64,
    /// Its access record, if it was pulled by digest.
    pub access: Option<super::AccessRecord>,
}

fn mtime(meta: &std::fs::Metadata) -> u64 {
    meta.modified().map_or(0, crate::timefmt::unix_secs)
}

pub(super) fn is_hex_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(Result::ok).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", dir.display()),
        )),
    }
}

/// Every blob stored under the image path `root`.
pub(super) fn blobs(root: &Path) -> io::Result<Vec<ListedBlob>> {
    let mut out = Vec::new();
    for e in read_dir_or_empty(&layout::blobs_dir(root))? {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_hex_name(&name) {
            continue;
        }
        // Gone meanwhile (pruned, or a race with another process): skip.
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_file() {
            out.push(ListedBlob {
                hex: name,
                size: meta.len(),
                stored: mtime(&meta),
            });
        }
    }
    Ok(out)
}

/// Every manifest stored under the image path `root`, with its bytes.
pub(super) fn manifests(root: &Path) -> io::Result<Vec<ListedManifest>> {
    let mut out = Vec::new();
    for e in read_dir_or_empty(&layout::manifests_dir(root))? {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_hex_name(&name) {
            continue;
        }
        let path = e.path();
        let (Ok(meta), Ok(bytes)) = (e.metadata(), std::fs::read(&path)) else {
            continue;
        };
        let media_type = std::fs::read_to_string(layout::manifest_type(root, &name))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| crate::oci::media::sniff(&bytes));
        out.push(ListedManifest {
            access: super::access::read(root, &name),
            hex: name,
            bytes,
            media_type,
            created: mtime(&meta),
        });
    }
    Ok(out)
}

/// Bytes and number of files of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Total size.
    pub bytes: u64,
    /// Files.
    pub items: u64,
}

/// Counts verified blobs and manifests under the image path (temp files, media type
/// files and tag records are not content and are not counted).
pub fn usage(root: &Path) -> io::Result<(Usage, Usage)> {
    Ok((
        count_dir(&layout::blobs_dir(root))?,
        count_dir(&layout::manifests_dir(root))?,
    ))
}

fn count_dir(dir: &Path) -> io::Result<Usage> {
    let mut u = Usage::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(u),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Content files are named by their 64-digit hex digest; `<hex>.type` etc. are not.
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        match entry.metadata() {
            Ok(m) if m.is_file() => {
                u.bytes += m.len();
                u.items += 1;
            }
            // Removed between listing and stat: not there.
            _ => {}
        }
    }
    Ok(u)
}

/// Removes `path` (gone already is fine).
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes manifest `hex` with its media type and access record (the manifest first:
/// whoever still sees it also finds its media type); the first failure, after trying all.
pub(super) fn remove_manifest(root: &Path, hex: &str) -> io::Result<()> {
    let results = [
        remove_counted(&layout::manifest(root, hex), Some(ContentKind::Manifest)),
        remove_counted(&layout::manifest_type(root, hex), None),
        remove_counted(&layout::manifest_access(root, hex), None),
    ];
    results.into_iter().collect()
}

/// Removes blob `hex`.
pub(super) fn remove_blob(root: &Path, hex: &str) -> io::Result<()> {
    remove_counted(&layout::blob(root, hex), Some(ContentKind::Blob))
}

/// Removes `p` (gone already is fine), taking its bytes off the `kind` disk gauge.
fn remove_counted(p: &Path, kind: Option<ContentKind>) -> io::Result<()> {
    let size = kind.and(std::fs::metadata(p).ok()).map(|m| m.len());
    remove(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    if let (Some(kind), Some(size)) = (kind, size) {
        crate::metrics::global().disk_removed(kind, size);
    }
    Ok(())
}
