//! Generated test images: random layers (real tar / tar.gz), written as an OCI image layout,
//! pushed to an [`Upstream`] with real `skopeo`, then described from what the upstream itself
//! serves (manifest bytes, digests, media types, every blob), so tests verify against the
//! upstream's truth.

use crate::media;
use crate::procs::run_with_timeout;
use crate::upstream::Upstream;
use crate::{sha256_digest, sha256_file};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// OCI image manifest with `layers` gzip layers of about `layer_size` bytes each.
    Oci { layers: usize, layer_size: usize },
    /// OCI index with linux/amd64 and linux/arm64 images (two layers each, own content).
    OciIndex,
    /// Docker v2 schema 2 manifest (`skopeo copy --format v2s2`) with `layers` gzip layers.
    DockerV2s2 { layers: usize },
    /// One uncompressed layer of exactly `size` bytes of file content (for the memory test).
    Large { size: u64 },
}

impl ImageKind {
    /// A small multi-layer OCI image (3 layers, a few KiB..64 KiB each).
    pub fn small_oci() -> ImageKind {
        ImageKind::oci(3, 48 * 1024)
    }

    /// An OCI image of `layers` gzip layers of about `layer_size` bytes each.
    pub fn oci(layers: usize, layer_size: usize) -> ImageKind {
        ImageKind::Oci { layers, layer_size }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl BlobInfo {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

#[derive(Debug, Clone)]
pub struct ManifestInfo {
    pub digest: String,
    pub media_type: String,
    /// The manifest exactly as the upstream serves it.
    pub bytes: Vec<u8>,
    /// `os/arch` for a child of an index.
    pub platform: Option<String>,
    /// Config first, then layers (empty for an index).
    pub blobs: Vec<BlobInfo>,
}

impl ManifestInfo {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    pub fn is_index(&self) -> bool {
        self.media_type == media::OCI_INDEX || self.media_type == media::DOCKER_LIST
    }
}

/// What was pushed, as the upstream serves it.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:PORT`
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub kind: ImageKind,
    /// The manifest the tag points at (an index for [`ImageKind::OciIndex`]).
    pub manifest: ManifestInfo,
    /// Per-platform manifests of an index.
    pub children: Vec<ManifestInfo>,
}

impl PushedImage {
    /// Top manifest, then children.
    pub fn manifests(&self) -> Vec<&ManifestInfo> {
        std::iter::once(&self.manifest)
            .chain(self.children.iter())
            .collect()
    }

    /// Every blob of every manifest, deduplicated.
    pub fn blobs(&self) -> Vec<BlobInfo> {
        let mut out: Vec<BlobInfo> = Vec::new();
        for m in self.manifests() {
            for b in &m.blobs {
                if !out.iter().any(|o| o.digest == b.digest) {
                    out.push(b.clone());
                }
            }
        }
        out
    }

    /// The largest blob (the interesting one for concurrency / memory tests).
    pub fn largest_blob(&self) -> BlobInfo {
        self.blobs()
            .into_iter()
            .max_by_key(|b| b.size)
            .expect("image has blobs")
    }

    /// `127.0.0.1:PORT/repo:tag`
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.upstream, self.repo, self.tag)
    }
}

/// A unique repository name for a test, e.g. `e2e/serving/abc123/app`.
pub fn unique_repo(prefix: &str) -> String {
    format!("e2e/{prefix}/{:08x}/app", fastrand::u32(..))
}

// ---------------------------------------------------------------------------------------
// OCI layout writing

struct Layout<'a> {
    dir: &'a Path,
}

impl Layout<'_> {
    fn init(dir: &Path) -> Layout<'_> {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        Layout { dir }
    }

    fn put(&self, bytes: &[u8], media_type: &str) -> Value {
        let digest = sha256_digest(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).expect("write blob");
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    fn put_json(&self, v: &Value, media_type: &str) -> Value {
        self.put(&serde_json::to_vec(v).expect("json"), media_type)
    }

    fn write_index(&self, manifest_desc: &Value, tag: &str) {
        let mut desc = manifest_desc.clone();
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }
}

