//! Issue 5: upstream faults never poison the cache or the client.
//!
//! A [`FaultProxy`] sits between the proxy and a real `docker-registry` (the proxy's registry
//! name is the fault proxy's address) and breaks requests on purpose: resets and truncations
//! mid-blob, flipped bytes, stalls, 429/500/503, refused connections. Each test asserts what
//! the client got (an aborted transfer or a 5xx, never a clean 200 of wrong or short bytes),
//! that every file in the cache verifies, that concurrent waiters all fail, that other
//! repositories keep being served, and that a pull succeeds once the fault is cleared.

use ociregistry_e2e::cache::{self, list_files, verify_cache};
use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::throttle::{GetOutcome, StreamingGet};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    BlobInfo, Proxy, RegistryEntry, assert_oci_error, require_upstream_tools, sha256_digest,
    wait_for,
};
use std::time::{Duration, Instant};

use ociregistry_e2e::SECS;
const MS: fn(u64) -> Duration = Duration::from_millis;

struct Rig {
    _up: Upstream,
    fp: FaultProxy,
    fhost: String,
    proxy: Proxy,
    /// One 4 MiB layer: the blob the faults hit.
    img: PushedImage,
    /// Another repository on the same upstream, never faulted.
    other: PushedImage,
}

fn rig(prefix: &str) -> Rig {
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, prefix, "v1", ImageKind::oci(1, 4 << 20));
    let other = images::seed_in(&up, &format!("{prefix}other"), "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    // A short answer/idle timeout so that stalls are noticed quickly.
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fp.host()))
        .config_line("pullTimeout: 1s")
        .start();
    Rig {
        _up: up,
        fhost: fp.host(),
        fp,
        proxy,
        img,
        other,
    }
}

impl Rig {
    fn route(&self) -> Route<'_> {
        Route::Ns(&self.fhost)
    }

    fn blob(&self) -> BlobInfo {
        self.img.largest_blob()
    }

    fn blob_target(&self) -> String {
        self.route()
            .target(&self.img.repo, "blobs", &self.blob().digest)
    }

    fn blob_path(&self) -> String {
        format!("/blobs/{}", self.blob().digest)
    }

    fn stored(&self) -> std::path::PathBuf {
        cache::blob_file(self.proxy.image_path(), &self.blob().digest)
    }

    fn tmp_files(&self) -> Vec<std::path::PathBuf> {
        cache::tmp_files(self.proxy.image_path())
    }

    fn get(&self) -> StreamingGet {
        StreamingGet::start(&self.proxy.host(), &self.blob_target(), SECS(20))
    }

    /// Waits until tmp/ is empty, then checks the blob is not stored and every cached
    /// file verifies.
    fn assert_nothing_stored(&self, ctx: &str) {
        wait_for(
            &format!("{ctx}: tmp/ empty after the failed download"),
            SECS(10),
            MS(20),
            || self.tmp_files().is_empty().then_some(()),
        );
        assert!(
            !self.stored().exists(),
            "{ctx}: the blob was stored although the upstream failed"
        );
        verify_cache(self.proxy.image_path());
    }
}

/// A client outcome that must be a recognisable failure: never a complete 200.
fn assert_failed(o: &GetOutcome, blob: &BlobInfo, ctx: &str) {
    assert!(
        !(o.status == 200 && o.complete()),
        "{ctx}: the client got a clean, complete 200 (sha256 {} vs {}, {} of {} bytes): {o:?}",
        o.sha256,
        blob.digest,
        o.received,
        blob.size
    );
    if let Some(e) = &o.error {
        assert!(
            !e.contains("timed out") && !e.contains("would block"),
            "{ctx}: the client was left hanging instead of being told: {e}"
        );
    }
    if o.status != 200 {
        assert!(
            o.status >= 500,
            "{ctx}: status {} for a broken upstream",
            o.status
        );
    }
}

