//! Issue 6: the cache inventory and the admin API, through the real binary against a real
//! `docker-registry`: `list` (table and JSON, while the server runs and after), `prune`
//! (dry run, real run, blobs shared by two images), `maxSize` eviction order, pruning while
//! pulls are in flight, `invalidate`, the admin API (token, pull port isolation, stop), and
//! the inventory lock that a verb and the server wait for across processes.

use ociregistry_e2e::cache::{
    assert_image_cached, blob_file as blob_path, list_files, manifest_file as manifest_path,
    verify_cache,
};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::procs::{ChildProc, run_with_timeout};
use ociregistry_e2e::proxy::{Route, ociregistry_bin};
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    Proxy, PushedImage, RegistryEntry, free_port, raw, require_upstream_tools, wait_for,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ociregistry_e2e::SECS;

/// Runs `ociregistry --image-path P ARGS...`; returns (success, stdout, stderr).
fn cli(image_path: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(ociregistry_bin());
    cmd.arg("--image-path")
        .arg(image_path)
        .args(args)
        .env_remove("OCIREGISTRY_CONFIG")
        .env("NO_COLOR", "1");
    run_with_timeout(cmd, SECS(60))
}

fn cli_ok(image_path: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(image_path, args);
    assert!(
        ok,
        "ociregistry {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

fn cli_json(image_path: &Path, args: &[&str]) -> Value {
    let out = cli_ok(image_path, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// `list --output json` -> the images array.
fn list(image_path: &Path) -> Vec<Value> {
    let v = cli_json(image_path, &["list", "--output", "json"]);
    v["images"].as_array().expect("images array").clone()
}

fn refs(images: &[Value]) -> BTreeSet<String> {
    images
        .iter()
        .map(|i| i["reference"].as_str().expect("reference").to_owned())
        .collect()
}

fn find<'a>(images: &'a [Value], reference: &str) -> &'a Value {
    images
        .iter()
        .find(|i| i["reference"] == reference)
        .unwrap_or_else(|| panic!("{reference} not listed in {images:#?}"))
}

/// Bytes an image holds on disk when fully cached: its manifests and distinct blobs.
fn image_bytes(img: &PushedImage) -> u64 {
    img.manifests()
        .iter()
        .map(|m| m.bytes.len() as u64)
        .sum::<u64>()
        + img.blobs().iter().map(|b| b.size).sum::<u64>()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn list_shows_tags_digests_types_times_and_sizes_as_table_and_json() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let a = images::seed_in(&up, "inv-list", "v1", ImageKind::small_oci());
    let idx = images::seed_in(&up, "inv-list", "multi", ImageKind::OciIndex);
    let by_digest = images::seed_in(&up, "inv-list", "v9", ImageKind::small_oci());
    let mut proxy = Proxy::builder().upstream(&up).start();
    let route = Route::Ns(&up.host());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    proxy.pull_and_verify(route, &a);
    proxy.pull_and_verify(route, &idx);
    // Pulled by digest only: listed as repository@digest.
    let r = proxy.get_manifest(route, &by_digest.repo, &by_digest.manifest.digest);
    assert_eq!(r.status, 200);
    for b in by_digest.blobs() {
        assert_eq!(
            proxy
                .get_blob(route, &by_digest.repo, &b.digest, &[])
                .status,
            200
        );
    }
    let root = proxy.image_path().to_owned();
    let want = BTreeSet::from([
        a.reference(),
        idx.reference(),
        format!(
            "{}/{}@{}",
            up.host(),
            by_digest.repo,
            by_digest.manifest.digest
        ),
    ]);

    // While the server runs: tags are listed at once; the digest pull appears once the
    // access times are flushed (SIGTERM flushes them).
    let running = list(&root);
    assert!(refs(&running).contains(&a.reference()), "{running:#?}");
    assert!(refs(&running).contains(&idx.reference()), "{running:#?}");
    proxy.stop();

    let images = list(&root);
    assert_eq!(refs(&images), want, "{images:#?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (img, reference, kind) in [
        (&a, a.reference(), "image"),
        (&idx, idx.reference(), "index"),
        (
            &by_digest,
            format!(
                "{}/{}@{}",
                up.host(),
                by_digest.repo,
                by_digest.manifest.digest
            ),
            "image",
        ),
    ] {
        let row = find(&images, &reference);
        assert_eq!(row["type"], kind, "{row}");
        assert_eq!(row["digest"], img.manifest.digest.as_str(), "{row}");
        assert_eq!(row["registry"], up.host().as_str());
        assert_eq!(row["repository"], img.repo.as_str());
        assert_eq!(
            row["size"].as_u64(),
            Some(image_bytes(img)),
            "size of {reference} = manifests + config + layers (index: + children): {row}"
        );
        for key in ["created", "lastPulled"] {
            let t = row[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} missing: {row}"));
            let secs = parse_rfc3339(t);
            assert!(
                (before.saturating_sub(2)..=now + 2).contains(&secs),
                "{key} {t} not between the pull and now"
            );
        }
    }
    assert_eq!(find(&images, &a.reference())["tag"], "v1");

    // --pattern is a regex on the reference.
    let v = cli_json(
        &root,
        &[
            "list",
            "--output",
            "json",
            "--pattern",
            &format!("{}:multi$", idx.repo),
        ],
    );
    assert_eq!(
        refs(v["images"].as_array().unwrap()),
        BTreeSet::from([idx.reference()])
    );
    let (ok, _, err) = cli(&root, &["list", "--pattern", "("]);
    assert!(!ok && err.contains("pattern"), "{err}");

    // The table: a header, one line per image, a total.
    let table = cli_ok(&root, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    for col in [
        "REPOSITORY",
        "TAG/DIGEST",
        "TYPE",
        "CREATED",
        "LAST PULLED",
        "SIZE",
    ] {
        assert!(lines[0].contains(col), "header lacks {col}: {table}");
    }
    let idx_line = lines
        .iter()
        .find(|l| l.contains(&idx.repo))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        idx_line.contains("multi") && idx_line.contains("index"),
        "{idx_line}"
    );
    let digest_line = lines.iter().find(|l| l.contains(&by_digest.repo)).unwrap();
    assert!(
        digest_line.contains(&by_digest.manifest.digest),
        "{digest_line}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("3 images, {}", human(want_total(&[&a, &idx, &by_digest]))).as_str()),
        "{table}"
    );

    // Access records keep the store verifiable.
    let (blobs, manifests) = verify_cache(&root);
    assert!(blobs > 0 && manifests >= 5);
}

fn want_total(imgs: &[&PushedImage]) -> u64 {
    imgs.iter().map(|i| image_bytes(i)).sum()
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `2024-05-01T12:00:00Z` -> Unix seconds (the test's own reading, UTC only).
fn parse_rfc3339(s: &str) -> u64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("RFC 3339");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as u64
}

/// Pushes one generated layout twice: as OCI to `repo_a` and as Docker v2s2 to `repo_b`.
/// Different manifests, the same layers.
fn seed_sharing(up: &Upstream) -> (PushedImage, PushedImage) {
    let dir = tempfile::tempdir().unwrap();
    let kind = ImageKind::oci(2, 32 * 1024);
    images::generate_layout(dir.path(), kind, "v1");
    let repo_a = images::unique_repo("inv-share-a");
    let repo_b = images::unique_repo("inv-share-b");
    for (repo, v2s2) in [(&repo_a, false), (&repo_b, true)] {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if v2s2 {
            cmd.args(["--format", "v2s2"]);
        }
        cmd.arg(format!("oci:{}:v1", dir.path().display()))
            .arg(format!("docker://{}/{repo}:v1", up.host()));
        let (ok, _, err) = run_with_timeout(cmd, SECS(120));
        assert!(ok, "skopeo push {repo}: {err}");
    }
    let a = images::describe(up, &repo_a, "v1", kind);
    let b = images::describe(up, &repo_b, "v1", ImageKind::DockerV2s2 { layers: 2 });
    assert_ne!(a.manifest.digest, b.manifest.digest);
    (a, b)
}

#[test]
fn prune_dry_run_then_real_run_keeps_shared_blobs_until_nothing_references_them() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let (a, b) = seed_sharing(&up);
    let a_blobs: BTreeSet<String> = a.blobs().into_iter().map(|x| x.digest).collect();
    let b_blobs: BTreeSet<String> = b.blobs().into_iter().map(|x| x.digest).collect();
    let shared: BTreeSet<String> = a_blobs.intersection(&b_blobs).cloned().collect();
    assert!(
        shared.len() >= 2,
        "the layers are shared: {a_blobs:?} {b_blobs:?}"
    );
    let only_a: BTreeSet<String> = a_blobs.difference(&b_blobs).cloned().collect();

    let proxy = Proxy::builder().upstream(&up).start();
    let route = Route::Ns(&up.host());
    proxy.pull_and_verify(route, &a);
    proxy.pull_and_verify(route, &b);
    let root = proxy.image_path().to_owned();
    assert_image_cached(&root, &a);
    assert_image_cached(&root, &b);
    let files_before = list_files(&root.join("blobs"));
    let pattern = format!("/{}:", a.repo);

    // Dry run: exactly what would go, nothing removed.
    let dry = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            &pattern,
            "--grace",
            "0s",
            "--dry-run",
            "--output",
            "json",
        ],
    );
    assert_eq!(dry["dryRun"], true);
    assert_eq!(strings(&dry["tags"]), BTreeSet::from([a.reference()]));
    assert_eq!(
        strings(&dry["manifests"]),
        BTreeSet::from([a.manifest.digest.clone()])
    );
    assert_eq!(
        strings(&dry["blobs"]),
        only_a,
        "only blobs no other image needs"
    );
    let only_a_bytes: u64 = a
        .blobs()
        .iter()
        .filter(|x| only_a.contains(&x.digest))
        .map(|x| x.size)
        .sum();
    assert_eq!(
        dry["bytes"].as_u64(),
        Some(a.manifest.bytes.len() as u64 + only_a_bytes)
    );
    assert_eq!(
        list_files(&root.join("blobs")),
        files_before,
        "a dry run removes nothing"
    );
    assert!(manifest_path(&root, &a.manifest.digest).is_file());
    assert_eq!(list(&root).len(), 2);
    let text = cli_ok(
        &root,
        &["prune", "--pattern", &pattern, "--grace", "0s", "--dry-run"],
    );
    assert!(
        text.contains("dry run: would remove 1 images, 1 manifests"),
        "{text}"
    );
    assert!(text.contains(&a.manifest.digest), "{text}");

    // Real run, while the server runs: A goes, the shared layers stay for B.
    let real = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            &pattern,
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    assert_eq!(real["dryRun"], false);
    assert_eq!(strings(&real["blobs"]), only_a);
    assert!(!manifest_path(&root, &a.manifest.digest).exists());
    for d in &shared {
        assert!(blob_path(&root, d).is_file(), "shared blob {d} was removed");
    }
    for d in &only_a {
        assert!(!blob_path(&root, d).exists(), "{d} should be gone");
    }
    assert_eq!(refs(&list(&root)), BTreeSet::from([b.reference()]));
    // B still pulls entirely from the cache.
    let blob_gets = up.count_requests("GET", "/blobs/");
    proxy.pull_and_verify(route, &b);
    assert_eq!(
        up.count_requests("GET", "/blobs/"),
        blob_gets,
        "B's blobs came from the cache"
    );

    // B goes too: now the shared layers go.
    let last = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            ".",
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    for d in &shared {
        assert!(strings(&last["blobs"]).contains(d), "{last}");
        assert!(!blob_path(&root, d).exists());
    }
    assert!(list(&root).is_empty());
    assert!(list_files(&root.join("blobs/sha256")).is_empty());
    assert!(list_files(&root.join("manifests/sha256")).is_empty());
    verify_cache(&root);

    // Without any criterion, prune refuses instead of removing everything.
    let (ok, _, err) = cli(&root, &["prune"]);
    assert!(!ok && err.contains("--pattern"), "{err}");
}

