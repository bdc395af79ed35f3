//! Issue 2: pulling through the proxy from an anonymous upstream, with real skopeo and with
//! plain HTTP (`?ns=`, in-path), every manifest and blob checked against the upstream's.

use ociregistry_e2e::cache::{assert_image_cached, verify_cache};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::{Route, check_manifest_response};
use ociregistry_e2e::skopeo::{self, PullOptions};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, media, require_upstream_tools, sha256_digest};

/// skopeo (a containers/image client) pulls every image kind through the proxy. skopeo
/// cannot write an in-path upstream with a port, so it reaches the upstream via `defaultNs`.
#[test]
fn skopeo_pulls_every_image_kind_through_the_proxy() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("skopeo");
    let imgs = images::seed_all(&up, &repo);
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .start();
    for img in &imgs {
        let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
        skopeo::pull_and_verify(&reference, img, "");
        // By digest too.
        let by_digest = format!("{}/{}@{}", proxy.host(), img.repo, img.manifest.digest);
        skopeo::pull_and_verify(&by_digest, img, "");
    }
    // Without --all, skopeo picks the amd64 instance of the index.
    let dest = tempfile::tempdir().unwrap();
    skopeo::pull_to_dir(
        &format!("{}/{}:index", proxy.host(), repo),
        dest.path(),
        &PullOptions::default(),
    )
    .unwrap();
    skopeo::verify_dir_pull(dest.path(), &imgs[1], false);

    let (blobs, manifests) = verify_cache(proxy.image_path());
    assert!(blobs >= imgs.iter().map(|i| i.blobs().len()).sum::<usize>());
    assert!(
        manifests >= 5,
        "index + 2 children + oci + v2s2 manifests cached"
    );
    for img in &imgs {
        assert_image_cached(proxy.image_path(), img);
    }
}

/// Plain HTTP through `?ns=` (containerd) and in-path (`/v2/127.0.0.1:PORT/repo/...`):
/// the upstream's exact manifest bytes, media type and digest; every blob verified.
#[test]
fn http_pulls_with_ns_and_in_path() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("http");
    let imgs = images::seed_all(&up, &repo);
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    for img in &imgs {
        proxy.pull_and_verify(Route::Ns(&host), img); // cold
        proxy.pull_and_verify(Route::InPath(&host), img); // warm
    }
    // Cold through in-path as well, on a fresh cache.
    let proxy2 = Proxy::builder().upstream(&up).start();
    for img in &imgs {
        proxy2.pull_and_verify(Route::InPath(&host), img);
        proxy2.pull_and_verify(Route::Ns(&host), img);
    }
    // Media types as the upstream serves them.
    assert_eq!(imgs[0].manifest.media_type, media::OCI_MANIFEST);
    assert_eq!(imgs[1].manifest.media_type, media::OCI_INDEX);
    assert_eq!(imgs[1].children.len(), 2);
    assert_eq!(imgs[2].manifest.media_type, media::DOCKER_MANIFEST);
    for p in [&proxy, &proxy2] {
        verify_cache(p.image_path());
        for img in &imgs {
            assert_image_cached(p.image_path(), img);
        }
    }
}

/// The `ns` value may arrive unencoded (`ns=127.0.0.1:PORT`) as well as encoded.
#[test]
fn ns_parameter_encoded_and_plain() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("nsenc");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let proxy = Proxy::builder().upstream(&up).start();
    let accept = media::ALL_MANIFESTS.join(", ");
    let r = proxy.get(
        &format!("/v2/{repo}/manifests/v1?ns={}", up.host()),
        &[("Accept", &accept)],
    );
    check_manifest_response(&r, &img.manifest, "plain ns");
    let r = proxy.get(
        &format!(
            "/v2/{repo}/manifests/v1?ns={}",
            up.host().replace(':', "%3a")
        ),
        &[("Accept", &accept)],
    );
    check_manifest_response(&r, &img.manifest, "lower-case %3a ns");
}

/// What containerd sends: `HEAD /v2/R/manifests/TAG?ns=HOST%3APORT` cold, no `/v2/` ping,
/// then GETs by digest. HEADs carry the headers of the GET and no body.
#[test]
fn head_requests_on_manifests_and_blobs() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("head");
    let oci = images::seed(&up, &repo, "oci", ImageKind::small_oci());
    let v2 = images::seed(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 1 });
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    let accept = media::ALL_MANIFESTS.join(", ");
    for img in [&oci, &v2] {
        // Cold HEAD by tag, then HEAD again (warm), then by digest.
        for reference in [
            img.tag.as_str(),
            img.tag.as_str(),
            img.manifest.digest.as_str(),
        ] {
            let r = proxy.head(
                &Route::Ns(&host).target(&img.repo, "manifests", reference),
                &[("Accept", &accept)],
            );
            assert_eq!(r.status, 200, "HEAD manifest {reference}");
            assert!(r.body.is_empty());
            assert_eq!(
                r.header("Docker-Content-Digest"),
                Some(img.manifest.digest.as_str())
            );
            assert_eq!(
                r.header("Content-Type")
                    .map(|c| c.split(';').next().unwrap().trim()),
                Some(img.manifest.media_type.as_str())
            );
            assert_eq!(
                r.header("Content-Length"),
                Some(img.manifest.bytes.len().to_string().as_str())
            );
        }
        let r = proxy.get(
            &Route::Ns(&host).target(&img.repo, "manifests", &img.manifest.digest),
            &[("Accept", &accept)],
        );
        check_manifest_response(&r, &img.manifest, "GET by digest after HEAD");
        for b in img.blobs() {
            for _ in 0..2 {
                // cold, then warm
                let r = proxy.head(&Route::Ns(&host).target(&img.repo, "blobs", &b.digest), &[]);
                assert_eq!(r.status, 200, "HEAD blob {}", b.digest);
                assert!(r.body.is_empty());
                assert_eq!(
                    r.header("Content-Length"),
                    Some(b.size.to_string().as_str()),
                    "HEAD blob Content-Length"
                );
                if let Some(d) = r.header("Docker-Content-Digest") {
                    assert_eq!(d, b.digest);
                }
            }
            let r = proxy.get_blob(Route::Ns(&host), &img.repo, &b.digest, &[]);
            assert_eq!(r.status, 200);
            assert_eq!(sha256_digest(&r.body), b.digest);
        }
    }
    // `/v2/` answers GET and HEAD.
    assert_eq!(proxy.get("/v2/", &[]).status, 200);
    assert_eq!(proxy.head("/v2/", &[]).status, 200);
}