/// A fault that hits every upstream request for the blob (the first answer and every
/// resume). Three clients wait on the same download (the first answer is delayed so that
/// they all join it); another repository is pulled meanwhile; all three fail; nothing is
/// stored; once the fault is cleared the pull succeeds and verifies.
fn persistent_blob_fault(prefix: &str, fault: Fault, ctx: &str) {
    if !require_upstream_tools() {
        return;
    }
    let r = rig(prefix);
    let rule = r.fp.add_rule(
        "GET",
        &r.blob_path(),
        Fault::Delayed(MS(600), Some(Box::new(fault))),
        None,
    );
    let started = Instant::now();
    let clients: Vec<StreamingGet> = (0..3).map(|_| r.get()).collect();
    // Another repository (cold) is served while the faulty download runs.
    r.proxy.pull_and_verify(r.route(), &r.other);
    let outcomes: Vec<GetOutcome> = clients.into_iter().map(|c| c.finish(SECS(25))).collect();
    let took = started.elapsed();
    for (i, o) in outcomes.iter().enumerate() {
        eprintln!("{ctx}: client {i}: {o:?}");
        assert_failed(o, &r.blob(), &format!("{ctx}: client {i}"));
    }
    let gets = r.fp.count("GET", &r.blob_path());
    assert!(
        (1..=4).contains(&gets),
        "{ctx}: one shared download with at most 3 resumes, but the upstream saw {gets} blob GETs: {:?}",
        r.fp.requests()
    );
    assert!(r.fp.hits(rule) >= 1, "{ctx}: the fault never fired");
    assert!(took < SECS(20), "{ctx}: failing took {took:?}");
    r.assert_nothing_stored(ctx);

    // Healed: the same pull succeeds and verifies.
    r.fp.clear();
    let o = r.get().finish(SECS(20));
    assert!(
        o.complete(),
        "{ctx}: pull after the fault was cleared: {o:?}"
    );
    assert_eq!(o.status, 200, "{ctx}");
    assert_eq!(o.sha256, r.blob().digest, "{ctx}: sha256 after healing");
    wait_for(
        &format!("{ctx}: the verified blob in the store"),
        SECS(10),
        MS(20),
        || r.stored().is_file().then_some(()),
    );
    r.proxy.pull_and_verify(r.route(), &r.img);
    verify_cache(r.proxy.image_path());
}

#[test]
fn reset_mid_blob_every_time_fails_all_waiters_and_stores_nothing() {
    persistent_blob_fault("fltreset", Fault::ResetAfter(1 << 20), "reset mid-body");
}

#[test]
fn truncated_blob_every_time_fails_all_waiters_and_stores_nothing() {
    persistent_blob_fault("flttrunc", Fault::TruncateAfter(1 << 20), "truncated body");
}

#[test]
fn flipped_blob_bytes_fail_all_waiters_and_store_nothing() {
    persistent_blob_fault(
        "fltflip",
        Fault::FlipByteAt(3 << 20),
        "sha256 mismatch (flipped byte)",
    );
}

#[test]
fn stalled_blob_fails_all_waiters_and_stores_nothing() {
    persistent_blob_fault(
        "fltstall",
        Fault::StallAfter {
            bytes: 1 << 20,
            pause: SECS(4),
        },
        "stalled upstream",
    );
}

/// One reset mid-blob: the download resumes with `Range: bytes=N-`, the client's transfer
/// goes on and is verified, the upstream saw exactly two GETs.
#[test]
fn one_reset_mid_blob_is_resumed_and_verified() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("fltresume");
    let rule =
        r.fp.add_rule("GET", &r.blob_path(), Fault::ResetAfter(1 << 20), Some(1));
    let o = r.get().finish(SECS(20));
    assert!(o.complete(), "{o:?}");
    assert_eq!(o.status, 200);
    assert_eq!(o.received, r.blob().size);
    assert_eq!(o.sha256, r.blob().digest, "client sha256");
    assert_eq!(r.fp.hits(rule), 1);
    let gets: Vec<_> =
        r.fp.requests()
            .into_iter()
            .filter(|q| q.method == "GET" && q.target.contains(&r.blob_path()))
            .collect();
    assert_eq!(gets.len(), 2, "one GET and one resume: {gets:?}");
    assert_eq!(gets[0].range, None, "the first GET asks for everything");
    let from: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the resume is `Range: bytes=N-`: {:?}", gets[1]));
    assert!(
        from > 0 && from <= 1 << 20,
        "resumed from {from}, but {} bytes were sent",
        1 << 20
    );
    wait_for("the verified blob in the store", SECS(10), MS(20), || {
        (r.stored().is_file() && r.tmp_files().is_empty()).then_some(())
    });
    let (blobs, _) = verify_cache(r.proxy.image_path());
    assert!(blobs >= 1);
}

