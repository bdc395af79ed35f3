//! Issue 12: several replicas on one S3-compatible bucket (a real `s3s-fs` on 127.0.0.1).
//! What one replica cached is served by the others without the upstream; content appears in
//! the bucket only under its verified digest; the bucket going away leaves the local copies
//! served and the rest failing cleanly, and its return needs no restart of the replicas.
//! With `cluster`, replicas pulling the same cold blob at once fetch it upstream once: one
//! holds the lease in the bucket, the others stream from its peer endpoint.

use std::time::Duration;

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::{RegistryEntry, Route};
use ociregistry_e2e::raw::{self, RawResponse};
use ociregistry_e2e::s3::{self, S3Server};
use ociregistry_e2e::skopeo;
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, require_upstream_tools, sha256_digest, wait_for};

use raw::get_local as get;

/// `/readyz` of a replica, as JSON.
fn readyz(p: &Proxy) -> (u16, serde_json::Value) {
    let r = get(p.logged_port("health endpoints at "), "/readyz");
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", r.body_str()));
    (r.status, v)
}

fn tools() -> bool {
    require_upstream_tools() && s3::require_s3s_fs()
}

/// A replica on `bucket` under `prefix`, pulling from `up`, with metrics and health on
/// ports of their own.
fn replica(up: &Upstream, bucket: &S3Server, prefix: &str) -> Proxy {
    replica_with(up, bucket, prefix, "")
}

/// [`replica`] with `extra` config lines.
fn replica_with(up: &Upstream, bucket: &S3Server, prefix: &str, extra: &str) -> Proxy {
    let mut b = Proxy::builder()
        .upstream(up)
        .default_ns(&up.host())
        .serve_arg("--metrics")
        .serve_arg("0")
        .serve_arg("--health")
        .serve_arg("0")
        .config_line(&bucket.storage_yaml(prefix));
    if !extra.is_empty() {
        b = b.config_line(extra);
    }
    for (k, v) in S3Server::env() {
        b = b.env(k, v);
    }
    b.start()
}

/// Every object under `prefix` + `blobs/sha256/` or `manifests/sha256/` holds bytes that hash
/// to its name; returns how many blobs and manifests there are.
fn verify_bucket(bucket: &S3Server, prefix: &str) -> (usize, usize) {
    let (mut blobs, mut manifests) = (0, 0);
    for key in bucket.keys() {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let (kind, hex) = if let Some(h) = rest.strip_prefix("blobs/sha256/") {
            (&mut blobs, h)
        } else if let Some(h) = rest.strip_prefix("manifests/sha256/") {
            (&mut manifests, h)
        } else {
            continue;
        };
        if hex.contains('.') {
            continue; // a manifest's side record
        }
        let bytes = bucket.object(&key).expect("object readable");
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{hex}"),
            "object {key} does not hold the bytes of its digest"
        );
        *kind += 1;
    }
    (blobs, manifests)
}

#[test]
fn what_one_replica_cached_the_others_serve_without_the_upstream() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("shared");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(3, 400_000));
    let bucket = S3Server::start("mirror-cache");
    let prefix = "fleet/";
    let a = replica(&up, &bucket, prefix);
    let b = replica(&up, &bucket, prefix);
    let c = replica(&up, &bucket, prefix);

    let host = up.host();
    a.pull_and_verify(Route::Ns(&host), &img);
    // Clients have every byte once it is verified; the upload to the bucket follows.
    wait_for(
        "every blob in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, prefix).0 >= img.blobs().len()).then_some(()),
    );
    let (blobs, manifests) = verify_bucket(&bucket, prefix);
    assert_eq!(blobs, img.blobs().len(), "every blob in the bucket once");
    assert!(manifests >= 1);
    let keys = bucket.keys();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{prefix}tags/")) && k.ends_with("/v1.json")),
        "the tag record is in the bucket: {keys:?}"
    );

    let before = up.total_requests();
    b.pull_and_verify(Route::Ns(&host), &img);
    c.pull_and_verify(Route::InPath(&host), &img);
    // A real client, through the third replica.
    skopeo::pull_and_verify(
        &format!("{}/{}:{}", c.host(), img.repo, img.tag),
        &img,
        "through replica c",
    );
    assert_eq!(
        up.total_requests(),
        before,
        "replicas b and c asked the upstream although the bucket had everything:\n{:#?}",
        up.access_log()
    );
    for p in [&a, &b, &c] {
        let log = p.log();
        assert!(
            !log.contains(s3::SECRET_KEY),
            "the S3 secret appears in a replica's log"
        );
    }
}

