//! `maxSize`: which images to evict, least recently pulled first, until the cache fits.
//!
//! Bytes are counted as they will be once the prune is done: a blob shared with an image
//! that stays is not freed by evicting one of its users, and a blob no image references
//! is freed by the collection that follows anyway (even if the grace period keeps it for a
//! while), so fresh content never causes extra evictions.

use std::collections::HashMap;
use std::sync::Arc;

use super::prune::{self, PruneError, PrunePlan};
use super::scan::{self, Cache};
use crate::timefmt;

/// Indices of the images to evict for the cache to fit `max` bytes.
pub fn select(cache: &Cache, max: u64) -> Vec<usize> {
    let total = cache.total_bytes();
    if total <= max {
        return Vec::new();
    }
    let mut mref: HashMap<&String, usize> = HashMap::new();
    let mut bref: HashMap<&String, usize> = HashMap::new();
    for img in &cache.images {
        for m in &img.manifests {
            *mref.entry(m).or_default() += 1;
        }
        for b in &img.blobs {
            *bref.entry(b).or_default() += 1;
        }
    }
    let orphans: u64 = cache
        .blobs
        .iter()
        .filter(|(h, _)| !bref.contains_key(h))
        .map(|(_, b)| b.size)
        .sum();
    let mut projected = total.saturating_sub(orphans);
    let mut order: Vec<usize> = (0..cache.images.len()).collect();
    order.sort_by_key(|&i| (cache.images[i].last_used(), cache.images[i].created));
    let mut out = Vec::new();
    for i in order {
        if projected <= max {
            break;
        }
        out.push(i);
        let img = &cache.images[i];
        for m in &img.manifests {
            if let Some(n) = mref.get_mut(m) {
                *n -= 1;
                if *n == 0 {
                    projected =
                        projected.saturating_sub(cache.manifests.get(m).map_or(0, |e| e.size));
                }
            }
        }
        for b in &img.blobs {
            if let Some(n) = bref.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    projected = projected.saturating_sub(cache.blobs.get(b).map_or(0, |e| e.size));
                }
            }
        }
    }
    out
}

/// Evicts until the cache fits `max`; `None` when it already fits; [`PruneError::Busy`] when
/// another replica holds the inventory lease (the caller tries again soon: the holder may
/// have counted before the last additions).
pub async fn run_in_server(
    app: &Arc<crate::mirror::Mirror>,
    max: u64,
) -> Result<Option<PrunePlan>, PruneError> {
    // Most checks find the cache within bounds: counting settles that without the flush,
    // the lock and the full scan (which reads every manifest and record).
    if let Ok((blobs, manifests)) = app.store.usage().await
        && blobs.bytes + manifests.bytes <= max
    {
        return Ok(None);
    }
    let grace = app.settings.inventory.grace;
    prune::run_locked(app, "eviction", false, move |store| {
        Box::pin(async move {
            let cache = scan::scan(store).await?;
            let sel = select(&cache, max);
            if sel.is_empty() {
                return Ok(None);
            }
            let total = cache.total_bytes();
            let plan = prune::finish(store, &cache, &sel, grace, timefmt::now(), false).await;
            tracing::info!(
                total,
                max_size = max,
                evicted = ?plan.images.iter().map(|i| i.reference.as_str()).collect::<Vec<_>>(),
                "cache above maxSize: evicted the least recently pulled images"
            );
            Ok(Some(plan))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::scan::tests::{blob, image, tag};
    use super::*;
    use crate::oci::media;
    use crate::oci::reference::RepoName;
    use crate::store::{FsStore, Store, TagKey};

    #[tokio::test]
    async fn least_recently_pulled_goes_first_and_shared_bytes_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        let shared = blob(root, &[7u8; 1000]);
        let mut digests = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let own = blob(root, &vec![i as u8; 10_000]);
            let d = image(&store, &[&own, &shared]).await;
            tag(
                &store,
                &format!("org/{name}"),
                "v1",
                &d,
                media::OCI_MANIFEST,
            )
            .await;
            digests.push(d);
        }
        // Pulled: a at 300, b at 100, c at 200.
        for (name, at) in [("a", 300), ("b", 100), ("c", 200)] {
            let repo = RepoName::parse(&format!("org/{name}")).unwrap();
            let key = TagKey {
                registry: "r.io",
                repo: &repo,
                tag: "v1",
            };
            store.set_tag_accessed(key, at).await.unwrap();
        }
        let cache = scan::scan(&store).await.unwrap();
        let total = cache.total_bytes();
        assert!(select(&cache, total).is_empty());
        let refs = |sel: Vec<usize>| -> Vec<String> {
            sel.into_iter()
                .map(|i| cache.images[i].reference())
                .collect()
        };
        // Evicting b frees its own layer and manifest, not the shared blob.
        assert_eq!(refs(select(&cache, total - 5_000)), vec!["r.io/org/b:v1"]);
        assert_eq!(
            refs(select(&cache, total - 15_000)),
            vec!["r.io/org/b:v1", "r.io/org/c:v1"]
        );
        assert_eq!(select(&cache, 1).len(), 3);
    }
}
