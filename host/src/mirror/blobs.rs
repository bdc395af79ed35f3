//! Blobs: from the store, else join or start the single download of the digest (and read
//! along while it runs); [`ensure_blob_watching`] for callers inside the process;
//! [`peer_blob`] for the other replicas. With `cluster`, a download asks the replica holding
//! the blob's fetch lease before the upstream ([`fetch_blob`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::{ContentKind, PeerFetch};
use crate::mirror::downloads::{self, Progress, Resume, UpstreamBody};
use crate::mirror::{Mirror, MirrorError, disk_error};
use crate::oci::reference::{Digest, RepoName};
use crate::store::{Claim, StoredBlob};
use crate::upstream::calls::BlobBody;
use crate::upstream::peer::PeerClient;
use crate::upstream::{Upstream, UpstreamError};

/// Where a requested blob's bytes come from.
#[derive(Debug)]
pub enum BlobAnswer {
    /// Stored: read by range.
    Stored(StoredBlob),
    /// Being downloaded: read along while it runs.
    Downloading(Following),
    /// Stored where the client can fetch it itself (`storage.redirect`): a presigned URL.
    Elsewhere {
        /// Where to GET it.
        url: String,
    },
    /// Not cached, and only its headers were asked for: what the upstream said of its size.
    AtUpstream {
        /// The upstream's `Content-Length`, when it sent one.
        size: Option<u64>,
    },
}

/// A client's place in a running download.
pub struct Following {
    total: Option<u64>,
    download: Arc<downloads::Download>,
    interest: downloads::Interest,
    idle: Duration,
    fallback: Option<downloads::Fallback>,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following")
            .field("total", &self.total)
            .field("digest", &self.download.digest)
            .finish_non_exhaustive()
    }
}

impl Following {
    /// The blob's size, when the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Streams bytes `[start, end)` (to the end when `None`) while the download runs; the
    /// stream ends with an error if the download fails.
    pub fn read(
        self,
        start: u64,
        end: Option<u64>,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
        downloads::follow(
            self.download,
            Some(self.interest),
            start,
            end,
            self.idle,
            self.fallback,
        )
    }
}

/// How long a presigned URL given to a client (`storage.redirect`) stays valid.
const REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Blob `digest` of `registry/repo`: stored, or joined (or started) as a download; with
/// `head`, an uncached blob is only asked about at the upstream, never downloaded.
pub async fn blob(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    digest: &Digest,
    head: bool,
) -> Result<BlobAnswer, MirrorError> {
    let counters = crate::metrics::global().registry(registry);
    if app.settings.storage.redirect && !head {
        match app.store.blob_url(digest, REDIRECT_TTL).await {
            Ok(Some(url)) => {
                counters.cache(ContentKind::Blob, true);
                return Ok(BlobAnswer::Elsewhere { url });
            }
            Ok(None) => {}
            // The bytes may still be here: served as without `redirect`.
            Err(e) => {
                tracing::warn!(%digest, error = %e, "no presigned URL for the blob; serving it")
            }
        }
    }
    if let Some(stored) = app.store.open_blob(digest).await.map_err(disk_error)? {
        counters.cache(ContentKind::Blob, true);
        return Ok(BlobAnswer::Stored(stored));
    }
    counters.cache(ContentKind::Blob, false);
    refuse_if_air_gapped(app, digest)?;
    let upstream = app.upstreams.resolve(registry)?;
    if head {
        let size = upstream.blob_size(repo, digest).await?;
        return Ok(BlobAnswer::AtUpstream { size });
    }
    let idle = upstream.timeout();
    let mut joined = join_download(app, &upstream, repo, digest, None);
    // Until the headers are sent, a download started for another registry that fails or
    // stalls is given up for one from this client's own upstream (at most once).
    let mut may_switch = true;
    let state = loop {
        let foreign = joined.download.registry != upstream.name;
        match first_state(&joined.download, foreign.then_some(idle)).await {
            Ok(s) => break s,
            Err(e) if foreign && may_switch => {
                tracing::info!(registry = %upstream.name, from = %joined.download.registry, %digest, error = %e,
                    "download for another registry failed or stalled; fetching from the client's own upstream");
                may_switch = false;
                joined = join_download(app, &upstream, repo, digest, Some(&joined.download));
            }
            Err(e) => return Err(e),
        }
    };
    let total = match state {
        Progress::Failed(e) => return Err(e),
        Progress::Receiving { total, .. } => total,
        Progress::Verified { total } | Progress::Complete { total } => Some(total),
        Progress::Starting => None,
    };
    let downloads::Joined {
        download, interest, ..
    } = joined;
    let fallback = (download.registry != upstream.name).then(|| {
        let (app, upstream, repo, digest) =
            (app.clone(), upstream.clone(), repo.clone(), digest.clone());
        Box::new(move |abandon: &Arc<downloads::Download>| {
            let j = join_download(&app, &upstream, &repo, &digest, Some(abandon));
            Some((j.download, j.interest))
        }) as downloads::Fallback
    });
    Ok(BlobAnswer::Downloading(Following {
        total,
        download,
        interest,
        idle,
        fallback,
    }))
}

