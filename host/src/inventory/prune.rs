//! Pruning: from selected images to a plan (the tag records, manifests and blobs that go,
//! and the bytes freed), and carrying it out.
//!
//! An image's manifests go when no remaining image needs them; then every blob that no
//! remaining manifest references is collected, except blobs inside the grace period (see
//! [`crate::inventory`]): stored within it, or referenced by a removed manifest pulled
//! within it. Those are reported under `keptBlobs` and go in a later run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::criteria::{Criteria, CriteriaError, CriteriaSpec};
use super::scan::{self, Cache, Image, ImageType, Origin};
use crate::oci::reference::{Digest, RepoName};
use crate::store::{Claim, INVENTORY_LEASE_TTL, Store, StoreError, TagKey};
use crate::timefmt;

/// One image in a plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedImage {
    /// Its reference.
    pub reference: String,
    /// Image or index.
    #[serde(rename = "type")]
    pub kind: ImageType,
    /// Its size.
    pub size: u64,
}

/// What a prune removes (or, dry-run, would remove).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunePlan {
    /// Nothing was removed.
    pub dry_run: bool,
    /// The selected images.
    pub images: Vec<PlannedImage>,
    /// Tag references whose records go.
    pub tags: Vec<String>,
    /// Manifest digests that go.
    pub manifests: Vec<String>,
    /// Blob digests that go.
    pub blobs: Vec<String>,
    /// Unreferenced blobs kept for now by the grace period.
    pub kept_blobs: Vec<String>,
    /// Bytes freed: the manifests and blobs above.
    pub bytes: u64,
    /// What could not be removed (a real run only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(skip)]
    origins: Vec<Origin>,
}

/// Images matching `criteria`, least recently used first, at most `count`.
pub fn select(cache: &Cache, criteria: &Criteria, count: Option<usize>) -> Vec<usize> {
    let mut sel: Vec<usize> = (0..cache.images.len())
        .filter(|&i| criteria.matches(&cache.images[i]))
        .collect();
    sel.sort_by_key(|&i| (cache.images[i].last_used(), cache.images[i].created));
    if let Some(n) = count {
        sel.truncate(n);
    }
    sel
}

/// Plans the removal of the images at `selected`.
pub fn plan(cache: &Cache, selected: &[usize], grace: Duration, now: u64) -> PrunePlan {
    let chosen: BTreeSet<usize> = selected.iter().copied().collect();
    let mut live_manifests: BTreeSet<&String> = BTreeSet::new();
    for (i, img) in cache.images.iter().enumerate() {
        if !chosen.contains(&i) {
            live_manifests.extend(img.manifests.iter());
        }
    }
    // A removed manifest's last pull, for the grace period.
    let mut gone: BTreeMap<&String, u64> = BTreeMap::new();
    let mut out = PrunePlan::default();
    for &i in &chosen {
        let img: &Image = &cache.images[i];
        out.images.push(PlannedImage {
            reference: img.reference(),
            kind: img.kind,
            size: img.size,
        });
        if img.tag.is_some() {
            out.tags.push(img.reference());
        }
        out.origins.push(img.origin.clone());
        for m in &img.manifests {
            if !live_manifests.contains(m) {
                let t = gone.entry(m).or_insert(0);
                *t = (*t).max(img.last_pulled.unwrap_or(0));
            }
        }
    }
    for (hex, t) in gone.iter_mut() {
        if let Some(acc) = cache.manifests.get(*hex).and_then(|m| m.access.as_ref()) {
            *t = (*t).max(acc.accessed_at);
        }
    }
    let live_blobs: BTreeSet<&String> = cache
        .manifests
        .iter()
        .filter(|(h, _)| !gone.contains_key(h))
        .flat_map(|(_, m)| m.blobs.iter())
        .collect();
    // The latest pull of a removed manifest referencing each blob.
    let mut blob_pulled: HashMap<&String, u64> = HashMap::new();
    for (hex, t) in &gone {
        if let Some(m) = cache.manifests.get(*hex) {
            for b in &m.blobs {
                let e = blob_pulled.entry(b).or_insert(0);
                *e = (*e).max(*t);
            }
        }
    }
    let since = now.saturating_sub(grace.as_secs());
    let in_grace = |t: u64| !grace.is_zero() && t >= since;
    for hex in gone.keys() {
        out.manifests.push(format!("sha256:{hex}"));
        out.bytes += cache.manifests.get(*hex).map(|m| m.size).unwrap_or(0);
    }
    for (hex, b) in &cache.blobs {
        if live_blobs.contains(hex) {
            continue;
        }
        let pulled = blob_pulled.get(hex).copied().unwrap_or(0);
        if in_grace(b.stored) || in_grace(pulled) {
            out.kept_blobs.push(format!("sha256:{hex}"));
        } else {
            out.blobs.push(format!("sha256:{hex}"));
            out.bytes += b.size;
        }
    }
    out
}

