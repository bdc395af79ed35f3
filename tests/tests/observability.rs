//! Watching the mirror, end to end against the real binary: `serve --metrics` scraped before
//! and after pulls from a real docker-registry (named series exist, values move as they
//! should), `serve --health` readiness with a failing provider (degraded, its error shown,
//! no secret), `--log-format json` lines that all parse, `logFile`, and the metrics and
//! health endpoints kept off the pull port.

use std::collections::HashMap;
use std::time::Duration;

use ociregistry_e2e::fixture_plugins::{self, build_fixture_plugins};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::raw;
use ociregistry_e2e::{
    Proxy, ProxyBuilder, RegistryEntry, Upstream, free_port, require_upstream_tools, wait_for,
};

use raw::get_local as get;

/// A scrape: series (`name{labels}`, labels as written) to value.
#[derive(Debug)]
struct Scrape {
    text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    fn take(port: u16) -> Scrape {
        let r = get(port, "/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.body_str());
        assert!(
            r.header("Content-Type")
                .is_some_and(|c| c.starts_with("application/openmetrics-text")),
            "content type {:?}",
            r.header("Content-Type")
        );
        let text = r.body_str().to_owned();
        assert!(text.ends_with("# EOF\n"), "exposition ends with # EOF");
        let mut series = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("malformed value in {line:?}"));
            assert!(
                series.insert(name.to_owned(), value).is_none(),
                "duplicate series {name}"
            );
        }
        Scrape { text, series }
    }

    /// The value of `name` with exactly these labels (in any order); None when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series.iter().find_map(|(k, v)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), "}"));
            if n != name {
                return None;
            }
            let inner = rest.strip_suffix('}')?;
            let mut have: Vec<String> = if inner.is_empty() {
                Vec::new()
            } else {
                inner.split(',').map(str::to_owned).collect()
            };
            let mut want: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            have.sort();
            want.sort();
            (have == want).then_some(*v)
        })
    }

    /// Like [`Scrape::get`], with absent meaning 0 (counters not yet created).
    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("series {name}{labels:?} missing from:\n{}", self.text))
    }
}

fn with_ports(b: ProxyBuilder) -> ProxyBuilder {
    b.serve_arg("--metrics")
        .serve_arg("0")
        .serve_arg("--health")
        .serve_arg("0")
}

fn readyz(port: u16) -> (u16, serde_json::Value) {
    let r = get(port, "/readyz");
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", r.body_str()));
    (r.status, v)
}

