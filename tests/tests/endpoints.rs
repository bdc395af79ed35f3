//! Issue 15: upstream endpoints with failover, and living within rate limits.
//!
//! - Two real `docker-registry` upstreams serving the same content as the `endpoints` of one
//!   registry entry: the first stopped mid-run, pulls keep working and its breaker opens
//!   (metric, `/readyz`); restarted, traffic returns to it after the cool-down
//!   (`breaker: {coolDown: 1s}` keeps that short).
//! - A [`FaultProxy`] answering 429 with `Retry-After: 5`: nothing more reaches the upstream
//!   for those 5 s, the cached tag is served, an uncached blob answers 429 with `Retry-After`.
//! - `ratelimit-remaining` (set by the fault proxy on real answers) under
//!   `rateLimit.revalidateFloor`: stale tags are served without a HEAD; the metric shows the
//!   value. Many clients asking for one stale tag at once cost one HEAD.
//! - `aliases`: skopeo pulls `PROXY/corp/<repo>:<tag>` (no port in the path) from the entry
//!   whose alias `corp` is.

use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::procs::run_with_timeout;
use ociregistry_e2e::proxy::{Route, check_manifest_response};
use ociregistry_e2e::raw::get_local;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, ProxyBuilder, RegistryEntry, require_upstream_tools, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The registry's name clients use in the failover test: never contacted itself.
const HUB: &str = "hub.e2e.example";

fn with_ports(b: ProxyBuilder) -> ProxyBuilder {
    b.serve_arg("--metrics")
        .serve_arg("0")
        .serve_arg("--health")
        .serve_arg("0")
}

/// The value of the series written exactly as `series` (name and labels in the exporter's
/// order), if the scrape has it.
fn metric(port: u16, series: &str) -> Option<f64> {
    let r = get_local(port, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.body_str());
    r.body_str().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn readyz(port: u16) -> serde_json::Value {
    let r = get_local(port, "/readyz");
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", r.body_str()))
}

/// Copies `img` from `from` to `to` byte for byte (same digests on both).
fn copy_image(from: &Upstream, to: &Upstream, img: &PushedImage) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ])
    .arg(format!("docker://{}/{}:{}", from.host(), img.repo, img.tag))
    .arg(format!("docker://{}/{}:{}", to.host(), img.repo, img.tag));
    let (ok, _, err) = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(ok, "skopeo copy to the second upstream: {err}");
}

fn tag_record(proxy: &Proxy, registry: &str, img: &PushedImage) -> PathBuf {
    proxy
        .image_path()
        .join("tags")
        .join(registry)
        .join(&img.repo)
        .join("@tags")
        .join(format!("{}.json", img.tag))
}

fn recorded_endpoints(record: &Path) -> Vec<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).expect("read tag record")).expect("JSON");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["endpoint"].as_str().map(str::to_owned))
        .collect()
}

/// Sets `fetchedAt` of every entry of a tag record to the epoch: the tag is stale.
fn make_stale(record: &Path) {
    let text = std::fs::read_to_string(record)
        .unwrap_or_else(|e| panic!("tag record {}: {e}", record.display()));
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("tag record JSON");
    for e in v["entries"].as_array_mut().expect("entries") {
        e["fetchedAt"] = serde_json::json!(0);
    }
    std::fs::write(record, serde_json::to_vec_pretty(&v).unwrap()).expect("write record");
}

