//! Manifests: by digest from the store, else one verified upstream fetch; by tag from the
//! tag record, else (or for `:latest` under `alwaysPullLatest`) the upstream, falling back to
//! the cached manifest when the upstream fails. Concurrent requests share one fetch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::mirror::{ManifestFlight, Mirror, MirrorError, disk_error};
use crate::oci::reference::{Digest, RepoName};
use crate::store::StoreError;
use crate::upstream::calls::{FetchedManifest, TagHead};
use crate::upstream::{Upstream, UpstreamError};

use crate::metrics::ContentKind;
use crate::oci::media::{self, Accept};
use crate::oci::reference::Reference;
use crate::store::{Manifest, TagKey};

/// Manifest `digest` for a client of `registry/repo`, its pull recorded for the inventory.
pub async fn by_digest(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    digest: Digest,
) -> Result<Manifest, MirrorError> {
    let m = manifest_by_digest(app, registry, repo, digest).await?;
    app.inventory.access.touch_digest(registry, repo, &m.digest);
    Ok(m)
}

/// The manifest `tag` points to for a client of `registry/repo` that accepts `accept` (only
/// a tag's answer depends on it), its pull recorded for the inventory.
pub async fn by_tag(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    accept: &Accept,
) -> Result<Manifest, MirrorError> {
    let m = manifest_by_tag(app, registry, repo, tag, accept).await?;
    app.inventory.access.touch_tag(registry, repo, tag);
    Ok(m)
}

/// The manifest `reference` names, from the cache or fetched into it through the same
/// single-flight fetch that client requests use (a tag with its freshness rules, a digest
/// verified). For callers inside the process, such as the preloader.
pub async fn ensure_manifest(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    reference: &Reference,
    accept: &Accept,
) -> Result<Manifest, MirrorError> {
    match reference {
        Reference::Digest(digest) => manifest_by_digest(app, registry, repo, digest.clone()).await,
        Reference::Tag(tag) => manifest_by_tag(app, registry, repo, tag, accept).await,
    }
}

async fn manifest_by_digest(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    digest: Digest,
) -> Result<Manifest, MirrorError> {
    let counters = crate::metrics::global().registry(registry);
    if let Some(m) = stored_manifest(app, &digest).await.map_err(disk_error)? {
        counters.cache(ContentKind::Manifest, true);
        return Ok(m);
    }
    counters.cache(ContentKind::Manifest, false);
    if app.settings.air_gapped {
        return Err(MirrorError::ManifestNotCached(format!("manifest {digest}")));
    }
    let key = format!("{registry}/{repo}@{digest}");
    let upstream = app.upstreams.resolve(registry)?;
    let app2 = app.clone();
    let repo2 = repo.clone();
    single_flight(&app.manifest_flights, key, async move {
        fetch_manifest(
            &app2,
            &upstream,
            &repo2,
            &Reference::Digest(digest),
            &media::ALL_MANIFESTS.join(", "),
        )
        .await
        .map(|(m, _)| m)
    })
    .await
}