/// Pulls through the proxy move requests, cache misses then hits, upstream requests and
/// bytes, and the disk gauges; an unreachable upstream shows as upstream errors; the
/// endpoints live on their own ports, and the pull port answers OCI 404s for them.
#[test]
fn metrics_move_with_pulls() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("metrics");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let proxy = with_ports(Proxy::builder().upstream(&up))
        .config_line(&format!("admin:\n  address: \"{admin_addr}\""))
        .start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    let health = proxy.logged_port("health endpoints at ");
    let pull = proxy.host();
    assert!(
        metrics != health && !pull.ends_with(&format!(":{metrics}")),
        "three separate ports"
    );

    // Separate listeners: the pull port knows neither endpoint; each listener only its own.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = proxy.get(path, &[]);
        assert_eq!(r.status, 404, "pull port {path}");
        ociregistry_e2e::assert_oci_error(&r.body, "NAME_UNKNOWN", &format!("pull port {path}"));
    }
    assert_eq!(
        get(metrics, "/readyz").status,
        404,
        "no readiness on the metrics port"
    );
    assert_eq!(
        get(health, "/metrics").status,
        404,
        "no metrics on the health port"
    );
    assert_eq!(get(health, "/healthz").status, 200);
    let (code, ready) = readyz(health);
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["cacheWritable"], true);
    assert_eq!(ready["registries"][0]["name"], up.host().as_str());
    assert_eq!(ready["registries"][0]["credential"], "none");

    let registry = up.host();
    let reg = [("registry", registry.as_str())];
    let blobs = img.blobs();
    let nblobs = blobs.len() as f64;
    let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();
    let before = Scrape::take(metrics);
    for name in [
        "inflight_fetches",
        "tag_revalidations_total",
        "stale_serves_total",
        "evictions_total",
    ] {
        before.must(&format!("ociregistry_{name}"), &[]);
    }
    assert_eq!(
        before.must("ociregistry_disk_items", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(
        before.must("ociregistry_disk_bytes", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(
        before.val(
            "ociregistry_cache_misses_total",
            &[reg[0], ("kind", "blob")]
        ),
        0.0
    );
    assert_eq!(before.val("ociregistry_upstream_requests_total", &reg), 0.0);

    // First pull: misses, upstream traffic, content on disk. A client has its last byte
    // just before the download is verified and committed: wait for the fetches to end.
    proxy.pull_and_verify(Route::InPath(&registry), &img);
    let first = wait_for(
        "the in-flight fetches to finish",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let s = Scrape::take(metrics);
            (s.must("ociregistry_inflight_fetches", &[]) == 0.0).then_some(s)
        },
    );
    let req = |s: &Scrape, route: &str, status: &str| {
        s.val(
            "ociregistry_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert!(req(&first, "manifest", "200") >= 1.0, "{}", first.text);
    assert_eq!(
        req(&first, "blob", "200"),
        nblobs,
        "one blob request per blob"
    );
    assert_eq!(
        first.must(
            "ociregistry_cache_misses_total",
            &[reg[0], ("kind", "blob")]
        ),
        nblobs
    );
    assert!(
        first.must(
            "ociregistry_cache_misses_total",
            &[reg[0], ("kind", "manifest")]
        ) >= 1.0
    );
    assert_eq!(
        first.val("ociregistry_cache_hits_total", &[reg[0], ("kind", "blob")]),
        0.0
    );
    let upstream_requests = first.must("ociregistry_upstream_requests_total", &reg);
    assert!(
        upstream_requests >= 1.0 + nblobs,
        "a manifest and each blob fetched upstream"
    );
    let received = first.must("ociregistry_upstream_received_bytes_total", &reg);
    assert!(
        received >= (blob_bytes + img.manifest.bytes.len() as u64) as f64,
        "received {received} bytes, blobs alone are {blob_bytes}"
    );
    assert_eq!(
        first.must("ociregistry_disk_items", &[("kind", "blob")]),
        nblobs
    );
    assert_eq!(
        first.must("ociregistry_disk_bytes", &[("kind", "blob")]),
        blob_bytes as f64
    );
    assert!(first.must("ociregistry_disk_items", &[("kind", "manifest")]) >= 1.0);
    assert!(
        first.must("ociregistry_disk_bytes", &[("kind", "manifest")])
            >= img.manifest.bytes.len() as f64
    );

    // Second pull: all hits, nothing upstream, disk unchanged.
    proxy.pull_and_verify(Route::InPath(&registry), &img);
    let second = Scrape::take(metrics);
    assert_eq!(
        second.must("ociregistry_cache_hits_total", &[reg[0], ("kind", "blob")]),
        nblobs
    );
    assert!(
        second.must(
            "ociregistry_cache_hits_total",
            &[reg[0], ("kind", "manifest")]
        ) >= 1.0
    );
    assert_eq!(
        second.must(
            "ociregistry_cache_misses_total",
            &[reg[0], ("kind", "blob")]
        ),
        nblobs,
        "no new miss"
    );
    assert_eq!(
        second.must("ociregistry_upstream_requests_total", &reg),
        upstream_requests,
        "a cached image costs no upstream request"
    );
    assert_eq!(req(&second, "blob", "200"), 2.0 * nblobs);
    assert_eq!(
        second.must("ociregistry_disk_items", &[("kind", "blob")]),
        nblobs
    );

    // Route kinds and statuses of refused requests.
    assert_eq!(proxy.get("/nope", &[]).status, 404);
    assert_eq!(
        proxy
            .raw(
                "POST",
                &format!("/v2/{registry}/{repo}/blobs/uploads/"),
                &[]
            )
            .status,
        405
    );
    let third = Scrape::take(metrics);
    assert_eq!(
        req(&third, "invalid", "404") - req(&second, "invalid", "404"),
        1.0
    );
    assert_eq!(req(&third, "upload", "405"), 1.0);

    // A prune through the admin API: an eviction, and the disk gauges go down at once.
    let r = wait_for(
        "the admin API",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            raw::request(
                &admin_addr,
                "POST",
                "/admin/v1/prune",
                &[("Content-Type", "application/json")],
                Some(br#"{"pattern":".","grace":"0s"}"#),
            )
            .ok()
        },
    );
    assert_eq!(r.status, 200, "admin prune: {}", r.body_str());
    let pruned = Scrape::take(metrics);
    assert_eq!(
        pruned.must("ociregistry_evictions_total", &[]),
        1.0,
        "one image pruned"
    );
    assert_eq!(
        pruned.must("ociregistry_disk_items", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(
        pruned.must("ociregistry_disk_bytes", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(
        pruned.must("ociregistry_disk_items", &[("kind", "manifest")]),
        0.0
    );

    // An upstream that is down: counted as upstream errors for that registry.
    up.stop();
    let r = proxy.get_manifest(Route::InPath(&registry), &repo, "never-pushed");
    assert!(
        r.status >= 500,
        "uncached tag with the upstream down: {}",
        r.status
    );
    let fourth = Scrape::take(metrics);
    assert!(
        fourth.must("ociregistry_upstream_errors_total", &reg) >= 1.0,
        "{}",
        fourth.text
    );
    assert!(
        fourth.must("ociregistry_upstream_requests_total", &reg) > upstream_requests,
        "the failed attempts were requests too"
    );
    assert_eq!(
        req(&fourth, "manifest", &r.status.to_string()),
        1.0,
        "the failed pull is counted under its status"
    );
}

fn fixtures(names: &[&str]) -> tempfile::TempDir {
    let built =
        build_fixture_plugins().unwrap_or_else(|e| panic!("building the fixture plugins: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_plugins::install_plugins(&built, dir.path(), names).expect("install fixture plugins");
    dir
}

/// A provider that always fails shows in the token metrics and makes readiness report the
/// registry as failing (200, degraded) with the provider's error; a working provider with
/// an expiry shows as valid with its seconds to expiry. No secret in either answer.
#[test]
fn failing_provider_shows_in_metrics_and_readiness() {
    let plugins = fixtures(&["fixture_flaky", "fixture_counter"]);
    let secret_prefix = format!("obsSecret{:08x}-", fastrand::u32(..));
    let failing = "failing.registry.example:5000";
    let working = "working.registry.example:5000";
    let proxy = with_ports(Proxy::builder().plugin_dir(plugins.path()))
        .registry(RegistryEntry::with_token_auth(
            failing,
            "provider: flaky, providerOpts: \"failures=1000\"",
        ))
        .registry(RegistryEntry::with_token_auth(
            working,
            &format!("provider: counter, providerOpts: \"prefix={secret_prefix},ttl=3600\""),
        ))
        .registry(RegistryEntry {
            auth: Some(ociregistry_e2e::RegistryAuth::Basic {
                user: "u".into(),
                password: format!("{secret_prefix}basic"),
            }),
            ..RegistryEntry::plain("basic.registry.example")
        })
        .start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    let health = proxy.logged_port("health endpoints at ");

    let entry = |v: &serde_json::Value, name: &str| -> serde_json::Value {
        v["registries"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not in readiness: {v}"))
    };
    // Wait until both providers answered at least twice / once.
    let (code, ready, body) = wait_for(
        "readiness to show the failing provider twice and the working one valid",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let r = get(health, "/readyz");
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let f = entry(&v, failing);
            let w = entry(&v, working);
            (f["failures"].as_u64()? >= 2 && w["state"] == "valid")
                .then(|| (r.status, v, r.body_str().to_owned()))
        },
    );
    assert_eq!(
        code, 200,
        "a failing provider degrades, it does not unready: {ready}"
    );
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["degraded"], true);
    assert_eq!(ready["ready"], true);
    let f = entry(&ready, failing);
    assert_eq!(f["credential"], "provider");
    assert_eq!(f["provider"], "flaky");
    assert_eq!(f["state"], "failing");
    assert_eq!(f["usable"], false);
    assert!(
        f["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("flaky failure")),
        "the provider's error is shown: {f}"
    );
    let w = entry(&ready, working);
    assert_eq!(w["provider"], "counter");
    assert_eq!(w["usable"], true);
    let expires_in = w["expiresInSeconds"].as_i64().expect("expiresInSeconds");
    assert!(
        (3500..=3600).contains(&expires_in),
        "expires in {expires_in}s"
    );
    assert!(w["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        entry(&ready, "basic.registry.example")["credential"],
        "basic"
    );

    let s = Scrape::take(metrics);
    let fr = [("registry", failing)];
    let wr = [("registry", working)];
    assert!(
        s.must("ociregistry_token_failures_total", &fr) >= 2.0,
        "{}",
        s.text
    );
    assert_eq!(s.must("ociregistry_token_refreshes_total", &fr), 0.0);
    assert_eq!(s.must("ociregistry_token_valid", &fr), 0.0);
    assert!(
        s.get("ociregistry_token_expiry_seconds", &fr).is_none(),
        "no expiry without a token"
    );
    assert!(s.must("ociregistry_token_refreshes_total", &wr) >= 1.0);
    assert_eq!(s.must("ociregistry_token_failures_total", &wr), 0.0);
    assert_eq!(s.must("ociregistry_token_valid", &wr), 1.0);
    let expiry = s.must("ociregistry_token_expiry_seconds", &wr);
    assert!(
        (3500.0..=3600.0).contains(&expiry),
        "token expiry {expiry}s"
    );

    // The failures keep being counted (backoff retries).
    let failures = s.must("ociregistry_token_failures_total", &fr);
    wait_for(
        "another provider failure in the metrics",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            (Scrape::take(metrics).must("ociregistry_token_failures_total", &fr) > failures)
                .then_some(())
        },
    );

    for (what, text) in [("metrics", &s.text), ("readiness", &body)] {
        assert!(
            !text.contains(&secret_prefix),
            "{what} shows a secret: {text}"
        );
    }
}

/// A failing provider's error kind reaches `/readyz` (`lastErrorKind`) and the metrics
/// (`ociregistry_provider_errors_total{registry,provider,kind}`): a plain failure is
/// `failed`, a panic caught in the plugin is `panicked`.
#[test]
fn provider_error_kinds_show_in_readiness_and_metrics() {
    let plugins = fixtures(&["fixture_flaky", "fixture_panic"]);
    let failing = "failing.registry.example:5000";
    let panicking = "panicking.registry.example:5000";
    let proxy = with_ports(Proxy::builder().plugin_dir(plugins.path()))
        .registry(RegistryEntry::with_token_auth(
            failing,
            "provider: flaky, providerOpts: \"failures=1000\"",
        ))
        .registry(RegistryEntry::with_token_auth(panicking, "provider: panic"))
        .start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    let health = proxy.logged_port("health endpoints at ");
    let entry = |v: &serde_json::Value, name: &str| -> serde_json::Value {
        v["registries"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not in readiness: {v}"))
    };
    let ready = wait_for(
        "readiness to show both providers failing",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (_, v) = readyz(health);
            (entry(&v, failing)["failures"].as_u64()? >= 1
                && entry(&v, panicking)["failures"].as_u64()? >= 1)
                .then_some(v)
        },
    );
    assert_eq!(entry(&ready, failing)["lastErrorKind"], "failed", "{ready}");
    assert_eq!(
        entry(&ready, panicking)["lastErrorKind"],
        "panicked",
        "{ready}"
    );

    let s = Scrape::take(metrics);
    let series = |registry, provider, kind| {
        s.must(
            "ociregistry_provider_errors_total",
            &[
                ("registry", registry),
                ("provider", provider),
                ("kind", kind),
            ],
        )
    };
    assert!(series(failing, "flaky", "failed") >= 1.0, "{}", s.text);
    assert_eq!(series(failing, "flaky", "panicked"), 0.0, "{}", s.text);
    assert!(series(panicking, "panic", "panicked") >= 1.0, "{}", s.text);
    assert_eq!(series(panicking, "panic", "invalid_options"), 0.0);
}

/// `--log-format json`: every line the server writes is one JSON object, request lines and
/// the plugin's own log lines included.
#[test]
fn json_log_lines_parse() {
    if !require_upstream_tools() {
        return;
    }
    let plugins = fixtures(&["fixture_counter"]);
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "jsonlog", "v1", ImageKind::small_oci());
    let mut proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .serve_arg("--log-format")
        .serve_arg("json")
        .registry(RegistryEntry {
            // The anonymous upstream ignores the credential; the plugin logs each fetch.
            extra: vec!["auth: {token: {provider: counter, providerOpts: \"user=e2e\"}}".into()],
            ..RegistryEntry::for_upstream(&up)
        })
        .start();
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    assert_eq!(proxy.get("/nope", &[]).status, 404);
    proxy.stop();
    let log = proxy.log();
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "not an object: {line}");
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines.push(v);
    }
    let requests: Vec<_> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    assert!(
        requests.iter().any(|v| v["fields"]["status"] == 200),
        "request lines with their status: {log}"
    );
    assert!(
        requests
            .iter()
            .any(|v| v["fields"]["status"] == 404 && v["fields"]["path"] == "/nope"),
        "the refused request is logged: {log}"
    );
    assert!(
        lines.iter().any(|v| v["fields"]["plugin"] == "counter"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("counter fetch"))),
        "the plugin's log line is a JSON line with its name: {log}"
    );
}

/// `logFile`: every log line goes to the file (appended across restarts), stderr says only
/// where they went, and a file that cannot be opened stops the start with the key named.
#[test]
fn log_file_receives_the_log() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "logfile", "v1", ImageKind::small_oci());
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("ociregistry.log");
    std::fs::write(&log_path, "a line from before\n").expect("seed the log file");
    let mut proxy = Proxy::builder().upstream(&up).log_file(&log_path).start();
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    proxy.stop();
    let log = std::fs::read_to_string(&log_path).expect("log file");
    assert!(
        log.starts_with("a line from before\n"),
        "appended, not truncated:\n{log}"
    );
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
    assert!(
        log.contains("cached blob"),
        "the pull is logged there:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colour codes in a file:\n{log}"
    );
    let stderr = proxy.stderr();
    assert_eq!(
        stderr.trim(),
        format!("ociregistry: logging to {}", log_path.display()),
        "stderr only says where the log went"
    );

    let missing = dir.path().join("no-such-dir").join("ociregistry.log");
    let failed = Proxy::builder()
        .log_file(&missing)
        .start_expect_exit(Duration::from_secs(20));
    assert_eq!(
        failed.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("logFile") && failed.stderr.contains(&missing.display().to_string()),
        "the error names the key and the path:\n{}",
        failed.stderr
    );
}

/// The same port for `--metrics` and `--health`: one listener serves both.
#[test]
fn one_port_can_serve_metrics_and_health() {
    let port = free_port();
    let proxy = Proxy::builder()
        .config_line(&format!("metrics: {port}"))
        .config_line(&format!("health: {port}"))
        .start();
    assert_eq!(proxy.logged_port("metrics endpoint at "), port);
    assert_eq!(get(port, "/healthz").status, 200);
    assert_eq!(get(port, "/health").status, 200, "Ociregistry's path");
    let (code, v) = readyz(port);
    assert_eq!((code, v["status"].as_str()), (200, Some("ready")), "{v}");
    let s = Scrape::take(port);
    s.must("ociregistry_disk_items", &[("kind", "blob")]);
}

/// The `ociregistry_*` series named in `text`.
fn series_named_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ociregistry_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric());
        if before_ok {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Series whose families appear only once their first label set is used, which needs a
/// bucket (`storage.s3`, `cluster`): shared_storage.rs scrapes them from real replicas.
const BUCKET_ONLY_SERIES: [&str; 2] = [
    "ociregistry_store_errors_total",
    "ociregistry_peer_fetches_total",
];

/// Every series the Grafana dashboard (`deploy/grafana/ociregistry.json`) and the Helm
/// chart's alerts (`templates/prometheusrule.yaml`) query is in a real scrape of the server,
/// with a provider registry configured so that the token series exist and one request made
/// so that the request counter does.
#[test]
fn dashboard_and_alert_series_are_in_a_real_scrape() {
    let plugins = fixtures(&["fixture_counter"]);
    let registry = "dash.registry.example:5000";
    let proxy = with_ports(Proxy::builder().plugin_dir(plugins.path()))
        .registry(RegistryEntry::with_token_auth(
            registry,
            "provider: counter, providerOpts: \"ttl=3600\"",
        ))
        .start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    assert_eq!(proxy.get("/v2/", &[]).status, 200);
    let s = wait_for(
        "the provider's credential in the metrics",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = Scrape::take(metrics);
            (s.get("ociregistry_token_valid", &[("registry", registry)]) == Some(1.0)).then_some(s)
        },
    );
    // Families by their TYPE line; a counter's samples are `<family>_total`.
    let mut scraped = std::collections::BTreeSet::new();
    for line in s.text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("TYPE line");
        scraped.insert(match kind {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        });
    }
    let root = fixture_plugins::repo_root();
    for file in [
        "deploy/grafana/ociregistry.json",
        "deploy/helm/ociregistry/templates/prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("read");
        let named = series_named_in(&text);
        assert!(named.len() >= 4, "{file}: {named:?}");
        let missing: Vec<&String> = named
            .iter()
            .filter(|n| !scraped.contains(*n) && !BUCKET_ONLY_SERIES.contains(&n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} queries series the server does not export: {missing:?}\nscrape:\n{}",
            s.text
        );
    }
}