#[test]
fn the_second_endpoint_serves_while_the_first_is_down_and_traffic_returns_after_the_cool_down() {
    if !require_upstream_tools() {
        return;
    }
    let mut a = Upstream::anonymous();
    let mut b = Upstream::anonymous();
    let repo = images::unique_repo("endpoints");
    let imgs: Vec<PushedImage> = ["one", "two", "three"]
        .iter()
        .map(|t| {
            let img = images::seed(&a, &repo, t, ImageKind::small_oci());
            copy_image(&a, &b, &img);
            img
        })
        .collect();
    // Only on the second: a lagging first endpoint.
    let only_b = images::seed(&b, &repo, "only-second", ImageKind::small_oci());
    let (first, second) = (a.url(), b.url());
    let mut entry = RegistryEntry::plain(HUB);
    entry.extra = vec![
        format!("endpoints: [\"{first}\", \"{second}\"]"),
        "breaker: {coolDown: 1s, maxCoolDown: 2s}".into(),
    ];
    let proxy = with_ports(Proxy::builder().registry(entry)).start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    let health = proxy.logged_port("health endpoints at ");
    let route = Route::Ns(HUB);
    let state_a =
        format!("ociregistry_upstream_endpoint_state{{registry=\"{HUB}\",endpoint=\"{first}\"}}");

    // Both up: the first endpoint serves.
    let gets_b = |b: &mut Upstream| b.count_requests("GET", &format!("/v2/{repo}/manifests/"));
    let seeded_b = gets_b(&mut b);
    proxy.pull_and_verify(route, &imgs[0]);
    assert!(a.count_requests("GET", &format!("/v2/{repo}/manifests/one")) > 0);
    assert_eq!(gets_b(&mut b), seeded_b, "the second endpoint is not asked");
    assert_eq!(metric(metrics, &state_a), Some(0.0), "closed");
    let ready = readyz(health);
    assert_eq!(
        ready["registries"][0]["endpoints"][0]["url"],
        first.as_str()
    );
    assert_eq!(ready["registries"][0]["endpoints"][0]["state"], "closed");
    assert_eq!(
        recorded_endpoints(&tag_record(&proxy, HUB, &imgs[0])),
        [Some(first.clone())]
    );

    // A 404 on the first falls through to the second; a 404 on the last is a 404. Neither
    // opens a breaker.
    proxy.pull_and_verify(route, &only_b);
    assert_eq!(
        recorded_endpoints(&tag_record(&proxy, HUB, &only_b)),
        [Some(second.clone())]
    );
    let missing = proxy.get_manifest(route, &repo, "nowhere");
    assert_eq!(missing.status, 404, "{}", missing.body_str());
    ociregistry_e2e::assert_oci_error(&missing.body, "MANIFEST_UNKNOWN", "tag on no endpoint");
    assert_eq!(metric(metrics, &state_a), Some(0.0), "a 404 is an answer");

    // The first stops: no client-visible error, the second serves, the breaker opens.
    a.stop();
    proxy.pull_and_verify(route, &imgs[1]);
    assert!(b.count_requests("GET", &format!("/v2/{repo}/manifests/two")) > 0);
    assert_eq!(
        recorded_endpoints(&tag_record(&proxy, HUB, &imgs[1])),
        [Some(second.clone())],
        "a tag resolved on the second endpoint says so"
    );
    assert_eq!(metric(metrics, &state_a), Some(1.0), "open");
    let ready = readyz(health);
    assert_eq!(ready["status"], "degraded", "{ready}");
    let ep = &ready["registries"][0]["endpoints"][0];
    assert_ne!(ep["state"], "closed", "{ready}");
    assert!(ep["consecutiveFailures"].as_u64() >= Some(1), "{ready}");
    assert!(
        ep["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{ready}"
    );
    assert_eq!(ready["registries"][0]["endpoints"][1]["state"], "closed");

    // Back up: once the cool-down is over a probe reaches it and closes the breaker; from
    // then on the first endpoint serves again. `tags/list` goes upstream each time.
    a.restart();
    let tags = route.target(&repo, "tags", "list");
    wait_for(
        "traffic back on the first endpoint",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let r = proxy.get(&tags, &[]);
            assert_eq!(r.status, 200, "tags/list: {}", r.body_str());
            (metric(metrics, &state_a) == Some(0.0)).then_some(())
        },
    );
    assert!(a.count_requests("GET", &format!("/v2/{repo}/tags/list")) > 0);
    let before_b = gets_b(&mut b);
    proxy.pull_and_verify(route, &imgs[2]);
    assert!(a.count_requests("GET", &format!("/v2/{repo}/manifests/three")) > 0);
    assert_eq!(gets_b(&mut b), before_b, "the second endpoint rests again");
    assert_eq!(
        readyz(health)["registries"][0]["endpoints"][0]["state"],
        "closed"
    );
    assert!(
        proxy
            .log()
            .contains("upstream endpoint answers again; breaker closed")
    );
}