async fn manifest_by_tag(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    accept: &Accept,
) -> Result<Manifest, MirrorError> {
    let cached = cached_tag(app, registry, repo, tag, accept).await;
    let ttl = if app.settings.always_pull_latest && tag == "latest" {
        Some(Duration::ZERO)
    } else {
        app.settings.tag_ttl(registry)
    };
    // A hit is answered from the cache without asking the upstream.
    let counters = crate::metrics::global().registry(registry);
    let hit = match &cached {
        Some((_, fetched_at)) => {
            app.settings.air_gapped || ttl.is_none_or(|ttl| age(*fetched_at) < ttl)
        }
        None => false,
    };
    counters.cache(ContentKind::Manifest, hit);
    let cached = match cached {
        Some((m, _)) if hit => return Ok(m),
        other => other,
    };
    match &cached {
        Some(_) => {}
        None if app.settings.air_gapped => {
            return Err(MirrorError::ManifestNotCached(format!(
                "{registry}/{repo}:{tag}"
            )));
        }
        None => {}
    }
    let accept_header = accept.upstream_header();
    // The key carries the canonical set of acceptable types, never the client's raw header.
    let key = format!("{registry}/{repo}:{tag}|{}", accept.canonical_key());
    let upstream = app.upstreams.resolve(registry)?;
    // Under the rate-limit floor the last pulls are kept for what is not cached: a cached
    // tag is served as it is.
    if let Some((m, _)) = &cached
        && let Some((remaining, floor)) = upstream.budget_under_floor()
    {
        upstream.metrics.revalidations_deferred.inc();
        tracing::debug!(registry = %upstream.name, repo = %repo, tag, remaining, floor, "rate-limit budget under rateLimit.revalidateFloor; cached tag served without revalidation");
        return Ok(m.clone());
    }
    let app2 = app.clone();
    let repo = repo.clone();
    let tag = tag.to_owned();
    single_flight(&app.manifest_flights, key, async move {
        let app = app2;
        let cached = cached.map(|(m, _)| m);
        if let Some(m) = &cached {
            match revalidate(&app, &upstream, &repo, &tag, &accept_header, m).await {
                Revalidation::Unchanged(endpoint) => {
                    record_tag(&app, &upstream.name, &repo, &tag, m, endpoint.as_deref()).await;
                    return Ok(m.clone());
                }
                Revalidation::Changed => {}
                Revalidation::Gone(e) => return Err(e.into()),
                Revalidation::Failed(reason) => {
                    app.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(registry = %upstream.name, repo = %repo, tag, %reason, "tag revalidation failed; serving the cached manifest");
                    return Ok(m.clone());
                }
            }
        }
        match fetch_manifest(&app, &upstream, &repo, &Reference::Tag(tag.clone()), &accept_header).await {
            Ok((m, endpoint)) => {
                record_tag(&app, &upstream.name, &repo, &tag, &m, endpoint.as_deref()).await;
                Ok(m)
            }
            // The upstream answered HEAD but then failed the GET: still serve what we have.
            Err(e) if cached.is_some() && e.is_upstream_trouble() => {
                app.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(registry = %upstream.name, repo = %repo, tag, error = %e, "tag refresh failed; serving the cached manifest");
                cached.ok_or(e)
            }
            Err(e) => Err(e),
        }
    })
    .await
}

async fn record_tag(
    app: &Mirror,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    m: &Manifest,
    endpoint: Option<&str>,
) {
    app.hot.forget_tag(&tag_key(registry, repo, tag));
    let key = TagKey {
        registry,
        repo,
        tag,
    };
    if let Err(e) = app
        .store
        .put_tag_from(key, &m.media_type, &m.digest, endpoint)
        .await
    {
        tracing::warn!(registry, repo = %repo, tag, error = %e, "could not record tag");
    }
}

/// A cached manifest, from memory or disk.
async fn stored_manifest(app: &Mirror, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
    if let Some(m) = app.hot.manifest(digest) {
        if app.store.has_manifest(digest).await? {
            return Ok(Some(m));
        }
        // Pruned, by this process or another one (the `prune` verb).
        app.hot.forget_manifest(digest);
    }
    let m = app.store.get_manifest(digest).await?;
    if let Some(m) = &m {
        app.hot.put_manifest(m);
    }
    Ok(m)
}

/// What a revalidation of a cached tag found out.
enum Revalidation {
    /// The upstream's tag still points at the cached digest (said by this endpoint).
    Unchanged(Option<String>),
    /// It moved (or the upstream did not say): fetch it.
    Changed,
    /// The upstream says the tag no longer exists.
    Gone(UpstreamError),
    /// No answer worth trusting (down, slow, rate-limited, refusing): keep the cached one.
    Failed(String),
}