#[test]
fn with_the_bucket_down_local_copies_are_served_and_its_return_needs_no_restart() {
    if !tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("bucketdown");
    let cached = images::seed(&up, &repo, "v1", ImageKind::oci(2, 200_000));
    let later = images::seed(&up, &repo, "v2", ImageKind::oci(2, 200_000));
    let mut bucket = S3Server::start("mirror-cache");
    let a = replica(&up, &bucket, "");
    let host = up.host();
    a.pull_and_verify(Route::Ns(&host), &cached);
    // Clients have every byte once it is verified; the upload to the bucket follows.
    wait_for(
        "every blob in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, "").0 >= cached.blobs().len()).then_some(()),
    );

    bucket.stop();
    // Blobs the replica holds locally: served, byte for byte.
    for blob in cached.blobs() {
        let r = a.get_blob(Route::Ns(&host), &cached.repo, &blob.digest, &[]);
        assert_eq!(r.status, 200, "local copy of {} not served", blob.digest);
        assert_eq!(sha256_digest(&r.body), blob.digest);
    }
    // What the bucket would have to provide fails cleanly, and quickly.
    let started = std::time::Instant::now();
    let r = a.get_manifest(Route::Ns(&host), &later.repo, &later.tag);
    assert_eq!(
        r.status,
        503,
        "with the bucket down a new image cannot be stored: {}",
        r.body_str()
    );
    assert_eq!(r.header("retry-after"), Some("10"));
    assert!(
        !r.body_str().contains(&bucket.endpoint()),
        "the bucket's address is logged, not sent to clients: {}",
        r.body_str()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the failure took {:?}",
        started.elapsed()
    );

    // Readiness: still ready (local copies are served), degraded, naming the bucket.
    let (code, v) = readyz(&a);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["checks"]["storage"]["backend"], "s3");
    assert_eq!(v["checks"]["storage"]["reachable"], false, "{v}");
    let why = v["checks"]["storage"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("mirror-cache"), "{v}");
    assert!(!v.to_string().contains(s3::SECRET_KEY));
    let metrics = get(a.logged_port("metrics endpoint at "), "/metrics").body_str();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ociregistry_store_errors_total{") && !l.ends_with(" 0")),
        "no store error counted:\n{metrics}"
    );

    bucket.restart();
    let (code, v) = readyz(&a);
    assert_eq!(
        (code, &v["checks"]["storage"]["reachable"]),
        (200, &serde_json::json!(true)),
        "{v}"
    );
    a.pull_and_verify(Route::Ns(&host), &later);
    a.pull_and_verify(Route::Ns(&host), &cached);
    wait_for(
        "the new image's blobs in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let (blobs, _) = verify_bucket(&bucket, "");
            (blobs == cached.blobs().len() + later.blobs().len()).then_some(())
        },
    );
}

