//! The bound of this replica's local copy of blobs (`storage.localCache.maxSize`): after a
//! copy is added, the least recently used copies are removed until the copies fit (to 90% of
//! the bound, so that not every new copy starts a trim). A copy's modification time is its
//! last use: set when it is written and when it is read. Only copies go: every blob is in
//! the bucket, and one removed is read from there (and copied again) the next time. It does
//! not bound staging (downloads in progress) or the manifests and tag records kept locally,
//! which are small.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::store::layout;

/// Most blob copies looked at by one trim (bounds its time on a huge directory).
const MAX_SCANNED: usize = 1_000_000;

/// The bound, and whether a trim runs.
#[derive(Debug)]
pub(super) struct LocalBound {
    max: u64,
    trimming: AtomicBool,
}

impl LocalBound {
    pub(super) fn new(max: u64) -> Arc<Self> {
        Arc::new(LocalBound {
            max,
            trimming: AtomicBool::new(false),
        })
    }

    /// A copy was added under `root`: trims in the background unless a trim runs already.
    pub(super) fn added(self: &Arc<Self>, root: &Path) {
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (bound, root) = (self.clone(), root.to_owned());
        tokio::task::spawn_blocking(move || {
            match trim(&root, bound.max) {
                Ok((0, _)) => {}
                Ok((removed, freed)) => tracing::info!(
                    removed,
                    freed_bytes = freed,
                    max_bytes = bound.max,
                    "local copy trimmed to localCache.maxSize"
                ),
                Err(e) => tracing::warn!(error = %e, "could not trim the local copy"),
            }
            bound.trimming.store(false, Ordering::Release);
        });
    }
}

/// Marks the copy at `path` as just used (in the background; a failure only makes it an
/// earlier candidate for removal).
pub(super) fn touch(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
    });
}

/// Removes the least recently used blob copies under `root` until they add up to 90% of
/// `max` at most; returns how many went and how many bytes (blocking).
pub(super) fn trim(root: &Path, max: u64) -> io::Result<(usize, u64)> {
    let mut copies = Vec::new();
    let mut total = 0u64;
    for entry in std::fs::read_dir(layout::blobs_dir(root))?.take(MAX_SCANNED) {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        total += meta.len();
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        copies.push((used, meta.len(), entry.path()));
    }
    if total <= max {
        return Ok((0, 0));
    }
    let target = max / 10 * 9;
    copies.sort();
    let (mut removed, mut freed) = (0usize, 0u64);
    for (_, len, path) in copies {
        if total <= target {
            break;
        }
        // Readers that opened it keep their open file; the next one reads the bucket.
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            freed += len;
            removed += 1;
        }
    }
    Ok((removed, freed))
}
