//! The in-memory layer over the disk cache for the hottest path, manifests by tag: tag
//! records, reused while their file's modification time is unchanged (one `stat` instead of
//! a read, so that another process's `prune` or `invalidate` is seen at once), and manifests
//! by digest (immutable, bounded by bytes).
//!
//! Everything here is a copy of what is on disk; losing it loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::oci::reference::Digest;
use crate::store::Manifest;
use crate::store::tags::TagRecord;

/// Most manifest bytes kept in memory.
const MAX_MANIFEST_BYTES: usize = 32 * 1024 * 1024;
/// Most tag records kept in memory.
const MAX_TAGS: usize = 16 * 1024;

/// Hot copies of tag records and manifests.
#[derive(Debug, Default)]
pub struct HotCache {
    tags: Mutex<HashMap<String, (Arc<TagRecord>, SystemTime)>>,
    manifests: Mutex<Manifests>,
}

#[derive(Debug, Default)]
struct Manifests {
    by_digest: HashMap<Digest, Manifest>,
    bytes: usize,
}

impl HotCache {
    /// The record of the tag `key` (`registry/repo:tag`), if it was read when the record
    /// had this modification time (shared, not copied).
    pub fn tag(&self, key: &str, modified: SystemTime) -> Option<Arc<TagRecord>> {
        let tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.get(key)
            .filter(|(_, at)| *at == modified)
            .map(|(r, _)| r.clone())
    }

    /// Remembers a tag record read from disk when its file had this modification time.
    pub fn put_tag(&self, key: &str, modified: SystemTime, record: Arc<TagRecord>) {
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        if tags.len() >= MAX_TAGS {
            tags.clear();
        }
        tags.insert(key.to_owned(), (record, modified));
    }

    /// Forgets a tag record (rewritten or removed in this process).
    pub fn forget_tag(&self, key: &str) {
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.remove(key);
    }

    /// A manifest by digest.
    pub fn manifest(&self, digest: &Digest) -> Option<Manifest> {
        let m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        m.by_digest.get(digest).cloned()
    }

    /// Remembers a manifest (bytes are shared, not copied).
    pub fn put_manifest(&self, manifest: &Manifest) {
        let size = manifest.bytes.len();
        if size > MAX_MANIFEST_BYTES / 8 {
            return;
        }
        let mut m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if m.bytes + size > MAX_MANIFEST_BYTES {
            // Crude but bounded: start over. Manifests are re-read from disk cheaply.
            m.by_digest.clear();
            m.bytes = 0;
        }
        if m.by_digest
            .insert(manifest.digest.clone(), manifest.clone())
            .is_none()
        {
            m.bytes += size;
        }
    }

    /// Forgets a manifest (pruned).
    pub fn forget_manifest(&self, digest: &Digest) {
        let mut m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = m.by_digest.remove(digest) {
            m.bytes -= old.bytes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn manifests_are_bounded() {
        let hot = HotCache::default();
        let body = Bytes::from(vec![b'x'; MAX_MANIFEST_BYTES / 10]);
        for i in 0..30u8 {
            let mut b = body.to_vec();
            b[0] = i;
            let bytes = Bytes::from(b);
            hot.put_manifest(&Manifest {
                digest: Digest::of(&bytes),
                media_type: "t".into(),
                bytes,
            });
        }
        let m = hot.manifests.lock().unwrap();
        assert!(m.bytes <= MAX_MANIFEST_BYTES);
        assert_eq!(m.bytes, m.by_digest.len() * body.len());
    }

    #[test]
    fn tags_follow_the_file_time() {
        let hot = HotCache::default();
        let (p, t0) = ("r.io/app:v1", SystemTime::UNIX_EPOCH);
        hot.put_tag(p, t0, TagRecord::default().into());
        assert!(hot.tag(p, t0).is_some());
        assert!(
            hot.tag(p, t0 + std::time::Duration::from_nanos(1))
                .is_none()
        );
        hot.forget_tag(p);
        assert!(hot.tag(p, t0).is_none());
    }
}
