//! Issue 13 (items 1 and 2): image archives. Archives made here by real `skopeo` from
//! images on a real `docker-registry` (`oci-archive:` and `docker-archive:`), imported with
//! `ociregistry load --archive`, then pulled through the server by skopeo with zero
//! upstream requests and every digest checked; a corrupted archive is refused with nothing
//! visible; `export` -> wipe -> `load --archive` serves the same digests with the upstream
//! gone (also past `tagTtl`, stale-if-error); `--since` exports only recent images.

use ociregistry_e2e::cache::{manifest_file, tmp_files, verify_cache};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::procs::run_with_timeout;
use ociregistry_e2e::proxy::ociregistry_bin;
use ociregistry_e2e::skopeo::{self, PullOptions};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, SECS, require_upstream_tools, sha256_digest, sha256_file};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Runs `ociregistry --image-path P ARGS...`; (success, stdout, stderr).
fn cli(image_path: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(ociregistry_bin());
    cmd.arg("--image-path")
        .arg(image_path)
        .args(args)
        .env_remove("OCIREGISTRY_CONFIG")
        .env("NO_COLOR", "1");
    run_with_timeout(cmd, SECS(120))
}

fn cli_ok(image_path: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(image_path, args);
    assert!(
        ok,
        "ociregistry {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// The references `list` shows, with their digests.
fn listed(image_path: &Path) -> BTreeSet<(String, String)> {
    let out = cli_ok(image_path, &["list", "--output", "json"]);
    let v: Value = serde_json::from_str(&out).expect("list JSON");
    v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["reference"].as_str().unwrap().to_owned(),
                i["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `skopeo copy docker://<upstream image> <dest>` (with `--all` for an index).
fn skopeo_save(img: &PushedImage, dest: &str) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
    if img.manifest.is_index() {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{}", img.reference())).arg(dest);
    let (ok, _, err) = run_with_timeout(cmd, SECS(120));
    assert!(ok, "skopeo copy to {dest}: {err}");
}

fn oci_archive(dir: &Path, name: &str, img: &PushedImage) -> PathBuf {
    let path = dir.join(format!("{name}.tar"));
    skopeo_save(
        img,
        &format!("oci-archive:{}:{}", path.display(), img.reference()),
    );
    path
}

fn docker_archive(dir: &Path, name: &str, img: &PushedImage) -> PathBuf {
    let path = dir.join(format!("{name}.tar"));
    skopeo_save(
        img,
        &format!("docker-archive:{}:{}", path.display(), img.reference()),
    );
    path
}

/// The digest `load` printed for `reference`.
fn printed_digest(out: &str, reference: &str) -> String {
    let prefix = format!("imported {reference} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
        .to_owned()
}

/// Pulls a `docker save` import through the proxy and checks it: the manifest is the one
/// `load` printed, its config is the registry's, its layers are the config's diff_ids (the
/// uncompressed layers), and every blob hashes to its digest.
fn pull_and_verify_built(proxy: &Proxy, img: &PushedImage, built: &str) {
    let dest = tempfile::tempdir().unwrap();
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    skopeo::pull_to_dir(&reference, dest.path(), &PullOptions::default())
        .unwrap_or_else(|e| panic!("skopeo pull {reference}: {e}"));
    let m = std::fs::read(dest.path().join("manifest.json")).unwrap();
    assert_eq!(
        sha256_digest(&m),
        built,
        "served manifest is the one load printed"
    );
    let m: Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config = m["config"]["digest"].as_str().unwrap();
    assert_eq!(
        config, img.manifest.blobs[0].digest,
        "the registry's config"
    );
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(dest.path().join(config.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let layers: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let diff_ids: Vec<&str> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(layers, diff_ids, "layers stored uncompressed, as saved");
    for d in layers.iter().chain([&config]) {
        let p = dest.path().join(d.trim_start_matches("sha256:"));
        assert_eq!(sha256_file(&p), *d, "pulled blob {d}");
    }
}

#[test]
fn docker_save_and_oci_archives_imported_then_pulled_with_zero_upstream_requests() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("archive");
    let oci = images::seed(&up, &repo, "oci", ImageKind::small_oci());
    let index = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let saved = images::seed(&up, &repo, "saved", ImageKind::DockerV2s2 { layers: 2 });
    let work = tempfile::tempdir().unwrap();
    let a = oci_archive(work.path(), "oci", &oci);
    let b = oci_archive(work.path(), "index", &index);
    let c = docker_archive(work.path(), "saved", &saved);
    // gzip-compressed too.
    let gz = work.path().join("oci.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&a).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();

    let cache = work.path().join("cache");
    let out = cli_ok(
        &cache,
        &[
            "load",
            "--archive",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
            gz.to_str().unwrap(),
        ],
    );
    assert!(out.contains("archives: 4 imported, 0 failed"), "{out}");
    // OCI archives: the registry's own manifests, byte for byte.
    assert_eq!(printed_digest(&out, &oci.reference()), oci.manifest.digest);
    assert_eq!(
        printed_digest(&out, &index.reference()),
        index.manifest.digest
    );
    let built = printed_digest(&out, &saved.reference());
    assert!(out.contains("legacy docker save"), "{out}");
    verify_cache(&cache);
    assert!(
        tmp_files(&cache).is_empty(),
        "staged files left: {:?}",
        tmp_files(&cache)
    );

    let before = up.total_requests();
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .image_path(&cache)
        .start();
    for img in [&oci, &index] {
        skopeo::pull_and_verify(
            &format!("{}/{}:{}", proxy.host(), img.repo, img.tag),
            img,
            " after load --archive",
        );
    }
    pull_and_verify_built(&proxy, &saved, &built);
    assert_eq!(
        up.total_requests(),
        before,
        "the imported images were served without asking the upstream"
    );
}

/// Flips one byte in the middle of the largest `blobs/sha256/...` entry of a tar.
fn flip_a_layer_byte(src: &Path, dest: &Path) -> String {
    let mut bytes = std::fs::read(src).unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut best: Option<(String, u64, u64)> = None;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path.contains("blobs/sha256/") && best.as_ref().is_none_or(|b| e.size() > b.2) {
            best = Some((path, e.raw_file_position(), e.size()));
        }
    }
    let (path, at, size) = best.expect("a blob entry");
    bytes[(at + size / 2) as usize] ^= 0x01;
    std::fs::write(dest, bytes).unwrap();
    path
}

#[test]
fn a_corrupted_archive_is_refused_naming_the_entry_and_nothing_is_visible() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("archive-bad");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let work = tempfile::tempdir().unwrap();
    let good = oci_archive(work.path(), "good", &img);
    let bad = work.path().join("bad.tar");
    let entry = flip_a_layer_byte(&good, &bad);
    let cache = work.path().join("cache");
    let (ok, out, err) = cli(&cache, &["load", "--archive", bad.to_str().unwrap()]);
    assert!(!ok, "a corrupt archive was accepted: {out}");
    let entry = entry.trim_start_matches("./");
    assert!(
        out.contains(&format!(
            "FAILED {}: entry {entry}: content hashes to",
            bad.display()
        )),
        "the error names the archive and the entry: {out}\n{err}"
    );
    assert!(out.contains("the archive is corrupt"), "{out}");
    assert!(listed(&cache).is_empty(), "something became visible");
    for sub in ["blobs/sha256", "manifests/sha256"] {
        let n = std::fs::read_dir(cache.join(sub)).map_or(0, |d| d.count());
        assert_eq!(n, 0, "{sub} holds files after a refused import");
    }
    assert!(tmp_files(&cache).is_empty(), "{:?}", tmp_files(&cache));
    // A docker save whose layer was changed is refused too (diff_id check).
    let saved = docker_archive(work.path(), "saved", &img);
    let bad = work.path().join("bad-saved.tar");
    let mut bytes = std::fs::read(&saved).unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    let mut layer = None;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p.ends_with(".tar") && e.size() > 1024 && layer.is_none() {
            layer = Some((p, e.raw_file_position(), e.size()));
        }
    }
    let (lpath, at, size) = layer.expect("a layer tar in the docker archive");
    bytes[(at + size / 2) as usize] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    let (ok, out, _) = cli(&cache, &["load", "--archive", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("content hashes to"), "{out}");
    assert!(
        out.contains(lpath.trim_start_matches("./")) || out.contains("layer.tar"),
        "{out}"
    );
    assert!(listed(&cache).is_empty());
    assert!(tmp_files(&cache).is_empty());
    // The good archive still imports into the same cache.
    cli_ok(&cache, &["load", "--archive", good.to_str().unwrap()]);
    assert_eq!(
        listed(&cache),
        BTreeSet::from([(img.reference(), img.manifest.digest.clone())])
    );
}

#[test]
fn export_wipe_import_serves_the_same_digests_offline_and_since_selects_recent_images() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("archive-rt");
    let imgs = [
        images::seed(&up, &repo, "oci", ImageKind::small_oci()),
        images::seed(&up, &repo, "index", ImageKind::OciIndex),
        images::seed(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 2 }),
    ];
    let old = images::seed(&up, &repo, "old", ImageKind::small_oci());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Cache them by pulling through a server (every platform of the index).
    {
        let mut proxy = Proxy::builder()
            .upstream(&up)
            .default_ns(&up.host())
            .image_path(&cache)
            .start();
        for img in imgs.iter().chain([&old]) {
            skopeo::pull_and_verify(
                &format!("{}/{}:{}", proxy.host(), img.repo, img.tag),
                img,
                "",
            );
        }
        // SIGTERM: last-pull times are written before it exits.
        proxy.stop();
    }
    let before = listed(&cache);
    assert_eq!(before.len(), 4, "{before:?}");

    // `old` was cached 30 days ago and never pulled since (as the cache records it: its
    // manifest's time, no last pull; the tag record's last pull is removed).
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let f = std::fs::File::options()
        .write(true)
        .open(manifest_file(&cache, &old.manifest.digest))
        .unwrap();
    f.set_modified(month_ago).unwrap();
    let record = cache.join(format!(
        "tags/{}/{}/@tags/{}.json",
        up.host(),
        old.repo,
        old.tag
    ));
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    rec.as_object_mut().unwrap().remove("accessedAt");
    std::fs::write(&record, serde_json::to_vec(&rec).unwrap()).unwrap();

    // --since 7d: everything but `old`.
    let recent = work.path().join("recent.tar");
    let out = cli_ok(
        &cache,
        &[
            "export",
            "--output",
            recent.to_str().unwrap(),
            "--pattern",
            &repo,
            "--since",
            "7d",
        ],
    );
    assert!(out.contains(": 3 images,"), "{out}");
    assert!(!out.contains(&old.reference()), "{out}");
    // Everything, by pattern.
    let all = work.path().join("all.tar");
    let out = cli_ok(
        &cache,
        &["export", "-o", all.to_str().unwrap(), "--pattern", "."],
    );
    assert!(out.contains(": 4 images,"), "{out}");
    assert!(!work.path().join("all.tar.tmp").exists());
    // The index.json names each image fully.
    let mut archive = tar::Archive::new(std::fs::File::open(&all).unwrap());
    let mut index = None;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == "index.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            index = Some(serde_json::from_str::<Value>(&s).unwrap());
        }
    }
    let index = index.expect("index.json in the export");
    let names: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let want: BTreeSet<String> = imgs.iter().chain([&old]).map(|i| i.reference()).collect();
    assert_eq!(names, want);
    for m in index["manifests"].as_array().unwrap() {
        let full = m["annotations"]["io.containerd.image.name"]
            .as_str()
            .unwrap();
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap();
        assert!(full.ends_with(&format!(":{tag}")), "{m}");
    }

    // Another machine: no upstream at all.
    up.stop();
    let fresh = work.path().join("fresh");
    let out = cli_ok(&fresh, &["load", "--archive", all.to_str().unwrap()]);
    assert!(
        out.contains("archives: 1 imported, 0 failed; 4 images"),
        "{out}"
    );
    assert_eq!(listed(&fresh), before, "same references, same digests");
    verify_cache(&fresh);
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .image_path(&fresh)
        .config_line("tagTtl: 1s")
        .start();
    for img in imgs.iter().chain([&old]) {
        skopeo::pull_and_verify(
            &format!("{}/{}:{}", proxy.host(), img.repo, img.tag),
            img,
            " from an imported export, upstream gone",
        );
    }
    // Past tagTtl the tag is revalidated; the upstream cannot be reached, so the imported
    // manifest is served (stale-if-error), in bounded time.
    let loaded = SystemTime::now();
    while loaded.elapsed().unwrap_or_default() < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = std::time::Instant::now();
    skopeo::pull_and_verify(
        &format!("{}/{}:{}", proxy.host(), imgs[0].repo, imgs[0].tag),
        &imgs[0],
        " past tagTtl with the upstream gone",
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    proxy.wait_log(
        "stale serve",
        "tag revalidation failed; serving the cached manifest",
        Duration::from_secs(10),
    );

    // The incremental file imports on its own too.
    let inc = work.path().join("inc");
    let out = cli_ok(&inc, &["load", "--archive", recent.to_str().unwrap()]);
    assert!(out.contains("3 images"), "{out}");
    assert!(!listed(&inc).iter().any(|(r, _)| *r == old.reference()));
}

/// `load --archive` and `export` on a `storage: s3` bucket (a real s3s-fs server): what is
/// imported through one machine is served by a replica on the bucket with zero upstream
/// requests; a corrupt archive leaves no object; an export from another machine's view of
/// the bucket holds the same digests.
#[test]
fn archives_on_an_s3_bucket() {
    if !require_upstream_tools() || !ociregistry_e2e::s3::require_s3s_fs() {
        return;
    }
    use ociregistry_e2e::s3::{self, S3Server};
    let mut up = Upstream::anonymous();
    let bucket = S3Server::start("archives");
    let repo = images::unique_repo("archive-s3");
    let img = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let work = tempfile::tempdir().unwrap();
    let good = oci_archive(work.path(), "good", &img);
    let bad = work.path().join("bad.tar");
    flip_a_layer_byte(&good, &bad);
    let config = |name: &str| {
        let path = work.path().join(format!("{name}.yaml"));
        let text = format!(
            "imagePath: {}\n{}\n",
            work.path().join(name).display(),
            bucket.storage_yaml("")
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |cfg: &Path, args: &[&str]| {
        let mut cmd = Command::new(ociregistry_bin());
        cmd.arg("--config-file")
            .arg(cfg)
            .args(args)
            .env("NO_COLOR", "1");
        for (k, v) in S3Server::env() {
            cmd.env(k, v);
        }
        let (ok, out, err) = run_with_timeout(cmd, SECS(120));
        assert!(!format!("{out}{err}").contains(s3::SECRET_KEY));
        (ok, out, err)
    };
    let a = config("a");
    let (ok, out, _) = run(&a, &["load", "--archive", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("the archive is corrupt"), "{out}");
    assert!(
        bucket
            .keys()
            .iter()
            .all(|k| !k.contains("sha256/") && !k.contains("tags/")),
        "objects after a refused import: {:?}",
        bucket.keys()
    );
    let (ok, out, err) = run(&a, &["load", "--archive", good.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(printed_digest(&out, &img.reference()), img.manifest.digest);

    let before = up.total_requests();
    let mut b = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .config_line(&bucket.storage_yaml(""));
    for (k, v) in S3Server::env() {
        b = b.env(k, v);
    }
    let replica = b.start();
    skopeo::pull_and_verify(
        &format!("{}/{}:{}", replica.host(), img.repo, img.tag),
        &img,
        " from the bucket after load --archive",
    );
    assert_eq!(up.total_requests(), before, "served from the bucket");
    up.stop();

    let c = config("c");
    let out_tar = work.path().join("export.tar");
    let (ok, out, err) = run(
        &c,
        &[
            "export",
            "-o",
            out_tar.to_str().unwrap(),
            "--pattern",
            &repo,
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "exported {} {}",
            img.reference(),
            img.manifest.digest
        )),
        "{out}"
    );
    let fresh = work.path().join("fresh");
    let out = cli_ok(&fresh, &["load", "--archive", out_tar.to_str().unwrap()]);
    assert_eq!(printed_digest(&out, &img.reference()), img.manifest.digest);
    verify_cache(&fresh);
}

/// A Docker Hub image stored under `docker.io/library/NAME` (as `load --archive` and
/// `load` name it) is served to a client that asks for `NAME` or `library/NAME` on the
/// default registry, docker.io: one cache key whichever way the name is spelt. Air-gapped:
/// nothing is asked of docker.io (nor resolved).
#[test]
fn a_docker_hub_image_is_found_with_or_without_library() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("hub");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let work = tempfile::tempdir().unwrap();
    let archive = oci_archive(work.path(), "hub", &img);
    let single = repo.replace('/', "-");
    let cache = work.path().join("cache");
    let name = format!("docker.io/library/{single}:v1");
    let out = cli_ok(
        &cache,
        &[
            "load",
            "--archive",
            archive.to_str().unwrap(),
            "--as",
            &name,
        ],
    );
    assert_eq!(printed_digest(&out, &name), img.manifest.digest);
    let proxy = Proxy::builder()
        .default_ns("docker.io")
        .air_gapped(true)
        .image_path(&cache)
        .start();
    for path in [single.clone(), format!("library/{single}")] {
        let r = proxy.get(
            &format!("/v2/{path}/manifests/v1"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(img.manifest.digest.as_str()),
            "{path}"
        );
    }
}
