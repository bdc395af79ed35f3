//! Issue 10, bounded downloads: `maxBlobSize` cuts a body without Content-Length and refuses
//! a larger Content-Length; the free space is checked as bytes of an unknown-length blob
//! arrive; `maxUpstreamFetches` bounds concurrent downloads (503 + Retry-After after
//! `upstreamFetchWait`); a download whose clients all left stops for ad hoc upstreams and
//! runs on for configured ones; a client joining another registry's download that stalls
//! carries on from its own upstream; a second `serve` on the same cache that fails to bind
//! leaves the first server's downloads alone.

use ociregistry_e2e::cache::{blob_file, tmp_files, verify_cache};
use ociregistry_e2e::endless::{self, FakeBlobs, FakeBody};
use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::pki::TestPki;
use ociregistry_e2e::proxy::{Route, ociregistry_bin};
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::tmpfs::Tmpfs;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    Proxy, RegistryEntry, SECS, assert_oci_error, raw, require_upstream_tools, sha256_digest,
    wait_for,
};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn tmp_empty(image_path: &Path, ctx: &str) {
    wait_for(
        &format!("{ctx}: no temp file left"),
        SECS(15),
        Duration::from_millis(20),
        || tmp_files(image_path).is_empty().then_some(()),
    );
}

/// GET with a bounded wait; `None` when the transfer did not end as a whole response (an
/// aborted chunked body, a reset, a truncated body).
fn get(proxy: &Proxy, target: &str, timeout: Duration) -> Option<raw::RawResponse> {
    raw::request_timeout(&proxy.host(), "GET", target, &[], None, timeout).ok()
}

/// The metrics text of a proxy started with `--metrics 0`.
fn metrics(proxy: &Proxy) -> String {
    let port = proxy.logged_port("metrics endpoint at ");
    let r = raw::request_timeout(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/metrics",
        &[],
        None,
        SECS(10),
    )
    .expect("GET /metrics");
    assert_eq!(r.status, 200);
    r.body_str()
}

#[test]
fn an_endless_chunked_blob_is_cut_at_max_blob_size() {
    if !require_upstream_tools() {
        return;
    }
    let fake = FakeBlobs::start(None, None);
    let endless_digest = sha256_digest(b"never ends");
    fake.add(&endless_digest, FakeBody::Endless);
    // A real registry beside it, with a layer above the cap and a small image.
    let up = Upstream::anonymous();
    let small = images::seed_in(&up, "capsmall", "v1", ImageKind::small_oci());
    let big = images::seed_in(&up, "capbig", "v1", ImageKind::oci(1, 2 * MIB as usize));
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fake.host()))
        .upstream(&up)
        .config_line("maxBlobSize: 1MiB")
        .start();
    let fhost = fake.host();
    let target = Route::Ns(&fhost).target("org/endless", "blobs", &endless_digest);
    let got = get(&proxy, &target, SECS(30));
    if let Some(r) = &got {
        assert_ne!(r.status, 200, "a complete 200 for an endless blob");
    }
    fake.wait_for(
        "the proxy to close the upstream connection",
        SECS(15),
        |s| s.closed_by_peer >= 1 && s.open == 0,
    );
    let sent = fake.stats().bytes_sent;
    assert!(sent < 64 * MIB, "far more than the cap was taken: {sent}");
    tmp_empty(proxy.image_path(), "cut at the cap");
    assert!(!blob_file(proxy.image_path(), &endless_digest).exists());
    proxy.wait_log(
        "a WARN naming registry, digest and cap",
        "maxBlobSize",
        SECS(5),
    );
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("larger than maxBlobSize"))
        .unwrap_or_else(|| panic!("no WARN line about the cap:\n{log}"));
    assert!(
        line.contains(&fhost) && line.contains(&endless_digest) && line.contains("1048576"),
        "the WARN names registry, digest and cap: {line}"
    );

    // A Content-Length above the cap is refused before anything is downloaded.
    let layer = big.largest_blob();
    assert!(layer.size > MIB);
    let r = proxy.get_blob(Route::Ns(&up.host()), &big.repo, &layer.digest, &[]);
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(r.body_str().contains("maxBlobSize"), "{}", r.body_str());
    assert!(!blob_file(proxy.image_path(), &layer.digest).exists());
    tmp_empty(proxy.image_path(), "refused by Content-Length");

    // Other pulls go on.
    proxy.pull_and_verify(Route::Ns(&up.host()), &small);
    verify_cache(proxy.image_path());
}

