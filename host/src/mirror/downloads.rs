//! Single-flight blob downloads that clients read while they are still running.
//!
//! The first request for an uncached blob starts a [`Download`]; later requests for the same
//! digest join it. The download hands the upstream's bytes to a writer thread (sha256 and the
//! temp file) and to a window of the latest chunks in memory, publishing how far it got;
//! every client streams up to the published length, from the window while it keeps up and
//! from the temp file when it falls behind, so nobody waits for the whole blob and memory
//! stays bounded whatever the blob size.
//! When the bytes hash to the digest, readers may send the last byte at once (the download is
//! *verified*) while the file is fsynced and renamed into the store behind them; when they do
//! not (or the upstream fails), every reader gets an error and nothing is stored.
//!
//! Downloads are bounded: a blob larger than `maxBlobSize` is cut there, the free space is
//! checked as bytes of an unknown-length blob arrive, and [`FetchSlots`] bounds how many run
//! at once (in all and per upstream). Every client holds an [`Interest`] in the download it
//! reads; when the last one lets go of a download that is not kept (its registry is not
//! configured), the download is cancelled: upstream connection dropped, temp file removed.
//! A reader of a download started for another registry can switch to a download from its
//! own upstream when that one fails or stalls ([`Fallback`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt};
use sha2::Digest as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::mirror::MirrorError;
use crate::oci::reference::Digest;
use crate::store::{Staged, Store, StoreError, read_chunk};
use crate::upstream::BodyError;

/// Bytes read from disk per chunk sent to a client of a running download, many of which
/// may read at once (each holds one chunk: small reads keep memory bounded).
const FOLLOW_READ_CHUNK: usize = 64 * 1024;
/// How many of the latest written bytes a download keeps in memory for its readers.
const RECENT_BYTES: usize = 2 * 1024 * 1024;
/// Bytes gathered from the upstream before a write + publish.
const WRITE_CHUNK: usize = 256 * 1024;

/// The upstream's body, chunk by chunk.
pub type ByteStream = crate::upstream::calls::BodyStream;

/// Re-requests the rest of a blob from a byte offset after the upstream broke off; `None`
/// when the upstream cannot resume (no ranges).
pub type Resume =
    Box<dyn FnMut(u64) -> Pin<Box<dyn Future<Output = Option<ByteStream>> + Send>> + Send>;

/// What a download reads from: the upstream's answer, and how to ask for the rest.
pub struct UpstreamBody {
    /// Size the upstream announced.
    pub total: Option<u64>,
    /// The body.
    pub body: ByteStream,
    /// How to resume after the upstream broke off, if it can.
    pub resume: Option<Resume>,
    /// Longest wait for the next chunk.
    pub idle_timeout: Duration,
    /// Upstream name, for messages.
    pub upstream: String,
    /// Repository it is fetched for, for logs.
    pub repo: String,
    /// Largest size accepted (`maxBlobSize`): a body that goes past it fails the download.
    pub max_size: u64,
    /// The fetch lease this replica holds for the blob (`cluster`): renewed while the
    /// download runs, released once it is stored or failed.
    pub lease: Option<LeaseHold>,
    /// Where the body comes from when not the upstream (`cluster`: the replica fetching it,
    /// or the store): its bytes are not counted as upstream bytes (those of a resume, from
    /// the upstream, are).
    pub other_source: Option<String>,
}

/// A held fetch lease ([`crate::store::Lease`]), renewed every third of its lifetime
/// on a task of its own until released. Dropped without [`LeaseHold::release`] (the
/// download was cancelled), it is released on a task of its own.
pub struct LeaseHold {
    lease: Arc<tokio::sync::Mutex<Option<Box<dyn crate::store::Lease>>>>,
    renewal: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LeaseHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHold").finish_non_exhaustive()
    }
}

impl LeaseHold {
    /// Holds `lease` of blob `digest`, renewing it every `ttl / 3`.
    pub fn start(lease: Box<dyn crate::store::Lease>, ttl: Duration, digest: Digest) -> Self {
        let lease = Arc::new(tokio::sync::Mutex::new(Some(lease)));
        let held = lease.clone();
        let renewal = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                let guard = held.lock().await;
                let Some(l) = guard.as_ref() else { return };
                if let Err(e) = l.renew().await {
                    // Another replica may take the fetch over; this one carries on (a
                    // duplicate fetch beats a failed client).
                    tracing::warn!(%digest, error = %e, "could not renew the fetch lease");
                }
            }
        });
        LeaseHold { lease, renewal }
    }

    /// Stops renewing and gives the lease up.
    pub async fn release(self) {
        self.renewal.abort();
        let lease = self.lease.lock().await.take();
        if let Some(l) = lease
            && let Err(e) = l.release().await
        {
            tracing::warn!(error = %e, "could not release the fetch lease; it expires on its own");
        }
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.renewal.abort();
        let lease = self.lease.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let taken = lease.lock().await.take();
                if let Some(l) = taken {
                    let _ = l.release().await;
                }
            });
        }
    }
}

