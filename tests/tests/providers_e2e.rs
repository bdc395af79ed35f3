//! Issue 3: auth provider plugins through the real binary.
//!
//! - the bundled `ecr` plugin against `moto_server` (as AWS) and an htpasswd `docker-registry`
//!   (as the ECR registry), pulled through with skopeo and plain HTTP;
//! - the test-fixture plugins (`panic`, `hang`, `flaky`, `counter`, `otherabi`) in a served
//!   proxy: failures are contained, retried and refreshed as the issue requires, and startup
//!   refusals are one clear line;
//! - `ociregistry providers` (table and JSON) and `providers --check`.

use base64::Engine as _;
use ociregistry_e2e::fixture_plugins::{self, build_fixture_plugins};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::moto::{self, Moto};
use ociregistry_e2e::proxy::{RegistryEntry, Route, ociregistry_bin};
use ociregistry_e2e::skopeo::{self, PullOptions};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, path_str, require_upstream_tools, wait_for};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// helpers

/// A bundled plugin next to the binary (`cargo build --workspace` puts it there).
fn bundled_plugin(name: &str) -> PathBuf {
    let bin = ociregistry_bin();
    let p = bin.parent().expect("binary dir").join(format!(
        "{}ociregistry_provider_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        p.is_file(),
        "bundled plugin {} missing; run `cargo build --workspace`",
        p.display()
    );
    p
}

fn fixtures_dir() -> PathBuf {
    build_fixture_plugins().unwrap_or_else(|e| panic!("building the fixture plugins: {e}"))
}

/// A temp plugin directory holding symlinks to the named bundled plugins (`ecr`, `file`)
/// and copies of the named fixtures (`fixture_counter`, ...).
fn plugin_dir(bundled: &[&str], fixtures: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for b in bundled {
        let src = bundled_plugin(b);
        let dst = dir.path().join(src.file_name().expect("file name"));
        std::os::unix::fs::symlink(&src, &dst).expect("symlink bundled plugin");
    }
    if !fixtures.is_empty() {
        fixture_plugins::install_plugins(&fixtures_dir(), dir.path(), fixtures)
            .expect("install fixture plugins");
    }
    dir
}

/// Waits until the proxy's log contains `needle` `count` times.
fn wait_log_count(proxy: &Proxy, needle: &str, count: usize, timeout: Duration) {
    wait_for(
        &format!("{count}x `{needle}` in the proxy's log"),
        timeout,
        Duration::from_millis(25),
        || (proxy.log().matches(needle).count() >= count).then_some(()),
    );
}

fn log_lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn assert_no_secret(text: &str, what: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(s.len() >= 6, "secret too short to search for");
        assert!(
            !text.contains(s),
            "{what} contains a secret ({}...)",
            &s[..4]
        );
    }
}

/// The OCI error message of a response (first error).
fn oci_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// GETs the manifest and every blob of `img` from several threads at once; returns the
/// responses' statuses. Each response is verified when it is a 200.
fn pull_concurrently(proxy: &Proxy, route_host: &str, img: &PushedImage) -> Vec<u16> {
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        handles.push(s.spawn(|| {
            let r = proxy.get_manifest(Route::InPath(route_host), &img.repo, &img.tag);
            if r.status == 200 {
                ociregistry_e2e::proxy::check_manifest_response(&r, &img.manifest, "manifest");
            }
            r.status
        }));
        for b in img.blobs() {
            handles.push(s.spawn(move || {
                let r = proxy.get_blob(Route::InPath(route_host), &img.repo, &b.digest, &[]);
                if r.status == 200 {
                    assert_eq!(ociregistry_e2e::sha256_digest(&r.body), b.digest);
                }
                r.status
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("pull thread"))
            .collect()
    })
}

/// Result of one run of the binary.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ociregistry ARGS` to completion (killed and failed after `timeout`).
fn run_ociregistry(args: &[OsString], timeout: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_p, err_p) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(ociregistry_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).expect("out"))
        .stderr(std::fs::File::create(&err_p).expect("err"));
    let mut child = cmd.spawn().expect("spawn ociregistry");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ociregistry {args:?} did not finish within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_p).unwrap_or_default(),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `ociregistry --config-file F serve --plugin-dir D` with `registries_yaml`; the server
/// must refuse to start.
fn serve_must_refuse(plugin_dir: &Path, registries_yaml: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "imagePath: \"{}\"\nregistries:\n{registries_yaml}",
            dir.path().join("cache").display()
        ),
    )
    .expect("write config");
    let run = run_ociregistry(
        &[
            "--config-file".into(),
            config.into_os_string(),
            "serve".into(),
            "--port".into(),
            "0".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--plugin-dir".into(),
            plugin_dir.as_os_str().to_owned(),
        ],
        Duration::from_secs(20),
    );
    assert!(
        run.code.is_some_and(|c| c != 0),
        "the server must refuse to start (non-zero exit), got {:?}\nstderr:\n{}",
        run.code,
        run.stderr
    );
    assert!(
        !run.stderr.contains("listening on") && !run.stdout.contains("listening on"),
        "the server started listening: {}",
        run.stderr
    );
    run
}

// ---------------------------------------------------------------------------------------
// 1. ecr against moto, end to end