#[test]
fn an_unknown_length_blob_on_a_nearly_full_disk_fails_cleanly() {
    if !require_upstream_tools() {
        return;
    }
    let Some(fs) = Tmpfs::mount(40) else { return };
    let fake = FakeBlobs::start(None, None);
    // The reserve on a 40 MiB disk is 2 MiB: 5.5 MiB fit in the 6 MiB left, but would eat
    // into the reserve. Without a check as bytes arrive, the blob would be stored.
    let data = Arc::new(endless::random_bytes((5 * MIB + MIB / 2) as usize));
    let digest = sha256_digest(&data);
    fake.add(&digest, FakeBody::Bytes(data.clone()));
    let image_path = fs.path().join("cache");
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fake.host()))
        .image_path(&image_path)
        .start();
    let _filler = fs.fill_leaving("filler", 6 * MIB);
    let fhost = fake.host();
    let target = Route::Ns(&fhost).target("org/nolength", "blobs", &digest);
    if let Some(r) = get(&proxy, &target, SECS(30)) {
        assert!(
            !(r.status == 200 && sha256_digest(&r.body) == digest),
            "the blob was served whole although the disk ran low"
        );
        if r.status != 200 {
            assert_eq!(r.status, 507, "{}", r.body_str());
        }
    }
    tmp_empty(&image_path, "disk low");
    assert!(
        !blob_file(&image_path, &digest).exists(),
        "stored although it ate into the reserve"
    );
    proxy.wait_log("the disk-full reason", "cache disk full", SECS(5));
    assert!(
        !proxy.log().contains("cache write failed"),
        "the disk was written full instead of stopping at the reserve"
    );
    assert!(
        fs.free() > MIB,
        "the reserve is left: {} bytes free",
        fs.free()
    );
    verify_cache(&image_path);
}

#[test]
fn concurrent_upstream_downloads_are_bounded_and_the_excess_gets_503_with_retry_after() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "slots", "v1", ImageKind::oci(2, 2 * MIB as usize));
    let layers: Vec<_> = img.blobs().into_iter().filter(|b| b.size > MIB).collect();
    assert_eq!(layers.len(), 2);
    let throttle = Throttle::start(&up.host());
    let thost = throttle.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .config_line("maxUpstreamFetches: 1")
        .config_line("upstreamFetchWait: 2s")
        .serve_arg("--metrics")
        .serve_arg("0")
        .start();
    throttle.hold_after(Some(512 * 1024));
    let target = |d: &str| Route::Ns(&thost).target(&img.repo, "blobs", d);
    let a = StreamingGet::start(&proxy.host(), &target(&layers[0].digest), SECS(60));
    let pa = a.wait_received(1, SECS(10));
    assert_eq!(pa.status, Some(200), "{pa:?}");
    // Joining the running download takes no slot.
    let c = StreamingGet::start(&proxy.host(), &target(&layers[0].digest), SECS(60));
    let pc = c.wait_received(1, SECS(10));
    assert_eq!(pc.status, Some(200), "a joiner needs no slot: {pc:?}");
    // Another cold blob: no slot comes free within upstreamFetchWait.
    let r = proxy.get_blob(Route::Ns(&thost), &img.repo, &layers[1].digest, &[]);
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_oci_error(&r.body, "UNAVAILABLE", "no download slot");
    assert_eq!(r.header("Retry-After"), Some("2"), "{:?}", r.headers);
    assert!(
        r.body_str().contains("maxUpstreamFetches"),
        "{}",
        r.body_str()
    );
    let m = metrics(&proxy);
    assert!(
        m.lines()
            .any(|l| l == "ociregistry_upstream_fetch_refusals_total 1"),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l == "ociregistry_upstream_fetches 1"),
        "{m}"
    );
    // Once the first download is done, the slot is free again.
    throttle.release();
    for (name, g) in [("A", a), ("C", c)] {
        let o = g.finish(SECS(30));
        assert!(o.complete() && o.status == 200, "{name}: {o:?}");
        assert_eq!(o.sha256, layers[0].digest, "{name}");
    }
    let r = proxy.get_blob(Route::Ns(&thost), &img.repo, &layers[1].digest, &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(sha256_digest(&r.body), layers[1].digest);
    let m = metrics(&proxy);
    assert!(
        m.lines().any(|l| l == "ociregistry_upstream_fetches 0"),
        "{m}"
    );
}