/// Blob `digest` for a peer replica: stored, or the download of it running here (read
/// along while it runs); `None` when neither (a peer never starts a download here).
pub async fn peer_blob(
    app: &Arc<Mirror>,
    digest: &Digest,
) -> Result<Option<BlobAnswer>, MirrorError> {
    if let Some(stored) = app.store.open_blob(digest).await.map_err(disk_error)? {
        return Ok(Some(BlobAnswer::Stored(stored)));
    }
    let Some(joined) = app.downloads.join_running(digest) else {
        // It may have been stored between the two looks.
        return Ok(app
            .store
            .open_blob(digest)
            .await
            .map_err(disk_error)?
            .map(BlobAnswer::Stored));
    };
    let idle = app.settings.pull_timeout;
    let total = match first_state(&joined.download, Some(idle)).await? {
        Progress::Receiving { total, .. } => total,
        Progress::Verified { total } | Progress::Complete { total } => Some(total),
        Progress::Starting | Progress::Failed(_) => None,
    };
    let downloads::Joined {
        download, interest, ..
    } = joined;
    Ok(Some(BlobAnswer::Downloading(Following {
        total,
        download,
        interest,
        idle,
        fallback: None,
    })))
}

/// The download's first state past `Starting`; a failure as an error, and so is no answer
/// within `stall` (when given).
async fn first_state(
    download: &downloads::Download,
    stall: Option<std::time::Duration>,
) -> Result<Progress, MirrorError> {
    let mut progress = download.subscribe();
    let wait = progress.wait_for(|p| !matches!(p, Progress::Starting));
    let state = match stall {
        Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| {
            MirrorError::BadUpstream(format!(
                "download of {} stalled: no answer within {}s",
                download.digest,
                t.as_secs()
            ))
        })?,
        None => wait.await,
    }
    .map(|p| p.clone())
    .map_err(|_| MirrorError::Internal("download ended unexpectedly".into()))?;
    match state {
        Progress::Failed(e) => Err(e),
        s => Ok(s),
    }
}