#[test]
fn ecr_plugin_against_moto_end_to_end() {
    if !require_upstream_tools() || !moto::require_moto() {
        return;
    }
    let moto = Moto::start();
    let mut up = Upstream::htpasswd("AWS", moto::ECR_PASSWORD);
    let repo = images::unique_repo("ecr");
    let for_skopeo = images::seed(&up, &repo, "skopeo", ImageKind::small_oci());
    let for_http = images::seed(&up, &repo, "inpath", ImageKind::DockerV2s2 { layers: 2 });
    // A second ECR registry entry in another region: it gets its own token.
    let up2 = Upstream::htpasswd("AWS", moto::ECR_PASSWORD);
    let in_west = images::seed(&up2, &repo, "west", ImageKind::small_oci());
    assert_eq!(
        moto::ECR_TOKEN,
        b64(&format!("AWS:{}", moto::ECR_PASSWORD)),
        "test premise: moto's token is base64 AWS:<password>"
    );
    let access_before = up.access_log().len();
    let plugins = plugin_dir(&["ecr"], &[]);
    let aws = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            "provider: ecr, providerOpts: region=us-east-1, expiry: 6h",
        ))
        .registry(RegistryEntry::with_token_auth(
            &up2.host(),
            "provider: ecr, providerOpts: region=eu-west-1, expiry: 6h",
        ))
        .default_ns(&up.host())
        .env("AWS_ENDPOINT_URL_ECR", &moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", path_str(&aws.path().join("no-config")))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            path_str(&aws.path().join("no-credentials")),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .log_level("trace")
        .start();
    wait_log_count(&proxy, "credential refreshed", 2, Duration::from_secs(20));

    // Plain HTTP, in-path form: every byte checked.
    proxy.pull_and_verify(Route::InPath(&up.host()), &for_http);
    proxy.pull_and_verify(Route::InPath(&up2.host()), &in_west);
    // skopeo (defaultNs route: skopeo cannot name an in-path upstream with a port).
    let dest = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/{}:{}", proxy.host(), repo, for_skopeo.tag);
    skopeo::pull_to_dir(&reference, dest.path(), &PullOptions::default())
        .unwrap_or_else(|e| panic!("skopeo pull {reference} through the proxy: {e}"));
    skopeo::verify_dir_pull(dest.path(), &for_skopeo, false);

    // moto saw GetAuthorizationToken, signed with the env credentials, and no storm even
    // though moto's expiry is in 2015.
    // Watch moto for a few seconds: a refresh storm (e.g. driven by moto's past expiry)
    // shows up as more calls. This is an observation window, not a synchronisation.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let n = moto.operations("GetAuthorizationToken").len();
        assert!(
            n <= 4,
            "{n} GetAuthorizationToken calls for 2 registries: refresh storm\nmoto log:\n{}",
            moto.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let calls = moto.operations("GetAuthorizationToken");
    let summary = |calls: &[serde_json::Value]| -> Vec<String> {
        calls
            .iter()
            .map(|c| {
                let auth = moto::header(c, "Authorization").unwrap_or_default();
                let scope = auth
                    .split("Credential=")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .unwrap_or_default();
                format!(
                    "{scope} @ {}",
                    moto::header(c, "X-Amz-Date").unwrap_or_default()
                )
            })
            .collect()
    };
    let in_region = |region: &str| {
        calls
            .iter()
            .filter(|c| {
                let auth = moto::header(c, "Authorization").unwrap_or_default();
                auth.contains("Credential=testing/")
                    && auth.contains(&format!("/{region}/ecr/aws4_request"))
            })
            .count()
    };
    for region in ["us-east-1", "eu-west-1"] {
        assert!(
            (1..=2).contains(&in_region(region)),
            "GetAuthorizationToken calls signed with the env credentials for {region}: {} \
             (expected 1, at most 2: moto's expiry is in the past and must not cause a \
             refresh storm); all calls (signing scope, time): {:?}",
            in_region(region),
            summary(&calls)
        );
    }
    assert_eq!(
        calls.len(),
        in_region("us-east-1") + in_region("eu-west-1"),
        "no other GetAuthorizationToken calls: {:?}",
        summary(&calls)
    );
    let refreshed = proxy.log().matches("credential refreshed").count();
    assert_eq!(
        refreshed,
        calls.len(),
        "credential refreshes logged vs GetAuthorizationToken calls"
    );

    // The upstream saw Basic auth as user AWS, and never had to refuse the proxy.
    let access = up.access_log();
    let from_proxy = &access[access_before..];
    assert!(!from_proxy.is_empty(), "no request reached the upstream");
    let refused: Vec<_> = from_proxy.iter().filter(|l| l.status >= 400).collect();
    assert!(
        refused.is_empty(),
        "the upstream refused requests from the proxy: {refused:?}"
    );
    // distribution logs `authorized request` only after its htpasswd check accepted the
    // Basic credentials (the file holds one user: AWS); lines that name the user say AWS.
    let server_log = up.server_log();
    let authorized = log_lines_with(
        &server_log,
        &["msg=\"authorized request\"", "useragent=ociregistry"],
    );
    assert!(
        !authorized.is_empty(),
        "no authorized (Basic) request from ociregistry in the upstream's log"
    );
    for l in log_lines_with(&server_log, &["useragent=ociregistry", "auth.user.name="]) {
        assert!(
            l.contains("auth.user.name=AWS "),
            "upstream request authenticated as someone else than AWS: {l}"
        );
    }

    // Plugin log lines carry the plugin's name; the token appears nowhere.
    let log = proxy.log();
    assert!(
        log.contains("plugin=\"ecr\""),
        "no log line from the ecr plugin tagged with its name"
    );
    assert_no_secret(
        &log,
        "the proxy's log",
        &[
            moto::ECR_PASSWORD,
            moto::ECR_TOKEN,
            b64(moto::ECR_PASSWORD).trim_end_matches('='),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// 2. fixture plugins in a served proxy

/// A panicking provider: the server starts, logs the panic as an error with the plugin's
/// name, answers pulls to that registry with a 503 naming it, and serves the others.
#[test]
fn panicking_provider_is_contained() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = plugin_dir(&[], &["fixture_panic"]);
    let locked = Upstream::htpasswd("e2e", "panic-registry-pw-1");
    let open = Upstream::anonymous();
    let repo = images::unique_repo("panic");
    images::seed(&locked, &repo, "v1", ImageKind::small_oci());
    let open_img = images::seed(&open, &repo, "v1", ImageKind::small_oci());
    let message = format!("fixture-boom-{:08x}", fastrand::u32(..));
    let mut proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &locked.host(),
            &format!("provider: panic, providerOpts: \"message={message}\""),
        ))
        .upstream(&open)
        .start();
    wait_log_count(
        &proxy,
        "credential refresh failed",
        1,
        Duration::from_secs(10),
    );

    let r = proxy.get_manifest(Route::InPath(&locked.host()), &repo, "v1");
    assert_eq!(
        r.status,
        503,
        "pull needing the panicking provider: {}",
        r.body_str()
    );
    ociregistry_e2e::assert_oci_error(&r.body, "UNAVAILABLE", "pull with no credential");
    let msg = oci_message(&r.body);
    assert!(
        msg.contains(&locked.host()),
        "the error names the registry: {msg}"
    );
    assert!(msg.contains("panicked"), "the error says why: {msg}");

    proxy.pull_and_verify(Route::InPath(&open.host()), &open_img);
    assert!(proxy.is_running(), "the server died");

    let log = proxy.log();
    let panic_lines = log_lines_with(&log, &["ERROR", "plugin=\"panic\"", &message]);
    assert!(
        !panic_lines.is_empty(),
        "the panic is logged as an ERROR tagged plugin=\"panic\" with its message; log:\n{log}"
    );
}

/// A hanging provider is timed out (`auth.token.timeout`); meanwhile the other registries
/// are served, and pulls to its registry get a 503 naming it.
#[test]
fn hanging_provider_is_timed_out() {
    if !require_upstream_tools() {
        return;
    }
    const TIMEOUT_S: u64 = 4;
    let plugins = plugin_dir(&[], &["fixture_hang"]);
    let locked = Upstream::htpasswd("e2e", "hang-registry-pw-1");
    let open = Upstream::anonymous();
    let repo = images::unique_repo("hang");
    images::seed(&locked, &repo, "v1", ImageKind::small_oci());
    let open_img = images::seed(&open, &repo, "v1", ImageKind::small_oci());
    let started = Instant::now();
    let mut proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &locked.host(),
            &format!("provider: hang, timeout: {TIMEOUT_S}s"),
        ))
        .upstream(&open)
        .start();
    // Served while the provider call hangs.
    proxy.pull_and_verify(Route::InPath(&open.host()), &open_img);
    if started.elapsed() < Duration::from_secs(TIMEOUT_S) {
        assert!(
            !proxy.log().contains("timed out"),
            "the provider call cannot have timed out yet"
        );
    }

    let t = Instant::now();
    let r = proxy.get_manifest(Route::InPath(&locked.host()), &repo, "v1");
    let took = t.elapsed();
    assert_eq!(
        r.status,
        503,
        "pull needing the hung provider: {}",
        r.body_str()
    );
    ociregistry_e2e::assert_oci_error(&r.body, "UNAVAILABLE", "pull with no credential");
    let msg = oci_message(&r.body);
    assert!(
        msg.contains(&locked.host()),
        "the error names the registry: {msg}"
    );
    assert!(
        msg.contains("did not answer within"),
        "the error says it timed out: {msg}"
    );
    assert!(
        took < Duration::from_secs(TIMEOUT_S + 6),
        "the pull waited {took:?} (provider timeout {TIMEOUT_S}s)"
    );
    let log = proxy.log();
    assert!(
        !log_lines_with(&log, &["timed out", &locked.host()]).is_empty(),
        "the timeout is logged with the registry"
    );
    assert!(proxy.is_running(), "the server died");
}