/// Sends a GET, reads the head and at least `min` body bytes, then closes the connection.
fn get_part_then_leave(addr: &str, target: &str, min: usize) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(SECS(20))).expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < min {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&got[..got.len().min(300)])
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    String::from_utf8_lossy(&got[..head_end]).into_owned()
    // Dropping the socket: the client is gone.
}

#[test]
fn an_adhoc_download_whose_client_left_is_cancelled() {
    if !require_upstream_tools() {
        return;
    }
    let pki = TestPki::generate("127.0.0.1");
    // 8 MiB at 256 KiB/s: half a minute, unless it is cancelled.
    let fake = FakeBlobs::start(Some(&pki), Some(256 * 1024));
    let data = Arc::new(endless::random_bytes(8 * MIB as usize));
    let digest = sha256_digest(&data);
    fake.add(&digest, FakeBody::Bytes(data));
    let proxy = endless::allow_adhoc_loopback(Proxy::builder(), &pki).start();
    let fhost = fake.host();
    let target = Route::Ns(&fhost).target("org/adhoc", "blobs", &digest);
    let head = get_part_then_leave(&proxy.host(), &target, 256 * 1024);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    fake.wait_for(
        "the proxy to drop the ad hoc upstream connection",
        SECS(10),
        |s| s.blob_gets == 1 && s.open == 0 && s.closed_by_peer == 1,
    );
    tmp_empty(proxy.image_path(), "cancelled");
    assert!(!blob_file(proxy.image_path(), &digest).exists());
    assert_eq!(fake.stats().completed, 0);
    proxy.wait_log(
        "the cancel in the log",
        "every client left; download cancelled",
        SECS(5),
    );
    // A new client starts a fresh download (it does not join the cancelled one), which
    // stops again when it leaves.
    let head = get_part_then_leave(&proxy.host(), &target, 256 * 1024);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    fake.wait_for("the second download dropped too", SECS(10), |s| {
        s.blob_gets == 2 && s.open == 0 && s.closed_by_peer == 2
    });
    tmp_empty(proxy.image_path(), "cancelled again");
}

#[test]
fn a_configured_registrys_download_runs_on_when_its_client_left() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "keep", "v1", ImageKind::oci(1, 4 * MIB as usize));
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up.host());
    let thost = throttle.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .start();
    throttle.rate(Some(MIB));
    let target = Route::Ns(&thost).target(&img.repo, "blobs", &blob.digest);
    let head = get_part_then_leave(&proxy.host(), &target, 256 * 1024);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_for(
        "the download to complete without its client",
        SECS(30),
        Duration::from_millis(50),
        || {
            blob_file(proxy.image_path(), &blob.digest)
                .is_file()
                .then_some(())
        },
    );
    tmp_empty(proxy.image_path(), "stored");
    assert_eq!(
        ociregistry_e2e::sha256_file(&blob_file(proxy.image_path(), &blob.digest)),
        blob.digest
    );
    assert!(!proxy.log().contains("download cancelled"));
}