/// A bucket `serve` cannot use stops it at start, with one line naming the bucket, where it
/// is and what failed, and never the secret: wrong keys, a missing bucket, nothing
/// listening.
#[test]
fn a_bucket_that_cannot_be_used_stops_serve_at_start_with_a_clear_line() {
    if !tools() {
        return;
    }
    let up = Upstream::anonymous();
    let mut bucket = S3Server::start("mirror-cache");
    let start = |yaml: &str, secret: &str| {
        Proxy::builder()
            .upstream(&up)
            .config_line(yaml)
            .env("S3_KEY", s3::ACCESS_KEY)
            .env("S3_SECRET", secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .start_expect_exit(Duration::from_secs(60))
    };
    let cases = [
        (
            bucket.storage_yaml(""),
            "wrong-secret-value",
            "access denied",
        ),
        (
            bucket
                .storage_yaml("")
                .replace("mirror-cache", "no-such-bucket"),
            s3::SECRET_KEY,
            "no such bucket",
        ),
    ];
    for (yaml, secret, expected) in cases {
        let failed = start(&yaml, secret);
        assert!(
            failed.status.is_some_and(|s| !s.success()),
            "serve did not stop: {failed:?}"
        );
        assert!(
            failed.stderr.contains(expected),
            "expected {expected:?} in:\n{}",
            failed.stderr
        );
        assert!(!failed.stderr.contains(secret) && !failed.stderr.contains(s3::SECRET_KEY));
    }
    let endpoint = bucket.endpoint();
    bucket.stop();
    let failed = start(&bucket.storage_yaml(""), s3::SECRET_KEY);
    assert!(failed.status.is_some_and(|s| !s.success()));
    assert!(
        failed.stderr.contains("bucket mirror-cache") && failed.stderr.contains(&endpoint),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("unreachable"), "{}", failed.stderr);
}

/// The peer endpoint's token in the cluster tests.
const CLUSTER_TOKEN: &str = "e2e-cluster-token-5d1f0c9a";

/// A replica of a cluster on `bucket`, pulling from the registry at `host` (plain http),
/// advertising its own pull URL (a port chosen before the start).
fn cluster_replica(host: &str, bucket: &S3Server, prefix: &str) -> Proxy {
    cluster_replica_advertising(host, bucket, prefix, None)
}

/// [`cluster_replica`], advertising `advertise` instead of its own URL when given.
fn cluster_replica_advertising(
    host: &str,
    bucket: &S3Server,
    prefix: &str,
    advertise: Option<&str>,
) -> Proxy {
    let port = ociregistry_e2e::free_port();
    let own = format!("http://127.0.0.1:{port}");
    let advertise = advertise.unwrap_or(&own);
    let mut b = Proxy::builder()
        .registry(RegistryEntry::plain(host))
        .default_ns(host)
        .port(port)
        .serve_arg("--metrics")
        .serve_arg("0")
        .config_line(&bucket.storage_yaml(prefix))
        .config_line(&format!(
            "cluster:\n  advertise: {advertise}\n  tokenFromEnv: CLUSTER_TOKEN\n  leaseTtl: 6s"
        ))
        .env("CLUSTER_TOKEN", CLUSTER_TOKEN);
    for (k, v) in S3Server::env() {
        b = b.env(k, v);
    }
    b.start()
}

/// `ociregistry_peer_fetches_total{result}` of a replica.
fn peer_fetches(p: &Proxy, result: &str) -> u64 {
    let metrics = get(p.logged_port("metrics endpoint at "), "/metrics").body_str();
    let prefix = format!("ociregistry_peer_fetches_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn peer_get(p: &Proxy, digest: &str, headers: &[(&str, &str)]) -> RawResponse {
    raw::request_timeout(
        &p.host(),
        "GET",
        &format!("/_ociregistry/peer/v1/blobs/{digest}"),
        headers,
        None,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("peer GET {digest}: {e}"))
}

#[test]
fn twenty_clients_on_three_replicas_make_one_upstream_fetch_per_blob() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("fleet");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(3, 3_000_000));
    // Slow enough that the downloads overlap: the clients of every replica arrive while
    // the first fetch of each blob still runs.
    let throttle = Throttle::start(&up.host());
    throttle.rate(Some(3 * 1024 * 1024));
    let host = throttle.host();
    let bucket = S3Server::start("mirror-cache");
    let prefix = "fleet/";
    let replicas = [
        cluster_replica(&host, &bucket, prefix),
        cluster_replica(&host, &bucket, prefix),
        cluster_replica(&host, &bucket, prefix),
    ];
    let before = up.access_log().len();
    std::thread::scope(|s| {
        for i in 0..20 {
            let (p, img, host) = (&replicas[i % 3], &img, &host);
            s.spawn(move || p.pull_and_verify(Route::Ns(host), img));
        }
    });
    let log = up.access_log();
    for blob in img.blobs() {
        let gets = up.count_requests("GET", &format!("/blobs/{}", blob.digest));
        assert_eq!(
            gets,
            1,
            "blob {} fetched {gets} times from the upstream:\n{:#?}",
            blob.digest,
            &log[before..]
        );
    }
    let from_peer: u64 = replicas.iter().map(|p| peer_fetches(p, "from_peer")).sum();
    let served: u64 = replicas
        .iter()
        .map(|p| peer_fetches(p, "served_to_peer"))
        .sum();
    assert!(
        from_peer > 0 && served > 0,
        "no blob went from one replica to another (from_peer {from_peer}, served {served})"
    );
    let (blobs, _) = verify_bucket(&bucket, prefix);
    assert!(blobs <= img.blobs().len());

    // The peer endpoint: the token or nothing.
    let blob = img.largest_blob();
    let a = &replicas[0];
    assert_eq!(peer_get(a, &blob.digest, &[]).status, 401);
    let wrong = format!("Bearer {}x", &CLUSTER_TOKEN[..CLUSTER_TOKEN.len() - 1]);
    assert_eq!(
        peer_get(a, &blob.digest, &[("Authorization", &wrong)]).status,
        401
    );
    let bearer = format!("Bearer {CLUSTER_TOKEN}");
    let r = peer_get(a, &blob.digest, &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(sha256_digest(&r.body), blob.digest);
    // A range of it, and a blob nobody has.
    let r = peer_get(
        a,
        &blob.digest,
        &[("Authorization", &bearer), ("Range", "bytes=10-19")],
    );
    assert_eq!((r.status, r.body.len()), (206, 10));
    let unknown = sha256_digest(b"nobody has this");
    assert_eq!(
        peer_get(a, &unknown, &[("Authorization", &bearer)]).status,
        404
    );
    assert_eq!(
        up.access_log().len(),
        log.len(),
        "the peer endpoint never asks the upstream"
    );
    for p in &replicas {
        assert!(
            !p.log().contains(CLUSTER_TOKEN),
            "the cluster token appears in a log"
        );
    }
}

#[test]
fn when_the_lease_owner_dies_mid_download_the_others_finish_from_the_upstream() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("ownerdies");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 4_000_000));
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up.host());
    let host = throttle.host();
    let bucket = S3Server::start("mirror-cache");
    let mut a = cluster_replica(&host, &bucket, "");
    let b = cluster_replica(&host, &bucket, "");
    let c = cluster_replica(&host, &bucket, "");
    let target = Route::Ns(&host).target(&img.repo, "blobs", &blob.digest);
    const MIB: u64 = 1024 * 1024;
    // The upstream sends a's download 1 MiB, then holds.
    throttle.hold_after(Some(MIB));
    let on_a = StreamingGet::start(&a.host(), &target, Duration::from_secs(60));
    on_a.wait_received(1, Duration::from_secs(30));
    // b and c find a holding the lease and stream from it.
    let on_b = StreamingGet::start(&b.host(), &target, Duration::from_secs(60));
    let on_c = StreamingGet::start(&c.host(), &target, Duration::from_secs(60));
    on_b.wait_received(1, Duration::from_secs(30));
    on_c.wait_received(1, Duration::from_secs(30));
    assert!(peer_fetches(&b, "from_peer") + peer_fetches(&c, "from_peer") == 2);
    // The owner dies mid-download; the upstream flows again.
    a.kill();
    throttle.release();
    for (name, get) in [("b", on_b), ("c", on_c)] {
        let out = get.finish(Duration::from_secs(60));
        assert!(
            out.complete() && out.status == 200,
            "client of {name}: {out:?}"
        );
        assert_eq!(out.sha256, blob.digest, "client of {name}");
    }
    drop(on_a);
    // a's fetch, then b and c each resumed from the upstream where the owner's bytes
    // stopped (no fetch from the start).
    let gets = up
        .access_log()
        .iter()
        .filter(|l| l.method == "GET" && l.uri.contains(&format!("/blobs/{}", blob.digest)))
        .count();
    assert_eq!(gets, 3, "{:#?}", up.access_log());
    // Nothing under a wrong digest; the blob is there once verified.
    wait_for(
        "the blob in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, "").0 == 1).then_some(()),
    );
    // A later pull through a survivor succeeds.
    c.pull_and_verify(Route::Ns(&host), &img);
    b.pull_and_verify(Route::Ns(&host), &img);
}

