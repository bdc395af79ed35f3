//! Issue 5: `Range` on blobs, cached and still downloading, checked byte for byte against the
//! upstream's blob: `bytes=a-b`, `bytes=a-`, `bytes=-n` answer 206 with the right
//! `Content-Range`; unsatisfiable ranges 416 with `Content-Range: bytes */N`; several ranges
//! the whole blob (200); `HEAD` gives `Content-Length` and `Accept-Ranges: bytes`.

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::raw::{self, RawResponse};
use ociregistry_e2e::throttle::Throttle;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, require_upstream_tools, sha256_digest};

use ociregistry_e2e::SECS;

/// The blob's bytes as the upstream serves them.
fn upstream_bytes(up: &Upstream, repo: &str, digest: &str) -> Vec<u8> {
    let r = raw::request(
        &up.host(),
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        None,
    )
    .expect("GET blob from the upstream");
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), digest);
    r.body
}

/// Checks one range answer against `data`; `want` is (first, last) inclusive or None for a
/// full 200.
fn check(r: &RawResponse, data: &[u8], want: Option<(u64, u64)>, ctx: &str) {
    let total = data.len() as u64;
    match want {
        Some((a, b)) => {
            assert_eq!(r.status, 206, "{ctx}: status; body {}", r.body_str());
            assert_eq!(
                r.header("Content-Range"),
                Some(format!("bytes {a}-{b}/{total}").as_str()),
                "{ctx}: Content-Range"
            );
            assert_eq!(
                r.header("Content-Length"),
                Some((b - a + 1).to_string().as_str()),
                "{ctx}: Content-Length"
            );
            assert!(
                r.body == data[a as usize..=b as usize],
                "{ctx}: bytes differ ({} bytes received)",
                r.body.len()
            );
        }
        None => {
            assert_eq!(r.status, 200, "{ctx}: status");
            assert!(r.body == data, "{ctx}: full body differs");
        }
    }
}

/// Every kind of range, on a blob of `total` bytes: (header, expected).
fn cases(total: u64) -> Vec<(String, Option<(u64, u64)>)> {
    vec![
        ("bytes=0-0".into(), Some((0, 0))),
        ("bytes=0-1023".into(), Some((0, 1023))),
        ("bytes=1000-200000".into(), Some((1000, 200_000))),
        (
            format!("bytes={}-", total - 777),
            Some((total - 777, total - 1)),
        ),
        ("bytes=5-".into(), Some((5, total - 1))),
        ("bytes=-1".into(), Some((total - 1, total - 1))),
        ("bytes=-4096".into(), Some((total - 4096, total - 1))),
        // Past the end: clipped.
        (
            format!("bytes={}-{}", total - 10, total + 5000),
            Some((total - 10, total - 1)),
        ),
        (format!("bytes=-{}", total + 10), Some((0, total - 1))),
        // Several ranges: the whole blob.
        ("bytes=0-10,20-30".into(), None),
    ]
}

fn assert_unsatisfiable(p: &Proxy, target: &str, total: u64) {
    for h in [
        format!("bytes={total}-"),
        format!("bytes={}-{}", total + 1, total + 100),
        "bytes=-0".to_owned(),
    ] {
        let r = p.get(target, &[("Range", &h)]);
        assert_eq!(r.status, 416, "{h}: {}", r.body_str());
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes */{total}").as_str()),
            "{h}: Content-Range of a 416"
        );
        assert!(
            !ociregistry_e2e::oci_error_codes(&r.body).is_empty(),
            "{h}: 416 without an OCI body: {}",
            r.body_str()
        );
    }
}