/// A cheap upstream `HEAD` on the tag, bounded by `revalidateTimeout`.
async fn revalidate(
    app: &Mirror,
    upstream: &Upstream,
    repo: &RepoName,
    tag: &str,
    accept: &str,
    cached: &Manifest,
) -> Revalidation {
    app.stats.revalidations.fetch_add(1, Ordering::Relaxed);
    let timeout = app.settings.revalidate_timeout;
    let head = upstream.head_tag(repo, tag, accept);
    let answer = match tokio::time::timeout(timeout, head).await {
        Err(_) => {
            return Revalidation::Failed(format!("no answer within {}s", timeout.as_secs_f32()));
        }
        Ok(Err(e)) => return Revalidation::Failed(e.to_string()),
        Ok(Ok(answer)) => answer,
    };
    match answer {
        TagHead::Points(Some(d), endpoint) if d == cached.digest => {
            Revalidation::Unchanged(endpoint)
        }
        TagHead::Points(..) => Revalidation::Changed,
        TagHead::Gone(e) => Revalidation::Gone(e),
        TagHead::Refused(status) => Revalidation::Failed(format!("upstream answered {status}")),
    }
}

fn age(fetched_at: u64) -> Duration {
    Duration::from_secs(crate::timefmt::now().saturating_sub(fetched_at))
}

/// The cached manifest a tag points to, for a media type the client accepts, and when the
/// tag was last confirmed upstream.
async fn cached_tag(
    app: &Mirror,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    accept: &Accept,
) -> Option<(Manifest, u64)> {
    // One `stat` (cheap, so done in place) tells whether the record in memory is current.
    let stored = TagKey {
        registry,
        repo,
        tag,
    };
    let modified = app.store.tag_modified(stored).await.ok()??;
    let key = tag_key(registry, repo, tag);
    let record = match app.hot.tag(&key, modified) {
        Some(r) => r,
        None => {
            let r = std::sync::Arc::new(app.store.get_tag(stored).await.ok()??);
            app.hot.put_tag(&key, modified, r.clone());
            r
        }
    };
    for entry in record
        .entries
        .iter()
        .filter(|e| accept.allows(&e.media_type))
    {
        if let Some(d) = entry.digest()
            && let Ok(Some(m)) = stored_manifest(app, &d).await
        {
            return Some((m, entry.fetched_at));
        }
    }
    None
}

/// How the in-memory copies know a tag.
fn tag_key(registry: &str, repo: &RepoName, tag: &str) -> String {
    format!("{registry}/{repo}:{tag}")
}

/// Runs `fetch` once per key however many requests ask at the same time.
async fn single_flight<F>(map: &Flights, key: String, fetch: F) -> Result<Manifest, MirrorError>
where
    F: std::future::Future<Output = Result<Manifest, MirrorError>> + Send + 'static,
{
    let guard = {
        let mut flights = map.lock().unwrap_or_else(|p| p.into_inner());
        let cell = flights.entry(key.clone()).or_default().clone();
        crate::metrics::global()
            .inflight_manifest_fetches
            .set(i64::try_from(flights.len()).unwrap_or(i64::MAX));
        FlightGuard {
            map,
            key,
            cell: Some(cell),
        }
    };
    let Some(cell) = guard.cell.as_ref() else {
        return Err(MirrorError::Internal("manifest fetch: no flight".into()));
    };
    // Run the fetch on its own task: a client that goes away does not cancel it for others.
    cell.get_or_init(|| async move {
        tokio::spawn(fetch)
            .await
            .unwrap_or_else(|e| Err(MirrorError::Internal(format!("manifest fetch failed: {e}"))))
    })
    .await
    .clone()
    // `guard` drops here, or earlier when the client goes away.
}

/// The in-flight manifest map: one shared fetch per key.
type Flights = std::sync::Mutex<std::collections::HashMap<String, ManifestFlight>>;