impl UpstreamBody {
    /// A stored blob read as a download's body (copied here from a shared store, and
    /// verified again on the way like any body).
    pub fn from_stored(
        stored: crate::store::StoredBlob,
        idle_timeout: Duration,
        upstream: String,
        repo: String,
        max_size: u64,
    ) -> Self {
        let total = stored.size();
        UpstreamBody {
            total: Some(total),
            body: Box::pin(stored.read(0, total).map_err(BodyError::from)),
            resume: None,
            idle_timeout,
            upstream,
            repo,
            max_size,
            lease: None,
            other_source: Some("the store".to_owned()),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("total", &self.total)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// How often one download resumes after the upstream broke off.
const MAX_RESUMES: u32 = 3;
/// An unknown-length download checks the free space each time it received this much more.
pub const SPACE_CHECK_EVERY: u64 = 1024 * 1024;
/// Longest wait for the next chunk of a blob copied from the shared store to this disk.
const STORE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How far a download got.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's answer.
    Starting,
    /// Receiving: `written` bytes are in the temp file and readable.
    Receiving {
        /// Size the upstream announced, if it did.
        total: Option<u64>,
        /// Bytes readable so far.
        written: u64,
    },
    /// Every byte is in the temp file and their sha256 matched: readers may send all of it.
    /// The file is being made durable and renamed into the store.
    Verified {
        /// Final size.
        total: u64,
    },
    /// Verified and stored under the digest.
    Complete {
        /// Final size.
        total: u64,
    },
    /// Failed; nothing was stored.
    Failed(MirrorError),
}

/// One running download.
#[derive(Debug)]
pub struct Download {
    /// The blob being fetched.
    pub digest: Digest,
    /// Where its bytes are being written, and committed from once verified.
    pub staged: Staged,
    progress: watch::Sender<Progress>,
    /// The most recently written bytes, by offset: readers keeping up with the download
    /// take them from here (shared, no copy) instead of reading the temp file back.
    recent: Mutex<Recent>,
    /// The registry it was started for (canonical name).
    pub registry: String,
    /// Its clients, and whether it runs on without any.
    interest: Mutex<Clients>,
    /// Set once every client left a download that is not kept: it stops at its next chunk.
    cancelled: AtomicBool,
    /// Wakes the download task when it is cancelled while it waits for the upstream.
    cancel_waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct Clients {
    count: usize,
    /// Runs to the end without clients (some client's registry is configured).
    keep: bool,
}

/// A client's hold on a download (an HTTP reader, a waiting request, the preloader). When
/// the last one is dropped and the download is not kept, it is cancelled.
#[derive(Debug)]
pub struct Interest(Arc<Download>);

impl Drop for Interest {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Resolves once the download is cancelled (lock-free: a flag and a waker; only the
/// download's own task waits on it).
struct Cancelled<'a>(&'a Download);

impl Future for Cancelled<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.cancelled.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.0.cancel_waker.register(cx.waker());
        if self.0.cancelled.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A bounded window of the latest received chunks. A chunk leaves it only once it is in the
/// temp file, so every byte a reader may read is in the window or on disk.
#[derive(Debug, Default)]
struct Recent {
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// How many bytes from the start are written to the temp file.
    on_disk: u64,
}

impl Recent {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        self.evict();
    }

    /// Records that the first `on_disk` bytes are in the temp file.
    fn written(&mut self, on_disk: u64) {
        self.on_disk = on_disk;
        self.evict();
    }

    /// Drops the oldest chunks beyond the size bound, never one that is not on disk yet.
    fn evict(&mut self) {
        while self.bytes > RECENT_BYTES {
            match self.chunks.front() {
                Some((off, c)) if off + c.len() as u64 <= self.on_disk => {
                    self.bytes -= c.len();
                    self.chunks.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Up to `max` bytes at `pos`, if that part is still in the window.
    fn get(&self, pos: u64, max: u64) -> Option<Bytes> {
        let (offset, chunk) = self
            .chunks
            .iter()
            .find(|(off, c)| *off <= pos && pos < off + c.len() as u64)?;
        let start = (pos - offset) as usize;
        let end = (start as u64 + max).min(chunk.len() as u64) as usize;
        Some(chunk.slice(start..end))
    }
}

impl Download {
    /// Watches this download's progress.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn publish(&self, p: Progress) {
        self.progress.send_replace(p);
    }

    /// Whether every client left and the download is being stopped.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once the download is cancelled (for its own task's waits).
    pub async fn cancelled(&self) {
        Cancelled(self).await
    }

    fn failed(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Failed(_))
    }

    /// Adds a client unless the download was cancelled.
    fn enter(self: &Arc<Self>, keep: bool) -> Option<Interest> {
        let mut c = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            return None;
        }
        c.count += 1;
        c.keep |= keep;
        Some(Interest(self.clone()))
    }

    fn leave(&self) {
        let mut c = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        c.count = c.count.saturating_sub(1);
        if c.count == 0
            && !c.keep
            && matches!(
                *self.progress.borrow(),
                Progress::Starting | Progress::Receiving { .. }
            )
        {
            self.cancelled.store(true, Ordering::Release);
            self.cancel_waker.wake();
        }
    }

    fn new(store: &Arc<dyn Store>, digest: &Digest, registry: &str) -> Download {
        let (tx, _) = watch::channel(Progress::Starting);
        Download {
            digest: digest.clone(),
            staged: store.stage(digest),
            progress: tx,
            recent: Mutex::new(Recent::default()),
            registry: registry.to_owned(),
            interest: Mutex::new(Clients::default()),
            cancelled: AtomicBool::new(false),
            cancel_waker: AtomicWaker::new(),
        }
    }
}

/// The set of running downloads, keyed by digest, and the slots that bound how many run.
#[derive(Debug, Default)]
pub struct Downloads {
    running: Mutex<HashMap<Digest, Arc<Download>>>,
    /// Download slots.
    pub slots: FetchSlots,
    /// Woken after a download stored its blob (the cache grew: the inventory's `maxSize`
    /// check).
    pub stored: tokio::sync::Notify,
}

/// What [`Downloads::get_or_start`] found.
#[derive(Debug)]
pub struct Joined {
    /// The download.
    pub download: Arc<Download>,
    /// The caller's hold on it.
    pub interest: Interest,
    /// The caller's call registered and started it.
    pub started: bool,
}

impl Downloads {
    /// Downloads bounded by `limits`.
    pub fn new(limits: &crate::config::FetchLimits) -> Self {
        Downloads {
            running: Mutex::default(),
            slots: FetchSlots::new(limits),
            stored: tokio::sync::Notify::new(),
        }
    }

    /// Joins the running download of `digest` as a client of `registry` (`keep`: that
    /// registry's downloads run on without clients), or registers a new one and starts it
    /// on a task of its own: unless the blob turned out to be stored meanwhile, it takes a
    /// download slot (waiting up to `upstreamFetchWait`, else failing with
    /// [`MirrorError::NoSlot`]), asks `fetch` for the upstream's answer, writes and verifies
    /// it into `store` while readers follow, and leaves the running set, whatever happens.
    /// A download that failed or was cancelled, or `abandon` (one this client gives up on),
    /// is not joined: a new one replaces it.
    pub fn get_or_start<F, Fut>(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        digest: &Digest,
        registry: &str,
        keep: bool,
        abandon: Option<&Arc<Download>>,
        fetch: F,
    ) -> Joined
    where
        F: FnOnce(Arc<Download>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<UpstreamBody, MirrorError>> + Send + 'static,
    {
        let joined = self.join(store, digest, registry, keep, abandon);
        if joined.started {
            tokio::spawn(
                self.clone()
                    .run(store.clone(), joined.download.clone(), fetch),
            );
        }
        joined
    }

    /// Runs a registered download to the end (see [`Downloads::get_or_start`]).
    async fn run<F, Fut>(self: Arc<Self>, store: Arc<dyn Store>, d: Arc<Download>, fetch: F)
    where
        F: FnOnce(Arc<Download>) -> Fut,
        Fut: Future<Output = Result<UpstreamBody, MirrorError>>,
    {
        // It may have been stored between the cache lookup and registering this download.
        if let Ok(Some(total)) = store.stat_blob(&d.digest).await {
            if d.staged.is_here() {
                self.complete_stored(&d, total);
                return;
            }
            // Stored by another replica in the shared store, not on this disk: copied here
            // through the same verified fill, which this download's readers follow.
            if let Ok(Some(blob)) = store.open_blob(&d.digest).await {
                let src = UpstreamBody::from_stored(
                    blob,
                    STORE_IDLE_TIMEOUT,
                    "the shared store".into(),
                    String::new(),
                    self.slots.limits().max_blob_size,
                );
                self.finish(&store, &d, src).await;
                return;
            }
        }
        let slot = tokio::select! {
            biased;
            () = d.cancelled() => None,
            slot = self.slots.acquire(&d.registry) => Some(slot),
        };
        let _slot = match slot {
            None => {
                self.fail(&d, cancelled(&d.digest));
                return;
            }
            Some(None) => {
                let l = self.slots.limits();
                tracing::warn!(registry = %d.registry, digest = %d.digest, "blob fetch refused: no download slot came free in time");
                self.fail(
                    &d,
                    MirrorError::NoSlot {
                        max_fetches: l.max_fetches,
                        max_per_registry: l.max_fetches_per_registry,
                        wait: l.wait,
                    },
                );
                return;
            }
            Some(Some(slot)) => slot,
        };
        let fetched = tokio::select! {
            biased;
            () = d.cancelled() => Err(cancelled(&d.digest)),
            r = fetch(d.clone()) => r,
        };
        let src = match fetched {
            Ok(src) => src,
            Err(e) => {
                self.fail(&d, e);
                return;
            }
        };
        self.finish(&store, &d, src).await;
    }

    /// Fills a download from `src` and logs how it ended.
    async fn finish(&self, store: &Arc<dyn Store>, d: &Arc<Download>, mut src: UpstreamBody) {
        let (upstream, repo) = (src.upstream.clone(), src.repo.clone());
        let started = std::time::Instant::now();
        let lease = src.lease.take();
        let filled = self.fill(store, d, src).await;
        // Stored (the other replicas now find it in the store) or failed: the fetch is free.
        if let Some(lease) = lease {
            lease.release().await;
        }
        match filled {
            Ok(size) => {
                tracing::info!(
                    registry = %upstream, repo = %repo, digest = %d.digest, size,
                    seconds = started.elapsed().as_secs_f32(), "cached blob"
                );
                self.stored.notify_one();
            }
            Err(_) if d.is_cancelled() => {
                tracing::info!(registry = %upstream, repo = %repo, digest = %d.digest, "every client left; download cancelled, nothing stored")
            }
            Err(e) => {
                tracing::warn!(registry = %upstream, repo = %repo, digest = %d.digest, error = %e, "blob fetch failed; nothing stored")
            }
        }
    }

    /// Joins the download of `digest` running in this process, if any (never starts one):
    /// for a peer replica that streams the blob from here.
    pub fn join_running(&self, digest: &Digest) -> Option<Joined> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let d = running.get(digest).filter(|d| !d.failed())?;
        let interest = d.enter(false)?;
        Some(Joined {
            download: d.clone(),
            interest,
            started: false,
        })
    }

    /// Joins the running download of `digest`, or registers a new one that the caller runs
    /// with [`Downloads::fill`] (tests).
    #[cfg(test)]
    fn join_or_register(&self, store: &Arc<dyn Store>, digest: &Digest) -> (Arc<Download>, bool) {
        let j = self.join(store, digest, "", true, None);
        let d = j.download.clone();
        (d, j.started)
    }

    /// Joins the running download of `digest`, or registers a new one for the caller to
    /// run (see [`Downloads::get_or_start`]).
    fn join(
        &self,
        store: &Arc<dyn Store>,
        digest: &Digest,
        registry: &str,
        keep: bool,
        abandon: Option<&Arc<Download>>,
    ) -> Joined {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = running.get(digest)
            && !abandon.is_some_and(|a| Arc::ptr_eq(a, d))
            && !d.failed()
            && let Some(interest) = d.enter(keep)
        {
            return Joined {
                download: d.clone(),
                interest,
                started: false,
            };
        }
        let d = Arc::new(Download::new(store, digest, registry));
        let interest = d.enter(keep).unwrap_or_else(|| Interest(d.clone()));
        running.insert(digest.clone(), d.clone());
        Joined {
            download: d,
            interest,
            started: true,
        }
    }

    /// Number of downloads running now.
    pub fn len(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes `d` from the running set, unless another download of its digest replaced it.
    fn unregister(&self, d: &Arc<Download>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&d.digest).is_some_and(|r| Arc::ptr_eq(r, d)) {
            running.remove(&d.digest);
        }
    }

    /// Marks a registered download as failed before any byte arrived (the upstream refused)
    /// and unregisters it.
    fn fail(&self, d: &Arc<Download>, err: MirrorError) {
        d.publish(Progress::Failed(err));
        self.unregister(d);
    }

    /// Completes a registered download whose blob turned out to be stored already (it was
    /// committed between the caller's cache lookup and its registration).
    fn complete_stored(&self, d: &Arc<Download>, total: u64) {
        d.publish(Progress::Complete { total });
        self.unregister(d);
    }

    /// Runs a registered download to the end: writes `body` to the temp file while
    /// publishing progress, verifies size and sha256, commits it to the store, and
    /// unregisters. Every failure is published to the readers and nothing is stored.
    async fn fill(
        &self,
        store: &Arc<dyn Store>,
        d: &Arc<Download>,
        src: UpstreamBody,
    ) -> Result<u64, MirrorError> {
        let result = write_verified(store, d, src).await;
        match &result {
            Ok(total) => d.publish(Progress::Complete { total: *total }),
            Err(e) => {
                d.publish(Progress::Failed(e.clone()));
                d.staged.discard().await;
            }
        }
        self.unregister(d);
        result
    }
}

async fn write_verified(
    store: &Arc<dyn Store>,
    d: &Arc<Download>,
    src: UpstreamBody,
) -> Result<u64, MirrorError> {
    let UpstreamBody {
        total,
        mut body,
        mut resume,
        idle_timeout,
        upstream,
        repo: _,
        max_size,
        lease: _,
        other_source: mut peer,
    } = src;
    let disk = |e: io::Error| MirrorError::CacheWrite(StoreError::from(e));
    let staged = d.staged.clone();
    let file = tokio::task::spawn_blocking(move || staged.create())
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(disk)?;
    let mut file = DiskPipe::start(file, d).map_err(disk)?;
    d.publish(Progress::Receiving { total, written: 0 });
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
    let mut written = 0u64;
    let mut resumes = 0u32;
    let received = crate::metrics::global().registry(&upstream);
    // Unknown length: the free space is checked again each time this much arrived.
    let mut next_space_check = if total.is_none() {
        SPACE_CHECK_EVERY
    } else {
        u64::MAX
    };
    loop {
        if d.is_cancelled() {
            return Err(cancelled(&d.digest));
        }
        // Batch writes while the upstream keeps data coming; when it has nothing ready, hand
        // readers what there is first, so that a slow upstream is still streamed promptly.
        let next = match body.next().now_or_never() {
            Some(ready) => Ok(ready),
            None => {
                if !buf.is_empty() {
                    written = hand_over(d, &mut file, buf.split().freeze(), written, total)
                        .await
                        .map_err(disk)?;
                }
                tokio::select! {
                    biased;
                    () = d.cancelled() => return Err(cancelled(&d.digest)),
                    next = tokio::time::timeout(idle_timeout, body.next()) => next,
                }
            }
        };
        let broke_off = match &next {
            Err(_) => Some(format!("stalled: no data for {}s", idle_timeout.as_secs())),
            Ok(Some(Err(e))) => Some(format!("broke off: {e}")),
            Ok(None) if total.is_some_and(|t| written + (buf.len() as u64) < t) => {
                Some("ended the body early".to_owned())
            }
            _ => None,
        };
        if let Some(why) = broke_off {
            let offset = written + buf.len() as u64;
            let resumed = match resume.as_mut() {
                Some(r) if resumes < MAX_RESUMES => r(offset).await,
                _ => None,
            };
            match resumed {
                Some(rest) => {
                    resumes += 1;
                    match peer.take() {
                        Some(peer) => {
                            tracing::info!(%peer, %upstream, digest = %d.digest, offset, attempt = resumes,
                            "the source of the blob {why}; resuming from the upstream")
                        }
                        None => {
                            tracing::info!(%upstream, digest = %d.digest, offset, attempt = resumes,
                            "upstream {why}; resuming the download")
                        }
                    }
                    body = rest;
                    continue;
                }
                None => {
                    return Err(MirrorError::BadUpstream(format!(
                        "{} {why} while sending {} ({offset} bytes received); nothing stored",
                        source_name(peer.as_deref(), &upstream),
                        d.digest
                    )));
                }
            }
        }
        let chunk = match next {
            Ok(Some(Ok(chunk))) => Some(chunk),
            _ => None,
        };
        let ended = chunk.is_none();
        if let Some(chunk) = chunk {
            if peer.is_none() {
                received.upstream_bytes.inc_by(chunk.len() as u64);
            }
            let so_far = written + (buf.len() + chunk.len()) as u64;
            if so_far > max_size {
                tracing::warn!(registry = %upstream, digest = %d.digest, max_blob_size = max_size,
                    "blob larger than maxBlobSize; download cut, nothing stored");
                return Err(MirrorError::BadUpstream(format!(
                    "{} sent more than maxBlobSize ({max_size} bytes) for {}; nothing stored",
                    source_name(peer.as_deref(), &upstream),
                    d.digest
                )));
            }
            if so_far >= next_space_check {
                store
                    .ensure_space(SPACE_CHECK_EVERY)
                    .map_err(MirrorError::Store)?;
                next_space_check = so_far + SPACE_CHECK_EVERY;
            }
            if let Some(t) = total
                && written + (buf.len() + chunk.len()) as u64 > t
            {
                return Err(MirrorError::BadUpstream(format!(
                    "{} sent more than the announced {t} bytes for {}",
                    source_name(peer.as_deref(), &upstream),
                    d.digest
                )));
            }
            if buf.is_empty() && chunk.len() >= WRITE_CHUNK {
                // Big enough on its own (the HTTP client hands over up to a few hundred KiB
                // at a time when the upstream is fast): passed on as it came, not copied.
                written = hand_over(d, &mut file, chunk, written, total)
                    .await
                    .map_err(disk)?;
            } else {
                if buf.capacity() == 0 {
                    buf.reserve(WRITE_CHUNK);
                }
                buf.extend_from_slice(&chunk);
            }
        }
        if !buf.is_empty() && (buf.len() >= WRITE_CHUNK || ended) {
            written = hand_over(d, &mut file, buf.split().freeze(), written, total)
                .await
                .map_err(disk)?;
        }
        if ended {
            break;
        }
    }
    if let Some(t) = total
        && written != t
    {
        return Err(MirrorError::BadUpstream(format!(
            "{} sent {written} of {t} bytes for {}",
            source_name(peer.as_deref(), &upstream),
            d.digest
        )));
    }
    let (file, got) = file.finish().await.map_err(disk)?;
    if got != d.digest {
        return Err(MirrorError::BadUpstream(format!(
            "{} sent content with digest {got} for {}; not stored",
            source_name(peer.as_deref(), &upstream),
            d.digest
        )));
    }
    // The bytes are right: clients need not wait for the disk any more.
    d.publish(Progress::Verified { total: written });
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(disk)?;
    store
        .commit_blob(&d.staged, &d.digest, written)
        .await
        .map_err(MirrorError::CacheWrite)?;
    Ok(written)
}

/// What a body's source is called in messages: the replica or store it comes from, else
/// the upstream.
fn source_name(other: Option<&str>, upstream: &str) -> String {
    other.map_or_else(|| format!("upstream {upstream}"), str::to_owned)
}

fn cancelled(digest: &Digest) -> MirrorError {
    MirrorError::Cancelled(digest.clone())
}

/// Hashes a download's chunks and writes them to its temp file on a thread of its own, up to
/// [`DISK_QUEUE`] chunks behind the upstream: the upstream is not kept waiting for the hash
/// or the disk, and receiving and hashing run on different cores. Chunks are processed in
/// order; readers reach data still on its way to disk through the download's window of
/// recent chunks, which keeps every chunk until it is written.
struct DiskPipe {
    queue: Option<tokio::sync::mpsc::Sender<Bytes>>,
    done: tokio::sync::oneshot::Receiver<io::Result<(std::fs::File, sha2::Sha256)>>,
}

/// Chunks a download may have received but not yet hashed and written.
const DISK_QUEUE: usize = 4;
/// Stack of a download's writer thread.
const WRITER_STACK: usize = 256 * 1024;

impl DiskPipe {
    /// Starts the writer thread for `file`, recording progress in `d`'s window.
    fn start(file: std::fs::File, d: &Arc<Download>) -> io::Result<Self> {
        let (queue, mut chunks) = tokio::sync::mpsc::channel::<Bytes>(DISK_QUEUE);
        let (tx, done) = tokio::sync::oneshot::channel();
        let d = d.clone();
        std::thread::Builder::new()
            .name("blob-writer".into())
            // Hashing and writing need little stack; many downloads may run at once.
            .stack_size(WRITER_STACK)
            .spawn(move || {
                let run = || -> io::Result<(std::fs::File, sha2::Sha256)> {
                    use std::io::Write;
                    let (mut file, mut hasher) = (file, sha2::Sha256::new());
                    let mut on_disk = 0u64;
                    while let Some(chunk) = chunks.blocking_recv() {
                        hasher.update(&chunk);
                        file.write_all(&chunk)?;
                        on_disk += chunk.len() as u64;
                        d.recent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .written(on_disk);
                    }
                    Ok((file, hasher))
                };
                let _ = tx.send(run());
            })?;
        Ok(DiskPipe {
            queue: Some(queue),
            done,
        })
    }

    /// Queues `chunk`, waiting while the writer is [`DISK_QUEUE`] chunks behind.
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let sent = match &self.queue {
            Some(q) => q.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its result says why.
        self.queue = None;
        match (&mut self.done).await {
            Ok(Err(e)) => Err(e),
            _ => Err(io::Error::other("the blob writer stopped")),
        }
    }

    /// Waits for the last chunk; returns the file (written, not yet durable) and the sha256
    /// of everything written.
    async fn finish(mut self) -> io::Result<(std::fs::File, Digest)> {
        self.queue = None;
        let (file, hasher) = self
            .done
            .await
            .map_err(|_| io::Error::other("the blob writer stopped"))??;
        Ok((
            file,
            Digest::from_sha256_hex(hex::encode(hasher.finalize())),
        ))
    }
}

/// Hands `chunk` (the bytes at `offset`) to the disk and to readers and publishes the new
/// length, which it returns.
async fn hand_over(
    d: &Download,
    disk: &mut DiskPipe,
    chunk: Bytes,
    offset: u64,
    total: Option<u64>,
) -> io::Result<u64> {
    let written = offset + chunk.len() as u64;
    d.recent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(offset, chunk.clone());
    disk.write(chunk).await?;
    d.publish(Progress::Receiving { total, written });
    Ok(written)
}

/// The running download a reader reads: up to the published length, waiting for more.
struct Source {
    download: Arc<Download>,
    progress: watch::Receiver<Progress>,
    idle_timeout: Duration,
    /// The blob's size, once the download was verified.
    verified: Option<u64>,
    /// This reader's hold on the download.
    interest: Option<Interest>,
}

/// Gives a reader of a download started for another registry a download from its own
/// upstream (joined or started), when that one fails or stalls; `None` when it cannot.
pub type Fallback = Box<dyn FnOnce(&Arc<Download>) -> Option<(Arc<Download>, Interest)> + Send>;

/// A reader's way out of a foreign download.
struct Switch {
    fallback: Option<Fallback>,
    /// sha256 of every byte sent so far, when the reader sends the whole blob: what lets it
    /// carry on from another download after sending bytes, and still never finish a transfer
    /// whose bytes do not hash to the digest. (Only readers of a foreign download hash.)
    hasher: Option<sha2::Sha256>,
    start: u64,
}

/// One reader's state between chunks.
struct Reader {
    source: Source,
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    end: Option<u64>,
    switch: Option<Box<Switch>>,
}

/// [`follow`] with no interest held and no fallback (tests).
#[cfg(test)]
pub fn read_following(
    download: Arc<Download>,
    start: u64,
    end: Option<u64>,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    follow(download, None, start, end, idle_timeout, None)
}

/// Streams bytes `[start, end)` (to the end when `None`) of a blob while it downloads.
/// The stream ends with an error if the download fails, so the client sees an aborted
/// transfer, never a short body that looks complete; the blob's last byte is only sent
/// once the whole blob is verified.
///
/// The client holds `interest` in the download (released when the stream is dropped).
/// With `fallback` (the download was started for another registry), a failure or stall of
/// the download switches the reader to the download `fallback` gives, from where it got
/// to: at once when it has sent nothing yet, and for a whole-blob reader at any point (it
/// then checks the sha256 of everything it sent before the last byte).
pub fn follow(
    download: Arc<Download>,
    interest: Option<Interest>,
    start: u64,
    end: Option<u64>,
    idle_timeout: Duration,
    fallback: Option<Fallback>,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let progress = download.subscribe();
    let switch = fallback.map(|f| {
        Box::new(Switch {
            fallback: Some(f),
            hasher: (start == 0).then(sha2::Sha256::new),
            start,
        })
    });
    reader(Reader {
        source: Source {
            download,
            progress,
            idle_timeout,
            verified: None,
            interest,
        },
        file: None,
        pos: start,
        end,
        switch,
    })
}

impl Reader {
    /// How far this reader may read now; `None` means it must wait for more.
    fn readable_until(&mut self) -> io::Result<Option<u64>> {
        let end = self.end.unwrap_or(u64::MAX);
        let Source {
            progress, verified, ..
        } = &mut self.source;
        if let Some(total) = *verified {
            // Every byte is verified; whatever happens to the download now (a failed fsync
            // or rename), the open file still holds them.
            let limit = total.min(end);
            return Ok((limit > self.pos).then_some(limit));
        }
        let limit = match &*progress.borrow_and_update() {
            Progress::Starting => self.pos,
            // The blob's last byte is held back until it is verified: a client that got
            // every byte must be able to trust them, so a sha256 mismatch must still be able
            // to abort the transfer.
            Progress::Receiving { written, total } => {
                (*written).min(total.map_or(u64::MAX, |t| t.saturating_sub(1)))
            }
            Progress::Verified { total } | Progress::Complete { total } => {
                *verified = Some(*total);
                if self.end.is_none() {
                    self.end = Some(*total);
                }
                *total
            }
            Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
        };
        let limit = limit.min(self.end.unwrap_or(u64::MAX));
        Ok((limit > self.pos).then_some(limit))
    }

    /// The next bytes from the download's window of recent chunks, when they are there.
    fn recent(&self, max: u64) -> Option<Bytes> {
        let Source { download, .. } = &self.source;
        let recent = download.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(self.pos, max)
    }

    fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.pos >= e)
    }

    /// After the download failed or stalled: moves to the fallback download, if this reader
    /// has one and may use it. `true` when it did.
    fn switch_over(&mut self) -> bool {
        let Some(sw) = self.switch.as_mut() else {
            return false;
        };
        if sw.hasher.is_none() && self.pos != sw.start {
            return false;
        }
        let Some(fallback) = sw.fallback.take() else {
            return false;
        };
        let Source {
            download,
            progress,
            verified,
            interest,
            ..
        } = &mut self.source;
        let Some((d, i)) = fallback(download) else {
            return false;
        };
        tracing::info!(digest = %d.digest, from = %download.registry, to = %d.registry, offset = self.pos,
            "download for another registry failed or stalled; continuing from the client's own upstream");
        *progress = d.subscribe();
        *download = d;
        *interest = Some(i);
        *verified = None;
        self.file = None;
        true
    }

    /// Hashes `chunk` (about to be sent) when this reader hashes; an error when it ends the
    /// blob and what was sent does not hash to the digest.
    fn account(&mut self, chunk: &[u8]) -> io::Result<()> {
        let Some(h) = self.switch.as_mut().and_then(|s| s.hasher.as_mut()) else {
            return Ok(());
        };
        h.update(chunk);
        let last = self.end == Some(self.pos + chunk.len() as u64);
        if last {
            let download = &self.source.download;
            let got = Digest::from_sha256_hex(hex::encode(h.clone().finalize()));
            if got != download.digest {
                return Err(io::Error::other(format!(
                    "bytes sent for {} do not hash to it; transfer aborted",
                    download.digest
                )));
            }
        }
        Ok(())
    }

    /// Waits until the download publishes more progress.
    async fn wait(&mut self) -> io::Result<()> {
        let Source {
            progress,
            idle_timeout,
            download,
            ..
        } = &mut self.source;
        match tokio::time::timeout(*idle_timeout, progress.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other(format!(
                "download of {} ended without completing",
                download.digest
            ))),
            Err(_) => Err(io::Error::other(format!(
                "download of {} stalled",
                download.digest
            ))),
        }
    }

    /// The file to read: the temp file while downloading (or the stored blob, once it was
    /// renamed into place).
    async fn file(&mut self) -> io::Result<Arc<std::fs::File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let Source { download, .. } = &self.source;
        let staged = download.staged.clone();
        let f = tokio::task::spawn_blocking(move || staged.open())
            .await
            .map_err(io::Error::other)??;
        let f = Arc::new(f);
        self.file = Some(f.clone());
        Ok(f)
    }
}