fn random_bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// A tar of a few files with random content (total about `size`), gzipped (stored blocks:
/// random data does not compress, and it keeps debug builds fast). Returns (gz, diff_id).
fn random_layer(rng: &mut fastrand::Rng, size: usize, tag: &str) -> (Vec<u8>, String) {
    let files = 1 + rng.usize(..3);
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let n = (size / files).max(1) + rng.usize(..1024);
        let data = random_bytes(rng, n);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("e2e/{tag}/file-{i}.bin"), &data[..])
            .expect("tar append");
    }
    let tar_bytes = b.into_inner().expect("tar finish");
    let diff_id = sha256_digest(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(&tar_bytes).expect("gzip");
    (gz.finish().expect("gzip finish"), diff_id)
}

/// Writes an image (config + layers + manifest) into the layout; returns the manifest descriptor.
fn write_image(
    layout: &Layout<'_>,
    rng: &mut fastrand::Rng,
    arch: &str,
    layers: usize,
    layer_size: usize,
) -> Value {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let size = if i == 0 {
            layer_size
        } else {
            (layer_size / 2).max(512) + rng.usize(..4096)
        };
        let (gz, diff_id) = random_layer(rng, size, &format!("{arch}-{i}"));
        layer_descs.push(layout.put(&gz, media::OCI_LAYER_GZIP));
        diff_ids.push(diff_id);
    }
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [format!("E2E_NONCE={:016x}", rng.u64(..))]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_desc = layout.put_json(&config, media::OCI_CONFIG);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    });
    let mut d = layout.put_json(&manifest, media::OCI_MANIFEST);
    d["platform"] = json!({"architecture": arch, "os": "linux"});
    d
}

/// Writes a one-layer image whose layer is an uncompressed tar holding one file of `size`
/// random bytes (streamed from /dev/urandom; never held in memory).
fn write_large_image(layout: &Layout<'_>, rng: &mut fastrand::Rng, size: u64) -> Value {
    let tmp = layout.dir.join("large-layer.tmp");
    {
        let f = std::fs::File::create(&tmp).expect("create large layer");
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        let urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
        b.append_data(
            &mut h,
            "e2e/large.bin",
            std::io::Read::take(std::io::BufReader::with_capacity(1 << 20, urandom), size),
        )
        .expect("tar append large");
        let mut w = b.into_inner().expect("tar finish");
        w.flush().expect("flush");
    }
    let digest = sha256_file(&tmp);
    let len = std::fs::metadata(&tmp).expect("stat").len();
    std::fs::rename(
        &tmp,
        layout
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .expect("rename large layer");
    let layer_desc = json!({"mediaType": media::OCI_LAYER_TAR, "digest": digest, "size": len});
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("E2E_NONCE={:016x}", rng.u64(..))]},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    });
    let config_desc = layout.put_json(&config, media::OCI_CONFIG);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    });
    layout.put_json(&manifest, media::OCI_MANIFEST)
}

/// Generates an image of `kind` as an OCI layout in `dir` with tag `tag`.
pub fn generate_layout(dir: &Path, kind: ImageKind, tag: &str) {
    let mut rng = fastrand::Rng::new();
    let layout = Layout::init(dir);
    let desc = match kind {
        ImageKind::Oci { layers, layer_size } => {
            assert!(layers > 0, "an image needs at least one layer");
            write_image(&layout, &mut rng, "amd64", layers, layer_size)
        }
        ImageKind::DockerV2s2 { layers } => {
            assert!(layers > 0, "an image needs at least one layer");
            write_image(&layout, &mut rng, "amd64", layers, 16 * 1024)
        }
        ImageKind::OciIndex => {
            let amd = write_image(&layout, &mut rng, "amd64", 2, 24 * 1024);
            let arm = write_image(&layout, &mut rng, "arm64", 2, 24 * 1024);
            let index = json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": [amd, arm],
            });
            layout.put_json(&index, media::OCI_INDEX)
        }
        ImageKind::Large { size } => write_large_image(&layout, &mut rng, size),
    };
    let mut d = desc;
    if let Some(o) = d.as_object_mut() {
        o.remove("platform");
    }
    layout.write_index(&d, tag);
}