#[test]
fn ranges_on_a_cached_blob_byte_for_byte() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("rangecached");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 1 << 20));
    let blob = img.largest_blob();
    let data = upstream_bytes(&up, &repo, &blob.digest);
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    let route = Route::Ns(&host);
    proxy.pull_and_verify(route, &img);
    let target = route.target(&repo, "blobs", &blob.digest);
    let gets_before = up.count_requests("GET", &format!("/blobs/{}", blob.digest));
    for (h, want) in cases(blob.size) {
        let r = proxy.get(&target, &[("Range", &h)]);
        check(&r, &data, want, &format!("cached {h}"));
    }
    assert_unsatisfiable(&proxy, &target, blob.size);
    // HEAD: length and Accept-Ranges, no body.
    let h = proxy.head(&target, &[]);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("Content-Length"),
        Some(blob.size.to_string().as_str())
    );
    assert_eq!(h.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        h.header("Docker-Content-Digest"),
        Some(blob.digest.as_str())
    );
    let h = proxy.head(&target, &[("Range", "bytes=10-19")]);
    assert_eq!(h.status, 206, "HEAD with a range");
    assert_eq!(h.header("Content-Length"), Some("10"));
    // Served from the cache: the upstream saw no further blob request.
    assert_eq!(
        up.count_requests("GET", &format!("/blobs/{}", blob.digest)),
        gets_before,
        "ranges went upstream"
    );
}

/// Ranges of a blob whose download is still running (the upstream is held after 2 MiB):
/// a range inside what has arrived is answered at once; a range past it (the tail) is
/// answered once the bytes arrive; both byte for byte; the upstream is asked once.
#[test]
fn ranges_on_a_blob_still_downloading() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("rangeflight");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 6 << 20));
    let blob = img.largest_blob();
    let data = upstream_bytes(&up, &repo, &blob.digest);
    let gets_direct = up.count_requests("GET", &format!("/blobs/{}", blob.digest));
    let throttle = Throttle::start(&up.host());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&throttle.host()))
        .start();
    let thost = throttle.host();
    let target = Route::Ns(&thost).target(&repo, "blobs", &blob.digest);
    throttle.hold_after(Some(2 << 20));
    // Start the download with a range request for the tail, which must wait.
    let (addr, t2) = (proxy.host(), target.clone());
    let tail = std::thread::spawn(move || {
        raw::request_timeout(
            &addr,
            "GET",
            &t2,
            &[("Range", "bytes=-100000")],
            None,
            SECS(30),
        )
    });
    throttle.wait_for("the upstream transfer to be held", SECS(10), |s| {
        s.held >= 1
    });
    // In flight: ranges inside the first MiB answer at once.
    for (h, want) in [
        ("bytes=0-1023", (0, 1023)),
        ("bytes=4096-1048575", (4096, 1_048_575)),
    ] {
        let r = raw::request_timeout(
            &proxy.host(),
            "GET",
            &target,
            &[("Range", h)],
            None,
            SECS(10),
        )
        .unwrap_or_else(|e| panic!("in-flight {h}: {e}"));
        check(&r, &data, Some(want), &format!("in-flight {h}"));
    }
    // Unsatisfiable while downloading (the size is known from the upstream's Content-Length).
    let r = raw::request_timeout(
        &proxy.host(),
        "GET",
        &target,
        &[("Range", &format!("bytes={}-", blob.size))],
        None,
        SECS(10),
    )
    .expect("416 in flight");
    assert_eq!(r.status, 416, "in-flight unsatisfiable: {}", r.body_str());
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{}", blob.size).as_str())
    );
    assert!(
        !tail.is_finished(),
        "the tail range finished while the upstream is held"
    );
    throttle.release();
    let r = tail.join().expect("tail thread").expect("tail range");
    check(
        &r,
        &data,
        Some((blob.size - 100_000, blob.size - 1)),
        "in-flight tail bytes=-100000",
    );
    // The middle, after completion, from the store.
    let r = proxy.get(&target, &[("Range", "bytes=3000000-3999999")]);
    check(&r, &data, Some((3_000_000, 3_999_999)), "after completion");
    let gets = up.count_requests("GET", &format!("/blobs/{}", blob.digest)) - gets_direct;
    assert_eq!(
        gets,
        1,
        "one upstream GET for every range: {:?}",
        up.access_log()
    );
}