#[test]
fn an_owner_that_cannot_be_reached_means_a_fetch_from_the_upstream() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("noowner");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(1, 2_000_000));
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up.host());
    let host = throttle.host();
    let bucket = S3Server::start("mirror-cache");
    // a advertises an address where nothing listens: nobody can stream from it.
    let nowhere = format!("http://127.0.0.1:{}", ociregistry_e2e::free_port());
    let a = cluster_replica_advertising(&host, &bucket, "", Some(&nowhere));
    let b = cluster_replica(&host, &bucket, "");
    let target = Route::Ns(&host).target(&img.repo, "blobs", &blob.digest);
    throttle.hold_after(Some(512 * 1024));
    let on_a = StreamingGet::start(&a.host(), &target, Duration::from_secs(60));
    on_a.wait_received(1, Duration::from_secs(30));
    let on_b = StreamingGet::start(&b.host(), &target, Duration::from_secs(60));
    b.wait_log(
        "b giving up on the owner",
        "could not be asked; fetching it from the upstream",
        Duration::from_secs(30),
    );
    throttle.release();
    for (name, get) in [("a", on_a), ("b", on_b)] {
        let out = get.finish(Duration::from_secs(60));
        assert!(
            out.complete() && out.status == 200,
            "client of {name}: {out:?}"
        );
        assert_eq!(out.sha256, blob.digest, "client of {name}");
    }
    assert_eq!(peer_fetches(&b, "peer_failed"), 1);
    assert_eq!(
        up.count_requests("GET", &format!("/blobs/{}", blob.digest)),
        2,
        "a's fetch and b's own"
    );
}

