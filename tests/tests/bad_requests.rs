//! Issue 2: bad requests. Path traversal (`..`, `%2e%2e`), malformed digests and over-long
//! names get 400 with an OCI error body, reach neither the upstream nor any file outside the
//! image path; push/delete get 405 UNSUPPORTED; unknown content 404 with the upstream's
//! code; an unreachable upstream 502 naming it.

use ociregistry_e2e::cache::list_files;
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, assert_oci_error, oci_error_codes, require_upstream_tools};
use std::path::PathBuf;

const SENTINEL: &str = "E2E-SENTINEL-must-never-be-served";

struct Setup {
    up: Upstream,
    proxy: Proxy,
    root: tempfile::TempDir,
    repo: String,
    img: ociregistry_e2e::PushedImage,
}

/// An upstream with one image, a proxy whose image path is `<root>/cache`, and files next to
/// the image path that a traversal would hit: `<root>/secret.txt`, `<root>/blobs/sha256/...`.
fn setup() -> Setup {
    let up = Upstream::anonymous();
    let repo = images::unique_repo("bad");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("secret.txt"), SENTINEL).unwrap();
    std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
    std::fs::write(root.path().join("blobs/sha256/secret"), SENTINEL).unwrap();
    let proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&root.path().join("cache"))
        .start();
    Setup {
        up,
        proxy,
        root,
        repo,
        img,
    }
}

fn files_outside_cache(s: &Setup) -> Vec<PathBuf> {
    list_files(s.root.path())
        .into_iter()
        .filter(|p| !p.starts_with("cache"))
        .collect()
}

fn check_400(s: &Setup, method: &str, target: &str, code: Option<&str>) {
    let r = s.proxy.raw(method, target, &[]);
    assert_eq!(
        r.status,
        400,
        "{method} {target}: expected 400, got {} {}",
        r.status,
        r.body_str()
    );
    assert!(
        !r.body_str().contains(SENTINEL),
        "{target} served a file outside the image path"
    );
    if method == "HEAD" {
        return;
    }
    match code {
        Some(c) => assert_oci_error(&r.body, c, &format!("{method} {target}")),
        None => assert!(
            !oci_error_codes(&r.body).is_empty(),
            "{target}: not an OCI error body: {}",
            r.body_str()
        ),
    }
}

#[test]
fn traversal_and_invalid_names_get_400_name_invalid() {
    if !require_upstream_tools() {
        return;
    }
    let mut s = setup();
    let host = s.up.host();
    let ns = host.replace(':', "%3A");
    let repo = s.repo.clone();
    let long_name = (0..6).map(|_| "a".repeat(50)).collect::<Vec<_>>().join("/");
    assert!(long_name.len() > 255);
    let names = [
        format!("/v2/../../secret.txt/manifests/v1?ns={ns}"),
        format!("/v2/{repo}/../../../../secret.txt/manifests/v1?ns={ns}"),
        format!("/v2/{repo}/../../../blobs/sha256/secret/manifests/v1?ns={ns}"),
        format!("/v2/{repo}/%2e%2e/%2e%2e/%2e%2e/secret.txt/manifests/v1?ns={ns}"),
        format!("/v2/{repo}/%2E%2E/%2E%2E/x/manifests/v1?ns={ns}"),
        format!(
            "/v2/%2e%2e/%2e%2e/secret.txt/blobs/{}?ns={ns}",
            s.img.manifest.digest
        ),
        format!("/v2/x%2f..%2f..%2fsecret.txt/manifests/v1?ns={ns}"),
        format!("/v2/{host}/../../../secret.txt/manifests/v1"),
        format!("/v2/{host}/%2e%2e/%2e%2e/%2e%2e/secret.txt/manifests/v1"),
        format!(
            "/v2/{host}/{repo}/%2e%2e/%2e%2e/secret.txt/blobs/{}",
            s.img.manifest.digest
        ),
        format!("/v2/{long_name}/manifests/v1?ns={ns}"),
        format!("/v2/{host}/{long_name}/manifests/v1"),
        format!("/v2/{long_name}/blobs/{}?ns={ns}", s.img.manifest.digest),
        format!("/v2/UPPER/case/manifests/v1?ns={ns}"),
        format!("/v2/a..b/manifests/v1?ns={ns}"),
        format!("/v2/-lead/manifests/v1?ns={ns}"),
        format!("/v2/{repo}//x/manifests/v1?ns={ns}"),
    ];
    let before = s.up.total_requests();
    for t in &names {
        check_400(&s, "GET", t, Some("NAME_INVALID"));
    }
    for t in &names[..3] {
        check_400(&s, "HEAD", t, None);
    }
    // Traversal through the ns value or the tag: 400, whatever the code.
    for t in [
        format!("/v2/{repo}/manifests/v1?ns=..%2F..%2Fsecret.txt"),
        format!("/v2/{repo}/manifests/v1?ns=%2e%2e"),
        format!("/v2/{repo}/manifests/..?ns={ns}"),
        format!("/v2/{repo}/manifests/%2e%2e?ns={ns}"),
        format!("/v2/{repo}/manifests/..%2f..%2fsecret.txt?ns={ns}"),
    ] {
        check_400(&s, "GET", &t, None);
    }
    // A tag outside the grammar names no manifest: 404 MANIFEST_UNKNOWN (OCI conformance),
    // still without touching the disk or the upstream.
    let r = s
        .proxy
        .get(&format!("/v2/{repo}/manifests/.hidden?ns={ns}"), &[]);
    assert_eq!(r.status, 404, ".hidden: {}", r.body_str());
    assert_oci_error(&r.body, "MANIFEST_UNKNOWN", ".hidden");
    assert_eq!(
        s.up.total_requests(),
        before,
        "invalid requests reached the upstream: {:?}",
        &s.up.access_log()[before..]
    );
    assert_eq!(
        files_outside_cache(&s),
        [
            PathBuf::from("blobs/sha256/secret"),
            PathBuf::from("secret.txt")
        ],
        "files outside the image path changed"
    );
    let cached = list_files(&s.root.path().join("cache"));
    assert!(
        cached.iter().all(|p| !p.starts_with("tags")),
        "a bad request created a tag record: {cached:?}"
    );
    // The proxy still works.
    s.proxy.pull_and_verify(Route::Ns(&host), &s.img);
}