#[test]
fn max_size_evicts_the_least_recently_pulled_image_first() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let imgs: Vec<PushedImage> = ["a", "b", "c"]
        .iter()
        .map(|n| images::seed_in(&up, &format!("inv-lru-{n}"), "v1", ImageKind::small_oci()))
        .collect();
    let cache_dir = tempfile::tempdir().unwrap();
    let root = cache_dir.path().join("cache");
    let route = Route::Ns(&up.host());
    {
        let mut proxy = Proxy::builder().upstream(&up).image_path(&root).start();
        // Pull A, B, C, then A again: B is the least recently pulled. Times are in seconds.
        for img in &imgs {
            proxy.pull_and_verify(route, img);
            assert_image_cached(proxy.image_path(), img);
            std::thread::sleep(Duration::from_millis(1100));
        }
        let r = proxy.get_manifest(route, &imgs[0].repo, "v1");
        assert_eq!(r.status, 200);
        proxy.stop();
    }
    let listed = list(&root);
    let pulled = |img: &PushedImage| {
        parse_rfc3339(
            find(&listed, &img.reference())["lastPulled"]
                .as_str()
                .expect("lastPulled"),
        )
    };
    assert!(pulled(&imgs[1]) < pulled(&imgs[2]) && pulled(&imgs[2]) < pulled(&imgs[0]));
    let total: u64 = listed.iter().map(|i| i["size"].as_u64().unwrap()).sum();
    let size_b = find(&listed, &imgs[1].reference())["size"]
        .as_u64()
        .unwrap();
    // Evicting B alone is enough; evicting nothing is not.
    let max = total - size_b / 2;

    let _proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&root)
        .config_line(&format!("maxSize: {max}"))
        .config_line("pruneGrace: 0s")
        .start();
    let after = wait_for(
        "B to be evicted",
        SECS(30),
        Duration::from_millis(200),
        || {
            let l = list(&root);
            let b_gone = imgs[1]
                .blobs()
                .iter()
                .all(|b| !blob_path(&root, &b.digest).exists());
            (l.len() == 2 && b_gone).then_some(l)
        },
    );
    assert_eq!(
        refs(&after),
        BTreeSet::from([imgs[0].reference(), imgs[2].reference()]),
        "the least recently pulled image goes first"
    );
    for b in imgs[1].blobs() {
        assert!(
            !blob_path(&root, &b.digest).exists(),
            "B's blob {} remains",
            b.digest
        );
    }
    for img in [&imgs[0], &imgs[2]] {
        for b in img.blobs() {
            assert!(blob_path(&root, &b.digest).is_file());
        }
    }
    let size_of = |dir: &Path| -> u64 {
        list_files(dir)
            .iter()
            .filter(|p| p.extension().is_none())
            .map(|p| std::fs::metadata(dir.join(p)).unwrap().len())
            .sum()
    };
    let on_disk = size_of(&root.join("blobs/sha256")) + size_of(&root.join("manifests/sha256"));
    assert!(on_disk <= max, "cache holds {on_disk} bytes, maxSize {max}");
}