/// `ociregistry invalidate` with the replicas' config removes the tag's record from the
/// bucket: the next pull through another replica asks the upstream for the tag again.
#[test]
fn invalidate_from_the_command_line_is_seen_by_every_replica() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("invalidate");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let bucket = S3Server::start("mirror-cache");
    let a = replica(&up, &bucket, "");
    let b = replica(&up, &bucket, "");
    let host = up.host();
    a.pull_and_verify(Route::Ns(&host), &img);
    let tag_path = format!("/manifests/{}", img.tag);
    let asked = up.count_requests("", &tag_path);
    b.pull_and_verify(Route::Ns(&host), &img);
    assert_eq!(
        up.count_requests("", &tag_path),
        asked,
        "b used the bucket's record"
    );

    let mut cmd = std::process::Command::new(ociregistry_e2e::proxy::ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&a.config_path)
        .args(["invalidate", &format!("{host}/{}:{}", img.repo, img.tag)])
        .env("NO_COLOR", "1");
    for (k, v) in S3Server::env() {
        cmd.env(k, v);
    }
    let (ok, out, err) = ociregistry_e2e::procs::run_with_timeout(cmd, Duration::from_secs(60));
    assert!(ok, "invalidate failed:\nstdout: {out}\nstderr: {err}");
    assert!(out.contains("invalidated"), "{out}");
    assert!(!format!("{out}{err}").contains(s3::SECRET_KEY));
    assert!(
        !bucket
            .keys()
            .iter()
            .any(|k| k.ends_with(&format!("/{}.json", img.tag))),
        "the record is gone from the bucket: {:?}",
        bucket.keys()
    );
    b.pull_and_verify(Route::Ns(&host), &img);
    assert!(
        up.count_requests("", &tag_path) > asked,
        "b did not ask the upstream for the invalidated tag"
    );
}

/// `url` with the first hex digit of its `X-Amz-Signature` changed.
fn flip_signature(url: &str) -> String {
    let at = url.find("X-Amz-Signature=").expect("a presigned URL") + "X-Amz-Signature=".len();
    let first = &url[at..=at];
    let other = if first == "0" { "1" } else { "0" };
    format!("{}{other}{}", &url[..at], &url[at + 1..])
}

