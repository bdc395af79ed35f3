//! Issue 5: tag freshness by policy. A cached tag is trusted for `tagTtl`; after that a cheap
//! upstream `HEAD` revalidates it: an unchanged digest costs only the HEAD, a moved tag is
//! fetched and stored, and an upstream that is down, slow or rate-limiting gets the cached
//! manifest served (with a WARN log). `airGapped` never contacts the upstream.
//!
//! The upstream is a real `docker-registry` behind a [`FaultProxy`] (which counts requests and
//! injects 429s and stalls). Instead of sleeping for the TTL, tests make the tag record old by
//! rewriting `fetchedAt` in `<imagePath>/tags/<registry>/<repo>/@tags/<tag>.json`.

use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::{Route, check_manifest_response};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, require_upstream_tools, wait_for};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ociregistry_e2e::SECS;
const WARN: &str = "tag revalidation failed; serving the cached manifest";

struct Rig {
    up: Upstream,
    fp: FaultProxy,
    fhost: String,
    proxy: Proxy,
    img: PushedImage,
}

/// A proxy in front of the fault proxy; `entry_extra` goes into the registry entry,
/// `global` are top-level config lines.
fn rig(prefix: &str, entry_extra: &[&str], global: &[&str]) -> Rig {
    let up = Upstream::anonymous();
    let repo = images::unique_repo(prefix);
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let mut entry = RegistryEntry::plain(&fp.host());
    entry.extra = entry_extra.iter().map(|s| s.to_string()).collect();
    let mut b = Proxy::builder().registry(entry);
    for l in global {
        b = b.config_line(l);
    }
    let proxy = b.start();
    Rig {
        up,
        fhost: fp.host(),
        fp,
        proxy,
        img,
    }
}

impl Rig {
    fn route(&self) -> Route<'_> {
        Route::Ns(&self.fhost)
    }

    fn tag_path(&self) -> String {
        format!("/{}/manifests/{}", self.img.repo, self.img.tag)
    }

    /// (HEADs, GETs) of the tag the upstream saw so far.
    fn counts(&self) -> (usize, usize) {
        (
            self.fp.count("HEAD", &self.tag_path()),
            self.fp.count("GET", &self.tag_path()),
        )
    }

    fn record(&self) -> PathBuf {
        self.proxy
            .image_path()
            .join("tags")
            .join(&self.fhost)
            .join(&self.img.repo)
            .join("@tags")
            .join(format!("{}.json", self.img.tag))
    }

    fn pull_tag(&self) -> ociregistry_e2e::raw::RawResponse {
        self.proxy
            .get_manifest(self.route(), &self.img.repo, &self.img.tag)
    }

    fn warnings(&self) -> usize {
        self.proxy.log().matches(WARN).count()
    }
}

/// Sets `fetchedAt` of every entry of a tag record to `secs` (Unix time).
fn set_fetched_at(record: &Path, secs: u64) {
    let text = std::fs::read_to_string(record)
        .unwrap_or_else(|e| panic!("tag record {}: {e}", record.display()));
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("tag record JSON");
    let entries = v["entries"].as_array_mut().expect("entries array");
    assert!(!entries.is_empty(), "empty tag record");
    for e in entries {
        assert!(e.get("fetchedAt").is_some(), "no fetchedAt in {e}");
        e["fetchedAt"] = serde_json::json!(secs);
    }
    std::fs::write(record, serde_json::to_vec_pretty(&v).unwrap()).expect("write record");
}