/// Carries a plan out: tag records and access-record names first (so no new pull finds the
/// image), then manifests, then blobs. Failures are collected in `plan.errors`.
pub async fn execute(store: &dyn Store, plan: &mut PrunePlan) {
    plan.dry_run = false;
    let mut errors = Vec::new();
    for origin in &plan.origins {
        if let Err(e) = forget(store, origin).await {
            errors.push(e);
        }
    }
    for d in &plan.manifests {
        let removed = match parse(d) {
            Ok(digest) => store
                .remove_manifest(&digest)
                .await
                .map_err(|e| format!("{d}: {e}")),
            Err(e) => Err(e),
        };
        errors.extend(removed.err());
    }
    for d in &plan.blobs {
        let removed = match parse(d) {
            Ok(digest) => store
                .remove_blob(&digest)
                .await
                .map_err(|e| format!("{d}: {e}")),
            Err(e) => Err(e),
        };
        errors.extend(removed.err());
    }
    crate::metrics::global()
        .evictions
        .inc_by(plan.images.len() as u64);
    plan.errors = errors;
}

/// Removes what keeps an image: its tag record, or its repository's name in a manifest's
/// access record. An error, one line, when that failed.
async fn forget(store: &dyn Store, origin: &Origin) -> Result<(), String> {
    match origin {
        Origin::Tag {
            registry,
            repository,
            tag,
        } => {
            let reference = format!("{registry}/{repository}:{tag}");
            let repo = RepoName::parse(repository).map_err(|e| format!("{reference}: {e}"))?;
            let key = TagKey {
                registry,
                repo: &repo,
                tag,
            };
            store
                .remove_tag(key)
                .await
                .map(|_| ())
                .map_err(|e| format!("{reference}: {e}"))
        }
        Origin::Digest { hex, repository } => {
            let what = format!("access record of sha256:{hex}");
            let digest = parse(&format!("sha256:{hex}")).map_err(|e| format!("{what}: {e}"))?;
            let Some(mut rec) = store
                .get_access(&digest)
                .await
                .map_err(|e| format!("{what}: {e}"))?
            else {
                return Ok(());
            };
            rec.repositories.retain(|r| r != repository);
            let keep = (!rec.repositories.is_empty()).then_some(&rec);
            store
                .set_access(&digest, keep)
                .await
                .map_err(|e| format!("{what}: {e}"))
        }
        Origin::Untracked(_) => Ok(()),
    }
}

/// A digest of the plan (`sha256:...`), or an error line.
fn parse(digest: &str) -> Result<Digest, String> {
    Digest::parse(digest).map_err(|e| format!("{digest}: {e}"))
}