#[test]
fn a_client_joining_another_registrys_stalled_download_carries_on_from_its_own() {
    if !require_upstream_tools() {
        return;
    }
    let up_x = Upstream::anonymous();
    let mut up_y = Upstream::anonymous();
    let img = images::seed_in(&up_x, "cross", "v1", ImageKind::oci(1, 6 * MIB as usize));
    endless::copy_image(&up_x, &up_y, &img.repo, &img.tag);
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up_x.host());
    let xhost = throttle.host();
    let yhost = up_y.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&xhost))
        .upstream(&up_y)
        .config_line("pullTimeout: 3s")
        .start();
    // X's path passes 1 MiB, then stalls.
    throttle.hold_after(Some(MIB));
    let a = StreamingGet::start(
        &proxy.host(),
        &Route::Ns(&xhost).target(&img.repo, "blobs", &blob.digest),
        SECS(60),
    );
    a.wait_received(64 * 1024, SECS(10));
    throttle.wait_for("X's transfer to be held", SECS(10), |s| s.held >= 1);
    // B asks for the same blob from Y: it joins X's download (single flight per digest).
    let b = StreamingGet::start(
        &proxy.host(),
        &Route::Ns(&yhost).target(&img.repo, "blobs", &blob.digest),
        SECS(60),
    );
    let pb = b.wait_received(64 * 1024, SECS(10));
    assert_eq!(pb.status, Some(200), "{pb:?}");
    assert_eq!(
        up_y.count_requests("GET", &format!("/blobs/{}", blob.digest)),
        0,
        "B joined X's download"
    );
    let o = b.finish(SECS(60));
    assert!(
        o.complete(),
        "B's transfer failed with X's stalled download: {o:?}"
    );
    assert_eq!(o.status, 200);
    assert_eq!(o.sha256, blob.digest, "B's bytes");
    assert_eq!(o.received, blob.size);
    assert_eq!(
        up_y.count_requests("GET", &format!("/blobs/{}", blob.digest)),
        1,
        "B fell back to its own upstream"
    );
    proxy.wait_log(
        "the fallback in the log",
        "continuing from the client's own upstream",
        SECS(5),
    );
    let oa = a.finish(SECS(60));
    assert!(
        !(oa.complete() && oa.status == 200 && oa.sha256 != blob.digest),
        "A got a clean 200 of wrong bytes: {oa:?}"
    );
    wait_for(
        "the blob stored",
        SECS(20),
        Duration::from_millis(50),
        || {
            blob_file(proxy.image_path(), &blob.digest)
                .is_file()
                .then_some(())
        },
    );
    throttle.release();
    verify_cache(proxy.image_path());
}

/// Before any byte: X's download answers 404 (X does not have the blob) after a delay; a
/// client of Y that joined it meanwhile gets the blob from Y, not X's 404.
#[test]
fn a_client_joining_another_registrys_failed_download_gets_the_blob_from_its_own() {
    if !require_upstream_tools() {
        return;
    }
    let up_x = Upstream::anonymous();
    let up_y = Upstream::anonymous();
    let img = images::seed_in(&up_y, "crossfail", "v1", ImageKind::small_oci());
    let blob = img.largest_blob();
    let fp = FaultProxy::start(&up_x.host());
    let rule = fp.add_rule(
        "GET",
        "/blobs/",
        Fault::Delayed(SECS(2), Some(Box::new(Fault::status(404)))),
        Some(1),
    );
    let xhost = fp.host();
    let yhost = up_y.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&xhost))
        .upstream(&up_y)
        .start();
    let (phost, tx) = (
        proxy.host(),
        Route::Ns(&xhost).target(&img.repo, "blobs", &blob.digest),
    );
    let a =
        std::thread::spawn(move || raw::request_timeout(&phost, "GET", &tx, &[], None, SECS(30)));
    wait_for(
        "X's blob GET to arrive",
        SECS(10),
        Duration::from_millis(10),
        || (fp.hits(rule) == 1).then_some(()),
    );
    let b = proxy.get_blob(Route::Ns(&yhost), &img.repo, &blob.digest, &[]);
    assert_eq!(b.status, 200, "B got X's answer: {}", b.body_str());
    assert_eq!(sha256_digest(&b.body), blob.digest);
    let a = a.join().expect("A's thread").expect("A's answer");
    assert_eq!(
        a.status,
        404,
        "X's own client gets X's answer: {}",
        a.body_str()
    );
}