/// Makes sure blob `digest` is in the cache: returns its size at once when it is stored,
/// else starts or joins the single download of it (the one client requests share) and
/// waits for it to be verified and stored, calling `on_progress` with the bytes received so
/// far whenever the download moves on. For callers inside the process (the preloader).
/// A download started for another registry that fails is followed by one from this
/// registry's own upstream.
pub async fn ensure_blob_watching(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    digest: &Digest,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, MirrorError> {
    if let Some(size) = app.store.stat_blob(digest).await.map_err(disk_error)? {
        return Ok(size);
    }
    refuse_if_air_gapped(app, digest)?;
    let upstream = app.upstreams.resolve(registry)?;
    let mut joined = join_download(app, &upstream, repo, digest, None);
    let mut may_switch = true;
    let mut slot_waits = 0u32;
    loop {
        match watch_download(&joined.download, on_progress).await {
            Err(e) if may_switch && joined.download.registry != upstream.name => {
                tracing::info!(registry = %upstream.name, from = %joined.download.registry, %digest, error = %e,
                    "download for another registry failed; fetching from this registry's own upstream");
                may_switch = false;
                joined = join_download(app, &upstream, repo, digest, Some(&joined.download));
            }
            // No download slot came free in time: a batch job waits on, up to a point.
            Err(MirrorError::NoSlot { .. }) if slot_waits < PRELOAD_SLOT_WAITS => {
                slot_waits += 1;
                tracing::debug!(registry = %upstream.name, %digest, "no download slot yet; preloader waits again");
                joined = join_download(app, &upstream, repo, digest, Some(&joined.download));
            }
            other => return other,
        }
    }
}

/// How many times the preloader waits `upstreamFetchWait` again for a download slot.
const PRELOAD_SLOT_WAITS: u32 = 60;

async fn watch_download(
    download: &downloads::Download,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, MirrorError> {
    let mut progress = download.subscribe();
    loop {
        let state = progress.borrow_and_update().clone();
        match state {
            Progress::Complete { total } => return Ok(total),
            Progress::Failed(e) => return Err(e),
            Progress::Receiving { written, .. } => on_progress(written),
            // Verified but not yet stored: wait for the store.
            Progress::Verified { total } => on_progress(total),
            Progress::Starting => {}
        }
        if progress.changed().await.is_err() {
            // The sender is gone: look at its last word.
            return match &*progress.borrow() {
                Progress::Complete { total } => Ok(*total),
                Progress::Failed(e) => Err(e.clone()),
                _ => Err(MirrorError::Internal("download ended unexpectedly".into())),
            };
        }
    }
}

/// An uncached blob in air-gapped mode: never fetched.
fn refuse_if_air_gapped(app: &Mirror, digest: &Digest) -> Result<(), MirrorError> {
    if app.settings.air_gapped {
        return Err(MirrorError::BlobNotCached(digest.clone()));
    }
    Ok(())
}

/// Joins the running download of `digest`, or registers one and starts fetching it
/// (`abandon`: a download the caller gives up on, never joined again). Downloads of
/// configured registries (and `defaultNs`) run on when their clients leave; others stop.
fn join_download(
    app: &Arc<Mirror>,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    abandon: Option<&Arc<downloads::Download>>,
) -> downloads::Joined {
    let keep = upstream.is_configured() || upstream.name == app.settings.default_ns;
    let (a, u, r) = (app.clone(), upstream.clone(), repo.clone());
    app.downloads.get_or_start(
        &app.store,
        digest,
        &upstream.name,
        keep,
        abandon,
        move |download| fetch_blob(a, u, r, download),
    )
}

/// Asks for blob `download.digest`: its answer, once it is one worth downloading (a
/// success, not larger than `maxBlobSize`, with room for it on the disk). With `cluster`,
/// the replicas sharing the bucket fetch it upstream once: the one whose claim of the
/// fetch lease wins asks the upstream (and holds the lease until the blob is stored); the
/// others stream it from that one, verified as any upstream body, resuming from the
/// upstream if it breaks off. A lease that cannot be claimed, or an owner that cannot be
/// reached, means a fetch from the upstream (a duplicate fetch beats a failed client).
async fn fetch_blob(
    app: Arc<Mirror>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    download: Arc<downloads::Download>,
) -> Result<UpstreamBody, MirrorError> {
    let digest = download.digest.clone();
    let mut lease = None;
    if let (Some(cluster), Some(peers)) = (&app.settings.cluster, &app.peers) {
        match app
            .store
            .claim_fetch(&digest, &cluster.advertise, cluster.lease_ttl)
            .await
        {
            Ok(Claim::Owner(l)) => {
                let held = downloads::LeaseHold::start(l, cluster.lease_ttl, digest.clone());
                // Another replica may have stored it and released the lease since this
                // download looked: read it from the store then, not from the upstream.
                if let Some(stored) = app.store.open_blob(&digest).await.map_err(disk_error)? {
                    held.release().await;
                    return Ok(stored_body(&app, &upstream, &repo, stored));
                }
                lease = Some(held);
            }
            Ok(Claim::Taken { owner }) => {
                match from_peer(&app, peers, &upstream, &repo, &digest, &owner).await {
                    Ok(body) => return Ok(body),
                    Err(e) => {
                        crate::metrics::global().peer_fetch(PeerFetch::PeerFailed);
                        tracing::warn!(registry = %upstream.name, %digest, %owner, error = %e,
                            "the replica fetching this blob could not be asked; fetching it from the upstream");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(registry = %upstream.name, %digest, error = %e,
                    "could not claim the fetch lease; fetching from the upstream");
            }
        }
    }
    let mut body = from_upstream(&app, &upstream, &repo, &digest).await?;
    body.lease = lease;
    Ok(body)
}

/// The body of blob `digest` from the replica `owner` that fetches it upstream, with the
/// upstream as the resumer.
async fn from_peer(
    app: &Mirror,
    peers: &PeerClient,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    owner: &str,
) -> Result<UpstreamBody, crate::upstream::peer::PeerError> {
    let BlobBody { total, body } = peers.get_blob(owner, digest).await?;
    tracing::info!(registry = %upstream.name, %repo, %digest, %owner,
        "another replica is fetching this blob; streaming it from there");
    crate::metrics::global().peer_fetch(PeerFetch::FromPeer);
    Ok(UpstreamBody {
        total,
        body,
        resume: Some(resumer(
            upstream.clone(),
            repo.clone(),
            digest.clone(),
            total,
        )),
        idle_timeout: upstream.timeout(),
        upstream: upstream.name.clone(),
        repo: repo.to_string(),
        max_size: app.downloads.slots.limits().max_blob_size,
        lease: None,
        other_source: Some(format!("replica {owner}")),
    })
}

/// A blob found stored after all, read as the download's body (verified again on the way).
fn stored_body(
    app: &Mirror,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    stored: StoredBlob,
) -> UpstreamBody {
    UpstreamBody::from_stored(
        stored,
        upstream.timeout(),
        upstream.name.clone(),
        repo.to_string(),
        app.downloads.slots.limits().max_blob_size,
    )
}

/// Asks the upstream for blob `digest`.
async fn from_upstream(
    app: &Mirror,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<UpstreamBody, MirrorError> {
    let digest = digest.clone();
    let BlobBody { total, body } = match upstream.get_blob(repo, &digest).await {
        Ok(b) => b,
        Err(e @ UpstreamError::Refused { .. }) => {
            tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e, "blob fetch refused");
            return Err(e.into());
        }
        Err(e) => {
            tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e, "blob fetch failed");
            return Err(e.into());
        }
    };
    let max_size = app.downloads.slots.limits().max_blob_size;
    if let Some(total) = total
        && total > max_size
    {
        tracing::warn!(registry = %upstream.name, repo = %repo, %digest, size = total, max_blob_size = max_size,
            "blob larger than maxBlobSize; not downloaded");
        return Err(MirrorError::BlobTooLarge {
            digest,
            upstream: upstream.name.clone(),
            size: total,
            max_size,
        });
    }
    // Unknown length: its free space is checked again as the bytes arrive.
    if let Err(e) = app
        .store
        .ensure_space(total.unwrap_or(downloads::SPACE_CHECK_EVERY))
    {
        tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e, "not caching: disk full");
        return Err(MirrorError::Store(e));
    }
    let resume = resumer(upstream.clone(), repo.clone(), digest, total);
    Ok(UpstreamBody {
        total,
        body,
        resume: Some(resume),
        idle_timeout: upstream.timeout(),
        upstream: upstream.name.clone(),
        repo: repo.to_string(),
        max_size,
        lease: None,
        other_source: None,
    })
}

/// Asks the upstream for the rest of a blob from an offset; only a `206` whose
/// `Content-Range` starts exactly there (and agrees on the size) is used.
fn resumer(upstream: Arc<Upstream>, repo: RepoName, digest: Digest, total: Option<u64>) -> Resume {
    Box::new(move |from| {
        let (upstream, repo, digest) = (upstream.clone(), repo.clone(), digest.clone());
        Box::pin(async move { upstream.resume_blob(&repo, &digest, from, total).await })
    })
}