#[test]
fn malformed_digests_get_400_digest_invalid() {
    if !require_upstream_tools() {
        return;
    }
    let mut s = setup();
    let host = s.up.host();
    let ns = host.replace(':', "%3A");
    let repo = s.repo.clone();
    let hex = s.img.manifest.hex().to_owned();
    let bad_digests = [
        "sha256:abc".to_string(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}%00", &hex[..63]),
        "sha256:".to_string(),
        format!("sha256{hex}"),
    ];
    let before = s.up.total_requests();
    for d in &bad_digests {
        check_400(
            &s,
            "GET",
            &format!("/v2/{repo}/blobs/{d}?ns={ns}"),
            Some("DIGEST_INVALID"),
        );
        check_400(
            &s,
            "GET",
            &format!("/v2/{host}/{repo}/blobs/{d}"),
            Some("DIGEST_INVALID"),
        );
        check_400(&s, "HEAD", &format!("/v2/{repo}/blobs/{d}?ns={ns}"), None);
        if d.contains(':') && !d.ends_with(':') {
            // A manifest reference with ':' is a digest.
            check_400(
                &s,
                "GET",
                &format!("/v2/{repo}/manifests/{d}?ns={ns}"),
                Some("DIGEST_INVALID"),
            );
        }
    }
    // Encoded traversal in the digest position: 400 (a server that decodes `%2F` sees extra
    // path segments and may call it NAME_INVALID).
    for d in [
        "sha256:..%2F..%2F..%2Fsecret.txt",
        "sha256:%2e%2e",
        "..%2f..%2fsecret.txt",
    ] {
        check_400(&s, "GET", &format!("/v2/{repo}/blobs/{d}?ns={ns}"), None);
        check_400(
            &s,
            "GET",
            &format!("/v2/{repo}/manifests/{d}?ns={ns}"),
            None,
        );
    }
    // Not a digest at all where a digest is required.
    check_400(
        &s,
        "GET",
        &format!("/v2/{repo}/blobs/latest?ns={ns}"),
        Some("DIGEST_INVALID"),
    );
    // An algorithm nobody supports: 400 (DIGEST_INVALID or UNSUPPORTED).
    check_400(
        &s,
        "GET",
        &format!("/v2/{repo}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e?ns={ns}"),
        None,
    );
    assert_eq!(
        s.up.total_requests(),
        before,
        "invalid digests reached the upstream: {:?}",
        &s.up.access_log()[before..]
    );
    assert_eq!(
        files_outside_cache(&s),
        [
            PathBuf::from("blobs/sha256/secret"),
            PathBuf::from("secret.txt")
        ]
    );
}