#[test]
fn pruning_a_blob_being_streamed_from_the_cache_does_not_break_the_pull() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-stream", "v1", ImageKind::Large { size: 32 << 20 });
    let blob = img.largest_blob();
    let proxy = Proxy::builder().upstream(&up).start();
    let route = Route::Ns(&up.host());
    proxy.pull_and_verify(route, &img);
    let root = proxy.image_path().to_owned();
    assert!(blob_path(&root, &blob.digest).is_file());

    // The client reads slowly: a throttle in front of the proxy.
    let slow = Throttle::start(&proxy.host());
    slow.rate(Some(4 << 20));
    let get = StreamingGet::start(
        &slow.host(),
        &route.target(&img.repo, "blobs", &blob.digest),
        SECS(30),
    );
    let p = get.wait_received(2 << 20, SECS(30));
    assert!(!p.done);
    let out = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            ".",
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    assert!(strings(&out["blobs"]).contains(&blob.digest), "{out}");
    assert!(
        !blob_path(&root, &blob.digest).exists(),
        "the blob was unlinked"
    );
    assert!(
        !get.progress().done,
        "the transfer was still running when the blob was removed"
    );
    slow.rate(None);
    let done = get.finish(SECS(60));
    assert_eq!(done.status, 200);
    assert!(done.complete(), "{done:?}");
    assert_eq!(done.received, blob.size);
    assert_eq!(
        done.sha256, blob.digest,
        "the client got every byte of the removed blob"
    );
}

