//! Issue 2: many clients at once. 20 clients asking for the same cold blob (or manifest)
//! cause ONE upstream GET, per the upstream's own access log, and all 20 get verified bytes.

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::{Route, check_manifest_response};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, media, raw, require_upstream_tools, sha256_digest};
use std::sync::{Arc, Barrier};

const CLIENTS: usize = 20;

/// Runs `CLIENTS` threads that start `f` at the same moment; returns their results.
fn all_at_once<T: Send + 'static>(f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let b = barrier.clone();
            let f = f.clone();
            std::thread::spawn(move || {
                b.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect()
}

#[test]
fn twenty_clients_same_cold_blob_one_upstream_get() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("conc");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 12 << 20));
    let blob = img.largest_blob();
    assert!(blob.size > 12 << 20);
    let proxy = Proxy::builder().upstream(&up).start();
    let before = up.count_requests("GET", &format!("/blobs/{}", blob.digest));
    assert_eq!(before, 0, "seeding does not GET blobs");
    let host = proxy.host();
    let target = Route::Ns(&up.host()).target(&repo, "blobs", &blob.digest);
    let results = all_at_once(move |_| {
        let r = raw::request(&host, "GET", &target, &[], None).expect("GET blob");
        (r.status, r.body.len() as u64, sha256_digest(&r.body))
    });
    for (i, (status, len, digest)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "client {i}");
        assert_eq!(*len, blob.size, "client {i} length");
        assert_eq!(digest, &blob.digest, "client {i} sha256");
    }
    let gets = up.count_requests("GET", &format!("/blobs/{}", blob.digest));
    assert_eq!(gets, 1, "upstream GETs for the blob: {:?}", up.access_log());
}

#[test]
fn twenty_clients_same_cold_manifest_one_upstream_get() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo_d = images::unique_repo("concmd");
    let repo_t = images::unique_repo("concmt");
    let by_digest = images::seed(&up, &repo_d, "v1", ImageKind::OciIndex);
    let by_tag = images::seed(&up, &repo_t, "v1", ImageKind::OciIndex);
    let proxy = Proxy::builder().upstream(&up).start();
    let accept = media::ALL_MANIFESTS.join(", ");
    // Seeding read the manifests back; count from here on.
    let before_d = up.count_requests("GET", &format!("/v2/{repo_d}/manifests/"));
    let before_t = up.count_requests("GET", &format!("/v2/{repo_t}/manifests/"));

    // By digest.
    let host = proxy.host();
    let target = Route::Ns(&up.host()).target(&repo_d, "manifests", &by_digest.manifest.digest);
    let acc = accept.clone();
    let results = all_at_once(move |_| {
        raw::request(&host, "GET", &target, &[("Accept", &acc)], None).expect("GET manifest")
    });
    for r in &results {
        check_manifest_response(r, &by_digest.manifest, "concurrent manifest by digest");
    }
    let gets = up.count_requests("GET", &format!("/v2/{repo_d}/manifests/")) - before_d;
    assert_eq!(gets, 1, "upstream manifest GETs: {:?}", up.access_log());

    // By tag: one upstream GET of a manifest, whatever the proxy's HEAD/GET strategy.
    let host = proxy.host();
    let target = Route::Ns(&up.host()).target(&repo_t, "manifests", "v1");
    let results = all_at_once(move |_| {
        raw::request(&host, "GET", &target, &[("Accept", &accept)], None).expect("GET manifest")
    });
    for r in &results {
        check_manifest_response(r, &by_tag.manifest, "concurrent manifest by tag");
    }
    let gets = up.count_requests("GET", &format!("/v2/{repo_t}/manifests/")) - before_t;
    assert_eq!(gets, 1, "upstream manifest GETs: {:?}", up.access_log());
}