#[test]
fn a_429_holds_every_request_back_until_retry_after_and_cached_tags_are_served() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "ratelimited", "v1", ImageKind::oci(2, 64 * 1024));
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let mut entry = RegistryEntry::plain(&fhost);
    entry.extra = vec!["tagTtl: 1h".into()];
    let proxy = Proxy::builder().registry(entry).start();
    let route = Route::Ns(&fhost);
    // The tag's manifest is cached; its blobs are not.
    check_manifest_response(
        &proxy.get_manifest(route, &img.repo, &img.tag),
        &img.manifest,
        "cold pull",
    );
    let record = tag_record(&proxy, &fhost, &img);
    make_stale(&record);

    fp.add_rule(
        "",
        "/v2/",
        Fault::status(429).with_header("Retry-After", "5"),
        None,
    );
    let start = Instant::now();
    let seen_before = fp.requests().len();
    // The stale tag's HEAD meets the 429: the cached manifest is served.
    check_manifest_response(
        &proxy.get_manifest(route, &img.repo, &img.tag),
        &img.manifest,
        "stale tag while rate-limited",
    );
    assert_eq!(fp.requests().len(), seen_before + 1, "one HEAD met the 429");
    // For the rest of the 5 s nothing reaches the upstream, whatever clients ask.
    let blob = img.largest_blob();
    let mut asked = 0;
    while start.elapsed() < Duration::from_millis(4500) {
        let r = proxy.get_blob(route, &img.repo, &blob.digest, &[]);
        assert_eq!(r.status, 429, "uncached blob: {}", r.body_str());
        ociregistry_e2e::assert_oci_error(&r.body, "TOOMANYREQUESTS", "blob while held back");
        let wait: u64 = r
            .header("Retry-After")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After in seconds: {:?}", r.header("Retry-After")));
        assert!((1..=5).contains(&wait), "Retry-After {wait}");
        check_manifest_response(
            &proxy.get_manifest(route, &img.repo, &img.tag),
            &img.manifest,
            "cached tag while held back",
        );
        asked += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(asked >= 5, "clients kept asking ({asked} rounds)");
    assert_eq!(
        fp.requests().len(),
        seen_before + 1,
        "no upstream request within Retry-After: {:?}",
        &fp.requests()[seen_before..]
    );
    // The upstream lets us in again: after Retry-After one probe goes, and the blob comes.
    fp.clear();
    wait_for(
        "the blob once Retry-After is over",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let r = proxy.get_blob(route, &img.repo, &blob.digest, &[]);
            (r.status == 200).then_some(r)
        },
    );
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "not before Retry-After"
    );
}