#[test]
fn pruning_during_a_download_in_progress_does_not_break_it() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-dl", "v1", ImageKind::oci(1, 8 << 20));
    let blob = img.largest_blob();
    let throttle = Throttle::start(&up.host());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&throttle.host()))
        .start();
    let route = Route::Ns(&throttle.host());
    let r = proxy.get_manifest(route, &img.repo, "v1");
    assert_eq!(r.status, 200);
    throttle.hold_after(Some(2 << 20));
    let get = StreamingGet::start(
        &proxy.host(),
        &route.target(&img.repo, "blobs", &blob.digest),
        SECS(60),
    );
    throttle.wait_for("the upstream transfer to be held", SECS(30), |s| {
        s.held >= 1
    });
    get.wait_received(1 << 20, SECS(30));
    let root = proxy.image_path().to_owned();
    let out = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            ".",
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    assert!(
        strings(&out["manifests"]).contains(&img.manifest.digest),
        "{out}"
    );
    assert!(
        !list_files(&root.join("tmp")).is_empty(),
        "the download lives in tmp/, untouched"
    );
    throttle.release();
    let done = get.finish(SECS(60));
    assert!(done.complete() && done.status == 200, "{done:?}");
    assert_eq!(done.sha256, blob.digest);
    // The completed download is stored; nothing references it, so the next prune takes it.
    wait_for(
        "the download to be stored",
        SECS(20),
        Duration::from_millis(50),
        || blob_path(&root, &blob.digest).is_file().then_some(()),
    );
    verify_cache(&root);
    let again = cli_json(
        &root,
        &[
            "prune",
            "--pattern",
            ".",
            "--grace",
            "0s",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        strings(&again["blobs"]),
        BTreeSet::from([blob.digest.clone()])
    );
}