/// A provider that fails 3 times: first pulls get a clear 503, the scheduler retries with
/// backoff (no tight loop), and the pull succeeds once the provider does.
#[test]
fn flaky_provider_recovers_after_backoff() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = plugin_dir(&[], &["fixture_flaky"]);
    // failures=3: calls 1..3 fail, call 4 returns Basic e2e / flaky-ok-4.
    let up = Upstream::htpasswd("e2e", "flaky-ok-4");
    let repo = images::unique_repo("flaky");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let started = Instant::now();
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            "provider: flaky, providerOpts: \"failures=3,user=e2e\"",
        ))
        .start();

    let first = proxy.get_manifest(Route::InPath(&up.host()), &repo, "v1");
    assert_eq!(first.status, 503, "first pull: {}", first.body_str());
    let msg = oci_message(&first.body);
    assert!(
        msg.contains(&up.host()) && msg.contains("flaky failure"),
        "the first pull's error names the registry and the provider's failure: {msg}"
    );

    let ok_after = wait_for(
        "a pull through the flaky provider to succeed",
        Duration::from_secs(25),
        Duration::from_millis(200),
        || {
            let r = proxy.get_manifest(Route::InPath(&up.host()), &repo, "v1");
            match r.status {
                200 => Some(started.elapsed()),
                503 => None,
                s => panic!(
                    "unexpected status {s} while the provider recovers: {}",
                    r.body_str()
                ),
            }
        },
    );
    // Backoff 1s doubling, jittered into [d/2, d]: the 4th call is >= 0.5+1+2 s after start.
    assert!(
        ok_after >= Duration::from_secs(3),
        "succeeded {ok_after:?} after start: the retries did not back off"
    );
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    let log = proxy.log();
    assert_eq!(
        log.matches("credential refresh failed").count(),
        3,
        "three failed fetches logged"
    );
    assert_eq!(
        log.matches("credential refreshed").count(),
        1,
        "one successful fetch"
    );
    assert_no_secret(
        &log,
        "the proxy's log",
        &["flaky-ok-4", &b64("e2e:flaky-ok-4")],
    );
}