fn reader(state: Reader) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::try_unfold(state, |mut r| async move {
        loop {
            if r.finished() {
                return Ok(None);
            }
            let limit = match r.readable_until() {
                Ok(l) => l,
                Err(_) if r.switch_over() => continue,
                Err(e) => return Err(e),
            };
            let Some(limit) = limit else {
                if r.finished() {
                    return Ok(None);
                }
                if let Err(e) = r.wait().await {
                    if r.switch_over() {
                        continue;
                    }
                    return Err(e);
                }
                continue;
            };
            let want = (limit - r.pos).min(FOLLOW_READ_CHUNK as u64);
            let chunk = match r.recent(want) {
                Some(c) => c,
                None => {
                    let file = r.file().await?;
                    read_chunk(file, r.pos, want as usize).await?
                }
            };
            r.account(&chunk)?;
            r.pos += chunk.len() as u64;
            return Ok(Some((chunk, r)));
        }
    })
}

/// Bounds concurrent upstream blob downloads, in all (`maxUpstreamFetches`) and per
/// registry (`maxUpstreamFetchesPerRegistry`); a download waits at most `upstreamFetchWait`
/// for its slots. Joining a running download takes no slot.
#[derive(Debug)]
pub struct FetchSlots {
    global: Arc<Semaphore>,
    per_registry: Mutex<HashMap<String, Arc<Semaphore>>>,
    limits: crate::config::FetchLimits,
}

