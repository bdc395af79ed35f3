//! Issue 6, item 3: warming the cache. `ociregistry load --image-file F` and
//! `serve --preload-images F` pull every listed image into the cache (for an index: the index
//! plus the chosen platform's manifest and blobs), report the failures, and the exit code
//! says whether all succeeded. The preloaded images are then served with the upstream down.

use ociregistry_e2e::cache::{assert_image_cached, manifest_file, verify_cache};
use ociregistry_e2e::images::{self, ImageKind, ManifestInfo, PushedImage};
use ociregistry_e2e::procs::ChildProc;
use ociregistry_e2e::proxy::{Route, ociregistry_bin};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, path_str, require_upstream_tools, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How a `load` run ended.
#[derive(Debug)]
struct LoadRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl LoadRun {
    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `ociregistry --config-file <config> load <args>` to the end (bounded).
fn load(config: &str, args: &[&str]) -> LoadRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let mut cmd = Command::new(ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&config_path)
        .args(["--log-level", "info", "load"])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let mut proc = ChildProc::spawn("ociregistry-load", cmd, dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = proc.try_exited() {
            break st;
        }
        if Instant::now() >= deadline {
            proc.kill();
            panic!("load did not finish in 120s:\n{}", proc.log_tail(60));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    LoadRun {
        code: status.code(),
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    }
}

/// A config with the cache at `image_path`, `up` as a plain-http registry and defaultNs.
fn config(image_path: &Path, up: &Upstream, extra: &str) -> String {
    format!(
        "imagePath: \"{}\"\ndefaultNs: \"{}\"\n{extra}registries:\n- name: \"{}\"\n  scheme: http\n",
        image_path.display(),
        up.host(),
        up.host()
    )
}

/// The OCI platform of this machine, as the binary defaults to it.
fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("the test images have amd64 and arm64 children only, not {other}"),
    }
}

/// `img` with only the child for `platform`, and the children left out.
fn only_platform(img: &PushedImage, platform: &str) -> (PushedImage, Vec<ManifestInfo>) {
    let mut chosen = img.clone();
    chosen
        .children
        .retain(|c| c.platform.as_deref() == Some(platform));
    assert_eq!(chosen.children.len(), 1, "one {platform} child in {img:?}");
    let others = img
        .children
        .iter()
        .filter(|c| c.platform.as_deref() != Some(platform))
        .cloned()
        .collect();
    (chosen, others)
}

/// Neither the manifest nor any blob of `m` is in the cache.
fn assert_not_cached(image_path: &Path, m: &ManifestInfo) {
    let p = manifest_file(image_path, &m.digest);
    assert!(
        !p.exists(),
        "manifest of {:?} ({}) was cached although its platform was not chosen",
        m.platform,
        m.digest
    );
    for b in &m.blobs {
        assert!(
            !image_path.join("blobs/sha256").join(b.hex()).exists(),
            "blob {} of {:?} was cached although its platform was not chosen",
            b.digest,
            m.platform
        );
    }
}

fn write_list(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("images.txt");
    std::fs::write(&p, text).expect("write image list");
    p
}