#[test]
fn a_second_serve_that_cannot_bind_leaves_the_first_servers_download_alone() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "second", "v1", ImageKind::oci(1, 4 * MIB as usize));
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up.host());
    let thost = throttle.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .start();
    throttle.hold_after(Some(MIB));
    let get = StreamingGet::start(
        &proxy.host(),
        &Route::Ns(&thost).target(&img.repo, "blobs", &blob.digest),
        SECS(60),
    );
    get.wait_received(64 * 1024, SECS(10));
    let in_progress = tmp_files(proxy.image_path());
    assert!(!in_progress.is_empty(), "a download in progress under tmp/");
    // Same config, same cache, same port: it cannot bind and exits.
    let port = proxy.host().rsplit(':').next().unwrap().to_owned();
    let mut cmd = std::process::Command::new(ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&proxy.config_path)
        .arg("--image-path")
        .arg(proxy.image_path())
        .args(["serve", "--host", "127.0.0.1", "--port", &port])
        .env("NO_COLOR", "1");
    let (ok, _out, err) = ociregistry_e2e::procs::run_with_timeout(cmd, SECS(30));
    assert!(!ok, "the second serve should fail to bind: {err}");
    assert!(err.contains("cannot listen"), "{err}");
    assert_eq!(
        tmp_files(proxy.image_path()),
        in_progress,
        "the second serve removed the first server's temp file"
    );
    throttle.release();
    let o = get.finish(SECS(60));
    assert!(o.complete() && o.status == 200, "{o:?}");
    assert_eq!(o.sha256, blob.digest);
    wait_for(
        "the download stored",
        SECS(20),
        Duration::from_millis(50),
        || {
            blob_file(proxy.image_path(), &blob.digest)
                .is_file()
                .then_some(())
        },
    );
    tmp_empty(proxy.image_path(), "stored");
    verify_cache(proxy.image_path());
}

/// The preloader is a batch job: with one download slot and a short `upstreamFetchWait`,
/// `ociregistry load` fetching four blobs at once waits for slots instead of failing.
#[test]
fn load_waits_for_download_slots_instead_of_failing() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "loadslots", "v1", ImageKind::oci(3, MIB as usize));
    let throttle = Throttle::start(&up.host());
    // About two seconds per layer: longer than upstreamFetchWait.
    throttle.rate(Some(512 * 1024));
    let thost = throttle.host();
    let work = tempfile::tempdir().expect("tempdir");
    let image_path = work.path().join("cache");
    let list = work.path().join("images.txt");
    std::fs::write(&list, format!("{thost}/{}:{}\n", img.repo, img.tag)).expect("list");
    let config = work.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "imagePath: \"{}\"\nmaxUpstreamFetches: 1\nupstreamFetchWait: 1s\nregistries:\n- name: \"{thost}\"\n  scheme: http\n",
            image_path.display()
        ),
    )
    .expect("config");
    let mut cmd = std::process::Command::new(ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&config)
        .args(["--log-level", "info", "load", "--image-file"])
        .arg(&list)
        .env("NO_COLOR", "1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    let (ok, out, err) = ociregistry_e2e::procs::run_with_timeout(cmd, SECS(120));
    assert!(ok, "load failed:\n{out}\n{err}");
    assert!(!out.contains("FAILED"), "{out}");
    assert!(
        err.contains("no download slot came free in time"),
        "the limit was reached and waited through:\n{err}"
    );
    ociregistry_e2e::cache::assert_image_cached(&image_path, &img);
    verify_cache(&image_path);
}