/// Registries whose semaphores are kept even when idle; past it, idle ones are dropped.
const MAX_IDLE_REGISTRY_SLOTS: usize = 256;

impl Default for FetchSlots {
    fn default() -> Self {
        FetchSlots::new(&crate::config::FetchLimits::default())
    }
}

/// The slots a running download holds; given back (and counted) when dropped.
#[derive(Debug)]
pub struct FetchPermit {
    _global: OwnedSemaphorePermit,
    _registry: OwnedSemaphorePermit,
}

impl Drop for FetchPermit {
    fn drop(&mut self) {
        crate::metrics::global().upstream_fetches.dec();
    }
}

impl FetchSlots {
    /// Slots for `limits`.
    pub fn new(limits: &crate::config::FetchLimits) -> Self {
        FetchSlots {
            global: Arc::new(Semaphore::new(limits.max_fetches)),
            per_registry: Mutex::default(),
            limits: *limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &crate::config::FetchLimits {
        &self.limits
    }

    fn registry(&self, registry: &str) -> Arc<Semaphore> {
        let mut m = self.per_registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(registry) {
            return s.clone();
        }
        if m.len() >= MAX_IDLE_REGISTRY_SLOTS {
            let limit = self.limits.max_fetches_per_registry;
            m.retain(|_, s| s.available_permits() < limit || Arc::strong_count(s) > 1);
        }
        let s = Arc::new(Semaphore::new(self.limits.max_fetches_per_registry));
        m.insert(registry.to_owned(), s.clone());
        s
    }

    /// Waits up to `upstreamFetchWait` for a slot for a download from `registry`; `None`
    /// when none came free in time (counted as a refusal).
    pub async fn acquire(&self, registry: &str) -> Option<FetchPermit> {
        let per = self.registry(registry);
        let global = self.global.clone();
        let both = async move {
            let r = per.acquire_owned().await.ok()?;
            let g = global.acquire_owned().await.ok()?;
            Some((g, r))
        };
        match tokio::time::timeout(self.limits.wait, both).await {
            Ok(Some((g, r))) => {
                crate::metrics::global().upstream_fetches.inc();
                Some(FetchPermit {
                    _global: g,
                    _registry: r,
                })
            }
            _ => {
                crate::metrics::global().upstream_fetch_refusals.inc();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsStore;

    /// A filesystem store in `dir`: itself (to look at its files) and as the mirror holds it.
    fn fs_store(dir: &std::path::Path) -> (FsStore, Arc<dyn Store>) {
        let fs = FsStore::open(dir).unwrap();
        (fs.clone(), Arc::new(fs))
    }
    use crate::upstream::BodyError;
    use futures_util::TryStreamExt;

    async fn collect(s: impl Stream<Item = io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let parts: Vec<Bytes> = s.try_collect().await?;
        Ok(parts.concat())
    }

    fn source(total: Option<u64>, body: ByteStream, resume: Option<Resume>) -> UpstreamBody {
        UpstreamBody {
            total,
            body,
            resume,
            idle_timeout: Duration::from_secs(5),
            upstream: "up".into(),
            repo: "app".into(),
            max_size: u64::MAX,
            lease: None,
            other_source: None,
        }
    }

    /// A body that never ends: 64 KiB chunks for ever.
    fn endless() -> ByteStream {
        Box::pin(futures_util::stream::repeat_with(|| {
            Ok(Bytes::from(vec![1u8; 64 * 1024]))
        }))
    }

    #[tokio::test]
    async fn a_body_past_max_blob_size_is_cut_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let digest = Digest::of(b"whatever");
        let downloads = Downloads::default();
        let (d, _) = downloads.join_or_register(&store, &digest);
        let reader = read_following(d.clone(), 0, None, Duration::from_secs(5));
        let mut src = source(None, endless(), None);
        src.max_size = 1024 * 1024;
        let err = downloads.fill(&store, &d, src).await.unwrap_err();
        assert!(err.to_string().contains("maxBlobSize"), "{err}");
        let got: Result<Vec<Bytes>, _> = reader.try_collect().await;
        assert!(got.is_err(), "the reader's transfer is aborted");
        assert!(!fs.blob_path(&digest).exists());
        assert_eq!(crate::store::staging::tests::tmp_file_count(dir.path()), 0);
        assert!(downloads.is_empty());
    }

    #[tokio::test]
    async fn a_download_nobody_keeps_stops_when_its_last_client_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = fs_store(dir.path());
        let digest = Digest::of(b"whatever");
        let downloads = Arc::new(Downloads::default());
        let j = downloads.join(&store, &digest, "adhoc.example", false, None);
        assert!(j.started);
        let second = downloads.join(&store, &digest, "adhoc.example", false, None);
        assert!(!second.started && Arc::ptr_eq(&j.download, &second.download));
        let d = j.download.clone();
        let (dl, st) = (downloads.clone(), store.clone());
        let st2 = st.clone();
        let running =
            tokio::spawn(async move { dl.fill(&st2, &d, source(None, endless(), None)).await });
        // Bytes flow; one client leaving changes nothing.
        let mut p = j.download.subscribe();
        p.wait_for(|p| matches!(p, Progress::Receiving { written, .. } if *written > 0))
            .await
            .unwrap();
        drop(second.interest);
        assert!(!j.download.is_cancelled());
        drop(j.interest);
        let err = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("cancelled promptly")
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("every client left"), "{err}");
        assert_eq!(
            crate::store::staging::tests::tmp_file_count(st.local_root()),
            0
        );
        // A newcomer starts afresh instead of joining the cancelled download.
        let again = downloads.join(&st, &digest, "adhoc.example", false, None);
        assert!(again.started);
    }

    #[tokio::test]
    async fn a_kept_download_runs_on_without_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let data = vec![3u8; 300_000];
        let digest = Digest::of(&data);
        let downloads = Downloads::default();
        let j = downloads.join(&store, &digest, "configured.example", true, None);
        drop(j.interest);
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(&data, 50_000)));
        assert_eq!(
            downloads
                .fill(&store, &j.download, source(Some(300_000), body, None))
                .await
                .unwrap(),
            300_000
        );
        assert!(fs.blob_path(&digest).is_file());
    }

    #[tokio::test]
    async fn a_reader_of_a_failed_foreign_download_carries_on_from_its_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 239) as u8).collect();
        let digest = Digest::of(&data);
        let downloads = Arc::new(Downloads::default());
        let x = downloads.join(&store, &digest, "x.example", false, None);
        // X sends 200 000 good bytes, then breaks off.
        let mut first = chunks(&data[..200_000], 100_000);
        first.push(Err("reset".into()));
        let (dl, st, dx) = (downloads.clone(), store.clone(), x.download.clone());
        let fallback: Fallback = Box::new(move |abandon| {
            let y = dl.join(&st, &dx.digest, "y.example", false, Some(abandon));
            assert!(y.started, "the failed download is not joined again");
            Some((y.download, y.interest))
        });
        let reader = tokio::spawn(collect(follow(
            x.download.clone(),
            None,
            0,
            Some(600_000),
            Duration::from_secs(5),
            Some(fallback),
        )));
        let body: ByteStream = Box::pin(futures_util::stream::iter(first));
        assert!(
            downloads
                .fill(&store, &x.download, source(Some(600_000), body, None))
                .await
                .is_err()
        );
        // Y's download (registered by the fallback) runs to the end.
        let y = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(d) = downloads.running.lock().unwrap().get(&digest).cloned()
                    && d.registry == "y.example"
                {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(&data, 64_000)));
        downloads
            .fill(&store, &y, source(Some(600_000), body, None))
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), data);
    }

    #[tokio::test]
    async fn a_reader_that_switched_never_finishes_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 233) as u8).collect();
        let digest = Digest::of(&data);
        let downloads = Arc::new(Downloads::default());
        let x = downloads.join(&store, &digest, "x.example", false, None);
        let (dl, st) = (downloads.clone(), store.clone());
        let fallback: Fallback = Box::new(move |abandon| {
            let y = dl.join(&st, &abandon.digest, "y.example", false, Some(abandon));
            Some((y.download, y.interest))
        });
        let mut reader = Box::pin(follow(
            x.download.clone(),
            None,
            0,
            Some(400_000),
            Duration::from_secs(5),
            Some(fallback),
        ));
        // X sends 100 000 WRONG bytes, which the reader passes on, then breaks off.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BodyError>>(1);
        let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let (dl, st, dx) = (downloads.clone(), store.clone(), x.download.clone());
        let x_run =
            tokio::spawn(async move { dl.fill(&st, &dx, source(Some(400_000), body, None)).await });
        tx.send(Ok(Bytes::from(vec![0u8; 100_000]))).await.unwrap();
        let first = reader.next().await.unwrap().unwrap();
        assert!(first.iter().all(|b| *b == 0));
        tx.send(Err("reset".into())).await.unwrap();
        assert!(x_run.await.unwrap().is_err());
        let rest = tokio::spawn(async move {
            let r: Result<Vec<Bytes>, _> = reader.try_collect().await;
            r
        });
        let y = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(d) = downloads.running.lock().unwrap().get(&digest).cloned()
                    && d.registry == "y.example"
                {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(&data, 64_000)));
        downloads
            .fill(&store, &y, source(Some(400_000), body, None))
            .await
            .unwrap();
        let err = rest.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("do not hash"), "{err}");
    }

    #[tokio::test]
    async fn fetch_slots_bound_downloads_and_refuse_after_the_wait() {
        let limits = crate::config::FetchLimits {
            max_blob_size: u64::MAX,
            max_fetches: 2,
            max_fetches_per_registry: 1,
            wait: Duration::from_millis(100),
        };
        let slots = FetchSlots::new(&limits);
        let a = slots.acquire("a.example").await.expect("a first slot");
        assert!(slots.acquire("a.example").await.is_none(), "per registry");
        let b = slots.acquire("b.example").await.expect("another registry");
        assert!(slots.acquire("c.example").await.is_none(), "global");
        drop(a);
        assert!(slots.acquire("a.example").await.is_some(), "freed");
        drop(b);
    }

    fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, BodyError>> {
        data.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    #[tokio::test]
    async fn readers_follow_a_download_and_get_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let downloads = Downloads::default();
        let (d, new) = downloads.join_or_register(&store, &digest);
        assert!(new);
        let (d2, new2) = downloads.join_or_register(&store, &digest);
        assert!(!new2 && Arc::ptr_eq(&d, &d2));

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BodyError>>(1);
        let reader = tokio::spawn(collect(read_following(
            d.clone(),
            10,
            None,
            Duration::from_secs(5),
        )));
        let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let feeder = tokio::spawn(async move {
            for c in chunks(&data, 300_000) {
                tx.send(c).await.unwrap();
            }
            data
        });
        let n = downloads
            .fill(&store, &d, source(Some(1_000_000), body, None))
            .await
            .unwrap();
        let data = feeder.await.unwrap();
        assert_eq!(n, 1_000_000);
        assert_eq!(reader.await.unwrap().unwrap(), &data[10..]);
        assert_eq!(std::fs::read(fs.blob_path(&digest)).unwrap(), data);
        assert!(downloads.is_empty());
    }

    #[test]
    fn the_recent_window_is_bounded_and_sliced_without_copies() {
        let mut r = Recent::default();
        let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
        for i in 0..6u64 {
            r.push(i * 1024 * 1024, chunk.clone());
        }
        // Nothing is on disk yet: nothing may leave the window, whatever its size.
        assert_eq!(r.bytes, 6 * 1024 * 1024);
        assert!(r.get(0, 10).is_some());
        r.written(6 * 1024 * 1024);
        assert!(r.bytes <= RECENT_BYTES);
        assert!(r.get(0, 10).is_none(), "the oldest chunks left the window");
        let got = r.get(5 * 1024 * 1024 + 100, 50).unwrap();
        assert_eq!(got.len(), 50);
        let tail = r.get(6 * 1024 * 1024 - 10, 50).unwrap();
        assert_eq!(tail.len(), 10, "a slice never crosses its chunk");
        assert!(r.get(6 * 1024 * 1024, 1).is_none());
    }

    #[tokio::test]
    async fn wrong_bytes_fail_every_reader_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let digest = Digest::of(b"expected");
        let downloads = Downloads::default();
        let (d, _) = downloads.join_or_register(&store, &digest);
        let reader = read_following(d.clone(), 0, None, Duration::from_secs(5));
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(b"tampered", 3)));
        let err = downloads
            .fill(&store, &d, source(None, body, None))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not stored"), "{err}");
        let got: Result<Vec<Bytes>, _> = reader.try_collect().await;
        assert!(got.is_err());
        assert!(!fs.blob_path(&digest).exists());
        assert_eq!(crate::store::staging::tests::tmp_file_count(dir.path()), 0);
    }

    #[tokio::test]
    async fn short_body_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let digest = Digest::of(b"abcdef");
        let downloads = Downloads::default();
        let (d, _) = downloads.join_or_register(&store, &digest);
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(b"abc", 3)));
        let err = downloads
            .fill(&store, &d, source(Some(6), body, None))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("early"), "{err}");
        assert!(!fs.blob_path(&digest).exists());
    }

    #[tokio::test]
    async fn a_broken_body_is_resumed_from_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let downloads = Downloads::default();
        let (d, _) = downloads.join_or_register(&store, &digest);
        // The first answer breaks off after 300 000 bytes.
        let mut first: Vec<Result<Bytes, BodyError>> = chunks(&data[..300_000], 100_000);
        first.push(Err("connection reset".into()));
        let body: ByteStream = Box::pin(futures_util::stream::iter(first));
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let (data2, offsets2) = (data.clone(), offsets.clone());
        let resume: Resume = Box::new(move |from| {
            offsets2.lock().unwrap().push(from);
            let rest = chunks(&data2[from as usize..], 64_000);
            Box::pin(async move { Some(Box::pin(futures_util::stream::iter(rest)) as ByteStream) })
        });
        let reader = tokio::spawn(collect(read_following(
            d.clone(),
            0,
            None,
            Duration::from_secs(5),
        )));
        let n = downloads
            .fill(&store, &d, source(Some(700_000), body, Some(resume)))
            .await
            .unwrap();
        assert_eq!(n, 700_000);
        assert_eq!(*offsets.lock().unwrap(), vec![300_000]);
        assert_eq!(reader.await.unwrap().unwrap(), data);
        assert_eq!(std::fs::read(fs.blob_path(&digest)).unwrap(), data);
    }

    /// A download whose bytes are all in its temp file, with `state` published.
    fn written_download(store: &Arc<dyn Store>, data: &[u8], state: Progress) -> Arc<Download> {
        let downloads = Downloads::default();
        let (d, _) = downloads.join_or_register(store, &Digest::of(data));
        std::fs::write(d.staged.temp(), data).unwrap();
        d.publish(state);
        d
    }

    #[tokio::test]
    async fn a_verified_download_is_read_to_the_last_byte_before_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        let d = written_download(&store, &data, Progress::Verified { total: 200_000 });
        // Complete is never published: the reader must not wait for the fsync and rename.
        let got = collect(read_following(d, 0, None, Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn verified_bytes_are_still_served_when_storing_them_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let d = written_download(&store, &data, Progress::Verified { total: 300_000 });
        let mut reader = Box::pin(read_following(d.clone(), 0, None, Duration::from_secs(2)));
        let first = reader.next().await.unwrap().unwrap();
        assert!(first.len() < data.len(), "read in several chunks");
        // The fsync failed: the download fails and its temp file goes.
        d.publish(Progress::Failed(MirrorError::Internal(
            "cache write failed".into(),
        )));
        std::fs::remove_file(d.staged.temp()).unwrap();
        let rest: Vec<Bytes> = reader.try_collect().await.unwrap();
        assert_eq!([&[first][..], &rest[..]].concat().concat(), data);
    }

    #[tokio::test]
    async fn get_or_start_runs_one_download_to_the_store_and_unregisters_it() {
        let dir = tempfile::tempdir().unwrap();
        let (fs, store) = fs_store(dir.path());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 239) as u8).collect();
        let digest = Digest::of(&data);
        let downloads = Arc::new(Downloads::default());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = |downloads: &Arc<Downloads>| {
            let (fetches, data) = (fetches.clone(), data.clone());
            downloads.get_or_start(&store, &digest, "r.io", true, None, move |_| async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body: ByteStream = Box::pin(futures_util::stream::iter(chunks(&data, 100_000)));
                Ok(source(Some(data.len() as u64), body, None))
            })
        };
        let first = start(&downloads);
        let second = start(&downloads);
        assert!(first.started && !second.started);
        assert!(Arc::ptr_eq(&first.download, &second.download));
        let got = collect(follow(
            first.download.clone(),
            Some(first.interest),
            0,
            None,
            Duration::from_secs(5),
            None,
        ))
        .await
        .unwrap();
        assert_eq!(got, data);
        tokio::time::timeout(Duration::from_secs(5), downloads.stored.notified())
            .await
            .expect("the stored blob is announced");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(downloads.is_empty(), "unregistered once done");
        assert_eq!(std::fs::read(fs.blob_path(&digest)).unwrap(), data);
        // Stored now: a new start completes at once without asking the upstream.
        let again = start(&downloads);
        let mut p = again.download.subscribe();
        p.wait_for(|p| matches!(p, Progress::Complete { .. }))
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }
}