/// `counter`: exactly one fetch at start; the upstream's 401 for its first (wrong)
/// credential triggers exactly one single-flight refresh even under concurrent pulls, and
/// the pulls are retried and succeed. Plugin log lines carry the plugin's name.
#[test]
fn counter_provider_fetches_once_and_refreshes_once_on_401() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = plugin_dir(&[], &["fixture_counter"]);
    let prefix = format!("ctr{:08x}-", fastrand::u32(..));
    // The first credential (<prefix>1) is wrong; the second (<prefix>2) is right.
    let mut up = Upstream::htpasswd("e2e", &format!("{prefix}2"));
    let repo = images::unique_repo("counter");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(4, 16 * 1024));
    let img2 = images::seed(&up, &repo, "v2", ImageKind::DockerV2s2 { layers: 2 });
    let calls_dir = tempfile::tempdir().expect("tempdir");
    let calls_file = calls_dir.path().join("calls");
    let calls = || {
        std::fs::read_to_string(&calls_file)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let access_before = up.access_log().len();
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: counter, providerOpts: \"user=e2e,prefix={prefix},log={}\", expiry: 6h",
                calls_file.display()
            ),
        ))
        .start();
    wait_log_count(&proxy, "credential refreshed", 1, Duration::from_secs(10));
    assert_eq!(calls(), 1, "exactly one fetch at start");

    // Concurrent requests all present <prefix>1, get 401, share ONE refresh, retry.
    let statuses = pull_concurrently(&proxy, &up.host(), &img);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every concurrent request succeeds after the refresh: {statuses:?}"
    );
    assert_eq!(
        calls(),
        2,
        "one single-flight refresh after the upstream's 401s"
    );
    let after_first = up.access_log().len();
    let first_pull = &up.access_log()[access_before..after_first];
    assert!(
        first_pull.iter().any(|l| l.status == 401),
        "the upstream refused the first credential (test premise)"
    );

    // The refreshed credential is used from now on: no 401, no further fetch.
    proxy.pull_and_verify(Route::InPath(&up.host()), &img2);
    assert_eq!(calls(), 2, "no fetch for a pull with a good credential");
    let access = up.access_log();
    let second_pull = &access[after_first..];
    assert!(
        second_pull.iter().all(|l| l.status < 400),
        "requests with the refreshed credential are accepted: {second_pull:?}"
    );

    let log = proxy.log();
    let plugin_lines = log_lines_with(&log, &["counter fetch", "plugin=\"counter\""]);
    assert_eq!(
        plugin_lines.len(),
        2,
        "each fetch's plugin log line reaches the server log with the plugin's name"
    );
    assert_no_secret(
        &log,
        "the proxy's log",
        &[
            &format!("{prefix}1"),
            &format!("{prefix}2"),
            &b64(&format!("e2e:{prefix}1")),
            &b64(&format!("e2e:{prefix}2")),
        ],
    );
}

/// A plugin built against plugin-api ABI 1.0 (the frozen 0.1.0 copy) is served by this
/// 1.1 host: loaded, created without the 1.1 context, fetched, and its credential accepted
/// by an htpasswd upstream.
#[test]
fn a_plugin_built_for_abi_1_0_serves_pulls() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = plugin_dir(&[], &["fixture_v10"]);
    // The v10 fixture answers Basic <user> / v10-<n>: the first credential is the right one.
    let user = format!("old{:08x}", fastrand::u32(..));
    let up = Upstream::htpasswd(&user, "v10-1");
    let repo = images::unique_repo("v10");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!("provider: v10, providerOpts: \"user={user}\", expiry: 6h"),
        ))
        .default_ns(&up.host())
        .start();
    wait_log_count(&proxy, "credential refreshed", 1, Duration::from_secs(10));
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    skopeo::pull_and_verify(&reference, &img, "");
}