#[test]
fn grace_period_keeps_the_blobs_of_a_manifest_just_served() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-grace", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder().upstream(&up).start();
    let route = Route::Ns(&up.host());
    proxy.pull_and_verify(route, &img);
    let root = proxy.image_path().to_owned();
    assert_image_cached(&root, &img);
    // The default grace (5m): the image goes, its blobs stay for pulls that have the manifest.
    let out = cli_json(&root, &["prune", "--pattern", ".", "--output", "json"]);
    assert_eq!(
        strings(&out["manifests"]),
        BTreeSet::from([img.manifest.digest.clone()])
    );
    assert!(strings(&out["blobs"]).is_empty(), "{out}");
    let want: BTreeSet<String> = img.blobs().into_iter().map(|b| b.digest).collect();
    assert_eq!(strings(&out["keptBlobs"]), want);
    let before = up.count_requests("GET", "/blobs/");
    for b in img.blobs() {
        let r = proxy.get_blob(route, &img.repo, &b.digest, &[]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        up.count_requests("GET", "/blobs/"),
        before,
        "served from the cache"
    );
}

#[test]
fn invalidate_makes_the_next_pull_fetch_the_tag_again() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-inval", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder().upstream(&up).start();
    let route = Route::Ns(&up.host());
    let path = format!("/{}/manifests/v1", img.repo);
    let seeded = up.count_requests("GET", &path);
    for _ in 0..2 {
        assert_eq!(proxy.get_manifest(route, &img.repo, "v1").status, 200);
    }
    assert_eq!(
        up.count_requests("GET", &path),
        seeded + 1,
        "the second pull came from the cache"
    );
    let root = proxy.image_path().to_owned();
    let out = cli_ok(&root, &["invalidate", &img.reference()]);
    assert!(out.contains("invalidated"), "{out}");
    let r = proxy.get_manifest(route, &img.repo, "v1");
    ociregistry_e2e::proxy::check_manifest_response(&r, &img.manifest, "after invalidate");
    assert_eq!(
        up.count_requests("GET", &path),
        seeded + 2,
        "the pull after invalidate asked the upstream"
    );
    assert_eq!(proxy.get_manifest(route, &img.repo, "v1").status, 200);
    assert_eq!(
        up.count_requests("GET", &path),
        seeded + 2,
        "and then it is cached again"
    );

    let (ok, _, err) = cli(
        &root,
        &["invalidate", &format!("{}/{}:nope", up.host(), img.repo)],
    );
    assert!(!ok && err.contains("not cached"), "{err}");
    let (ok, _, err) = cli(&root, &["invalidate", "no-registry"]);
    assert!(!ok && err.contains("REGISTRY/REPOSITORY:TAG"), "{err}");
}

const TOKEN: &str = "e2e-admin-token-0123456789";

fn admin(
    addr: &str,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> raw::RawResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    raw::request(addr, method, target, &headers, body.map(str::as_bytes))
        .unwrap_or_else(|e| panic!("{method} {addr}{target}: {e}"))
}

fn body_json(r: &raw::RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_str()))
}