/// A single 503 (and a single 500, and a single connection reset before an answer) is
/// retried: the client gets 200 and the upstream saw two requests.
#[test]
fn single_transient_failures_are_retried() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("fltretry");
    let repo = &r.img.repo;
    // Manifest by tag: one 503.
    let manifest_path = format!("/{repo}/manifests/v1");
    r.fp.add_rule("GET", &manifest_path, Fault::status(503), Some(1));
    let m = r.proxy.get_manifest(r.route(), repo, "v1");
    assert_eq!(m.status, 200, "after one 503: {}", m.body_str());
    assert_eq!(sha256_digest(&m.body), r.img.manifest.digest);
    assert_eq!(
        r.fp.count("GET", &manifest_path),
        2,
        "one 503 and one retry: {:?}",
        r.fp.requests()
    );
    // Blob: one 500.
    let blob = r.blob();
    r.fp.add_rule("GET", &r.blob_path(), Fault::status(500), Some(1));
    let o = r.get().finish(SECS(20));
    assert!(o.complete() && o.status == 200, "after one 500: {o:?}");
    assert_eq!(o.sha256, blob.digest);
    assert_eq!(
        r.fp.count("GET", &r.blob_path()),
        2,
        "{:?}",
        r.fp.requests()
    );
    // Config blob: one reset before any answer byte.
    let cfg = r.img.manifest.blobs[0].clone();
    let cfg_path = format!("/blobs/{}", cfg.digest);
    r.fp.add_rule("GET", &cfg_path, Fault::ResetAfter(0), Some(1));
    let b = r.proxy.get_blob(r.route(), repo, &cfg.digest, &[]);
    // A reset after the head was sent is a broken body (resumed), not a retry: either way
    // the client gets the verified blob.
    assert_eq!(b.status, 200, "{}", b.body_str());
    assert_eq!(sha256_digest(&b.body), cfg.digest);
    assert_eq!(r.fp.count("GET", &cfg_path), 2, "{:?}", r.fp.requests());
    verify_cache(r.proxy.image_path());
}

/// Persistent 500 / 503 / 429: passed on as 502 / 503 / 429 (with Retry-After) with an OCI
/// body, retried a bounded number of times (never for 429), nothing stored; healed, the
/// pull succeeds (after a 429 only once its Retry-After is over: until then the mirror
/// sends nothing and answers 429 itself).
#[test]
fn persistent_error_statuses_are_passed_on_and_nothing_is_stored() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("fltstatus");
    let repo = r.img.repo.clone();
    let manifest_path = format!("/{repo}/manifests/v1");
    for (status, want, want_code, max_requests, retry_after) in [
        (500u16, 502u16, "", 3usize, "17"),
        (503, 503, "", 3, "17"),
        (429, 429, "TOOMANYREQUESTS", 1, "1"),
    ] {
        let before = r.fp.count("GET", &manifest_path);
        let rule = r.fp.add_rule(
            "GET",
            &manifest_path,
            Fault::status(status).with_header("Retry-After", retry_after),
            None,
        );
        let t = Instant::now();
        let m = r.proxy.get_manifest(r.route(), &repo, "v1");
        assert!(t.elapsed() < SECS(10), "{status}: took {:?}", t.elapsed());
        assert_eq!(m.status, want, "upstream {status}: {}", m.body_str());
        let codes = ociregistry_e2e::oci_error_codes(&m.body);
        assert!(
            !codes.is_empty(),
            "upstream {status}: not an OCI error body: {}",
            m.body_str()
        );
        if !want_code.is_empty() {
            assert_oci_error(&m.body, want_code, &format!("upstream {status}"));
        }
        if status == 429 {
            assert_eq!(m.header("Retry-After"), Some("1"), "Retry-After passed on");
        }
        let n = r.fp.count("GET", &manifest_path) - before;
        assert!(
            (1..=max_requests).contains(&n),
            "upstream {status}: {n} requests (at most {max_requests})"
        );
        r.fp.remove(rule);
        assert!(
            !r.proxy
                .image_path()
                .join("manifests/sha256")
                .join(r.img.manifest.hex())
                .exists(),
            "upstream {status}: the manifest was stored"
        );
    }
    // Blob: 429 passed on (once the manifest's Retry-After is over and the blob is asked).
    let rule = r.fp.add_rule(
        "GET",
        &r.blob_path(),
        Fault::status(429).with_header("Retry-After", "5"),
        None,
    );
    let b = ociregistry_e2e::wait_for(
        "the blob request to reach the upstream",
        SECS(10),
        std::time::Duration::from_millis(200),
        || {
            let b = r.proxy.get_blob(r.route(), &repo, &r.blob().digest, &[]);
            assert_eq!(b.status, 429, "blob 429: {}", b.body_str());
            (r.fp.hits(rule) > 0).then_some(b)
        },
    );
    assert_oci_error(&b.body, "TOOMANYREQUESTS", "blob 429");
    assert_eq!(b.header("Retry-After"), Some("5"));
    r.fp.remove(rule);
    r.assert_nothing_stored("blob 429");
    ociregistry_e2e::wait_for(
        "the manifest once Retry-After is over",
        SECS(15),
        std::time::Duration::from_millis(250),
        || (r.proxy.get_manifest(r.route(), &repo, "v1").status == 200).then_some(()),
    );
    r.proxy.pull_and_verify(r.route(), &r.img);
    verify_cache(r.proxy.image_path());
}