/// Why a prune or an eviction did not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// No criterion given.
    #[error(
        "give at least one of pattern, accessedBefore, createdBefore (use the pattern `.` to select every image)"
    )]
    NoCriteria,
    /// A criterion is malformed.
    #[error(transparent)]
    Criteria(#[from] CriteriaError),
    /// The cache could not be read.
    #[error("cannot read the cache: {0}")]
    Scan(#[from] StoreError),
    /// The inventory lock (a file lock, or the lease in the bucket) could not be taken.
    #[error("{what}: cannot take the inventory lock: {source}")]
    Lock {
        /// `prune` or `eviction`.
        what: &'static str,
        /// Why.
        source: StoreError,
    },
    /// Another replica holds the inventory lease (and kept it while this one waited).
    #[error("{what}: another replica is pruning ({holder}); try again later")]
    Busy {
        /// `prune` or `eviction`.
        what: &'static str,
        /// The holder's name.
        holder: String,
    },
    /// A prune that planned nothing (cannot happen: a prune always plans).
    #[error("prune planned nothing")]
    NothingPlanned,
}

/// Scans, selects, plans and (unless `dry_run`) prunes the cache in `store`. The caller
/// holds the inventory lock ([`Store::lock_inventory`]) unless `dry_run`.
pub async fn run(
    store: &dyn Store,
    spec: &CriteriaSpec,
    count: Option<usize>,
    grace: Duration,
    dry_run: bool,
) -> Result<PrunePlan, PruneError> {
    if spec.is_empty() {
        return Err(PruneError::NoCriteria);
    }
    let now = timefmt::now();
    let criteria = spec.compile(now).map_err(PruneError::Criteria)?;
    let cache = scan::scan(store).await?;
    let sel = select(&cache, &criteria, count);
    Ok(finish(store, &cache, &sel, grace, now, dry_run).await)
}

/// Plans the removal of `sel` and carries it out unless `dry_run`.
pub async fn finish(
    store: &dyn Store,
    cache: &Cache,
    sel: &[usize],
    grace: Duration,
    now: u64,
    dry_run: bool,
) -> PrunePlan {
    let mut p = plan(cache, sel, grace, now);
    if dry_run {
        p.dry_run = true;
    } else {
        execute(store, &mut p).await;
    }
    p
}

/// A prune inside the server (see [`run_locked`]); [`PruneError::Busy`] when another
/// replica holds the inventory lease (after waiting for it a while, with `wait`).
pub async fn run_in_server(
    app: &Arc<crate::mirror::Mirror>,
    spec: CriteriaSpec,
    count: Option<usize>,
    grace: Duration,
    dry_run: bool,
    wait: bool,
) -> Result<PrunePlan, PruneError> {
    let plan = run_locked(app, "prune", wait, |store| {
        Box::pin(async move { run(store, &spec, count, grace, dry_run).await.map(Some) })
    })
    .await?
    .ok_or(PruneError::NothingPlanned)?;
    log_plan(&plan, "prune");
    Ok(plan)
}

/// What [`run_locked`] runs: a prune or an eviction on the store.
pub type Work<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<PrunePlan>, PruneError>> + Send + 'a>>;

/// Takes the inventory lock of `store` for `what`: the filesystem's file lock, or the
/// bucket's lease (with `wait`, waiting for it a while); [`PruneError::Busy`] when another
/// replica holds it.
pub async fn lock(
    store: &dyn Store,
    what: &'static str,
    owner: &str,
    wait: bool,
) -> Result<Box<dyn crate::store::Lease>, PruneError> {
    match store.lock_inventory(owner, wait).await {
        Ok(Claim::Owner(lease)) => Ok(lease),
        Ok(Claim::Taken { owner: holder }) => Err(PruneError::Busy { what, holder }),
        Err(source) => Err(PruneError::Lock { what, source }),
    }
}

/// Runs `work` under the inventory lock, renewing it every third of its lifetime, and
/// releases it after.
pub async fn with_lock<T>(
    store: &dyn Store,
    what: &'static str,
    owner: &str,
    wait: bool,
    work: impl Future<Output = Result<T, PruneError>>,
) -> Result<T, PruneError> {
    let lease = lock(store, what, owner, wait).await?;
    tokio::pin!(work);
    let mut renew = tokio::time::interval(INVENTORY_LEASE_TTL / 3);
    renew.tick().await;
    let result = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = renew.tick() => {
                if let Err(e) = lease.renew().await {
                    tracing::warn!(what, error = %e, "could not renew the inventory lease");
                }
            }
        }
    };
    if let Err(e) = lease.release().await {
        tracing::warn!(what, error = %e, "could not release the inventory lease (it expires)");
    }
    result
}

/// Runs `work` (a prune or an eviction) inside the server: one at a time in this process,
/// after the access times were flushed so that they count, and under the inventory lock
/// (see [`with_lock`]; [`PruneError::Busy`] when another replica holds it). Manifests it
/// removed leave the in-memory cache as well, so that they are not served from there
/// afterwards.
pub async fn run_locked(
    app: &Arc<crate::mirror::Mirror>,
    what: &'static str,
    wait: bool,
    work: impl for<'s> FnOnce(&'s dyn Store) -> Work<'s>,
) -> Result<Option<PrunePlan>, PruneError> {
    let _one = app.inventory.prune_lock.lock().await;
    crate::inventory::access::flush(&app.inventory.access, &*app.store).await;
    let owner = owner_name(app);
    let store = &*app.store;
    let plan = with_lock(store, what, &owner, wait, work(store)).await?;
    if let Some(p) = plan.as_ref().filter(|p| !p.dry_run) {
        for d in p.manifests.iter().filter_map(|m| Digest::parse(m).ok()) {
            app.hot.forget_manifest(&d);
        }
    }
    Ok(plan)
}

