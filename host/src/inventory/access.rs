//! Last-pulled times, kept in memory on the pull path and flushed to disk now and then:
//! into the tag record (`accessedAt`) for pulls by tag, and into a per-manifest access
//! record for pulls by digest ([`crate::store::access`]).
//!
//! The access record is what lets `list` name the repository of a manifest pulled by
//! digest (the manifest store itself is content-addressed and knows no names). Nothing is
//! created for content that is no longer on disk: a tag or manifest pruned meanwhile stays
//! gone.

use std::collections::HashMap;

pub use crate::mirror::pulls::AccessTracker;
use crate::oci::reference::{Digest, RepoName};
use crate::store::{Store, TagKey};

/// Writes every time `tracker` holds to disk; returns how many records were updated. A
/// write that fails is logged and dropped (access times are advisory).
pub async fn flush(tracker: &AccessTracker, store: &dyn Store) -> usize {
    // Held for the whole flush: a prune in another process on the same directory cannot
    // remove a record between our read and our write-back. (On a bucket, tag records are
    // written back only if unchanged, and access records only for manifests still there.)
    let _lock =
        match crate::store::lock::InventoryLock::acquire_async(store.local_root().to_owned()).await
        {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(error = %e, "no inventory lock for the access flush");
                None
            }
        };
    let pending = tracker.take();
    let mut written = 0;
    for ((registry, repo, tag), at) in pending.tags {
        let Ok(repo) = RepoName::parse(&repo) else {
            continue;
        };
        let key = TagKey {
            registry: &registry,
            repo: &repo,
            tag: &tag,
        };
        match store.set_tag_accessed(key, at).await {
            Ok(true) => written += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(registry, repo = %repo, tag, error = %e, "could not record the last pull time")
            }
        }
    }
    written + flush_digests(store, pending.digests).await
}

async fn flush_digests(
    store: &dyn Store,
    digests: HashMap<(String, String, String), u64>,
) -> usize {
    let mut by_hex: HashMap<String, (u64, Vec<String>)> = HashMap::new();
    for ((registry, repo, hex), at) in digests {
        let e = by_hex.entry(hex).or_default();
        e.0 = e.0.max(at);
        e.1.push(format!("{registry}/{repo}"));
    }
    let mut written = 0;
    for (hex, (at, repos)) in by_hex {
        let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else {
            continue;
        };
        match store.has_manifest(&digest).await {
            Ok(true) => {}
            // Pruned meanwhile (it stays gone), or the store cannot tell: try later.
            Ok(false) | Err(_) => continue,
        }
        let mut rec = match store.get_access(&digest).await {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "could not read the last pull time");
                continue;
            }
        };
        rec.accessed_at = rec.accessed_at.max(at);
        for r in repos {
            if !rec.repositories.contains(&r) {
                rec.repositories.push(r);
            }
        }
        rec.repositories.sort();
        match store.set_access(&digest, Some(&rec)).await {
            Ok(()) => written += 1,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "could not record the last pull time")
            }
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsStore;
    use bytes::Bytes;

    #[tokio::test]
    async fn flush_writes_tag_and_digest_records_only_for_cached_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let bytes = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
        let m = crate::store::Manifest {
            digest: Digest::of(&bytes),
            media_type: crate::oci::media::OCI_MANIFEST.into(),
            bytes,
        };
        store.put_manifest(&m).await.unwrap();
        let repo = RepoName::parse("org/app").unwrap();
        store
            .put_tag(
                crate::store::TagKey {
                    registry: "r.io",
                    repo: &repo,
                    tag: "v1",
                },
                &m.media_type,
                &m.digest,
            )
            .await
            .unwrap();
        let t = AccessTracker::default();
        t.touch_tag("r.io", &repo, "v1");
        t.touch_tag("r.io", &repo, "gone");
        t.touch_digest("r.io", &repo, &m.digest);
        t.touch_digest("r.io", &repo, &Digest::of(b"not cached"));
        assert_eq!(flush(&t, &store).await, 2);
        let rec = store
            .get_tag(crate::store::TagKey {
                registry: "r.io",
                repo: &repo,
                tag: "v1",
            })
            .await
            .unwrap()
            .unwrap();
        assert!(rec.accessed_at.is_some());
        assert_eq!(rec.entries.len(), 1);
        assert!(
            store
                .get_tag(crate::store::TagKey {
                    registry: "r.io",
                    repo: &repo,
                    tag: "gone"
                })
                .await
                .unwrap()
                .is_none()
        );
        let acc = store.get_access(&m.digest).await.unwrap().unwrap();
        assert_eq!(acc.repositories, vec!["r.io/org/app".to_owned()]);
        assert!(
            store
                .get_access(&Digest::of(b"not cached"))
                .await
                .unwrap()
                .is_none()
        );
        // A second flush with nothing pending writes nothing.
        assert_eq!(flush(&t, &store).await, 0);
    }
}
