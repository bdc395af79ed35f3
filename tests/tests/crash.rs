//! Issue 5: crash safety. The real binary is killed with SIGKILL while many cold pulls of
//! several blobs run (the upstream throttled so that they are mid-flight, with partial files
//! under `tmp/`); restarted on the same cache it removes the leftovers, every file in
//! `blobs/` and `manifests/` hashes to its name, and every pull then succeeds verified.

use ociregistry_e2e::cache::{list_files, verify_cache};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, require_upstream_tools};

use ociregistry_e2e::SECS;

#[test]
fn sigkill_mid_pull_then_restart_leaves_a_verified_cache() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("crash");
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(6, 3 << 20));
    let layers: Vec<_> = img
        .blobs()
        .into_iter()
        .filter(|b| b.size > 1 << 20)
        .collect();
    assert_eq!(layers.len(), 6, "six large layers: {:?}", img.blobs());
    let throttle = Throttle::start(&up.host());
    let thost = throttle.host();
    let cache_dir = tempfile::tempdir().unwrap();
    let image_path = cache_dir.path().join("cache");
    let mut proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .image_path(&image_path)
        .start();
    // The manifest (small) is cached before the throttle bites.
    proxy
        .get_manifest(Route::Ns(&thost), &repo, "v1")
        .status
        .eq(&200)
        .then_some(())
        .expect("manifest pull");
    throttle.rate(Some(512 * 1024));
    // Two clients per blob: twelve concurrent cold pulls of six downloads.
    let clients: Vec<StreamingGet> = layers
        .iter()
        .flat_map(|b| {
            let t = Route::Ns(&thost).target(&repo, "blobs", &b.digest);
            [
                StreamingGet::start(&proxy.host(), &t, SECS(30)),
                StreamingGet::start(&proxy.host(), &t, SECS(30)),
            ]
        })
        .collect();
    for c in &clients {
        let p = c.wait_received(64 * 1024, SECS(15));
        assert!(!p.done, "a pull finished before the crash: {p:?}");
    }
    let tmp = image_path.join("tmp");
    let partial = list_files(&tmp);
    assert!(
        partial.len() >= 6,
        "six downloads in progress under tmp/: {partial:?}"
    );
    proxy.kill();
    for c in clients {
        let o = c.finish(SECS(10));
        assert!(!o.complete(), "a client completed across the crash: {o:?}");
    }
    assert!(
        !list_files(&tmp).is_empty(),
        "temp files vanished without a restart"
    );
    // Every file that did make it into the store verifies even before the restart.
    verify_cache(&image_path);

    throttle.rate(None);
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&thost))
        .image_path(&image_path)
        .start();
    let left = list_files(&tmp);
    assert!(left.is_empty(), "tmp/ not cleaned at start: {left:?}");
    let (_, manifests) = verify_cache(&image_path);
    assert!(
        manifests >= 1,
        "the manifest cached before the crash is kept"
    );
    proxy.pull_and_verify(Route::Ns(&thost), &img);
    // Concurrent pulls after the restart too.
    let again: Vec<_> = layers
        .iter()
        .map(|b| {
            StreamingGet::start(
                &proxy.host(),
                &Route::Ns(&thost).target(&repo, "blobs", &b.digest),
                SECS(20),
            )
        })
        .collect();
    for (c, b) in again.into_iter().zip(&layers) {
        let o = c.finish(SECS(20));
        assert!(o.complete() && o.status == 200, "{o:?}");
        assert_eq!(o.sha256, b.digest);
    }
    let (blobs, _) = verify_cache(&image_path);
    assert!(blobs >= 7, "config and six layers stored: {blobs}");
    ociregistry_e2e::cache::assert_image_cached(&image_path, &img);
}