/// How this process is named as the holder of the inventory lease: its advertised peer
/// URL when it has one, and its process id.
fn owner_name(app: &crate::mirror::Mirror) -> String {
    let host = app
        .settings
        .cluster
        .as_ref()
        .map(|c| c.advertise.clone())
        .unwrap_or_else(|| "ociregistry serve".to_owned());
    format!("{host} (pid {})", std::process::id())
}

/// One log line per prune.
pub fn log_plan(plan: &PrunePlan, what: &str) {
    if plan.images.is_empty() && plan.blobs.is_empty() {
        tracing::debug!(what, "nothing to prune");
        return;
    }
    tracing::info!(
        what,
        dry_run = plan.dry_run,
        images = plan.images.len(),
        manifests = plan.manifests.len(),
        blobs = plan.blobs.len(),
        kept_blobs = plan.kept_blobs.len(),
        bytes = plan.bytes,
        errors = plan.errors.len(),
        "{}",
        if plan.dry_run {
            "would prune"
        } else {
            "pruned"
        }
    );
    for e in &plan.errors {
        tracing::warn!(what, error = %e, "could not remove");
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan::tests::{blob, image, tag};
    use super::*;
    use crate::oci::media;
    use crate::store::FsStore;

    #[tokio::test]
    async fn shared_blobs_stay_while_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        let shared = blob(root, b"shared");
        let (ca, cb) = (blob(root, b"ca"), blob(root, b"cb"));
        let a = image(&store, &[&ca, &shared]).await;
        let b = image(&store, &[&cb, &shared]).await;
        tag(&store, "org/a", "v1", &a, media::OCI_MANIFEST).await;
        tag(&store, "org/b", "v1", &b, media::OCI_MANIFEST).await;
        let orphan = blob(root, b"orphan");

        let spec = CriteriaSpec {
            pattern: Some("/org/a:".into()),
            ..CriteriaSpec::default()
        };
        let dry = run(&store, &spec, None, Duration::ZERO, true)
            .await
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!(dry.tags, vec!["r.io/org/a:v1".to_owned()]);
        assert_eq!(dry.manifests, vec![a.to_string()]);
        let mut want = vec![format!("sha256:{ca}"), format!("sha256:{orphan}")];
        want.sort();
        assert_eq!(dry.blobs, want);
        assert!(
            root.join("blobs/sha256").join(&ca).exists(),
            "dry run removed"
        );

        let real = run(&store, &spec, None, Duration::ZERO, false)
            .await
            .unwrap();
        assert!(!real.dry_run && real.errors.is_empty(), "{real:?}");
        assert!(!root.join("blobs/sha256").join(&ca).exists());
        assert!(root.join("blobs/sha256").join(&shared).exists());
        assert!(!root.join("manifests/sha256").join(a.hex()).exists());
        assert!(
            !root
                .join("manifests/sha256")
                .join(format!("{}.type", a.hex()))
                .exists()
        );

        let all = CriteriaSpec {
            pattern: Some(".".into()),
            ..CriteriaSpec::default()
        };
        let last = run(&store, &all, None, Duration::ZERO, false)
            .await
            .unwrap();
        assert!(last.blobs.contains(&format!("sha256:{shared}")));
        let cache = scan::scan(&store).await.unwrap();
        assert!(cache.images.is_empty() && cache.blobs.is_empty() && cache.manifests.is_empty());
    }

    #[tokio::test]
    async fn grace_keeps_fresh_blobs_and_empty_criteria_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        let c = blob(root, b"c");
        let a = image(&store, &[&c]).await;
        tag(&store, "org/a", "v1", &a, media::OCI_MANIFEST).await;
        let spec = CriteriaSpec {
            pattern: Some(".".into()),
            ..CriteriaSpec::default()
        };
        let p = run(&store, &spec, None, Duration::from_secs(600), false)
            .await
            .unwrap();
        assert_eq!(p.manifests.len(), 1);
        assert!(p.blobs.is_empty());
        assert_eq!(p.kept_blobs, vec![format!("sha256:{c}")]);
        assert!(root.join("blobs/sha256").join(&c).exists());
        assert!(
            run(&store, &CriteriaSpec::default(), None, Duration::ZERO, true)
                .await
                .is_err()
        );
    }
}
