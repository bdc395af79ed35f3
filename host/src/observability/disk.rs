//! Counting what the cache holds for the `disk_bytes` / `disk_items` gauges: a full walk of
//! `blobs/` and `manifests/` at start and every [`REWALK_EVERY`]; between walks the store
//! keeps the gauges current on every commit and delete.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::{ContentKind, Metrics};

/// How often the cache is counted again (corrects any drift, e.g. files removed by hand).
pub const REWALK_EVERY: Duration = Duration::from_secs(300);

pub use crate::store::listing::Usage;

/// Counts verified blobs and manifests under the image path (temp files, media type
/// files and tag records are not content and are not counted).
pub fn count(root: &Path) -> io::Result<(Usage, Usage)> {
    crate::store::listing::usage(root)
}

/// Counts the cache now and every [`REWALK_EVERY`], setting the gauges; runs until the
/// process ends.
pub async fn track(root: PathBuf, metrics: &'static Metrics) {
    loop {
        let dir = root.clone();
        match tokio::task::spawn_blocking(move || count(&dir)).await {
            Ok(Ok((blobs, manifests))) => {
                metrics.disk_set(ContentKind::Blob, blobs.bytes, blobs.items);
                metrics.disk_set(ContentKind::Manifest, manifests.bytes, manifests.items);
                tracing::debug!(
                    blobs = blobs.items,
                    blob_bytes = blobs.bytes,
                    manifests = manifests.items,
                    "counted the cache"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not count the cache for metrics"),
            Err(e) => tracing::warn!(error = %e, "could not count the cache for metrics"),
        }
        tokio::time::sleep(REWALK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_content_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(root.join("manifests/sha256")).unwrap();
        std::fs::write(root.join("blobs/sha256").join("a".repeat(64)), b"12345").unwrap();
        std::fs::write(root.join("blobs/sha256").join("b".repeat(64)), b"123").unwrap();
        std::fs::write(root.join("blobs/sha256/junk.part"), b"xxxxxxxx").unwrap();
        let m = root.join("manifests/sha256").join("c".repeat(64));
        std::fs::write(&m, b"{}").unwrap();
        std::fs::write(m.with_extension("type"), b"application/json").unwrap();
        let (blobs, manifests) = count(root).unwrap();
        assert_eq!(blobs, Usage { bytes: 8, items: 2 });
        assert_eq!(manifests, Usage { bytes: 2, items: 1 });
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(count(empty.path()).unwrap(), Default::default());
    }
}
