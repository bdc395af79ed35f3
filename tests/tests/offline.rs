//! Issue 2: relying on the cache. With the upstream stopped, cached tags and digests are still
//! served; a cached digest pull never touches the upstream; `airGapped: true` never contacts
//! it at all.

use ociregistry_e2e::cache::{assert_image_cached, verify_cache};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::{Route, check_manifest_response};
use ociregistry_e2e::skopeo;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, media, require_upstream_tools, sha256_digest};

/// Manifest by digest (and children) and every blob; no tag involved.
fn pull_by_digest(proxy: &Proxy, route: Route<'_>, img: &PushedImage) {
    for m in img.manifests() {
        let r = proxy.get_manifest(route, &img.repo, &m.digest);
        check_manifest_response(&r, m, &format!("{} by digest", m.digest));
    }
    for b in img.blobs() {
        let r = proxy.get_blob(route, &img.repo, &b.digest, &[]);
        assert_eq!(r.status, 200, "blob {}: {}", b.digest, r.body_str());
        assert_eq!(sha256_digest(&r.body), b.digest);
    }
}

#[test]
fn upstream_stopped_cached_images_still_served() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("offline");
    let imgs = vec![
        images::seed(&up, &repo, "oci", ImageKind::small_oci()),
        images::seed(&up, &repo, "index", ImageKind::OciIndex),
        images::seed(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 2 }),
    ];
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .start();
    let host = up.host();
    for img in &imgs {
        proxy.pull_and_verify(Route::Ns(&host), img);
        assert_image_cached(proxy.image_path(), img);
    }
    up.stop();
    assert!(
        ociregistry_e2e::raw::request(&host, "GET", "/v2/", &[], None).is_err(),
        "upstream still answers"
    );
    for img in &imgs {
        let t0 = std::time::Instant::now();
        proxy.pull_and_verify(Route::Ns(&host), img); // by tag + children + blobs
        proxy.pull_and_verify(Route::InPath(&host), img);
        pull_by_digest(&proxy, Route::Ns(&host), img);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "serving from cache with the upstream down took {:?}",
            t0.elapsed()
        );
        // And skopeo, by tag and by digest.
        for reference in [
            format!("{}/{}:{}", proxy.host(), img.repo, img.tag),
            format!("{}/{}@{}", proxy.host(), img.repo, img.manifest.digest),
        ] {
            skopeo::pull_and_verify(&reference, img, " with upstream down");
        }
    }
    verify_cache(proxy.image_path());
}

/// A second pull by digest is served from the cache: the upstream's own log shows no request.
#[test]
fn cached_digest_pull_makes_no_upstream_request() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("nocontact");
    let img = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    pull_by_digest(&proxy, Route::Ns(&host), &img);
    assert_image_cached(proxy.image_path(), &img);
    let after_first = up.total_requests();
    assert!(
        up.count_requests("GET", &format!("/v2/{repo}/")) > 0,
        "the first pull went upstream"
    );
    pull_by_digest(&proxy, Route::Ns(&host), &img);
    pull_by_digest(&proxy, Route::InPath(&host), &img);
    // HEADs too.
    for b in img.blobs() {
        let r = proxy.head(&Route::Ns(&host).target(&repo, "blobs", &b.digest), &[]);
        assert_eq!(r.status, 200);
    }
    let accept = media::ALL_MANIFESTS.join(", ");
    for m in img.manifests() {
        let r = proxy.head(
            &Route::Ns(&host).target(&repo, "manifests", &m.digest),
            &[("Accept", &accept)],
        );
        assert_eq!(r.status, 200);
    }
    let log = up.access_log();
    assert_eq!(
        log.len(),
        after_first,
        "cached digest pulls reached the upstream: {:?}",
        &log[after_first..]
    );
}

/// A cached tag (not `latest`) is served without asking the upstream (default policy).
#[test]
fn cached_tag_pull_makes_no_upstream_request() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "tagcache", "v1.2.3", ImageKind::small_oci());
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    proxy.pull_and_verify(Route::Ns(&host), &img);
    assert_image_cached(proxy.image_path(), &img);
    let after_first = up.total_requests();
    proxy.pull_and_verify(Route::Ns(&host), &img);
    proxy.pull_and_verify(Route::InPath(&host), &img);
    let log = up.access_log();
    assert_eq!(
        log.len(),
        after_first,
        "a cached tag went upstream: {:?}",
        &log[after_first..]
    );
}

/// `airGapped: true`: what is cached is served, what is not fails, and the upstream sees
/// not a single request during the air-gapped proxy's life.
#[test]
fn air_gapped_never_contacts_upstream() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("airgap");
    let cached = images::seed(&up, &repo, "cached", ImageKind::OciIndex);
    let uncached = images::seed(&up, &repo, "uncached", ImageKind::small_oci());
    let cache_root = tempfile::tempdir().unwrap();
    let image_path = cache_root.path().join("cache");
    {
        let mut filler = Proxy::builder()
            .upstream(&up)
            .image_path(&image_path)
            .start();
        filler.pull_and_verify(Route::Ns(&up.host()), &cached);
        assert_image_cached(filler.image_path(), &cached);
        filler.stop();
    }
    let before = up.total_requests();
    let proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&image_path)
        .air_gapped(true)
        .start();
    let host = up.host();
    proxy.pull_and_verify(Route::Ns(&host), &cached);
    proxy.pull_and_verify(Route::InPath(&host), &cached);
    pull_by_digest(&proxy, Route::Ns(&host), &cached);
    // Not cached: an error, not a fetch.
    let r = proxy.get_manifest(Route::Ns(&host), &repo, "uncached");
    assert_ne!(r.status, 200, "air-gapped proxy served an uncached tag");
    assert!(
        !ociregistry_e2e::oci_error_codes(&r.body).is_empty(),
        "OCI error body: {}",
        r.body_str()
    );
    let r = proxy.get_manifest(Route::Ns(&host), &repo, &uncached.manifest.digest);
    assert_ne!(r.status, 200);
    let r = proxy.get_blob(
        Route::Ns(&host),
        &repo,
        &uncached.largest_blob().digest,
        &[],
    );
    assert_ne!(r.status, 200);
    let log = up.access_log();
    assert_eq!(
        log.len(),
        before,
        "the air-gapped proxy contacted the upstream: {:?}",
        &log[before..]
    );
}