#[test]
fn admin_api_needs_its_token_is_never_on_the_pull_port_and_stops_the_server() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-admin", "v1", ImageKind::small_oci());
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let mut proxy = Proxy::builder()
        .upstream(&up)
        .env("E2E_ADMIN_TOKEN", TOKEN)
        .config_line(&format!(
            "admin:\n  address: \"{admin_addr}\"\n  tokenFromEnv: E2E_ADMIN_TOKEN"
        ))
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    let route = Route::Ns(&up.host());
    proxy.pull_and_verify(route, &img);
    assert_image_cached(proxy.image_path(), &img);

    // Refused without the token, or with a wrong one.
    for token in [None, Some("e2e-admin-token-0123456780"), Some("")] {
        for (method, target, body) in [
            ("GET", "/admin/v1/images", None),
            ("POST", "/admin/v1/prune", Some(r#"{"pattern":"."}"#)),
            (
                "POST",
                "/admin/v1/invalidate",
                Some(r#"{"reference":"x/y:z"}"#),
            ),
            ("POST", "/admin/v1/stop", Some("{}")),
        ] {
            let r = admin(&admin_addr, method, target, token, body);
            assert_eq!(
                r.status,
                401,
                "{method} {target} with {token:?}: {}",
                r.body_str()
            );
            ociregistry_e2e::assert_oci_error(&r.body, "UNAUTHORIZED", target);
            assert!(
                r.header("WWW-Authenticate")
                    .is_some_and(|h| h.starts_with("Bearer"))
            );
        }
    }
    assert!(proxy.is_running());
    assert!(manifest_path(proxy.image_path(), &img.manifest.digest).is_file());
    assert!(!proxy.log().contains(TOKEN), "the token was logged");

    // Never on the pull port.
    for (method, target) in [
        ("GET", "/admin/v1/images"),
        ("POST", "/admin/v1/stop"),
        ("POST", "/admin/v1/prune"),
        ("GET", "/admin/v1/images?pattern=."),
    ] {
        let auth = format!("Bearer {TOKEN}");
        let r = proxy.raw(method, target, &[("Authorization", &auth)]);
        assert_eq!(
            r.status,
            404,
            "{method} {target} on the pull port: {}",
            r.body_str()
        );
        ociregistry_e2e::assert_oci_error(&r.body, "NAME_UNKNOWN", target);
    }
    assert!(proxy.is_running());

    // With the token: list (last pull flushed on demand), dry-run prune, invalidate.
    let r = admin(
        &admin_addr,
        "GET",
        &format!("/admin/v1/images?pattern={}", img.repo.replace('/', "%2F")),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v = body_json(&r);
    let images = v["images"].as_array().unwrap();
    assert_eq!(refs(images), BTreeSet::from([img.reference()]));
    assert!(images[0]["lastPulled"].is_string(), "{v}");
    assert_eq!(images[0]["size"].as_u64(), Some(image_bytes(&img)));

    let r = admin(
        &admin_addr,
        "POST",
        "/admin/v1/prune",
        Some(TOKEN),
        Some(r#"{"pattern":".","dryRun":true,"grace":"0s"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let plan = body_json(&r);
    assert_eq!(plan["dryRun"], true);
    assert_eq!(strings(&plan["tags"]), BTreeSet::from([img.reference()]));
    assert_eq!(strings(&plan["blobs"]).len(), img.blobs().len());
    assert!(manifest_path(proxy.image_path(), &img.manifest.digest).is_file());
    let r = admin(
        &admin_addr,
        "POST",
        "/admin/v1/prune",
        Some(TOKEN),
        Some("{}"),
    );
    assert_eq!(r.status, 400, "no criterion: {}", r.body_str());
    let r = admin(
        &admin_addr,
        "POST",
        "/admin/v1/prune",
        Some(TOKEN),
        Some(r#"{"patern":"."}"#),
    );
    assert_eq!(r.status, 400, "unknown field: {}", r.body_str());

    let tag_path = format!("/{}/manifests/v1", img.repo);
    let fetched = up.count_requests("GET", &tag_path);
    let body = format!(r#"{{"reference":"{}"}}"#, img.reference());
    let r = admin(
        &admin_addr,
        "POST",
        "/admin/v1/invalidate",
        Some(TOKEN),
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(proxy.get_manifest(route, &img.repo, "v1").status, 200);
    assert_eq!(
        up.count_requests("GET", &tag_path),
        fetched + 1,
        "re-fetched after invalidate"
    );
    let r = admin(
        &admin_addr,
        "POST",
        "/admin/v1/invalidate",
        Some(TOKEN),
        Some(r#"{"reference":"127.0.0.1:1/none/such:tag"}"#),
    );
    assert_eq!(r.status, 404, "{}", r.body_str());

    // Stop: the same graceful path as SIGTERM, exit 0.
    let r = admin(&admin_addr, "POST", "/admin/v1/stop", Some(TOKEN), None);
    assert_eq!(r.status, 202, "{}", r.body_str());
    let status = wait_for(
        "the server to stop",
        SECS(20),
        Duration::from_millis(50),
        || proxy.try_exited(),
    );
    assert!(status.success(), "exit status {status}: {}", proxy.log());
    assert!(proxy.log().contains("stop requested through the admin API"));
}

#[test]
fn admin_api_refuses_a_non_loopback_address_without_a_token() {
    let failed = Proxy::builder()
        .config_line("admin:\n  address: \"0.0.0.0:0\"")
        .start_expect_exit(SECS(20));
    assert!(failed.status.is_some_and(|s| !s.success()), "{failed:?}");
    assert!(
        failed.stderr.contains("admin.address") && failed.stderr.contains("loopback"),
        "{}",
        failed.stderr
    );
    // Off by default; on with --admin-address on loopback without a token.
    let port = free_port();
    let mut proxy = Proxy::builder()
        .serve_arg("--admin-address")
        .serve_arg(&format!("127.0.0.1:{port}"))
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    let r = admin(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/admin/v1/images",
        None,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(proxy.is_running());
}

#[test]
fn background_pruning_from_prune_config() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let keep = images::seed_in(&up, "inv-bg-keep", "v1", ImageKind::small_oci());
    let drop = images::seed_in(&up, "inv-bg-drop", "v1", ImageKind::small_oci());
    let cache_dir = tempfile::tempdir().unwrap();
    let root = cache_dir.path().join("cache");
    let route = Route::Ns(&up.host());
    let config = |dry_run: bool| {
        format!(
            "pruneConfig:\n  enabled: true\n  type: pattern\n  expr: 'inv-bg-drop/'\n  frequency: 1s\n  count: 5\n  dryRun: {dry_run}\npruneGrace: 0s"
        )
    };
    {
        // dryRun: logged, nothing removed.
        let mut proxy = Proxy::builder()
            .upstream(&up)
            .image_path(&root)
            .config_line(&config(true))
            .start();
        for img in [&keep, &drop] {
            proxy.pull_and_verify(route, img);
            assert_image_cached(&root, img);
        }
        wait_for(
            "a dry-run prune",
            SECS(20),
            Duration::from_millis(100),
            || proxy.log().contains("would prune").then_some(()),
        );
        assert_eq!(list(&root).len(), 2);
        proxy.stop();
    }
    let proxy = Proxy::builder()
        .upstream(&up)
        .image_path(&root)
        .config_line(&config(false))
        .start();
    wait_for(
        "the background prune",
        SECS(20),
        Duration::from_millis(100),
        || {
            let gone = drop
                .blobs()
                .iter()
                .all(|b| !blob_path(&root, &b.digest).exists());
            (gone && refs(&list(&root)) == BTreeSet::from([keep.reference()])).then_some(())
        },
    );
    assert!(proxy.log().contains("pruned"), "{}", proxy.log());
    for b in keep.blobs() {
        assert!(blob_path(&root, &b.digest).is_file());
    }
}

/// A proxy for `up` with the admin API on a free loopback port (no token), once it is ready;
/// returns it and the admin address.
fn start_with_admin_api(up: &Upstream) -> (Proxy, String) {
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::builder()
        .upstream(up)
        .serve_arg("--admin-address")
        .serve_arg(&admin_addr)
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    (proxy, admin_addr)
}

/// The inventory lock (`inventory.lock` in the cache) keeps record writers in different
/// processes apart: while another process holds it, the server's flush of last-pull times (the
/// admin listing flushes first) and the `invalidate` verb both wait, say so, and go on once
/// it is released.
#[test]
fn the_server_and_the_verbs_wait_for_the_inventory_lock() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-lock", "v1", ImageKind::small_oci());
    let (proxy, admin_addr) = start_with_admin_api(&up);
    proxy.pull_and_verify(Route::Ns(&up.host()), &img);
    let root = proxy.image_path().to_owned();

    // Another process's hold: the test's own open file of the lock.
    let held = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.join("inventory.lock"))
        .expect("open inventory.lock");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive)
        .expect("take the inventory lock");

    let addr = admin_addr.clone();
    let listing = std::thread::spawn(move || admin(&addr, "GET", "/admin/v1/images", None, None));
    proxy.wait_log(
        "the server waiting for the lock",
        "waiting for the inventory lock",
        SECS(10),
    );
    assert!(
        !listing.is_finished(),
        "the flush went ahead while the lock was held"
    );

    let logs = tempfile::tempdir().expect("log dir");
    let mut cmd = Command::new(ociregistry_bin());
    cmd.arg("--image-path")
        .arg(&root)
        .args(["invalidate", &img.reference()])
        .env_remove("OCIREGISTRY_CONFIG")
        .env("NO_COLOR", "1");
    let mut verb = ChildProc::spawn("invalidate", cmd, logs.path());
    wait_for(
        "invalidate waiting for the lock",
        SECS(10),
        Duration::from_millis(20),
        || {
            verb.stderr()
                .contains("waiting for the inventory lock")
                .then_some(())
        },
    );
    assert!(
        verb.try_exited().is_none(),
        "invalidate went ahead while the lock was held"
    );

    rustix::fs::flock(&held, rustix::fs::FlockOperation::Unlock)
        .expect("release the inventory lock");
    let r = listing.join().expect("listing thread");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let status = wait_for(
        "invalidate to finish",
        SECS(30),
        Duration::from_millis(20),
        || verb.try_exited(),
    );
    assert!(status.success(), "invalidate: {status}\n{}", verb.stderr());
    assert!(verb.stdout().contains("invalidated"), "{}", verb.stdout());
    assert!(
        !refs(&list(&root)).contains(&img.reference()),
        "the tag is gone"
    );
}

/// A pruned manifest is not answered from the server's memory: a pull by digest after an
/// admin-API prune, or after a `prune` run by another process, goes to the upstream again
/// instead of being answered with a manifest whose blobs are gone.
#[test]
fn a_pruned_manifest_is_not_served_from_memory() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let img = images::seed_in(&up, "inv-hot", "v1", ImageKind::small_oci());
    let (proxy, admin_addr) = start_with_admin_api(&up);
    let host = up.host();
    let digest = img.manifest.digest.clone();
    let manifest_gets = |up: &mut Upstream| {
        up.access_log()
            .iter()
            .filter(|l| l.method == "GET" && l.uri.ends_with(&format!("/manifests/{digest}")))
            .count()
    };
    let r = proxy.get_manifest(Route::Ns(&host), &img.repo, &digest);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = proxy.get_manifest(Route::Ns(&host), &img.repo, &digest);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        manifest_gets(&mut up),
        1,
        "the second pull came from the cache"
    );

    let pruned = admin(
        &admin_addr,
        "POST",
        "/admin/v1/prune",
        None,
        Some(r#"{"pattern": ".", "grace": "0s"}"#),
    );
    assert_eq!(pruned.status, 200, "{}", pruned.body_str());
    assert!(
        !manifest_path(proxy.image_path(), &digest).is_file(),
        "pruned from disk: {}",
        pruned.body_str()
    );
    let r = proxy.get_manifest(Route::Ns(&host), &img.repo, &digest);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        manifest_gets(&mut up),
        2,
        "the pruned manifest was answered from memory instead of fetched again"
    );

    // The same when the prune runs in another process (the `prune` verb beside the server).
    let r = proxy.get_manifest(Route::Ns(&host), &img.repo, &digest);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(manifest_gets(&mut up), 2, "served from the cache again");
    cli_ok(
        proxy.image_path(),
        &["prune", "--pattern", ".", "--grace", "0s"],
    );
    assert!(!manifest_path(proxy.image_path(), &digest).is_file());
    let r = proxy.get_manifest(Route::Ns(&host), &img.repo, &digest);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        manifest_gets(&mut up),
        3,
        "a manifest pruned by another process was answered from memory"
    );
}