/// Connection refused: 502 with an OCI body within bounded time; cached content and other
/// upstreams keep being served; listening again, the pull succeeds.
#[test]
fn connection_refused_is_a_5xx_and_heals() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("fltrefused");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let cached = images::seed(&up, &repo, "cached", ImageKind::small_oci());
    let direct = images::seed_in(&up, "fltdirect", "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fhost))
        .upstream(&up)
        .start();
    proxy.pull_and_verify(Route::Ns(&fhost), &cached);
    fp.refuse(true);
    let t = Instant::now();
    let m = proxy.get_manifest(Route::Ns(&fhost), &repo, "v1");
    assert!(t.elapsed() < SECS(10), "refused took {:?}", t.elapsed());
    assert!(m.status >= 500, "refused: {} {}", m.status, m.body_str());
    assert!(
        !ociregistry_e2e::oci_error_codes(&m.body).is_empty(),
        "refused: not an OCI error body: {}",
        m.body_str()
    );
    let b = proxy.get_blob(Route::Ns(&fhost), &repo, &img.largest_blob().digest, &[]);
    assert!(b.status >= 500, "refused blob: {}", b.status);
    // Meanwhile: cached content of this upstream, and another upstream, are served.
    proxy.pull_and_verify(Route::Ns(&fhost), &cached);
    proxy.pull_and_verify(Route::Ns(&up.host()), &direct);
    fp.refuse(false);
    proxy.pull_and_verify(Route::Ns(&fhost), &img);
    verify_cache(proxy.image_path());
}

/// A manifest whose bytes do not match the requested digest (or the announced
/// Docker-Content-Digest for a tag) is refused with 502 and not stored.
#[test]
fn manifest_with_wrong_bytes_is_refused_and_not_stored() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("fltmanifest");
    let repo = r.img.repo.clone();
    let d = r.img.manifest.digest.clone();
    let rule =
        r.fp.add_rule("GET", "/manifests/", Fault::FlipByteAt(10), None);
    for reference in [d.as_str(), "v1"] {
        let m = r.proxy.get_manifest(r.route(), &repo, reference);
        assert_eq!(m.status, 502, "{reference}: {}", m.body_str());
        assert!(
            !ociregistry_e2e::oci_error_codes(&m.body).is_empty(),
            "{reference}: {}",
            m.body_str()
        );
    }
    assert!(r.fp.hits(rule) >= 2);
    let (_, manifests) = verify_cache(r.proxy.image_path());
    assert_eq!(manifests, 0, "a manifest was stored");
    assert!(
        list_files(&r.proxy.image_path().join("tags")).is_empty(),
        "a tag was recorded: {:?}",
        list_files(&r.proxy.image_path().join("tags"))
    );
    r.fp.clear();
    r.proxy.pull_and_verify(r.route(), &r.img);
}