/// `storage.redirect: true`: a blob in the bucket is answered with a 307 to a presigned URL
/// of the bucket that serves the right bytes (and refuses a tampered signature); a blob not
/// in the bucket yet is served by the mirror; skopeo follows the redirects.
#[test]
fn with_redirect_warm_blobs_answer_307_to_a_presigned_bucket_url() {
    if !tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("redirect");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(2, 300_000));
    let bucket = S3Server::start("mirror-cache");
    let mut b = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .config_line(&format!("{}\n  redirect: true", bucket.storage_yaml("")));
    for (k, v) in S3Server::env() {
        b = b.env(k, v);
    }
    let a = b.start();
    let host = up.host();
    // Cold: not in the bucket yet, so the mirror streams it.
    a.pull_and_verify(Route::Ns(&host), &img);
    wait_for(
        "every blob in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, "").0 >= img.blobs().len()).then_some(()),
    );
    for blob in img.blobs() {
        let r = a.get_blob(Route::Ns(&host), &img.repo, &blob.digest, &[]);
        assert_eq!(
            r.status,
            307,
            "{} not redirected: {}",
            blob.digest,
            r.body_str()
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(blob.digest.as_str())
        );
        let location = r.header("location").expect("Location").to_owned();
        let rest = location
            .strip_prefix(&format!("{}/", bucket.endpoint()))
            .unwrap_or_else(|| panic!("not a URL of the bucket: {location}"));
        let got = raw::request_timeout(
            &bucket.endpoint()["http://".len()..],
            "GET",
            &format!("/{rest}"),
            &[],
            None,
            Duration::from_secs(20),
        )
        .expect("GET the presigned URL");
        assert_eq!(got.status, 200, "{}", got.body_str());
        assert_eq!(sha256_digest(&got.body), blob.digest);
        assert!(!location.contains(s3::SECRET_KEY));
        let tampered = raw::request_timeout(
            &bucket.endpoint()["http://".len()..],
            "GET",
            &format!("/{}", flip_signature(rest)),
            &[],
            None,
            Duration::from_secs(20),
        )
        .expect("GET a tampered URL");
        assert_eq!(tampered.status, 403, "a tampered signature is refused");
    }
    // A real client follows the redirects to the bucket.
    skopeo::pull_and_verify(
        &format!("{}/{}:{}", a.host(), img.repo, img.tag),
        &img,
        "through redirects",
    );
}

/// `ociregistry` run with the replicas' config (and the bucket's keys), for the inventory
/// verbs; returns stdout after checking that it succeeded and showed no secret.
fn verb_on_bucket(config: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(ociregistry_e2e::proxy::ociregistry_bin());
    cmd.arg("--config-file")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1");
    for (k, v) in S3Server::env() {
        cmd.env(k, v);
    }
    let (ok, out, err) = ociregistry_e2e::procs::run_with_timeout(cmd, Duration::from_secs(120));
    assert!(ok, "{args:?} failed:\nstdout: {out}\nstderr: {err}");
    assert!(!format!("{out}{err}").contains(s3::SECRET_KEY));
    out
}

