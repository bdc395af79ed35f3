//! The small holes of issue 10, end to end against the real binary:
//! - a manifest's media type comes from its own bytes: an upstream whose `Content-Type`
//!   contradicts them is refused, and cannot change what another registry's clients get;
//! - the in-flight manifest map empties when clients cancel (its size is a metric);
//! - a huge `Accept` is answered, and only a small canonical form of it goes upstream;
//! - a 401 storm calls the provider once per backoff step;
//! - a provider whose `create` hangs fails its registry only, within the provider timeout;
//! - an invalid tag is 404 `MANIFEST_UNKNOWN` without touching the disk or the upstream.
//!
//! Every upstream is a configured registries entry (never reached ad hoc).

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::fixture_plugins::{self, build_fixture_plugins};
use ociregistry_e2e::procs::run_with_timeout;
use ociregistry_e2e::proxy::{Route, ociregistry_bin};
use ociregistry_e2e::{
    ImageKind, Proxy, RegistryEntry, Upstream, assert_oci_error, cache, images, media,
    oci_error_codes, raw, require_upstream_tools, wait_for,
};

fn fixture_plugin_dir(fixtures: &[&str]) -> tempfile::TempDir {
    let built =
        build_fixture_plugins().unwrap_or_else(|e| panic!("building the fixture plugins: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_plugins::install_plugins(&built, dir.path(), fixtures).expect("install fixtures");
    dir
}

fn oci_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn content_type(r: &raw::RawResponse) -> String {
    r.header("Content-Type")
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

/// The value of an unlabelled series on the metrics port; None when absent.
fn metric(port: u16, name: &str) -> Option<f64> {
    let r = raw::request_timeout(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(r.status, 200, "/metrics: {}", r.body_str());
    r.body_str().lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------------------
// 1. media types
// ---------------------------------------------------------------------------------------

/// The same Docker v2s2 image in two real registries; one sits behind a fault proxy that
/// rewrites the manifest `Content-Type` to OCI. Pulling through the poisoned route first is
/// refused (502 naming that upstream, nothing stored); then the clean registry's clients
/// get the right type and digest, by tag and by digest, and the stored `.type` is right.
#[test]
fn media_type_poisoning_changes_nothing() {
    if !require_upstream_tools() {
        return;
    }
    let a = Upstream::anonymous();
    let b = Upstream::anonymous();
    let repo = images::unique_repo("poison");
    let img_a = images::seed(&a, &repo, "v1", ImageKind::DockerV2s2 { layers: 2 });
    // The very same bytes in B.
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{}/{repo}:v1", a.host()))
    .arg(format!("docker://{}/{repo}:v1", b.host()));
    let (ok, _, err) = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(ok, "skopeo copy A -> B: {err}");
    let img_b = images::describe(&b, &repo, "v1", ImageKind::DockerV2s2 { layers: 2 });
    assert_eq!(img_a.manifest.digest, img_b.manifest.digest, "same image");
    assert_eq!(img_b.manifest.media_type, media::DOCKER_MANIFEST);
    let digest = img_b.manifest.digest.clone();

    let fp = FaultProxy::start(&a.host());
    let poison = fp.add_rule(
        "",
        "/manifests/",
        Fault::SetResponseHeader {
            name: "Content-Type".into(),
            value: media::OCI_MANIFEST.into(),
        },
        None,
    );
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fp.host()))
        .upstream(&b)
        .start();

    // The poisoned route: refused (or, if served, served correctly), never stored wrong.
    let mut served = false;
    for reference in ["v1", digest.as_str()] {
        let r = proxy.get_manifest(Route::InPath(&fp.host()), &repo, reference);
        served |= r.status == 200;
        if r.status == 200 {
            assert_eq!(
                content_type(&r),
                media::DOCKER_MANIFEST,
                "poisoned route {reference}: served with the upstream's lie"
            );
        } else {
            assert_eq!(r.status, 502, "poisoned {reference}: {}", r.body_str());
            let msg = oci_message(&r.body);
            assert!(
                msg.contains(&fp.host()),
                "the error names the upstream: {msg}"
            );
        }
    }
    assert!(fp.hits(poison) >= 1, "the poisoned upstream was asked");
    let stored = cache::manifest_file(proxy.image_path(), &digest);
    assert!(
        served || !stored.exists(),
        "a refused manifest was stored anyway"
    );
    if stored.exists() {
        let t = std::fs::read_to_string(stored.with_extension("type")).unwrap_or_default();
        assert_eq!(
            t.trim(),
            media::DOCKER_MANIFEST,
            "stored type after poisoning"
        );
    }

    // The clean registry's clients: right type and digest, by tag and by digest, every blob.
    proxy.pull_and_verify(Route::InPath(&b.host()), &img_b);
    let by_digest = proxy.get_manifest(Route::InPath(&b.host()), &repo, &digest);
    assert_eq!(by_digest.status, 200, "{}", by_digest.body_str());
    assert_eq!(content_type(&by_digest), media::DOCKER_MANIFEST);
    assert_eq!(
        by_digest.header("Docker-Content-Digest"),
        Some(digest.as_str())
    );
    let head = proxy.head(
        &Route::InPath(&b.host()).target(&repo, "manifests", &digest),
        &[("Accept", &media::ALL_MANIFESTS.join(", "))],
    );
    assert_eq!(
        content_type(&head),
        media::DOCKER_MANIFEST,
        "HEAD by digest"
    );
    let t = std::fs::read_to_string(stored.with_extension("type")).expect("stored .type");
    assert_eq!(t.trim(), media::DOCKER_MANIFEST, "the stored .type file");
    // And the poisoned route still cannot change it.
    let again = proxy.get_manifest(Route::InPath(&b.host()), &repo, &digest);
    assert_eq!(content_type(&again), media::DOCKER_MANIFEST);
}

// ---------------------------------------------------------------------------------------
// 2. in-flight manifest map: cancel storm
// ---------------------------------------------------------------------------------------

/// 50 clients ask a stalled upstream for manifests (10 tags x 5 Accept sets) and hang up:
/// the in-flight map (metric `ociregistry_inflight_manifest_fetches`) goes back to 0.
#[test]
fn cancel_storm_leaves_the_inflight_map_empty() {
    if !require_upstream_tools() {
        return;
    }
    const GAUGE: &str = "ociregistry_inflight_manifest_fetches";
    let up = Upstream::anonymous();
    let repo = images::unique_repo("cancel");
    images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    fp.add_rule(
        "",
        "/manifests/",
        Fault::Delayed(Duration::from_secs(60), None),
        None,
    );
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fp.host()))
        .serve_arg("--metrics")
        .serve_arg("0")
        .start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    assert_eq!(metric(metrics, GAUGE), Some(0.0), "idle: 0");

    let accepts = [
        media::OCI_MANIFEST.to_owned(),
        media::OCI_INDEX.to_owned(),
        format!("{}, {}", media::OCI_MANIFEST, media::OCI_INDEX),
        media::DOCKER_MANIFEST.to_owned(),
        media::ALL_MANIFESTS.join(", "),
    ];
    let mut clients = Vec::new();
    for i in 0..50 {
        let target = Route::InPath(&fp.host()).target(&repo, "manifests", &format!("t{}", i % 10));
        let mut s = TcpStream::connect(proxy.host()).expect("connect");
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\n\r\n",
            proxy.host(),
            accepts[i / 10]
        )
        .expect("send");
        clients.push(s);
    }
    // Every request is waiting on the stalled upstream.
    let peak = wait_for(
        "the manifest fetches to be in flight",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || metric(metrics, GAUGE).filter(|v| *v >= 10.0),
    );
    assert!(peak <= 50.0, "{peak} entries for 50 requests");
    drop(clients);
    wait_for(
        "the in-flight manifest map to empty after the clients left",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || metric(metrics, GAUGE).filter(|v| *v == 0.0),
    );
}