/// Seeds the three kinds every serving test pulls: an OCI image (tag `oci`), a two-platform
/// OCI index (`index`) and a Docker v2 schema 2 image (`v2s2`).
pub fn seed_all(up: &Upstream, repo: &str) -> Vec<PushedImage> {
    vec![
        seed(up, repo, "oci", ImageKind::small_oci()),
        seed(up, repo, "index", ImageKind::OciIndex),
        seed(up, repo, "v2s2", ImageKind::DockerV2s2 { layers: 2 }),
    ]
}

/// [`seed`] into a fresh [`unique_repo`] of `prefix` (the repo is in [`PushedImage::repo`]).
pub fn seed_in(up: &Upstream, prefix: &str, tag: &str, kind: ImageKind) -> PushedImage {
    seed(up, &unique_repo(prefix), tag, kind)
}

/// Generates an image and pushes it to `up` as `repo:tag` with skopeo; returns what the
/// upstream now serves.
pub fn seed(up: &Upstream, repo: &str, tag: &str, kind: ImageKind) -> PushedImage {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_layout(dir.path(), kind, tag);
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some(c) = up.skopeo_creds() {
        cmd.args(["--dest-creds", &c]);
    }
    match kind {
        ImageKind::OciIndex => {
            cmd.arg("--all");
        }
        ImageKind::DockerV2s2 { .. } => {
            cmd.args(["--format", "v2s2"]);
        }
        _ => {}
    }
    cmd.arg(format!("oci:{}:{tag}", dir.path().display()))
        .arg(format!("docker://{}/{repo}:{tag}", up.host()));
    let timeout = match kind {
        ImageKind::Large { size } => Duration::from_secs(120 + size / (4 << 20)),
        _ => Duration::from_secs(120),
    };
    let (ok, _out, err) = run_with_timeout(cmd, timeout);
    assert!(
        ok,
        "skopeo push of {repo}:{tag} to {} failed: {err}",
        up.host()
    );
    let img = describe(up, repo, tag, kind);
    match kind {
        ImageKind::OciIndex => assert_eq!(img.manifest.media_type, media::OCI_INDEX),
        ImageKind::DockerV2s2 { .. } => {
            assert_eq!(img.manifest.media_type, media::DOCKER_MANIFEST)
        }
        _ => assert_eq!(img.manifest.media_type, media::OCI_MANIFEST),
    }
    img
}

fn fetch_manifest(
    up: &Upstream,
    repo: &str,
    reference: &str,
    platform: Option<String>,
) -> ManifestInfo {
    let accept = media::ALL_MANIFESTS.join(", ");
    let r = up.request(
        "GET",
        repo,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", &accept)],
    );
    assert_eq!(
        r.status,
        200,
        "upstream GET {repo}:{reference}: {}",
        r.body_str()
    );
    let digest = sha256_digest(&r.body);
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(digest.as_str()),
        "upstream digest header"
    );
    let media_type = r
        .header("Content-Type")
        .expect("upstream Content-Type")
        .to_owned();
    let v: Value = serde_json::from_slice(&r.body).expect("manifest json");
    let desc = |d: &Value| BlobInfo {
        digest: d["digest"].as_str().expect("digest").to_owned(),
        size: d["size"].as_u64().expect("size"),
        media_type: d["mediaType"].as_str().unwrap_or_default().to_owned(),
    };
    let mut blobs = Vec::new();
    if v.get("config").is_some() {
        blobs.push(desc(&v["config"]));
        for l in v["layers"].as_array().expect("layers") {
            blobs.push(desc(l));
        }
    }
    ManifestInfo {
        digest,
        media_type,
        bytes: r.body,
        platform,
        blobs,
    }
}

/// Reads `repo:tag` back from the upstream (and its children if it is an index).
pub fn describe(up: &Upstream, repo: &str, tag: &str, kind: ImageKind) -> PushedImage {
    let manifest = fetch_manifest(up, repo, tag, None);
    let mut children = Vec::new();
    if manifest.is_index() {
        let v: Value = serde_json::from_slice(&manifest.bytes).expect("index json");
        for m in v["manifests"].as_array().expect("manifests") {
            let p = &m["platform"];
            let platform = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or("?"),
                p["architecture"].as_str().unwrap_or("?")
            );
            children.push(fetch_manifest(
                up,
                repo,
                m["digest"].as_str().expect("digest"),
                Some(platform),
            ));
        }
    }
    PushedImage {
        upstream: up.host(),
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        kind,
        manifest,
        children,
    }
}