/// A plugin built for another plugin-api ABI: refused at start with one line naming the
/// file and both versions.
#[test]
fn plugin_for_another_abi_is_refused_with_one_line() {
    let plugins = plugin_dir(&[], &["fixture_otherabi", "fixture_counter"]);
    let run = serve_must_refuse(
        plugins.path(),
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: otherabi}}\n",
    );
    let file = fixture_plugins::plugin_file(plugins.path(), "fixture_otherabi");
    let lines = log_lines_with(
        &run.stderr,
        &["built for plugin-api ABI 2.0, this host speaks 1.1"],
    );
    assert_eq!(
        lines.len(),
        1,
        "exactly one line gives the ABI mismatch; stderr:\n{}",
        run.stderr
    );
    assert!(
        lines[0].contains(path_str(&file)),
        "the line names the file {}: {}",
        file.display(),
        lines[0]
    );
}

/// Unknown provider names and unknown `providerOpts` keys stop the server with what is
/// accepted; a missing plugin directory is named.
#[test]
fn unknown_provider_and_unknown_option_are_refused() {
    let plugins = plugin_dir(&["ecr"], &["fixture_counter", "fixture_panic"]);

    let run = serve_must_refuse(
        plugins.path(),
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: nosuch}}\n",
    );
    let lines = log_lines_with(&run.stderr, &["nosuch"]);
    assert_eq!(lines.len(), 1, "one line; stderr:\n{}", run.stderr);
    for want in ["127.0.0.1:1", "counter", "ecr", "panic"] {
        assert!(
            lines[0].contains(want),
            "the refusal names `{want}` (registry, available providers): {}",
            lines[0]
        );
    }

    let run = serve_must_refuse(
        plugins.path(),
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: counter, providerOpts: \"user=x,bogus=1\"}}\n",
    );
    let lines = log_lines_with(&run.stderr, &["bogus"]);
    assert_eq!(lines.len(), 1, "one line; stderr:\n{}", run.stderr);
    assert!(
        lines[0].contains("log, prefix, user, ttl"),
        "the refusal lists the accepted keys: {}",
        lines[0]
    );

    let run = serve_must_refuse(
        plugins.path(),
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: ecr, providerOpts: \"region=us-east-1,Profil=x\"}}\n",
    );
    let lines = log_lines_with(&run.stderr, &["Profil"]);
    assert_eq!(lines.len(), 1, "one line; stderr:\n{}", run.stderr);
    assert!(
        lines[0].contains("profile, region"),
        "the ecr refusal lists its accepted keys: {}",
        lines[0]
    );

    let missing = plugins.path().join("no-such-dir");
    let run = serve_must_refuse(
        &missing,
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: counter}}\n",
    );
    assert!(
        run.stderr.contains(path_str(&missing)),
        "the refusal names the missing plugin directory: {}",
        run.stderr
    );

    // A panic in the plugin's `create` is an error, not an abort of the host.
    let run = serve_must_refuse(
        plugins.path(),
        "- name: 127.0.0.1:1\n  scheme: http\n  auth: {token: {provider: panic, providerOpts: \"in=create,message=create-boom-42\"}}\n",
    );
    assert_eq!(
        run.code,
        Some(1),
        "exit code (not a signal): {}",
        run.stderr
    );
    assert!(
        !log_lines_with(&run.stderr, &["127.0.0.1:1", "panicked", "create-boom-42"]).is_empty(),
        "the refusal names the registry and says the provider panicked: {}",
        run.stderr
    );
}

/// `auth.token.static` needs no plugin: the server starts with a plugin directory that does
/// not exist and pulls with the pasted (ECR-style base64 user:password) token as Basic.
#[test]
fn static_token_needs_no_plugin() {
    if !require_upstream_tools() {
        return;
    }
    let pass = format!("static-pw-{:012x}", fastrand::u64(..));
    let up = Upstream::htpasswd("AWS", &pass);
    let img = images::seed_in(&up, "static", "v1", ImageKind::small_oci());
    let token = b64(&format!("AWS:{pass}"));
    let nowhere = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::builder()
        .plugin_dir(&nowhere.path().join("no-plugins"))
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!("static: {token}"),
        ))
        .start();
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    assert_no_secret(&proxy.log(), "the proxy's log", &[&pass, &token]);
}

// ---------------------------------------------------------------------------------------
// 3. `ociregistry providers`