#[test]
fn under_the_rate_limit_floor_stale_tags_are_served_without_a_head() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "ratefloor", "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    fp.add_rule(
        "",
        "/v2/",
        Fault::SetResponseHeader {
            name: "ratelimit-remaining".into(),
            value: "3;w=21600".into(),
        },
        None,
    );
    let fhost = fp.host();
    let mut entry = RegistryEntry::plain(&fhost);
    entry.extra = vec![
        "tagTtl: 1h".into(),
        "rateLimit: {revalidateFloor: 10}".into(),
    ];
    let proxy = with_ports(Proxy::builder().registry(entry).log_level("debug")).start();
    let metrics = proxy.logged_port("metrics endpoint at ");
    let route = Route::Ns(&fhost);
    check_manifest_response(
        &proxy.get_manifest(route, &img.repo, &img.tag),
        &img.manifest,
        "cold pull",
    );
    assert_eq!(
        metric(
            metrics,
            &format!("ociregistry_upstream_ratelimit_remaining{{registry=\"{fhost}\"}}")
        ),
        Some(3.0)
    );
    make_stale(&tag_record(&proxy, &fhost, &img));
    let tag_path = format!("/{}/manifests/{}", img.repo, img.tag);
    for i in 0..10 {
        check_manifest_response(
            &proxy.get_manifest(route, &img.repo, &img.tag),
            &img.manifest,
            &format!("stale tag {i} under the floor"),
        );
    }
    assert_eq!(
        fp.count("HEAD", &tag_path),
        0,
        "no revalidation under the floor"
    );
    assert_eq!(fp.count("GET", &tag_path), 1, "only the cold pull");
    assert_eq!(
        metric(
            metrics,
            &format!("ociregistry_tag_revalidations_deferred_total{{registry=\"{fhost}\"}}")
        ),
        Some(10.0)
    );
    assert!(
        proxy
            .log()
            .contains("rate-limit budget under rateLimit.revalidateFloor")
    );
}

#[test]
fn many_clients_asking_for_a_stale_tag_cost_one_head() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "onehead", "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let mut entry = RegistryEntry::plain(&fhost);
    entry.extra = vec!["tagTtl: 1h".into()];
    let proxy = Proxy::builder().registry(entry).start();
    let route = Route::Ns(&fhost);
    check_manifest_response(
        &proxy.get_manifest(route, &img.repo, &img.tag),
        &img.manifest,
        "cold pull",
    );
    make_stale(&tag_record(&proxy, &fhost, &img));
    let tag_path = format!("/{}/manifests/{}", img.repo, img.tag);
    // The HEAD takes a moment, so that the clients meet while it runs.
    fp.add_rule(
        "HEAD",
        &tag_path,
        Fault::Delayed(Duration::from_millis(500), None),
        None,
    );
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| s.spawn(|| proxy.get_manifest(route, &img.repo, &img.tag)))
            .collect();
        for h in handles {
            check_manifest_response(&h.join().unwrap(), &img.manifest, "concurrent stale pull");
        }
    });
    assert_eq!(fp.count("HEAD", &tag_path), 1, "one HEAD for 32 clients");
    assert_eq!(fp.count("GET", &tag_path), 1, "only the cold pull's GET");
}

#[test]
fn an_alias_pulled_by_skopeo_reaches_its_registry() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "alias", "1", ImageKind::small_oci());
    let mut entry = RegistryEntry::for_upstream(&up);
    entry.extra = vec!["aliases: [corp]".into()];
    let proxy = Proxy::builder().registry(entry).start();
    let reference = format!("{}/corp/{}:{}", proxy.host(), img.repo, img.tag);
    ociregistry_e2e::skopeo::pull_and_verify(&reference, &img, " (alias)");
    assert!(up.count_requests("GET", &format!("/v2/{}/manifests/1", img.repo)) > 0);
    // Cached under the registry's name, not the alias.
    assert!(tag_record(&proxy, &up.host(), &img).is_file());
    assert!(!proxy.image_path().join("tags").join("corp").exists());
}

#[test]
fn an_alias_that_clashes_stops_the_start_naming_key_and_line() {
    let failed = Proxy::builder()
        .registry(RegistryEntry::plain("a.e2e.example"))
        .registry({
            let mut e = RegistryEntry::plain("b.e2e.example");
            e.extra = vec!["aliases: [ghcr.io]".into()];
            e
        })
        .start_expect_exit(Duration::from_secs(20));
    let line = failed
        .config_line_of("aliases: [ghcr.io]")
        .expect("alias line in the config");
    assert!(
        failed.stderr.contains("registries[1].aliases[0]")
            && failed.stderr.contains(&format!("line {line}"))
            && failed.stderr.contains("public registry"),
        "{}",
        failed.stderr
    );
}