#[test]
fn load_caches_listed_images_reports_failures_and_serves_them_offline() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("preload");
    let oci = images::seed(&up, &repo, "oci", ImageKind::small_oci());
    let index = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let v2s2 = images::seed(&up, &repo, "v2s2", ImageKind::DockerV2s2 { layers: 2 });
    let host = up.host();
    let work = tempfile::tempdir().expect("tempdir");
    let image_path = work.path().join("cache");
    // Line numbers matter: the nonexistent tag is on line 9, the malformed line on line 10.
    let list = write_list(
        work.path(),
        &format!(
            "# images to warm\n\
             \n\
             {host}/{repo}:oci\n\
             \x20   # an indented comment\n\
             {host}/{repo}:index   # two platforms; the host's is taken\n\
             \t\n\
             {repo}:v2s2\n\
             {host}/{repo}@{oci_digest}\n\
             {host}/{repo}:nonexistent\n\
             THIS is/not a reference\n",
            oci_digest = oci.manifest.digest
        ),
    );
    let run = load(
        &config(&image_path, &up, ""),
        &["--image-file", path_str(&list)],
    );
    let out = run.output();
    assert_eq!(run.code, Some(1), "exit code with failures:\n{out}");
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .collect();
    assert_eq!(failed.len(), 2, "two failures reported:\n{out}");
    assert!(
        failed
            .iter()
            .any(|l| l.contains(":10") && l.contains("THIS is/not a reference")),
        "the malformed line is named with its number:\n{out}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains(&format!("{host}/{repo}:nonexistent"))
                && l.contains("line 9")
                && l.contains("not found")),
        "the nonexistent tag is named with its reason:\n{out}"
    );
    assert!(
        run.stdout.contains("4 of 5 images cached") && run.stdout.contains("2 failed"),
        "summary:\n{out}"
    );

    // Everything else is in the cache, verified; the index has only the host's platform.
    assert_image_cached(&image_path, &oci);
    assert_image_cached(&image_path, &v2s2);
    let (chosen, others) = only_platform(&index, host_platform());
    assert_image_cached(&image_path, &chosen);
    for o in &others {
        assert_not_cached(&image_path, o);
    }
    let (blobs, manifests) = verify_cache(&image_path);
    let want_blobs = oci.blobs().len() + v2s2.blobs().len() + chosen.blobs().len();
    assert_eq!(blobs, want_blobs, "blob files in the cache");
    assert_eq!(manifests, 4, "manifest files: oci, v2s2, index, one child");

    // A second load of the same (valid) images finds them cached: nothing more upstream.
    let before = up.total_requests();
    let list2 = work.path().join("again.txt");
    std::fs::write(&list2, format!("{host}/{repo}@{}\n", oci.manifest.digest)).unwrap();
    let again = load(
        &config(&image_path, &up, ""),
        &["--image-file", path_str(&list2)],
    );
    assert_eq!(again.code, Some(0), "{}", again.output());
    assert!(
        again.stdout.contains("0 blobs fetched")
            && again
                .stdout
                .contains(&format!("{} blobs already cached", oci.blobs().len())),
        "{}",
        again.output()
    );
    assert_eq!(up.total_requests(), before, "a cached digest went upstream");

    // With the upstream stopped, a proxy on that image path serves them all from cache.
    up.stop();
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&host)
        .image_path(&image_path)
        .start();
    for img in [&oci, &v2s2, &chosen] {
        proxy.pull_and_verify(Route::InPath(&host), img);
    }
    proxy.pull_and_verify(Route::Default, &v2s2);
    for o in &others {
        let r = proxy.get_manifest(Route::InPath(&host), &repo, &o.digest);
        assert_ne!(
            r.status, 200,
            "the unchosen platform cannot be served with the upstream down"
        );
    }
    verify_cache(&image_path);
}