fn fetched_at(record: &Path) -> Vec<(String, u64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).expect("read record")).expect("JSON");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["digest"].as_str().unwrap_or_default().to_owned(),
                e["fetchedAt"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Within the TTL: no upstream contact at all. Unchanged digest after the TTL: only a HEAD,
/// and the record is refreshed. Tag moved upstream: HEAD + GET, the new digest served and
/// stored.
#[test]
fn stale_tag_is_revalidated_with_a_head_and_refetched_only_when_moved() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("revalmoved", &["tagTtl: 1h"], &[]);
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "cold pull");
    assert_eq!(r.counts(), (0, 1), "cold pull: one GET");
    // Fresh: served from the cache.
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "fresh");
    assert_eq!(r.counts(), (0, 1), "fresh tag: no upstream request");

    // Old, unchanged upstream: one HEAD, no GET, the record refreshed.
    set_fetched_at(&r.record(), 1000);
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "stale, unchanged");
    assert_eq!(r.counts(), (1, 1), "unchanged: a HEAD and no GET");
    let rec = fetched_at(&r.record());
    assert!(
        rec.iter().all(|(_, t)| *t + 60 > now()),
        "record not refreshed: {rec:?}"
    );
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "refreshed");
    assert_eq!(
        r.counts(),
        (1, 1),
        "after the refresh the tag is fresh again"
    );

    // The tag moves upstream.
    let moved = images::seed(&r.up, &r.img.repo, &r.img.tag, ImageKind::small_oci());
    assert_ne!(moved.manifest.digest, r.img.manifest.digest);
    set_fetched_at(&r.record(), 1000);
    check_manifest_response(&r.pull_tag(), &moved.manifest, "moved");
    assert_eq!(r.counts(), (2, 2), "moved: a HEAD and a GET");
    let rec = fetched_at(&r.record());
    assert_eq!(
        rec[0].0, moved.manifest.digest,
        "record points at the new digest"
    );
    assert!(
        r.proxy
            .image_path()
            .join("manifests/sha256")
            .join(moved.manifest.hex())
            .is_file(),
        "the new manifest is stored"
    );
    r.proxy.pull_and_verify(r.route(), &moved);
    ociregistry_e2e::cache::verify_cache(r.proxy.image_path());
}

/// Upstream answering 503, 500, 401 with garbage, or 429 to the revalidation HEAD: the
/// cached manifest is served, a WARN is logged, no GET. Upstream 404: the tag is gone, 404.
#[test]
fn failed_revalidation_serves_the_cached_manifest() {
    if !require_upstream_tools() {
        return;
    }
    // Global key this time.
    let r = rig("revalfail", &[], &["tagTtl: 1h"]);
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "cold pull");
    let mut expected = r.counts();
    // The 429 comes last: its Retry-After holds every request to the upstream back.
    for (i, fault) in [
        Fault::status(503),
        Fault::status(500),
        Fault::status(401).with_header("WWW-Authenticate", "Bearer realm=\"\u{7f}, ,,="),
        Fault::status(429).with_header("Retry-After", "1"),
    ]
    .into_iter()
    .enumerate()
    {
        let ctx = format!("revalidation answered {fault:?}");
        let warns = r.warnings();
        let rule = r.fp.add_rule("HEAD", &r.tag_path(), fault, None);
        set_fetched_at(&r.record(), 1000);
        let t = Instant::now();
        check_manifest_response(&r.pull_tag(), &r.img.manifest, &ctx);
        assert!(t.elapsed() < SECS(8), "{ctx}: took {:?}", t.elapsed());
        let (heads, gets) = r.counts();
        assert!(heads > expected.0, "{ctx}: no HEAD reached the upstream");
        assert_eq!(gets, expected.1, "{ctx}: a GET was sent");
        assert!(r.fp.hits(rule) >= 1, "case {i}: rule not hit");
        wait_for(
            &format!("{ctx}: the WARN log line"),
            SECS(5),
            Duration::from_millis(20),
            || (r.warnings() > warns).then_some(()),
        );
        r.fp.remove(rule);
        expected = r.counts();
    }
    // Upstream says the tag does not exist (any more): 404 (once the 429's Retry-After is
    // over: until then the cached manifest is served without asking).
    let rule =
        r.fp.add_rule("HEAD", &r.tag_path(), Fault::status(404), None);
    let m = wait_for(
        "the revalidation HEAD after Retry-After",
        SECS(10),
        Duration::from_millis(200),
        || {
            set_fetched_at(&r.record(), 1000);
            let m = r.pull_tag();
            (r.fp.hits(rule) > 0).then_some(m)
        },
    );
    assert_eq!(
        m.status,
        404,
        "upstream 404 on revalidation: {}",
        m.body_str()
    );
    assert!(!ociregistry_e2e::oci_error_codes(&m.body).is_empty());
    r.fp.remove(rule);
}