// ---------------------------------------------------------------------------------------
// 3. a huge Accept
// ---------------------------------------------------------------------------------------

/// A ~60 KiB `Accept` (3000 entries; the pull port reads heads up to 64 KiB) is answered
/// with the right manifest, and what goes upstream is the small canonical set of types.
#[test]
fn a_huge_accept_is_answered_and_not_forwarded() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("accept");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fp.host()))
        .start();
    let mut accept = String::new();
    let mut i = 0;
    while accept.len() < 60 * 1024 - 200 {
        accept.push_str(&format!("application/x{i};q=0, "));
        i += 1;
    }
    accept.push_str(media::OCI_MANIFEST);
    assert!(i > 2500, "{i} entries");
    eprintln!("Accept: {} bytes, {i} entries", accept.len());
    let target = Route::InPath(&fp.host()).target(&repo, "manifests", "v1");
    let r = raw::request_timeout(
        &proxy.host(),
        "GET",
        &target,
        &[("Accept", &accept)],
        None,
        Duration::from_secs(60),
    )
    .expect("the request is answered");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(ociregistry_e2e::sha256_digest(&r.body), img.manifest.digest);
    assert_eq!(content_type(&r), media::OCI_MANIFEST);
    let sent: Vec<_> = fp
        .requests()
        .into_iter()
        .filter(|q| q.target.contains("/manifests/"))
        .collect();
    assert!(!sent.is_empty(), "the upstream was asked");
    for q in &sent {
        let a = q.accept.clone().unwrap_or_default();
        assert!(
            a.len() < 1024,
            "{} {}: {} bytes of Accept forwarded upstream",
            q.method,
            q.target,
            a.len()
        );
        assert!(a.contains(media::OCI_MANIFEST), "{a}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. 401 storm
// ---------------------------------------------------------------------------------------

/// Lower bound of the start of 401-triggered refresh number k (k = 0, 1, ...) when
/// rejections never stop: each waits at least half its doubling backoff step (initial 1s).
fn refreshes_allowed_within(t: Duration) -> usize {
    let mut at = 0.0;
    let mut n = 0;
    while at <= t.as_secs_f64() {
        n += 1;
        at += f64::from(1u32 << (n - 1).min(20)) / 2.0;
    }
    n
}

/// The provider's credential is always wrong for an htpasswd upstream. 60 clients pull for
/// about 3 seconds (distinct tags, so no request shares another's fetch): the provider is
/// called once at start and then at most once per backoff step.
#[test]
fn a_401_storm_calls_the_provider_once_per_backoff_step() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = fixture_plugin_dir(&["fixture_counter"]);
    let up = Upstream::htpasswd("e2e", "the-right-password-4");
    let repo = images::unique_repo("storm");
    images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let calls_dir = tempfile::tempdir().expect("tempdir");
    let calls_file = calls_dir.path().join("calls");
    let calls = || {
        std::fs::read_to_string(&calls_file)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let started = Instant::now();
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: counter, providerOpts: \"user=e2e,prefix=wrong-,log={}\", expiry: 6h",
                calls_file.display()
            ),
        ))
        .start();
    wait_for(
        "the first provider call",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (calls() >= 1).then_some(()),
    );
    let host = up.host();
    let sent = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicBool::new(false));
    let storm_end = Instant::now() + Duration::from_secs(3);
    let threads: Vec<_> = (0..60)
        .map(|t| {
            let (proxy_host, host, repo) = (proxy.host(), host.clone(), repo.clone());
            let (sent, bad) = (sent.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut k = 0;
                while Instant::now() < storm_end {
                    let target = format!("/v2/{host}/{repo}/manifests/s{t}-{k}");
                    k += 1;
                    let r = raw::request_timeout(
                        &proxy_host,
                        "GET",
                        &target,
                        &[],
                        None,
                        Duration::from_secs(30),
                    );
                    sent.fetch_add(1, Ordering::SeqCst);
                    if !matches!(r, Ok(ref r) if r.status == 401) {
                        bad.store(true, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let elapsed = started.elapsed();
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent >= 60, "{sent} requests");
    assert!(
        !bad.load(Ordering::SeqCst),
        "every pull gets the upstream's 401"
    );
    // One call at start, then one per backoff step at most (from the start, to be safe).
    let bound = 1 + refreshes_allowed_within(elapsed);
    let n = calls();
    eprintln!("{n} provider calls for {sent} rejected pulls in {elapsed:?} (bound {bound})");
    assert!(
        (2..=bound).contains(&n),
        "{n} provider calls for {sent} rejected pulls in {elapsed:?}; the backoff allows {bound}"
    );
    assert!(
        proxy
            .log()
            .contains("not asking the provider again before the backoff step ends"),
        "the backing off is visible in the log"
    );
}

// ---------------------------------------------------------------------------------------
// 5. a provider whose create hangs
// ---------------------------------------------------------------------------------------

/// `hang` with `in=create` never returns from create. The server starts within the provider
/// timeout, serves the other registry, and answers pulls of the hung one with a 503 naming
/// the registry and provider; `providers --check` reports it and exits non-zero in bounded
/// time.
#[test]
fn a_hung_create_fails_only_its_registry() {
    if !require_upstream_tools() {
        return;
    }
    const TIMEOUT_S: u64 = 3;
    let plugins = fixture_plugin_dir(&["fixture_hang"]);
    let locked = Upstream::htpasswd("e2e", "hang-create-pw-1");
    let open = Upstream::anonymous();
    let repo = images::unique_repo("hangcreate");
    images::seed(&locked, &repo, "v1", ImageKind::small_oci());
    let open_img = images::seed(&open, &repo, "v1", ImageKind::small_oci());
    let entry = RegistryEntry::with_token_auth(
        &locked.host(),
        &format!("provider: hang, providerOpts: \"in=create\", timeout: {TIMEOUT_S}s"),
    );
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(entry)
        .upstream(&open)
        .start();
    proxy.pull_and_verify(Route::InPath(&open.host()), &open_img);
    let r = proxy.get_manifest(Route::InPath(&locked.host()), &repo, "v1");
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_oci_error(&r.body, "UNAVAILABLE", "pull with a hung create");
    let msg = oci_message(&r.body);
    for needle in [
        locked.host().as_str(),
        "hang",
        "create did not return within",
    ] {
        assert!(msg.contains(needle), "the error names {needle}: {msg}");
    }
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("create did not return in time")
                && l.contains(&locked.host())
                && l.contains("hang")),
        "the log names the registry and provider"
    );

    // providers --check: bounded, non-zero, naming the registry.
    let mut cmd = Command::new(ociregistry_bin());
    cmd.args([
        OsString::from("--config-file"),
        proxy.config_path.clone().into_os_string(),
        "--plugin-dir".into(),
        plugins.path().as_os_str().to_owned(),
        "providers".into(),
        "--check".into(),
    ])
    .env("NO_COLOR", "1");
    let t = Instant::now();
    let (ok, out, err) = run_with_timeout(cmd, Duration::from_secs(TIMEOUT_S + 25));
    assert!(!ok, "--check must fail; stdout:\n{out}\nstderr:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(TIMEOUT_S + 20));
    let row = out
        .lines()
        .find(|l| l.contains(&locked.host()))
        .unwrap_or_else(|| panic!("no row for {}:\n{out}", locked.host()));
    assert!(
        row.contains("FAILED") && row.contains("create did not return within"),
        "{row}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. invalid tags: 404
// ---------------------------------------------------------------------------------------

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// HEAD and GET of a syntactically invalid tag: 404 `MANIFEST_UNKNOWN` (as distribution
/// and the OCI conformance suite want), nothing reaches the upstream or the disk; an invalid
/// digest keeps its 400 `DIGEST_INVALID`.
#[test]
fn invalid_tags_are_404_manifest_unknown() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("badtag");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fp.host()))
        .start();
    let before = files_under(proxy.image_path());
    let long = "a".repeat(129);
    for tag in [long.as_str(), "-bad", "a+b", ".hidden", "a%2Bb", "t%C3%A9"] {
        let target = Route::InPath(&fp.host()).target(&repo, "manifests", tag);
        let r = proxy.get(&target, &[]);
        assert_eq!(r.status, 404, "GET {tag}: {}", r.body_str());
        assert_oci_error(&r.body, "MANIFEST_UNKNOWN", &format!("GET {tag}"));
        let h = proxy.head(&target, &[]);
        assert_eq!(h.status, 404, "HEAD {tag}");
    }
    for digest in ["sha256:xyz", "sha256:", "sha512:abc"] {
        let target = Route::InPath(&fp.host()).target(&repo, "manifests", digest);
        let r = proxy.get(&target, &[]);
        assert_eq!(r.status, 400, "GET {digest}: {}", r.body_str());
        assert_eq!(oci_error_codes(&r.body), ["DIGEST_INVALID"], "{digest}");
    }
    assert_eq!(
        fp.requests().len(),
        0,
        "invalid references reached the upstream: {:?}",
        fp.requests()
    );
    assert_eq!(files_under(proxy.image_path()), before, "the cache changed");
    // A valid tag of the maximum length is still asked for upstream; the image still pulls.
    let max = format!("a{}", "b".repeat(127));
    let r = proxy.get_manifest(Route::InPath(&fp.host()), &repo, &max);
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert_eq!(fp.count("GET", &max), 1, "a valid tag goes upstream");
    proxy.pull_and_verify(Route::InPath(&fp.host()), &img);
}