#[test]
fn platform_flag_and_config_keys_choose_the_children() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("preload-platform");
    let index = images::seed(&up, &repo, "multi", ImageKind::OciIndex);
    let host = up.host();
    let work = tempfile::tempdir().expect("tempdir");
    let list = write_list(work.path(), &format!("{host}/{repo}:multi\n"));
    let (arm, arm_others) = only_platform(&index, "linux/arm64");
    let (amd, _) = only_platform(&index, "linux/amd64");

    // --platform linux/arm64: the arm64 child only.
    let cache1 = work.path().join("arm");
    let run = load(
        &config(&cache1, &up, ""),
        &["--image-file", path_str(&list), "--platform", "linux/arm64"],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_image_cached(&cache1, &arm);
    for o in &arm_others {
        assert_not_cached(&cache1, o);
    }

    // imageFile and arch from the config, plus a second --platform: both children.
    let cache2 = work.path().join("both");
    let extra = format!("imageFile: \"{}\"\narch: arm64\n", list.display());
    let run = load(&config(&cache2, &up, &extra), &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_image_cached(&cache2, &arm);
    assert_not_cached(&cache2, &amd.children[0]);
    let run = load(
        &config(&cache2, &up, &extra),
        &["--platform", "linux/arm64", "--platform", "linux/amd64"],
    );
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_image_cached(&cache2, &index);

    // A platform the index lacks fails the image, naming what it has.
    let cache3 = work.path().join("none");
    let run = load(
        &config(&cache3, &up, ""),
        &["--image-file", path_str(&list), "--platform", "linux/s390x"],
    );
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert!(
        run.stdout.contains("no manifest for linux/s390x")
            && run.stdout.contains("linux/amd64")
            && run.stdout.contains("linux/arm64"),
        "{}",
        run.output()
    );
    // Bad flags and a missing list are clear one-line errors.
    let run = load(
        &config(&cache3, &up, ""),
        &["--image-file", "/nonexistent/list"],
    );
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert!(run.stderr.contains("/nonexistent/list"), "{}", run.output());
    let run = load(
        &config(&cache3, &up, ""),
        &["--image-file", path_str(&list), "--platform", "amd64"],
    );
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert!(run.stderr.contains("os/arch"), "{}", run.output());
}

/// A registry whose credential comes from a provider plugin (the bundled `file` provider
/// against an htpasswd upstream): `load` starts providers as `serve` does.
#[test]
fn load_uses_provider_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::htpasswd("preloader", "s3cret-preload-pass");
    let repo = images::unique_repo("preload-auth");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let work = tempfile::tempdir().expect("tempdir");
    let secret = work.path().join("registry-secret");
    std::fs::write(&secret, "preloader:s3cret-preload-pass\n").unwrap();
    let list = write_list(work.path(), &format!("{}/{repo}:v1\n", up.host()));
    let image_path = work.path().join("cache");
    let bin_dir = ociregistry_bin()
        .parent()
        .expect("binary dir")
        .to_path_buf();
    let cfg = format!(
        "imagePath: \"{}\"\npluginDir: \"{}\"\nregistries:\n- name: \"{}\"\n  scheme: http\n  auth: {{token: {{provider: file, providerOpts: \"path={}\"}}}}\n",
        image_path.display(),
        bin_dir.display(),
        up.host(),
        secret.display()
    );
    let run = load(&cfg, &["--image-file", path_str(&list)]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_image_cached(&image_path, &img);
    assert!(
        !run.output().contains("s3cret-preload-pass"),
        "the secret was printed"
    );
}

#[test]
fn serve_preloads_in_the_background_while_serving() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let repo = images::unique_repo("preload-serve");
    let oci = images::seed(&up, &repo, "oci", ImageKind::oci(4, 256 * 1024));
    let index = images::seed(&up, &repo, "index", ImageKind::OciIndex);
    let host = up.host();
    let work = tempfile::tempdir().expect("tempdir");
    let list = write_list(
        work.path(),
        &format!("# warm\n{host}/{repo}:oci\n{host}/{repo}:index\n"),
    );
    let before: Vec<usize> = oci
        .blobs()
        .iter()
        .map(|b| up.count_requests("GET", &format!("/v2/{repo}/blobs/{}", b.digest)))
        .collect();
    // `preloadImages` and `arch` from the config file.
    let proxy = Proxy::builder()
        .registry(RegistryEntry::for_upstream(&up))
        .config_line(&format!("preloadImages: \"{}\"", list.display()))
        .config_line("arch: arm64")
        .log_level("info")
        .start();
    // It serves while the preload runs: the API answers and a client pulls the same image
    // the preload is fetching.
    let r = proxy.get("/v2/", &[]);
    assert_eq!(r.status, 200);
    proxy.pull_and_verify(Route::InPath(&host), &oci);
    let summary = wait_for(
        "the preload summary in the log",
        Duration::from_secs(90),
        Duration::from_millis(50),
        || {
            proxy
                .log()
                .lines()
                .find(|l| l.contains("preload finished"))
                .map(str::to_owned)
        },
    );
    assert!(
        summary.contains("2 of 2 images cached") && summary.contains("0 failed"),
        "{summary}"
    );
    let (arm, others) = only_platform(&index, "linux/arm64");
    assert_image_cached(proxy.image_path(), &oci);
    assert_image_cached(proxy.image_path(), &arm);
    for o in &others {
        assert_not_cached(proxy.image_path(), o);
    }
    verify_cache(proxy.image_path());
    // The client and the preload shared one upstream fetch per blob.
    for (b, n0) in oci.blobs().iter().zip(before) {
        let n = up.count_requests("GET", &format!("/v2/{repo}/blobs/{}", b.digest));
        assert_eq!(n - n0, 1, "upstream GETs of blob {}", b.digest);
    }
    // The preloaded platform is served with the upstream down.
    up.stop();
    proxy.pull_and_verify(Route::InPath(&host), &arm);
}

#[test]
fn serve_refuses_an_unreadable_preload_list() {
    let failed = Proxy::builder()
        .serve_arg("--preload-images")
        .serve_arg("/nonexistent/preload.txt")
        .start_expect_exit(Duration::from_secs(30));
    assert!(
        failed.status.is_some_and(|s| !s.success()),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("/nonexistent/preload.txt"),
        "{}",
        failed.stderr
    );
}
