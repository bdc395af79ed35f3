//! Issue 2: clients are streamed while the upstream fetch is still running, and an upstream
//! that dies mid-body never leaves a client with a clean 200 of wrong bytes nor anything in
//! the cache.
//!
//! A [`Throttle`] sits between the proxy and the upstream (the proxy's registry name is the
//! throttle's address) and holds the upstream's bytes after the first K until released.

use ociregistry_e2e::cache;
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{BlobInfo, Proxy, RegistryEntry, require_upstream_tools, wait_for};
use std::path::Path;
use std::time::Duration;

/// Upstream bytes (headers included) let through per connection before the hold.
const HOLD_AFTER: u64 = 2 << 20;
use ociregistry_e2e::SECS;

struct Rig {
    up: Upstream,
    throttle: Throttle,
    proxy: Proxy,
    repo: String,
    blob: BlobInfo,
}

fn rig(prefix: &str) -> Rig {
    let up = Upstream::anonymous();
    let repo = images::unique_repo(prefix);
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 8 << 20));
    let blob = img.largest_blob();
    assert!(blob.size > 3 * HOLD_AFTER);
    let throttle = Throttle::start(&up.host());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&throttle.host()))
        .start();
    Rig {
        up,
        throttle,
        proxy,
        repo,
        blob,
    }
}

impl Rig {
    fn target(&self) -> String {
        Route::Ns(&self.throttle.host()).target(&self.repo, "blobs", &self.blob.digest)
    }

    fn stored(&self) -> std::path::PathBuf {
        cache::blob_file(self.proxy.image_path(), &self.blob.digest)
    }

    fn tmp_files(&self) -> Vec<std::path::PathBuf> {
        cache::tmp_files(self.proxy.image_path())
    }
}

fn assert_not_stored(p: &Path) {
    assert!(!p.exists(), "{} is in the cache", p.display());
}

#[test]
fn clients_are_streamed_while_the_upstream_fetch_is_still_running() {
    if !require_upstream_tools() {
        return;
    }
    let mut r = rig("stream");
    r.throttle.hold_after(Some(HOLD_AFTER));
    let a = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(20));
    r.throttle
        .wait_for("the upstream transfer to be held", SECS(10), |s| {
            s.held >= 1
        });
    let pa = a.wait_received(64 * 1024, SECS(10));
    assert!(
        !pa.done,
        "client A finished while the upstream is held: {pa:?}"
    );
    assert_eq!(pa.status, Some(200), "client A status");
    assert_eq!(
        pa.content_length,
        Some(r.blob.size),
        "client A Content-Length"
    );
    assert!(
        pa.received <= HOLD_AFTER,
        "more bytes than the upstream sent"
    );
    // Mid-transfer: not in the store, a temp file in tmp/.
    assert_not_stored(&r.stored());
    assert!(
        !r.tmp_files().is_empty(),
        "no download in progress under tmp/"
    );

    // A second client joins mid-transfer and is streamed what is there too.
    let b = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(20));
    let pb = b.wait_received(64 * 1024, SECS(10));
    assert!(
        !pb.done,
        "client B finished while the upstream is held: {pb:?}"
    );
    assert_eq!(pb.status, Some(200), "client B status");
    let st = r.throttle.stats();
    assert!(st.held >= 1, "still held: {st:?}");
    assert_not_stored(&r.stored());

    r.throttle.release();
    for (name, c) in [("A", a), ("B", b)] {
        let o = c.finish(SECS(30));
        assert!(o.complete(), "client {name}: {o:?}");
        assert_eq!(o.status, 200, "client {name}");
        assert_eq!(o.received, r.blob.size, "client {name} length");
        assert_eq!(o.sha256, r.blob.digest, "client {name} sha256");
    }
    let gets =
        r.up.count_requests("GET", &format!("/blobs/{}", r.blob.digest));
    assert_eq!(
        gets,
        1,
        "upstream GETs of the blob: {:?}",
        r.up.access_log()
    );
    wait_for(
        "the verified blob in the store and tmp/ empty",
        SECS(10),
        Duration::from_millis(20),
        || (r.stored().is_file() && r.tmp_files().is_empty()).then_some(()),
    );
    assert_eq!(
        ociregistry_e2e::sha256_file(&r.stored()),
        r.blob.digest,
        "stored blob"
    );
}