/// The references `list --output json` shows.
fn listed(config: &std::path::Path) -> Vec<String> {
    let out = verb_on_bucket(config, &["list", "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("list: not JSON ({e}): {out}"));
    let mut refs: Vec<String> = v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["reference"].as_str().expect("reference").to_owned())
        .collect();
    refs.sort();
    refs
}

/// `list` and `prune` run with the replicas' config see the bucket: what any replica cached
/// is listed, and what a prune removes is gone for every replica (their next pull asks the
/// upstream), while the rest stays served from the bucket.
#[test]
fn list_and_prune_on_the_bucket_are_seen_by_every_replica() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let keep = images::seed(
        &up,
        &images::unique_repo("keep"),
        "v1",
        ImageKind::small_oci(),
    );
    let drop = images::seed(
        &up,
        &images::unique_repo("drop"),
        "v1",
        ImageKind::small_oci(),
    );
    let bucket = S3Server::start("mirror-cache");
    let prefix = "fleet/";
    let a = replica(&up, &bucket, prefix);
    let b = replica(&up, &bucket, prefix);
    let c = replica(&up, &bucket, prefix);
    let host = up.host();
    a.pull_and_verify(Route::Ns(&host), &keep);
    b.pull_and_verify(Route::Ns(&host), &drop);
    let all_blobs = keep.blobs().len() + drop.blobs().len();
    wait_for(
        "every blob in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, prefix).0 >= all_blobs).then_some(()),
    );

    // Run beside replica a (whose local copy has only `keep`): the bucket has both.
    let mut both = vec![keep.reference(), drop.reference()];
    both.sort();
    assert_eq!(listed(&a.config_path), both);

    let out = verb_on_bucket(
        &a.config_path,
        &[
            "prune",
            "--pattern",
            &format!("/{}:", drop.repo),
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    let plan: serde_json::Value = serde_json::from_str(&out).expect("prune plan JSON");
    assert_eq!(plan["dryRun"], false, "{out}");
    assert_eq!(plan["tags"], serde_json::json!([drop.reference()]), "{out}");
    let mut gone: Vec<String> = drop.blobs().iter().map(|b| b.digest.clone()).collect();
    gone.sort();
    assert_eq!(plan["blobs"], serde_json::json!(gone), "{out}");
    assert!(plan.get("errors").is_none(), "{out}");

    // The bucket holds `keep` alone, every object still under its verified digest.
    assert_eq!(verify_bucket(&bucket, prefix).0, keep.blobs().len());
    let keys = bucket.keys();
    assert!(
        !keys.iter().any(|k| k.contains(&drop.repo)),
        "the pruned tag record is gone: {keys:?}"
    );
    assert_eq!(listed(&b.config_path), vec![keep.reference()]);

    // Every replica sees it: `keep` is served with no upstream request; `drop` is asked
    // for again, manifest and blobs (replica c never pulled either; b cached `drop`).
    let before = up.total_requests();
    c.pull_and_verify(Route::Ns(&host), &keep);
    assert_eq!(up.total_requests(), before, "keep came from the bucket");
    let tag_path = format!("{}/manifests/{}", drop.repo, drop.tag);
    let asked = up.count_requests("", &tag_path);
    b.pull_and_verify(Route::Ns(&host), &drop);
    assert!(
        up.count_requests("", &tag_path) > asked,
        "replica b did not ask the upstream for the pruned tag"
    );
    // b still has verified local copies of the pruned blobs (swept after a few idle
    // minutes); c has none and fetches them again, for the bucket.
    let blob_gets = up.count_requests("GET", "/blobs/");
    c.pull_and_verify(Route::Ns(&host), &drop);
    assert_eq!(
        up.count_requests("GET", "/blobs/"),
        blob_gets + drop.blobs().len(),
        "c fetched each pruned blob once"
    );
    wait_for(
        "the pruned blobs back in the bucket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (verify_bucket(&bucket, prefix).0 == all_blobs).then_some(()),
    );
}

/// `pruneConfig` on three replicas of one bucket runs under the inventory lease: while
/// another holder has it (written here, as a replica elsewhere would), every replica skips
/// its runs and the image stays; once it is free, one replica prunes the image from the
/// bucket, and every replica's next pull asks the upstream.
#[test]
fn background_prune_runs_on_one_replica_of_the_bucket() {
    if !tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let drop = images::seed(
        &up,
        &images::unique_repo("bgdrop"),
        "v1",
        ImageKind::small_oci(),
    );
    let bucket = S3Server::start("mirror-cache");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lease =
        serde_json::json!({"owner": "a replica elsewhere", "id": "e2e", "expiresAt": now + 3600});
    bucket.put_object("leases/inventory", lease.to_string().as_bytes());
    let prune = format!(
        "pruneConfig:\n  enabled: true\n  type: pattern\n  expr: '/{}:'\n  frequency: 1s\npruneGrace: 0s",
        drop.repo
    );
    let host = up.host();
    let start = || replica_with(&up, &bucket, "", &prune);
    let replicas = [start(), start(), start()];
    replicas[0].pull_and_verify(Route::Ns(&host), &drop);
    let record = |keys: &[String]| keys.iter().any(|k| k.contains(&drop.repo));
    assert!(record(&bucket.keys()), "the tag record is in the bucket");

    // Held elsewhere: each replica skips a run that started after the pull, and the image
    // stays.
    const SKIP: &str = "another replica holds the inventory lease";
    let seen: Vec<usize> = replicas
        .iter()
        .map(|r| r.log().matches(SKIP).count())
        .collect();
    for (r, before) in replicas.iter().zip(&seen) {
        wait_for(
            "a skipped background prune",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || (r.log().matches(SKIP).count() > *before).then_some(()),
        );
    }
    assert!(
        record(&bucket.keys()),
        "a replica pruned while another held the inventory lease"
    );
    assert!(replicas.iter().all(|r| !r.log().contains("pruned")));

    bucket.delete_object("leases/inventory");
    wait_for(
        "the background prune of the image",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let keys = bucket.keys();
            (!record(&keys) && !keys.iter().any(|k| k.starts_with("blobs/"))).then_some(())
        },
    );
    let pruned_it: Vec<usize> = (0..3)
        .filter(|&i| {
            replicas[i]
                .log()
                .lines()
                .any(|l| l.contains("pruned") && l.contains("images=1"))
        })
        .collect();
    assert_eq!(
        pruned_it.len(),
        1,
        "exactly one replica pruned the image: {pruned_it:?}"
    );
    let tag_path = format!("{}/manifests/{}", drop.repo, drop.tag);
    let asked = up.count_requests("", &tag_path);
    replicas[2].pull_and_verify(Route::Ns(&host), &drop);
    assert!(up.count_requests("", &tag_path) > asked);
}

/// `maxSize` on a bucket bounds the bucket: the replicas count its objects, and one of them
/// evicts the least recently pulled image when it is exceeded.
#[test]
fn max_size_on_the_bucket_evicts_from_the_bucket() {
    if !tools() {
        return;
    }
    let up = Upstream::anonymous();
    let old = images::seed(
        &up,
        &images::unique_repo("old"),
        "v1",
        ImageKind::oci(2, 300_000),
    );
    let new = images::seed(
        &up,
        &images::unique_repo("new"),
        "v1",
        ImageKind::oci(2, 300_000),
    );
    let bucket = S3Server::start("mirror-cache");
    let host = up.host();
    // Room for one image of about 600 kB, not two.
    let start = || replica_with(&up, &bucket, "", "maxSize: 900000\npruneGrace: 0s");
    let (a, b) = (start(), start());
    a.pull_and_verify(Route::Ns(&host), &old);
    let holds = |img: &images::PushedImage| bucket.keys().iter().any(|k| k.contains(&img.repo));
    assert!(holds(&old));
    // Times in the store have one-second resolution: pull the newer image a second later,
    // so that which one was pulled least recently is not a tie.
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let pulled = unix();
    wait_for(
        "a later second",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || (unix() > pulled).then_some(()),
    );
    b.pull_and_verify(Route::Ns(&host), &new);
    let evicted = || {
        !holds(&old)
            && old.blobs().iter().all(|bl| {
                bucket
                    .object(&format!("blobs/sha256/{}", bl.hex()))
                    .is_none()
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !evicted() {
        assert!(
            std::time::Instant::now() < deadline,
            "the older image was not evicted from the bucket within 30 s: {:?}\n--- a:\n{}\n--- b:\n{}",
            bucket.keys(),
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(holds(&new), "the newer image stays");
    let evicted: Vec<bool> = [&a, &b]
        .iter()
        .map(|r| r.log().contains("cache above maxSize"))
        .collect();
    assert_eq!(
        evicted.iter().filter(|e| **e).count(),
        1,
        "one replica evicted: {evicted:?}"
    );
    // The bucket holds the newer image's blobs alone, each under its verified digest.
    assert_eq!(verify_bucket(&bucket, "").0, new.blobs().len());
}