/// Upstream down (refused) or silent (stalls the HEAD past `revalidateTimeout`): the cached
/// manifest is served within `revalidateTimeout` + a margin, with a WARN. airGapped on the
/// same cache never contacts the upstream even for a stale tag.
#[test]
fn upstream_down_or_silent_serves_the_cached_manifest_in_bounded_time() {
    if !require_upstream_tools() {
        return;
    }
    let r = rig("revaldown", &["tagTtl: 1h"], &["revalidateTimeout: 1s"]);
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "cold pull");

    // Silent: the HEAD gets no answer for 10 s.
    let rule =
        r.fp.add_rule("HEAD", &r.tag_path(), Fault::Delayed(SECS(10), None), None);
    set_fetched_at(&r.record(), 1000);
    let warns = r.warnings();
    let t = Instant::now();
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "silent upstream");
    let took = t.elapsed();
    assert!(
        took < SECS(3),
        "silent upstream: served after {took:?} (revalidateTimeout 1s)"
    );
    assert_eq!(
        r.fp.count("GET", &r.tag_path()),
        1,
        "no GET after a timed-out HEAD"
    );
    wait_for(
        "WARN after the timeout",
        SECS(5),
        Duration::from_millis(20),
        || (r.warnings() > warns).then_some(()),
    );
    r.fp.remove(rule);

    // Down: connection refused.
    r.fp.refuse(true);
    set_fetched_at(&r.record(), 1000);
    let warns = r.warnings();
    let t = Instant::now();
    check_manifest_response(&r.pull_tag(), &r.img.manifest, "upstream down");
    let took = t.elapsed();
    assert!(took < SECS(3), "upstream down: served after {took:?}");
    wait_for("WARN when down", SECS(5), Duration::from_millis(20), || {
        (r.warnings() > warns).then_some(())
    });
    r.fp.refuse(false);

    // airGapped on the same cache: a stale tag is served, nothing reaches the upstream.
    set_fetched_at(&r.record(), 1000);
    let seen = r.fp.requests().len();
    let mut entry = RegistryEntry::plain(&r.fhost);
    entry.extra = vec!["tagTtl: 1s".into()];
    let gapped = Proxy::builder()
        .registry(entry)
        .air_gapped(true)
        .image_path(r.proxy.image_path())
        .start();
    let m = gapped.get_manifest(r.route(), &r.img.repo, &r.img.tag);
    check_manifest_response(&m, &r.img.manifest, "air-gapped, stale tag");
    assert_eq!(
        r.fp.requests().len(),
        seen,
        "air-gapped contacted the upstream"
    );
}

/// `alwaysPullLatest`: `:latest` is revalidated on every pull (a HEAD each time, no GET while
/// unchanged), other tags are not.
#[test]
fn always_pull_latest_revalidates_latest_on_every_pull() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("revallatest");
    let latest = images::seed(&up, &repo, "latest", ImageKind::small_oci());
    let v1 = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fhost))
        .always_pull_latest(true)
        .start();
    for _ in 0..3 {
        check_manifest_response(
            &proxy.get_manifest(Route::Ns(&fhost), &repo, "latest"),
            &latest.manifest,
            "latest",
        );
        check_manifest_response(
            &proxy.get_manifest(Route::Ns(&fhost), &repo, "v1"),
            &v1.manifest,
            "v1",
        );
    }
    let lp = format!("/{repo}/manifests/latest");
    let vp = format!("/{repo}/manifests/v1");
    assert_eq!(
        fp.count("GET", &lp),
        1,
        "latest: one GET: {:?}",
        fp.requests()
    );
    assert_eq!(
        fp.count("HEAD", &lp),
        2,
        "latest: a HEAD on each later pull"
    );
    assert_eq!(fp.count("", &vp), 1, "v1: fetched once, then trusted");
}