/// The upstream connection dies mid-body once: the proxy resumes the download from where
/// it stopped (`Range: bytes=N-`), the client's transfer simply goes on, and the blob is
/// stored verified.
#[test]
fn an_upstream_dying_mid_body_is_resumed_and_the_client_never_notices() {
    if !require_upstream_tools() {
        return;
    }
    let mut r = rig("streamresume");
    r.throttle.hold_after(Some(HOLD_AFTER));
    let a = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(20));
    r.throttle
        .wait_for("the upstream transfer to be held", SECS(10), |s| {
            s.held >= 1
        });
    let pa = a.wait_received(64 * 1024, SECS(10));
    assert!(!pa.done, "{pa:?}");
    r.throttle.kill_all();
    // The resumed request is a new connection, held again after HOLD_AFTER bytes.
    r.throttle
        .wait_for("the resumed transfer to be held", SECS(10), |s| {
            s.connections >= 2 && s.held >= 1
        });
    assert!(
        !a.progress().done,
        "client ended while the download resumes"
    );
    r.throttle.release();
    let o = a.finish(SECS(30));
    assert!(o.complete(), "{o:?}");
    assert_eq!(o.status, 200);
    assert_eq!(o.received, r.blob.size);
    assert_eq!(o.sha256, r.blob.digest, "client sha256");
    let gets =
        r.up.count_requests("GET", &format!("/blobs/{}", r.blob.digest));
    assert_eq!(gets, 2, "one GET and one resume: {:?}", r.up.access_log());
    wait_for(
        "the verified blob in the store and tmp/ empty",
        SECS(10),
        Duration::from_millis(20),
        || (r.stored().is_file() && r.tmp_files().is_empty()).then_some(()),
    );
    assert_eq!(ociregistry_e2e::sha256_file(&r.stored()), r.blob.digest);
}

/// An upstream that dies mid-body every time: after a bounded number of resumes the client's
/// transfer is aborted (never a clean 200 of wrong bytes, never left hanging), nothing is
/// stored, no temp file is left, and a later pull succeeds once the upstream heals.
#[test]
fn an_upstream_that_keeps_dying_aborts_the_client_and_stores_nothing() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("streamkill");
    r.throttle.hold_after(Some(HOLD_AFTER));
    let a = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(15));
    let mut killed_conns = 0;
    for _ in 0..8 {
        let outcome = wait_for(
            "a held upstream transfer, or the client to end",
            SECS(10),
            Duration::from_millis(10),
            || {
                if a.progress().done {
                    return Some(false);
                }
                let s = r.throttle.stats();
                (s.held >= 1 && s.connections > killed_conns).then_some(true)
            },
        );
        if !outcome {
            break;
        }
        killed_conns = r.throttle.stats().connections;
        r.throttle.kill_all();
    }
    let conns = r.throttle.stats().connections;
    assert!(
        conns <= 5,
        "resumes are bounded: {conns} upstream connections"
    );
    let o = a.finish(SECS(20));
    eprintln!("client after the upstream kept dying: {o:?}");
    assert!(
        !(o.error.is_none() && o.sha256 != r.blob.digest && o.status == 200),
        "a clean 200 with wrong bytes: {o:?}"
    );
    assert!(!o.complete(), "the client got a complete body: {o:?}");
    assert!(
        o.received < r.blob.size,
        "client received everything: {o:?}"
    );
    if let Some(e) = &o.error {
        assert!(
            !e.contains("timed out") && !e.contains("would block"),
            "the client was left hanging instead of being aborted: {e}"
        );
    }
    wait_for(
        "tmp/ to be empty after the failed download",
        SECS(10),
        Duration::from_millis(20),
        || r.tmp_files().is_empty().then_some(()),
    );
    assert_not_stored(&r.stored());

    // Not held any more: a later pull succeeds and is verified.
    r.throttle.release();
    let c = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(20));
    let o = c.finish(SECS(30));
    assert!(o.complete(), "later pull: {o:?}");
    assert_eq!(o.status, 200);
    assert_eq!(o.sha256, r.blob.digest, "later pull sha256");
    wait_for(
        "the verified blob in the store",
        SECS(10),
        Duration::from_millis(20),
        || r.stored().is_file().then_some(()),
    );
    assert!(
        r.tmp_files().is_empty(),
        "tmp/ not empty: {:?}",
        r.tmp_files()
    );
}

/// With the upstream throttled to 2 MiB/s (an 8 MiB blob takes about 4 s), the client has
/// its first MiB long before the upstream has sent everything: bytes are passed on as they
/// arrive, not after the whole blob was fetched and verified.
#[test]
fn a_slow_upstream_is_streamed_not_buffered() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("streamslow");
    r.throttle.rate(Some(2 << 20));
    let a = StreamingGet::start(&r.proxy.host(), &r.target(), SECS(20));
    let pa = a.wait_received(1 << 20, SECS(10));
    let st = r.throttle.stats();
    assert!(!pa.done, "{pa:?}");
    assert!(
        st.bytes_down < r.blob.size,
        "the client's first MiB came only after the upstream sent the whole blob: {st:?}"
    );
    assert_not_stored(&r.stored());
    let o = a.finish(SECS(30));
    assert!(o.complete(), "{o:?}");
    assert_eq!(o.sha256, r.blob.digest);
}
