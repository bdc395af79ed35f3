//! Issue 5: disk trouble. The cache lives on a 40 MiB tmpfs. A blob that does not fit is
//! refused with 507 and an OCI body saying the disk is full, nothing partial is left, cached
//! content is still served, and once space returns the same pull succeeds by itself. Two
//! downloads that each fit but not together: the one that hits ENOSPC mid-write fails
//! (aborted client, temp file removed), the other completes verified. A cache remounted
//! read-only makes `/readyz` 503 (with the reason) while cached pulls go on.
//!
//! Needs `mount -t tmpfs` (root). Outside CI a missing permission skips loudly; under
//! `CI=true` it fails.

use ociregistry_e2e::cache::{tmp_files, verify_cache};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::tmpfs::Tmpfs;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, require_upstream_tools, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ociregistry_e2e::SECS;
const MIB: u64 = 1 << 20;

fn no_partial_files(image_path: &Path, hex: &str, ctx: &str) {
    wait_for(
        &format!("{ctx}: tmp/ empty"),
        SECS(10),
        Duration::from_millis(20),
        || tmp_files(image_path).is_empty().then_some(()),
    );
    assert!(
        !image_path.join("blobs/sha256").join(hex).exists(),
        "{ctx}: the blob is in the store"
    );
    verify_cache(image_path);
}

/// `/readyz`: status and the `checks` object.
fn readyz(port: u16) -> (u16, serde_json::Value) {
    let r = ociregistry_e2e::raw::request_timeout(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/readyz",
        &[],
        None,
        SECS(10),
    )
    .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", r.body_str()));
    (r.status, v["checks"].clone())
}

fn remount(fs: &Tmpfs, mode: &str) {
    let st = Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(fs.path())
        .status()
        .expect("mount -o remount");
    assert!(st.success(), "remount {mode} failed: {st}");
}

/// A cache directory that turns read-only (a remounted disk) takes the mirror out of
/// rotation (`/readyz` 503 naming the cache) while liveness and cached pulls go on; writable
/// again, it is ready again without a restart.
#[test]
fn readiness_is_503_while_the_cache_is_read_only() {
    if !require_upstream_tools() {
        return;
    }
    let Some(fs) = Tmpfs::mount(40) else { return };
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "readonly", "v1", ImageKind::small_oci());
    let host = up.host();
    let proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&fs.path().join("cache"))
        .serve_arg("--health")
        .serve_arg("0")
        .start();
    let port = proxy.logged_port("health endpoints at ");
    proxy.pull_and_verify(Route::Ns(&host), &img);
    let (status, checks) = readyz(port);
    assert_eq!(status, 200, "writable cache: {checks}");
    assert_eq!(checks["cacheWritable"], true, "{checks}");

    remount(&fs, "ro");
    let (status, checks) = readyz(port);
    assert_eq!(status, 503, "read-only cache: {checks}");
    assert_eq!(checks["cacheWritable"], false, "{checks}");
    assert!(
        checks["cacheError"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only")),
        "the reason is given: {checks}"
    );
    let live = ociregistry_e2e::raw::request_timeout(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/healthz",
        &[],
        None,
        SECS(10),
    )
    .expect("GET /healthz");
    assert_eq!(live.status, 200, "liveness does not depend on the disk");
    // What is cached is still served from the read-only disk.
    proxy.pull_and_verify(Route::Ns(&host), &img);

    remount(&fs, "rw");
    let (status, checks) = readyz(port);
    assert_eq!(status, 200, "writable again: {checks}");
}

