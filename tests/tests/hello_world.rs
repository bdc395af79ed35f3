//! Issue 13 item 3: the hello-world image built into the binary. With no upstream that
//! answers, skopeo pulls `hello-world:latest` for linux/amd64 and linux/arm64 and every digest
//! checks out (the amd64 `/hello` is run); a request that names its upstream (`?ns=`,
//! in-path) goes there instead, and so does every request with `helloWorld: false`.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::procs::run_with_timeout;
use ociregistry_e2e::proxy::{RegistryEntry, Route, check_manifest_response};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    Proxy, assert_oci_error, free_port, media, require_tools, require_upstream_tools,
    sha256_digest, skopeo, tool_available,
};

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes));
    })
}

/// A proxy whose default registry (and only configured one) is a loopback port where nothing
/// listens: any request that reaches an upstream fails.
fn proxy_with_dead_upstream(extra: &[&str]) -> (Proxy, String) {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut b = Proxy::builder()
        .registry(RegistryEntry::plain(&dead))
        .default_ns(&dead)
        .config_line("pullTimeout: 5s");
    for l in extra {
        b = b.config_line(l);
    }
    (b.start(), dead)
}

/// Reads blob `digest` of an OCI layout and checks that it hashes to its name.
fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} not in the layout: {e}"));
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "layout blob hashes to its name"
    );
    bytes
}

/// `skopeo --override-arch ARCH copy docker://REF oci:DIR`.
fn skopeo_to_oci(reference: &str, arch: &str, dir: &Path) -> Result<(), String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--override-os", "linux", "--override-arch", arch])
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}", dir.display()));
    let (ok, _out, err) = run_with_timeout(cmd, Duration::from_secs(60));
    if ok { Ok(()) } else { Err(err) }
}

/// The one file of a gzip'd tar layer: (path, mode, bytes).
fn only_file(layer: &[u8]) -> (String, u32, Vec<u8>) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let mut entries = archive.entries().expect("tar entries");
    let mut e = entries.next().expect("one entry").expect("entry");
    let path = e.path().expect("path").to_string_lossy().into_owned();
    let mode = e.header().mode().expect("mode");
    let mut bytes = Vec::new();
    e.read_to_end(&mut bytes).expect("read entry");
    assert!(entries.next().is_none(), "the layer holds one file");
    (path, mode, bytes)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// Runs `exe` (through `runner` if given) and returns what it printed.
fn run(exe: &[u8], runner: Option<&str>) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hello");
    std::fs::write(&path, exe).expect("write /hello");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = match runner {
        Some(r) => {
            let mut c = Command::new(r);
            c.arg(&path);
            c
        }
        None => Command::new(&path),
    };
    let (ok, out, err) = run_with_timeout(
        {
            cmd.env_clear();
            cmd
        },
        Duration::from_secs(20),
    );
    assert!(ok, "/hello failed: {err}");
    out
}