#[test]
fn providers_lists_plugins_and_failures_as_table_and_json() {
    let plugins = plugin_dir(
        &["ecr", "file"],
        &["fixture_counter", "fixture_otherabi", "fixture_v10"],
    );
    let junk = plugins.path().join("not-a-plugin.so");
    let bytes: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
    std::fs::write(&junk, bytes).expect("write junk");
    let otherabi = fixture_plugins::plugin_file(plugins.path(), "fixture_otherabi");
    let dir = plugins.path().as_os_str().to_owned();

    // Table.
    let run = run_ociregistry(
        &["--plugin-dir".into(), dir.clone(), "providers".into()],
        Duration::from_secs(20),
    );
    // Files failed to load (junk, otherabi): listed, and the exit code says so.
    assert_eq!(run.code, Some(1), "providers: {}", run.stderr);
    let out = &run.stdout;
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains(path_str(plugins.path())) && l.contains("ABI 1.1")),
        "first line names the directory and the host ABI:\n{out}"
    );
    let header = out
        .lines()
        .find(|l| l.starts_with("PROVIDER"))
        .unwrap_or_else(|| panic!("no header row:\n{out}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "PROVIDER",
            "VERSION",
            "ABI",
            "OPTIONS",
            "FILE",
            "DESCRIPTION"
        ],
        "header row"
    );
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for (name, opts, file) in [
        ("ecr", "profile,region", "libociregistry_provider_ecr.so"),
        (
            "file",
            "path*,scheme,user",
            "libociregistry_provider_file.so",
        ),
        ("counter", "log,prefix,user,ttl", "libfixture_counter.so"),
    ] {
        let r = row(name);
        assert!(r.len() >= 6, "row for {name} has every column: {r:?}");
        assert!(
            r[1].split('.').count() == 3 && r[1].split('.').all(|p| p.parse::<u32>().is_ok()),
            "{name}: version {}",
            r[1]
        );
        assert_eq!(r[2], "1.1", "{name}: ABI");
        assert_eq!(r[3], opts, "{name}: options");
        assert_eq!(r[4], file, "{name}: file");
    }
    assert_eq!(row("counter")[1], "0.1.0", "counter fixture version");
    // A plugin built against plugin-api ABI 1.0 is listed with its ABI.
    assert_eq!(row("v10")[2], "1.0", "v10 fixture: ABI");
    assert!(
        !out.lines().any(|l| l.starts_with("otherabi")),
        "the otherabi plugin is not listed as usable:\n{out}"
    );
    let fail_otherabi = log_lines_with(out, &[path_str(&otherabi)]);
    assert_eq!(
        fail_otherabi.len(),
        1,
        "one failure line for otherabi:\n{out}"
    );
    assert!(
        fail_otherabi[0].contains("built for plugin-api ABI 2.0, this host speaks 1.1"),
        "otherabi failure reason: {}",
        fail_otherabi[0]
    );
    let fail_junk = log_lines_with(out, &[path_str(&junk)]);
    assert_eq!(
        fail_junk.len(),
        1,
        "one failure line for the junk file:\n{out}"
    );
    assert!(
        fail_junk[0].len() > path_str(&junk).len() + 12,
        "the junk file's line gives a reason: {}",
        fail_junk[0]
    );

    // JSON.
    let run = run_ociregistry(
        &[
            "--plugin-dir".into(),
            dir,
            "providers".into(),
            "--output".into(),
            "json".into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(1), "providers --output json: {}", run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout));
    assert_eq!(doc["hostAbiVersion"], "1.1");
    let providers = doc["providers"].as_array().expect("providers array");
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["counter", "ecr", "file", "v10"], "providers found");
    for p in providers {
        let name = p["name"].as_str().unwrap_or_default();
        let abi = if name == "v10" { "1.0" } else { "1.1" };
        assert_eq!(p["abiVersion"], abi, "{name}");
        assert_eq!(
            p["version"].as_str(),
            Some(row(name)[1].as_str()),
            "{name}: version as in the table"
        );
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: description"
        );
        let file = PathBuf::from(p["file"].as_str().unwrap_or_default());
        assert_eq!(
            file.file_name().and_then(|f| f.to_str()),
            Some(row(name)[4].as_str()),
            "{name}: file"
        );
    }
    let ecr = &providers[1];
    let keys: Vec<(&str, bool)> = ecr["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(|o| (o["key"].as_str().unwrap_or_default(), o["required"] == true))
        .collect();
    assert_eq!(keys, [("profile", false), ("region", false)], "ecr options");
    let file_opts: Vec<(&str, bool)> = providers[2]["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(|o| (o["key"].as_str().unwrap_or_default(), o["required"] == true))
        .collect();
    assert_eq!(
        file_opts,
        [("path", true), ("scheme", false), ("user", false)],
        "file options"
    );
    let failures = doc["failures"].as_array().expect("failures array");
    assert_eq!(failures.len(), 2, "two files failed: {failures:?}");
    let failure = |f: &Path| {
        failures
            .iter()
            .find(|x| x["file"].as_str() == Some(path_str(f)))
            .unwrap_or_else(|| panic!("no failure entry for {}: {failures:?}", f.display()))
    };
    assert!(
        failure(&otherabi)["error"]
            .as_str()
            .is_some_and(|e| e.contains("built for plugin-api ABI 2.0, this host speaks 1.1")),
        "otherabi failure: {}",
        failure(&otherabi)
    );
    assert!(
        failure(&junk)["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "junk failure has a reason"
    );
}

/// With no `--plugin-dir` and no config, the bundled plugins next to the binary are found
/// (what the README's run command relies on).
#[test]
fn providers_default_dir_is_next_to_the_binary() {
    let run = run_ociregistry(
        &os(&["providers", "--output", "json"]),
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(0), "providers: {}", run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout));
    let names: Vec<&str> = doc["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"ecr") && names.contains(&"file"),
        "bundled providers found by default in {}: {names:?}",
        doc["pluginDir"]
    );
    let bin_dir = ociregistry_bin().parent().expect("dir").to_path_buf();
    let dir = PathBuf::from(doc["pluginDir"].as_str().unwrap_or_default());
    assert!(
        dir == bin_dir || dir == bin_dir.join("plugins"),
        "default plugin dir {} is next to the binary {}",
        dir.display(),
        bin_dir.display()
    );
}

#[test]
fn providers_check_reports_each_registry_without_secrets() {
    let plugins = plugin_dir(&["file"], &["fixture_counter"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = format!("file-secret-{:012x}", fastrand::u64(..));
    let cred_file = dir.path().join("cred");
    std::fs::write(&cred_file, format!("fileuser:{secret}\n")).expect("write cred");
    let bearer_file = dir.path().join("bearer");
    let bearer = format!("bearer-secret-{:012x}", fastrand::u64(..));
    std::fs::write(&bearer_file, format!("{bearer}\n")).expect("write bearer");
    let counter_prefix = format!("ctr-secret-{:08x}-", fastrand::u32(..));
    let missing = dir.path().join("missing-cred");
    let good = format!(
        "registries:\n\
         - name: 127.0.0.1:5001\n  scheme: http\n  auth: {{token: {{provider: file, providerOpts: \"path={}\"}}}}\n\
         - name: 127.0.0.1:5002\n  scheme: http\n  auth: {{token: {{provider: file, providerOpts: \"path={},scheme=bearer\"}}}}\n\
         - name: 127.0.0.1:5003\n  scheme: http\n  auth: {{token: {{provider: counter, providerOpts: \"prefix={counter_prefix},ttl=3600\"}}}}\n\
         - name: 127.0.0.1:5004\n  scheme: http\n",
        cred_file.display(),
        bearer_file.display(),
    );
    let broken = format!(
        "{good}- name: 127.0.0.1:5005\n  scheme: http\n  auth: {{token: {{provider: file, providerOpts: \"path={}\"}}}}\n",
        missing.display()
    );
    let secrets = [
        secret.as_str(),
        bearer.as_str(),
        &format!("{counter_prefix}1"),
        &b64(&format!("fileuser:{secret}")),
    ];
    let check = |yaml: &str, json: bool| -> Run {
        let config = dir
            .path()
            .join(format!("config-{:08x}.yaml", fastrand::u32(..)));
        // The plugin directory comes from the config's `pluginDir` here.
        std::fs::write(
            &config,
            format!("pluginDir: \"{}\"\n{yaml}", plugins.path().display()),
        )
        .expect("write config");
        let mut args: Vec<OsString> = vec![
            "--config-file".into(),
            config.into_os_string(),
            "providers".into(),
            "--check".into(),
        ];
        if json {
            args.extend(os(&["--output", "json"]));
        }
        let run = run_ociregistry(&args, Duration::from_secs(30));
        assert_no_secret(&run.stdout, "providers --check output", &secrets);
        assert_no_secret(&run.stderr, "providers --check stderr", &secrets);
        run
    };
    let line_for = |out: &str, name: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
            .to_owned()
    };

    // All good: exit 0.
    let run = check(&good, false);
    assert_eq!(
        run.code,
        Some(0),
        "check of good registries:\n{}{}",
        run.stdout,
        run.stderr
    );
    let l = line_for(&run.stdout, "127.0.0.1:5001");
    assert!(
        l.contains("ok")
            && l.contains("basic")
            && l.contains("fileuser")
            && l.contains("no expiry"),
        "file basic: {l}"
    );
    let l = line_for(&run.stdout, "127.0.0.1:5002");
    assert!(l.contains("ok") && l.contains("bearer"), "file bearer: {l}");
    let l = line_for(&run.stdout, "127.0.0.1:5003");
    assert!(
        l.contains("ok") && l.contains("expires") && l.contains("in 59m"),
        "counter with a 1h expiry: {l}"
    );
    let l = line_for(&run.stdout, "127.0.0.1:5004");
    assert!(l.contains("ok"), "anonymous registry: {l}");

    // One broken: FAILED with the reason, exit 1.
    let run = check(&broken, false);
    assert_eq!(
        run.code,
        Some(1),
        "check with a broken registry:\n{}{}",
        run.stdout,
        run.stderr
    );
    let l = line_for(&run.stdout, "127.0.0.1:5005");
    assert!(
        l.contains("FAILED") && l.contains(path_str(&missing)),
        "the broken registry's line says FAILED and names the file: {l}"
    );
    assert!(
        line_for(&run.stdout, "127.0.0.1:5001").contains("ok"),
        "the others are still checked"
    );

    // JSON.
    let run = check(&broken, true);
    assert_eq!(
        run.code,
        Some(1),
        "json check:\n{}{}",
        run.stdout,
        run.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout));
    let regs = doc["registries"].as_array().expect("registries");
    let reg = |name: &str| {
        regs.iter()
            .find(|r| r["registry"] == name)
            .unwrap_or_else(|| panic!("no entry for {name}: {regs:?}"))
    };
    assert_eq!(reg("127.0.0.1:5001")["ok"], true);
    assert!(reg("127.0.0.1:5001")["expiresAt"].is_null());
    assert_eq!(reg("127.0.0.1:5003")["ok"], true);
    assert!(
        reg("127.0.0.1:5003")["expiresAt"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "counter's expiry: {}",
        reg("127.0.0.1:5003")
    );
    assert_eq!(reg("127.0.0.1:5005")["ok"], false);
    assert!(
        reg("127.0.0.1:5005")["error"]
            .as_str()
            .is_some_and(|e| e.contains(path_str(&missing))),
        "error names the file: {}",
        reg("127.0.0.1:5005")
    );
}

/// Issue 14's rough edges for authors and operators: `providers --try`, `--check` with a
/// hung provider exits, an expired credential is flagged, two files providing one name,
/// `--wide`.
#[test]
fn providers_try_check_hung_expired_duplicates_and_wide() {
    let plugins = plugin_dir(&[], &["fixture_counter", "fixture_hang"]);
    let counter = fixture_plugins::plugin_file(plugins.path(), "fixture_counter");
    let hang = fixture_plugins::plugin_file(plugins.path(), "fixture_hang");

    // --try: loads one file, creates, fetches once; the secret is never printed.
    let prefix = format!("try-secret-{:08x}-", fastrand::u32(..));
    let run = run_ociregistry(
        &[
            "providers".into(),
            "--try".into(),
            counter.clone().into_os_string(),
            format!("prefix={prefix},ttl=600").into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(0), "--try: {}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("provider counter 0.1.0 (plugin-api ABI 1.1, host 1.1)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "credential: bearer, secret of {} bytes (not shown)",
            prefix.len() + 1
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("expires: ") && run.stdout.contains("(in 9m"),
        "{}",
        run.stdout
    );
    assert_no_secret(&run.stdout, "--try output", &[&format!("{prefix}1")]);
    // An expired credential and a bad option are failures, each one line.
    let run = run_ociregistry(
        &[
            "providers".into(),
            "--try".into(),
            counter.clone().into_os_string(),
            "ttl=-5".into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains("FAILED: the credential has already expired"),
        "{}",
        run.stdout
    );
    let run = run_ociregistry(
        &[
            "providers".into(),
            "--try".into(),
            counter.clone().into_os_string(),
            "nope=1".into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(
            "FAILED: options: providerOpts for provider \"counter\": unknown option \"nope\""
        ),
        "{}",
        run.stdout
    );
    // A hung fetch: --try gives up at its timeout and exits.
    let started = Instant::now();
    let run = run_ociregistry(
        &[
            "providers".into(),
            "--try".into(),
            hang.clone().into_os_string(),
            "seconds=600".into(),
            "--timeout".into(),
            "1s".into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains("FAILED: fetch: did not return within 1s"),
        "{}",
        run.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // --check with a hung provider and an expired credential: both reported, exit 1, and
    // the process ends although the hung call never returns.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "pluginDir: \"{}\"\nregistries:\n\
             - name: 127.0.0.1:5001\n  scheme: http\n  auth: {{token: {{provider: hang, providerOpts: \"seconds=600\", timeout: 1s}}}}\n\
             - name: 127.0.0.1:5002\n  scheme: http\n  auth: {{token: {{provider: counter, providerOpts: \"ttl=-60\"}}}}\n",
            plugins.path().display()
        ),
    )
    .expect("write config");
    let started = Instant::now();
    let run = run_ociregistry(
        &[
            "--config-file".into(),
            config.into_os_string(),
            "providers".into(),
            "--check".into(),
        ],
        Duration::from_secs(30),
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "--check ends after the timeout"
    );
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.stdout))
            .to_owned()
    };
    assert!(
        line("127.0.0.1:5001").contains("FAILED") && line("127.0.0.1:5001").contains("within"),
        "{}",
        line("127.0.0.1:5001")
    );
    assert!(
        line("127.0.0.1:5002").contains("FLAGGED: the provider's credential expired 1m ago"),
        "{}",
        line("127.0.0.1:5002")
    );

    // Two files providing `counter`: one is used, the other listed as not used; --wide
    // shows the option descriptions.
    std::fs::copy(&counter, plugins.path().join("libzz_counter_copy.so")).expect("copy");
    let run = run_ociregistry(
        &[
            "--plugin-dir".into(),
            plugins.path().as_os_str().to_owned(),
            "providers".into(),
            "--wide".into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "counter 0.1.0 in libzz_counter_copy.so: counter 0.1.0 in libfixture_counter.so is used"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.lines().any(|l| l.contains("counter")
            && l.contains("log")
            && l.contains("append one line per fetch to this file")),
        "--wide shows option descriptions:\n{}",
        run.stdout
    );
}

/// A slow `create` does not hold the listener beyond a short grace: the server serves while
/// it runs, and the registry's first fetch waits for it (within the provider timeout).
#[test]
fn a_slow_create_does_not_delay_the_listener() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = plugin_dir(&[], &["fixture_hang"]);
    let open = Upstream::anonymous();
    let repo = images::unique_repo("slowcreate");
    let img = images::seed(&open, &repo, "v1", ImageKind::small_oci());
    let started = Instant::now();
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            "127.0.0.1:9",
            "provider: hang, providerOpts: \"in=create,seconds=6\", timeout: 20s",
        ))
        .upstream(&open)
        .start();
    proxy.pull_and_verify(Route::InPath(&open.host()), &img);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served {:?} after the start, while create still runs (6s)",
        started.elapsed()
    );
    // The first fetch waited for create and got the credential.
    wait_log_count(&proxy, "credential refreshed", 1, Duration::from_secs(30));
    assert!(started.elapsed() >= Duration::from_secs(6));
}