#[test]
fn a_full_disk_gives_507_keeps_serving_and_recovers() {
    if !require_upstream_tools() {
        return;
    }
    let Some(fs) = Tmpfs::mount(40) else { return };
    let up = Upstream::anonymous();
    let repo = images::unique_repo("diskfull");
    let small = images::seed(&up, &repo, "small", ImageKind::small_oci());
    let big = images::seed(&up, &repo, "big", ImageKind::oci(1, 8 << 20));
    let blob = big.largest_blob();
    let host = up.host();
    let image_path = fs.path().join("cache");
    let proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&image_path)
        .start();
    proxy.pull_and_verify(Route::Ns(&host), &small);
    // The big image's manifest is small and fits; its layer does not.
    let filler = fs.fill_leaving("filler", 4 * MIB);
    assert!(
        fs.free() < blob.size,
        "free {} < blob {}",
        fs.free(),
        blob.size
    );
    let r = proxy.get_blob(Route::Ns(&host), &repo, &blob.digest, &[]);
    assert_eq!(
        r.status,
        507,
        "blob larger than the free space: {}",
        r.body_str()
    );
    let body = r.body_str();
    assert!(
        !ociregistry_e2e::oci_error_codes(&r.body).is_empty(),
        "507 without an OCI body: {body}"
    );
    assert!(
        body.contains("disk full"),
        "507 body names the full disk: {body}"
    );
    no_partial_files(&image_path, blob.hex(), "507");
    // Cached content is still served.
    proxy.pull_and_verify(Route::Ns(&host), &small);
    // Space returns: the same pull succeeds, no restart.
    std::fs::remove_file(&filler).expect("remove filler");
    proxy.pull_and_verify(Route::Ns(&host), &big);
    verify_cache(&image_path);
    ociregistry_e2e::cache::assert_image_cached(&image_path, &big);
}

/// Both downloads pass the free-space check (each fits) but together they do not: the
/// upstream is held after the headers so both are checked first, then released. The one that
/// hits ENOSPC fails cleanly; nothing partial is left; with space back it succeeds.
#[test]
fn a_write_error_mid_download_fails_only_that_download() {
    if !require_upstream_tools() {
        return;
    }
    let Some(fs) = Tmpfs::mount(40) else { return };
    let up = Upstream::anonymous();
    let repo = images::unique_repo("diskwrite");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(2, 8 << 20));
    let layers: Vec<_> = img.blobs().into_iter().filter(|b| b.size > MIB).collect();
    assert_eq!(layers.len(), 2);
    let throttle = Throttle::start(&up.host());
    let thost = throttle.host();
    let image_path = fs.path().join("cache");
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .image_path(&image_path)
        .start();
    // Each layer + the reserve (2 MiB on a 40 MiB disk) fits; both do not.
    let max = layers.iter().map(|b| b.size).max().unwrap();
    let sum: u64 = layers.iter().map(|b| b.size).sum();
    let leave = max + 2 * MIB + MIB / 2;
    assert!(
        sum > leave + MIB / 2,
        "layers {sum} bytes must not fit in {leave}"
    );
    let filler = fs.fill_leaving("filler", leave);
    throttle.hold_after(Some(512 * 1024));
    let clients: Vec<StreamingGet> = layers
        .iter()
        .map(|b| {
            StreamingGet::start(
                &proxy.host(),
                &Route::Ns(&thost).target(&repo, "blobs", &b.digest),
                SECS(20),
            )
        })
        .collect();
    for c in &clients {
        let p = c.wait_received(1, SECS(10));
        assert_eq!(
            p.status,
            Some(200),
            "both downloads pass the space check: {p:?}"
        );
    }
    throttle.release();
    let outcomes: Vec<_> = clients.into_iter().map(|c| c.finish(SECS(20))).collect();
    let ok: Vec<bool> = outcomes
        .iter()
        .zip(&layers)
        .map(|(o, b)| o.complete() && o.status == 200 && o.sha256 == b.digest)
        .collect();
    for (o, b) in outcomes.iter().zip(&layers) {
        assert!(
            !(o.complete() && o.status == 200 && o.sha256 != b.digest),
            "a clean 200 with wrong bytes: {o:?}"
        );
    }
    assert!(
        ok.iter().filter(|x| !**x).count() >= 1,
        "both fit although they should not: {outcomes:?}"
    );
    wait_for("tmp/ empty", SECS(10), Duration::from_millis(20), || {
        tmp_files(&image_path).is_empty().then_some(())
    });
    for (good, b) in ok.iter().zip(&layers) {
        if !good {
            no_partial_files(&image_path, b.hex(), "ENOSPC");
        }
    }
    assert!(proxy.log().contains("nothing stored") || proxy.log().contains("cache write failed"));
    std::fs::remove_file(&filler).expect("remove filler");
    proxy.pull_and_verify(Route::Ns(&thost), &img);
    verify_cache(&image_path);
}