#[test]
fn push_and_delete_get_405_unsupported() {
    if !require_upstream_tools() {
        return;
    }
    let mut s = setup();
    let host = s.up.host();
    let ns = host.replace(':', "%3A");
    let repo = s.repo.clone();
    let md = s.img.manifest.digest.clone();
    let bd = s.img.largest_blob().digest;
    let cases: Vec<(&str, String)> = vec![
        ("POST", format!("/v2/{repo}/blobs/uploads/?ns={ns}")),
        ("POST", format!("/v2/{host}/{repo}/blobs/uploads/")),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?mount={bd}&from=other&ns={ns}"),
        ),
        (
            "PATCH",
            format!("/v2/{repo}/blobs/uploads/0123-abcd?ns={ns}"),
        ),
        (
            "PUT",
            format!("/v2/{repo}/blobs/uploads/0123-abcd?digest={bd}&ns={ns}"),
        ),
        ("PUT", format!("/v2/{repo}/manifests/v1?ns={ns}")),
        ("PUT", format!("/v2/{host}/{repo}/manifests/new")),
        ("DELETE", format!("/v2/{repo}/manifests/{md}?ns={ns}")),
        ("DELETE", format!("/v2/{host}/{repo}/manifests/v1")),
        ("DELETE", format!("/v2/{repo}/blobs/{bd}?ns={ns}")),
    ];
    let before = s.up.total_requests();
    for (method, target) in &cases {
        let body: &[u8] = b"{}";
        let r = ociregistry_e2e::raw::request(
            &s.proxy.host(),
            method,
            target,
            &[("Content-Type", ociregistry_e2e::media::OCI_MANIFEST)],
            Some(body),
        )
        .unwrap();
        assert_eq!(r.status, 405, "{method} {target}: {}", r.body_str());
        assert_oci_error(&r.body, "UNSUPPORTED", &format!("{method} {target}"));
    }
    assert_eq!(
        s.up.total_requests(),
        before,
        "push/delete reached the upstream"
    );
    // Nothing was deleted or replaced.
    s.proxy.pull_and_verify(Route::Ns(&host), &s.img);
}

/// Unknown tag, digest, blob and repository: 404 with the code the upstream gives.
#[test]
fn unknown_content_gets_404_with_upstream_code() {
    if !require_upstream_tools() {
        return;
    }
    let s = setup();
    let host = s.up.host();
    let repo = s.repo.clone();
    let absent = format!("sha256:{}", "0".repeat(64));
    let accept = ociregistry_e2e::media::ALL_MANIFESTS.join(", ");
    let cases: Vec<(String, String, &str)> = vec![
        (
            repo.clone(),
            format!("/v2/{repo}/manifests/nope"),
            "MANIFEST_UNKNOWN",
        ),
        (
            repo.clone(),
            format!("/v2/{repo}/manifests/{absent}"),
            "MANIFEST_UNKNOWN",
        ),
        (
            repo.clone(),
            format!("/v2/{repo}/blobs/{absent}"),
            "BLOB_UNKNOWN",
        ),
        (
            "e2e/no/such/repo".into(),
            "/v2/e2e/no/such/repo/manifests/v1".into(),
            "",
        ),
    ];
    for (r_repo, up_target, expected) in &cases {
        let direct =
            s.up.request("GET", r_repo, up_target, &[("Accept", &accept)]);
        assert_eq!(direct.status, 404, "upstream {up_target}");
        let up_code = oci_error_codes(&direct.body)[0].clone();
        if !expected.is_empty() {
            assert_eq!(&up_code, expected);
        }
        let path = up_target.trim_start_matches("/v2/");
        for target in [
            format!("/v2/{path}?ns={}", host.replace(':', "%3A")),
            format!("/v2/{host}/{path}"),
        ] {
            let r = s.proxy.get(&target, &[("Accept", &accept)]);
            assert_eq!(r.status, 404, "{target}: {}", r.body_str());
            assert_oci_error(&r.body, &up_code, &target);
        }
    }
}

/// An upstream that refuses connections: 502 with an OCI error naming the upstream, quickly.
#[test]
fn unreachable_upstream_gets_502_naming_it() {
    if !require_upstream_tools() {
        return;
    }
    let dead = format!("127.0.0.1:{}", ociregistry_e2e::free_port());
    let proxy = Proxy::builder()
        .registry(ociregistry_e2e::RegistryEntry::plain(&dead))
        .start();
    for target in [
        Route::Ns(&dead).target("e2e/app", "manifests", "v1"),
        Route::InPath(&dead).target("e2e/app", "manifests", "v1"),
        Route::Ns(&dead).target("e2e/app", "blobs", &format!("sha256:{}", "1".repeat(64))),
    ] {
        let t0 = std::time::Instant::now();
        let r = proxy.get(&target, &[]);
        assert_eq!(r.status, 502, "{target}: {}", r.body_str());
        assert!(
            !oci_error_codes(&r.body).is_empty(),
            "{target}: not an OCI error body: {}",
            r.body_str()
        );
        assert!(
            r.body_str().contains(&dead),
            "{target}: the 502 does not name the upstream {dead}: {}",
            r.body_str()
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    }
}