/// One waiter of a shared manifest fetch. When the last waiter leaves (answered, or the
/// client went away), the entry leaves the map, so the map only holds fetches someone waits
/// for and never keeps an old answer.
struct FlightGuard<'a> {
    map: &'a Flights,
    key: String,
    cell: Option<ManifestFlight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cell) = self.cell.take() else { return };
        // Our clone and the map's are the last two: nobody else waits. Clones are made and
        // dropped only under the lock, so the count is exact.
        if flights
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell) && Arc::strong_count(&cell) == 2)
        {
            flights.remove(&self.key);
        }
        drop(cell);
        crate::metrics::global()
            .inflight_manifest_fetches
            .set(i64::try_from(flights.len()).unwrap_or(i64::MAX));
    }
}

async fn fetch_manifest(
    app: &Mirror,
    upstream: &Upstream,
    repo: &RepoName,
    reference: &Reference,
    accept: &str,
) -> Result<(Manifest, Option<String>), MirrorError> {
    let FetchedManifest {
        bytes,
        content_type,
        announced,
        endpoint,
    } = upstream
        .get_manifest(repo, reference, accept, app.settings.max_manifest_size)
        .await?;
    let digest = Digest::of(&bytes);
    let expected = match reference {
        Reference::Digest(d) => Some(d),
        Reference::Tag(_) => announced.as_ref(),
    };
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(MirrorError::BadUpstream(format!(
            "upstream {} sent a manifest with digest {digest} for {repo}@{expected}; not stored",
            upstream.name
        )));
    }
    let media_type = match media::decide(&bytes, content_type.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            return Err(MirrorError::InvalidManifest {
                upstream: upstream.name.clone(),
                what: format!("{repo}:{reference}"),
                reason: e.to_string(),
            });
        }
    };
    // The first verified copy's type stands: same bytes, same type, whoever asks.
    let media_type = match stored_manifest(app, &digest).await {
        Ok(Some(stored)) => stored.media_type,
        _ => media_type,
    };
    let m = Manifest {
        digest,
        media_type,
        bytes,
    };
    app.store.put_manifest(&m).await.map_err(disk_error)?;
    tracing::info!(registry = %upstream.name, repo = %repo, reference = %reference, digest = %m.digest, endpoint = endpoint.as_deref().unwrap_or("-"), "cached manifest");
    Ok((m, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn manifest() -> Manifest {
        let bytes = bytes::Bytes::from_static(b"{}");
        Manifest {
            digest: Digest::of(&bytes),
            media_type: media::OCI_MANIFEST.to_owned(),
            bytes,
        }
    }

    #[tokio::test]
    async fn waiters_share_one_fetch_and_the_entry_goes_with_the_last() {
        let map = Arc::new(Flights::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let (map, fetches, mut rx) = (map.clone(), fetches.clone(), rx.clone());
                tokio::spawn(async move {
                    single_flight(&map, "k".into(), async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let _ = rx.wait_for(|go| *go).await;
                        Ok(manifest())
                    })
                    .await
                })
            })
            .collect();
        while map.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        tx.send_replace(true);
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap().digest, manifest().digest);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(
            map.lock().unwrap().is_empty(),
            "no entry left after the answer"
        );
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_no_entry() {
        let map = Arc::new(Flights::default());
        let mut waiters = Vec::new();
        for i in 0..50 {
            let map = map.clone();
            waiters.push(tokio::spawn(async move {
                single_flight(&map, format!("k{}", i % 5), std::future::pending())
                    .await
                    .map(|m| m.digest)
            }));
        }
        while map.lock().unwrap().len() < 5 {
            tokio::task::yield_now().await;
        }
        for w in &waiters {
            w.abort();
        }
        for w in waiters {
            assert!(w.await.unwrap_err().is_cancelled());
        }
        assert!(
            map.lock().unwrap().is_empty(),
            "entries left after every client left"
        );
    }
}