/// containers/image sends `Accept` as several header lines; all of them count. Asking for an
/// index with the OCI manifest type on the first line and the index type on the second must
/// return the index (distribution would otherwise substitute the amd64 manifest), and a
/// Docker v2s2 manifest must come back when its type is only on the second line.
#[test]
fn accept_as_several_header_lines() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("accept");
    let idx = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let v2 = images::seed(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 1 });
    // Premise: asked with only the first line's type, distribution does not return these
    // manifests (404 for the index, a schema1 rewrite or an error for v2s2), so a proxy that
    // drops the later lines fails this test.
    for (tag, m) in [("index", &idx.manifest), ("v2s2", &v2.manifest)] {
        let direct = up.request(
            "GET",
            &repo,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", media::OCI_MANIFEST)],
        );
        assert!(
            direct.status != 200 || sha256_digest(&direct.body) != m.digest,
            "premise: upstream returned {tag} for a first-line-only Accept"
        );
    }
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    for round in ["cold", "warm"] {
        let r = proxy.get(
            &Route::Ns(&host).target(&repo, "manifests", "index"),
            &[
                ("Accept", media::OCI_MANIFEST),
                ("Accept", media::OCI_INDEX),
            ],
        );
        check_manifest_response(&r, &idx.manifest, &format!("index, {round}"));
        let r = proxy.get(
            &Route::InPath(&host).target(&repo, "manifests", "v2s2"),
            &[
                ("Accept", media::OCI_MANIFEST),
                ("Accept", media::DOCKER_MANIFEST),
                ("Accept", media::DOCKER_LIST),
            ],
        );
        check_manifest_response(&r, &v2.manifest, &format!("v2s2, {round}"));
    }
    // Per-platform manifests of the index by digest.
    for c in &idx.children {
        let r = proxy.get(
            &Route::Ns(&host).target(&repo, "manifests", &c.digest),
            &[
                ("Accept", media::OCI_MANIFEST),
                ("Accept", media::OCI_INDEX),
            ],
        );
        check_manifest_response(&r, c, c.platform.as_deref().unwrap());
    }
}

/// `Range: bytes=N-` (docker/containerd resuming a download) answers 206 with the tail,
/// cold and warm.
#[test]
fn range_requests_resume_blobs() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("range");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(2, 300 * 1024));
    let proxy = Proxy::builder().upstream(&up).start();
    let host = up.host();
    let blob = img.largest_blob();
    let full = up
        .request(
            "GET",
            &repo,
            &format!("/v2/{repo}/blobs/{}", blob.digest),
            &[],
        )
        .body;
    assert_eq!(sha256_digest(&full), blob.digest);
    let size = blob.size;
    let check = |r: &ociregistry_e2e::raw::RawResponse, n: u64, what: &str| {
        assert_eq!(r.status, 206, "{what}: status; body {}", r.body_str());
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {n}-{}/{size}", size - 1).as_str()),
            "{what}: Content-Range"
        );
        assert_eq!(
            r.header("Content-Length"),
            Some((size - n).to_string().as_str()),
            "{what}: Content-Length"
        );
        assert!(r.body == full[n as usize..], "{what}: body is not the tail");
    };
    // Cold: the very first request for the blob is a range request.
    let n = size / 3;
    let r = proxy.get_blob(
        Route::Ns(&host),
        &repo,
        &blob.digest,
        &[("Range", &format!("bytes={n}-"))],
    );
    check(&r, n, "cold range");
    // Warm: full GET, then ranges.
    let r = proxy.get_blob(Route::Ns(&host), &repo, &blob.digest, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), blob.digest);
    for n in [0, 1, size / 2, size - 1] {
        let r = proxy.get_blob(
            Route::InPath(&host),
            &repo,
            &blob.digest,
            &[("Range", &format!("bytes={n}-"))],
        );
        check(&r, n, &format!("warm range {n}"));
    }
}

/// `tags/list` passes through to the upstream.
#[test]
fn tags_list_passes_through() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("tags");
    images::seed(&up, &repo, "one", ImageKind::small_oci());
    images::seed(&up, &repo, "two", ImageKind::DockerV2s2 { layers: 1 });
    let proxy = Proxy::builder().upstream(&up).start();
    let direct = up.request("GET", &repo, &format!("/v2/{repo}/tags/list"), &[]);
    assert_eq!(direct.status, 200);
    let host = up.host();
    for target in [
        format!("/v2/{repo}/tags/list?ns={}", host.replace(':', "%3A")),
        format!("/v2/{host}/{repo}/tags/list"),
    ] {
        let r = proxy.get(&target, &[]);
        assert_eq!(r.status, 200, "{target}: {}", r.body_str());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut tags: Vec<&str> = v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        tags.sort();
        assert_eq!(tags, ["one", "two"]);
        assert_eq!(v["name"].as_str(), Some(repo.as_str()), "{target}");
    }
}
