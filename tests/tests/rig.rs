//! Self-test of the rig, with no ociregistry involved: every upstream flavour starts, is
//! seeded with every image kind by skopeo, and serves exactly what the rig says it pushed
//! (checked by pulling directly from it with skopeo). Also checks the access-log counting.

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::skopeo::{self, PullOptions};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{media, require_upstream_tools, sha256_digest};

fn seed_and_pull_directly(mut up: Upstream) {
    let repo = images::unique_repo("rig");
    let kinds = [
        ("oci", ImageKind::small_oci()),
        ("index", ImageKind::OciIndex),
        ("v2s2", ImageKind::DockerV2s2 { layers: 2 }),
    ];
    for (tag, kind) in kinds {
        let img = images::seed(&up, &repo, tag, kind);
        assert!(!img.blobs().is_empty());
        // Pull straight from the upstream with skopeo and verify against the description.
        let creds = up.skopeo_creds();
        let all = matches!(kind, ImageKind::OciIndex);
        let dest = tempfile::tempdir().unwrap();
        skopeo::pull_to_dir(
            &img.reference(),
            dest.path(),
            &PullOptions {
                creds: creds.clone(),
                all,
                arch: None,
            },
        )
        .unwrap_or_else(|e| panic!("direct skopeo pull of {}: {e}", img.reference()));
        skopeo::verify_dir_pull(dest.path(), &img, all);
        let raw = skopeo::inspect_raw(&img.reference(), creds.as_deref()).unwrap();
        assert_eq!(sha256_digest(&raw), img.manifest.digest);
    }
    // The index has two platforms, each with its own blobs.
    let idx = images::describe(&up, &repo, "index", ImageKind::OciIndex);
    assert_eq!(idx.children.len(), 2);
    let plats: Vec<_> = idx
        .children
        .iter()
        .map(|c| c.platform.clone().unwrap())
        .collect();
    assert_eq!(plats, ["linux/amd64", "linux/arm64"]);
    assert!(
        idx.children[0]
            .blobs
            .iter()
            .all(|b| !idx.children[1].blobs.contains(b))
    );
    let v2 = images::describe(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 2 });
    assert_eq!(v2.manifest.media_type, media::DOCKER_MANIFEST);

    // Access-log counting sees requests made directly.
    let blob = idx.children[0].blobs[1].clone();
    let before = up.count_requests("GET", &blob.digest);
    let heads_before = up.count_requests("HEAD", &blob.digest);
    for _ in 0..3 {
        let r = up.request(
            "GET",
            &repo,
            &format!("/v2/{repo}/blobs/{}", blob.digest),
            &[],
        );
        assert_eq!(r.status, 200);
        assert_eq!(sha256_digest(&r.body), blob.digest);
    }
    assert_eq!(up.count_requests("GET", &blob.digest), before + 3);
    assert_eq!(up.count_requests("HEAD", &blob.digest), heads_before);
    assert!(up.total_requests() > 0);

    // Stopped: refuses connections; restarted: same content.
    up.stop();
    assert!(
        ociregistry_e2e::raw::request(&up.host(), "GET", "/v2/", &[], None).is_err(),
        "stopped upstream still answers"
    );
    up.restart();
    let r = up.request(
        "GET",
        &repo,
        &format!("/v2/{repo}/blobs/{}", blob.digest),
        &[],
    );
    assert_eq!(sha256_digest(&r.body), blob.digest);
}

#[test]
fn anonymous_upstream_seeds_and_serves() {
    if !require_upstream_tools() {
        return;
    }
    seed_and_pull_directly(Upstream::anonymous());
}

#[test]
fn htpasswd_upstream_seeds_and_serves() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::htpasswd("e2euser", "htpass-s3cret-Q7");
    // Without credentials: 401 with a Basic challenge.
    let r = ociregistry_e2e::raw::request(&up.host(), "GET", "/v2/", &[], None).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic"));
    seed_and_pull_directly(up);
}

#[test]
fn token_upstream_seeds_and_serves() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::token(Some(("tokuser", "tok-pass-Z9")));
    let r = ociregistry_e2e::raw::request(&up.host(), "GET", "/v2/", &[], None).unwrap();
    assert_eq!(r.status, 401);
    let chal = r.header("WWW-Authenticate").unwrap().to_owned();
    assert!(chal.starts_with("Bearer realm="), "{chal}");
    let ts = up.token_server().unwrap();
    assert!(chal.contains(&ts.realm()), "{chal}");
    seed_and_pull_directly(up);
}

#[test]
fn token_server_refuses_bad_credentials_and_counts() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::token(Some(("tokuser", "right")));
    let img = images::seed_in(&up, "rigtok", "v1", ImageKind::small_oci());
    let ts = up.token_server().unwrap();
    let n = ts.request_count();
    assert!(n >= 1);
    assert!(
        ts.requests()
            .iter()
            .any(|r| r.granted && r.user.as_deref() == Some("tokuser"))
    );
    let dest = tempfile::tempdir().unwrap();
    let err = skopeo::pull_to_dir(
        &img.reference(),
        dest.path(),
        &PullOptions {
            creds: Some("tokuser:wrong".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(!err.is_empty());
    assert!(ts.request_count() > n);
    assert!(ts.requests().iter().any(|r| !r.granted));
}