#[test]
fn hello_world_pulls_for_both_platforms_with_no_upstream() {
    if !require_tools(&["skopeo"]) {
        return;
    }
    let (proxy, _dead) = proxy_with_dead_upstream(&[]);
    let reference = format!("{}/hello-world:latest", proxy.host());

    // The tag names the index, as skopeo sees it.
    let index_bytes = skopeo::inspect_raw(&reference, None)
        .unwrap_or_else(|e| panic!("skopeo inspect --raw {reference}: {e}"));
    let index = json(&index_bytes);
    assert_eq!(index["mediaType"], media::OCI_INDEX);
    let entries = index["manifests"].as_array().expect("manifests");
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["platform"]["os"].as_str().unwrap_or(""),
                e["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    for (arch, elf_machine) in [("amd64", 62u16), ("arm64", 183)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path().join("hw");
        skopeo_to_oci(&reference, arch, &layout)
            .unwrap_or_else(|e| panic!("skopeo copy {reference} ({arch}): {e}"));
        let entry = entries
            .iter()
            .find(|e| e["platform"]["architecture"] == arch)
            .expect("index entry");
        // skopeo wrote the platform's manifest, the one the index names, byte for byte.
        let layout_index = json(&std::fs::read(layout.join("index.json")).expect("index.json"));
        let written = &layout_index["manifests"][0];
        assert_eq!(written["digest"], entry["digest"], "{arch} manifest digest");
        let manifest_bytes = layout_blob(&layout, entry["digest"].as_str().expect("digest"));
        assert_eq!(
            manifest_bytes.len() as u64,
            entry["size"].as_u64().expect("size")
        );
        let manifest = json(&manifest_bytes);
        let config_bytes = layout_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        let config = json(&config_bytes);
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/hello"]));
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1);
        let layer = layout_blob(&layout, layers[0]["digest"].as_str().unwrap());
        assert_eq!(layer.len() as u64, layers[0]["size"].as_u64().unwrap());
        assert_eq!(
            config["rootfs"]["diff_ids"][0].as_str(),
            Some(sha256_digest(&gunzip(&layer)).as_str()),
            "{arch}: diff_id is the sha256 of the uncompressed layer"
        );
        let (path, mode, exe) = only_file(&layer);
        assert_eq!((path.as_str(), mode & 0o7777), ("hello", 0o755));
        assert_eq!(&exe[..4], b"\x7fELF", "{arch}: an ELF executable");
        assert_eq!(
            u16::from_le_bytes([exe[18], exe[19]]),
            elf_machine,
            "{arch}"
        );
        let runner = match arch {
            "amd64" if cfg!(target_arch = "x86_64") => Some(None),
            "arm64" if cfg!(target_arch = "aarch64") => Some(None),
            // Not required: run it under qemu when this machine happens to have it.
            "arm64" if tool_available("qemu-aarch64-static") => Some(Some("qemu-aarch64-static")),
            _ => None,
        };
        if let Some(runner) = runner {
            let out = run(&exe, runner);
            assert!(
                out.starts_with("Hello from ociregistry!\n"),
                "{arch} /hello printed {out:?}"
            );
        }
    }

    // The same by hand, under both names, with the headers clients rely on.
    let index_digest = sha256_digest(&index_bytes);
    for repo in ["hello-world", "library/hello-world"] {
        for reference in ["latest", index_digest.as_str()] {
            let r = proxy.get_manifest(Route::Default, repo, reference);
            assert_eq!(r.status, 200, "{repo}:{reference}: {}", r.body_str());
            assert_eq!(r.body, index_bytes);
            assert_eq!(r.header("Content-Type"), Some(media::OCI_INDEX));
            assert_eq!(
                r.header("Docker-Content-Digest"),
                Some(index_digest.as_str())
            );
            let len = index_bytes.len().to_string();
            assert_eq!(r.header("Content-Length"), Some(len.as_str()));
            let h = proxy.head(&Route::Default.target(repo, "manifests", reference), &[]);
            assert_eq!(h.status, 200);
            assert!(h.body.is_empty());
            assert_eq!(
                h.header("Docker-Content-Digest"),
                Some(index_digest.as_str())
            );
            assert_eq!(h.header("Content-Length"), Some(len.as_str()));
        }
    }
    let amd64: &serde_json::Value = &entries[0];
    let m = proxy.get_manifest(
        Route::Default,
        "hello-world",
        amd64["digest"].as_str().unwrap(),
    );
    assert_eq!(m.status, 200);
    assert_eq!(m.header("Content-Type"), Some(media::OCI_MANIFEST));
    let layer = &json(&m.body)["layers"][0];
    let layer_digest = layer["digest"].as_str().unwrap();
    let full = proxy.get_blob(Route::Default, "hello-world", layer_digest, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(sha256_digest(&full.body), layer_digest);
    assert_eq!(full.header("Docker-Content-Digest"), Some(layer_digest));
    let part = proxy.get_blob(
        Route::Default,
        "hello-world",
        layer_digest,
        &[("Range", "bytes=10-19")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, full.body[10..20]);
    let total = full.body.len();
    assert_eq!(
        part.header("Content-Range"),
        Some(format!("bytes 10-19/{total}").as_str())
    );
    let tags = proxy.get("/v2/hello-world/tags/list", &[]);
    assert_eq!(tags.status, 200);
    assert_eq!(json(&tags.body)["tags"], serde_json::json!(["latest"]));

    // Only what the image has: another tag or digest is unknown (and not asked upstream).
    let r = proxy.get_manifest(Route::Default, "hello-world", "linux");
    assert_eq!(r.status, 404);
    assert_oci_error(&r.body, "MANIFEST_UNKNOWN", "unknown tag of hello-world");
    let other = sha256_digest(b"not in the image");
    let r = proxy.get_blob(Route::Default, "hello-world", &other, &[]);
    assert_eq!(r.status, 404);
    assert_oci_error(&r.body, "BLOB_UNKNOWN", "unknown blob of hello-world");
    // Other names still go to the (dead) default upstream.
    let r = proxy.get_manifest(Route::Default, "library/alpine", "latest");
    assert!(r.status >= 500, "alpine with no upstream: {}", r.status);
}

#[test]
fn a_named_upstream_gets_the_request_and_default_gets_the_built_in_image() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::anonymous();
    let host = up.host();
    let theirs = images::seed(&up, "library/hello-world", "latest", ImageKind::small_oci());
    let proxy = Proxy::builder().upstream(&up).default_ns(&host).start();
    let before = up.count_requests("", "hello-world");

    // Default registry: the built-in index, and the upstream is not asked.
    let ours = proxy.get_manifest(Route::Default, "library/hello-world", "latest");
    assert_eq!(ours.status, 200, "{}", ours.body_str());
    assert_eq!(ours.header("Content-Type"), Some(media::OCI_INDEX));
    assert_ne!(sha256_digest(&ours.body), theirs.manifest.digest);
    assert_eq!(up.count_requests("", "hello-world"), before);

    // `?ns=` and in-path: the upstream's own image.
    for route in [Route::Ns(&host), Route::InPath(&host)] {
        let r = proxy.get_manifest(route, "library/hello-world", "latest");
        check_manifest_response(&r, &theirs.manifest, &format!("{route:?}"));
    }
    proxy.pull_and_verify(Route::Ns(&host), &theirs);
    assert!(up.count_requests("", "hello-world") > before);
}

#[test]
fn hello_world_false_sends_it_to_the_default_upstream() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let theirs = images::seed(&up, "library/hello-world", "latest", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .config_line("helloWorld: false")
        .start();
    proxy.pull_and_verify(Route::Default, &theirs);
    skopeo::pull_and_verify(
        &format!("{}/library/hello-world:latest", proxy.host()),
        &theirs,
        " with helloWorld: false",
    );

    // And with no upstream at all, nothing is served.
    let (dead_proxy, _dead) = proxy_with_dead_upstream(&["helloWorld: false"]);
    let r = dead_proxy.get_manifest(Route::Default, "hello-world", "latest");
    assert!(
        r.status >= 500,
        "helloWorld: false, no upstream: {}",
        r.status
    );
}
