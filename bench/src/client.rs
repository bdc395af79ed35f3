//! The bench's own registry client: seeds the upstream with plain HTTP uploads and pulls
//! images (manifest by tag, then config and layers over parallel connections, each blob
//! verified by sha256 as it streams in).

use crate::R;
use reqwest::Client;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// What a pulling client accepts.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Upper bound on any one request, body included (a 1 GiB blob over loopback takes seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Seeding uploads blobs in pieces of at most this size.
const CHUNK: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct Desc {
    pub digest: String,
    pub size: u64,
}

/// An image as pushed to the upstream.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub config: Desc,
    pub layers: Vec<Desc>,
}

impl Image {
    pub fn blob_count(&self) -> usize {
        1 + self.layers.len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

fn err(what: &str) -> impl Fn(reqwest::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A client with its own connection pool (one per simulated user).
pub fn new_client(conns: usize) -> R<Client> {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(conns.max(1))
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(err("http client"))
}

pub fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn absolutize(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    }
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

fn location(resp: &reqwest::Response, base: &str) -> R<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| absolutize(base, l))
        .ok_or_else(|| format!("{}: no Location header", resp.url()))
}

async fn expect(resp: reqwest::Response, status: u16, what: &str) -> R<reqwest::Response> {
    if resp.status().as_u16() == status {
        return Ok(resp);
    }
    let st = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{what}: expected {status}, got {st}: {body}"))
}

async fn start_upload(c: &Client, base: &str, repo: &str) -> R<String> {
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(err("start upload"))?;
    let r = expect(r, 202, "POST blobs/uploads/").await?;
    location(&r, base)
}

/// POST an upload, then PUT `?digest=` with the bytes.
async fn push_bytes(c: &Client, base: &str, repo: &str, bytes: Vec<u8>) -> R<Desc> {
    let digest = sha256_digest(&bytes);
    let size = bytes.len() as u64;
    let loc = start_upload(c, base, repo).await?;
    let r = c
        .put(with_digest(&loc, &digest))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .map_err(err("PUT blob"))?;
    expect(r, 201, "PUT blob").await?;
    Ok(Desc { digest, size })
}

/// A blob of `size` random bytes (from `seed`); above 64 MiB it goes up in PATCHed pieces so
/// that memory stays bounded.
async fn push_random_blob(c: &Client, base: &str, repo: &str, size: u64, seed: u64) -> R<Desc> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let piece = |rng: &mut fastrand::Rng, n: u64| {
        let mut v = vec![0u8; n as usize];
        rng.fill(&mut v);
        v
    };
    if size <= CHUNK {
        let bytes = piece(&mut rng, size);
        return push_bytes(c, base, repo, bytes).await;
    }
    let mut loc = start_upload(c, base, repo).await?;
    let mut h = Sha256::new();
    let mut off = 0;
    for _ in 0..size.div_ceil(CHUNK) {
        let n = CHUNK.min(size - off);
        let v = piece(&mut rng, n);
        h.update(&v);
        let r = c
            .patch(&loc)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(v)
            .send()
            .await
            .map_err(err("PATCH upload"))?;
        let r = expect(r, 202, "PATCH upload").await?;
        loc = location(&r, base)?;
        off += n;
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    let r = c
        .put(with_digest(&loc, &digest))
        .header(CONTENT_TYPE, "application/octet-stream")
        .send()
        .await
        .map_err(err("PUT upload"))?;
    expect(r, 201, "PUT upload (final)").await?;
    Ok(Desc { digest, size })
}

/// Pushes an OCI image with one random layer per entry of `layer_sizes`, tagged `tag`.
pub async fn push_image(
    c: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    layer_sizes: &[u64],
    seed: u64,
) -> R<Image> {
    let mut layers = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        layers.push(push_random_blob(c, base, repo, size, seed * 1000 + i as u64).await?);
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"bench.seed": seed.to_string()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config = push_bytes(c, base, repo, config_bytes).await?;
    let desc =
        |media: &str, d: &Desc| json!({"mediaType": media, "digest": d.digest, "size": d.size});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let manifest_digest = sha256_digest(&bytes);
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(bytes)
        .send()
        .await
        .map_err(err("PUT manifest"))?;
    expect(r, 201, "PUT manifest").await?;
    Ok(Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest_digest,
        config,
        layers,
    })
}

/// GETs `url` and streams the body; with `digest`, verifies its sha256. Checks the size.
/// Returns the byte count.
pub async fn fetch_blob(c: &Client, url: &str, digest: Option<&str>, size: u64) -> R<u64> {
    let resp = c.get(url).send().await.map_err(err(url))?;
    let mut resp = expect(resp, 200, url).await?;
    let mut h = digest.map(|_| Sha256::new());
    let mut n = 0u64;
    // Bounded by the body's length and REQUEST_TIMEOUT.
    while let Some(chunk) = resp.chunk().await.map_err(err(url))? {
        n += chunk.len() as u64;
        if let Some(h) = h.as_mut() {
            h.update(&chunk);
        }
        if n > size {
            return Err(format!("{url}: more than the expected {size} bytes"));
        }
    }
    if n != size {
        return Err(format!("{url}: {n} bytes, expected {size}"));
    }
    if let (Some(want), Some(h)) = (digest, h) {
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != want {
            return Err(format!("{url}: sha256 {got}, expected {want}"));
        }
    }
    Ok(n)
}

fn descriptor(v: &Value) -> R<Desc> {
    Ok(Desc {
        digest: v["digest"]
            .as_str()
            .ok_or("descriptor without digest")?
            .to_owned(),
        size: v["size"].as_u64().ok_or("descriptor without size")?,
    })
}

/// Pulls `img` from `base` as a client would: the manifest by tag (checked against the
/// pushed digest), then config and layers over `conns` parallel connections, every blob
/// verified by sha256. Returns the bytes received.
pub async fn pull(c: &Client, base: &str, img: &Image, conns: usize) -> R<u64> {
    let url = format!("{base}/v2/{}/manifests/{}", img.repo, img.tag);
    let r = c
        .get(&url)
        .header(ACCEPT, ACCEPT_MANIFESTS)
        .send()
        .await
        .map_err(err(&url))?;
    let r = expect(r, 200, &url).await?;
    let body = r.bytes().await.map_err(err(&url))?;
    let got = sha256_digest(&body);
    if got != img.manifest_digest {
        return Err(format!(
            "{url}: manifest {got}, expected {}",
            img.manifest_digest
        ));
    }
    let m: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    let mut blobs = vec![descriptor(&m["config"])?];
    for l in m["layers"].as_array().ok_or("manifest without layers")? {
        blobs.push(descriptor(l)?);
    }
    let mut total = body.len() as u64;
    let queue = Arc::new(Mutex::new(VecDeque::from(blobs)));
    let mut workers = Vec::new();
    for _ in 0..conns.max(1) {
        let (c, queue) = (c.clone(), queue.clone());
        let prefix = format!("{base}/v2/{}/blobs/", img.repo);
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(d) = next else { break };
                n += fetch_blob(
                    &c,
                    &format!("{prefix}{}", d.digest),
                    Some(&d.digest),
                    d.size,
                )
                .await?;
            }
            Ok::<u64, String>(n)
        }));
    }
    for w in workers {
        total += w.await.map_err(|e| format!("pull worker: {e}"))??;
    }
    Ok(total)
}

/// `n` clients, each with its own connection pool, released at the same moment by a
/// barrier, each pulling `img`. Returns the wall time from release to the last finish.
pub async fn concurrent_pulls(base: &str, img: &Image, n: usize, conns: usize) -> R<Duration> {
    let bases = vec![base.to_owned(); n];
    let (took, each) = pulls_at_once(&bases, img, conns).await;
    for r in each {
        r?;
    }
    Ok(took)
}

/// One client per entry of `bases` (each with its own connection pool), released at the same
/// moment by a barrier, each pulling `img` from its base. Returns the wall time from release
/// to the last finish, and each client's own time or failure.
pub async fn pulls_at_once(
    bases: &[String],
    img: &Image,
    conns: usize,
) -> (Duration, Vec<R<Duration>>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(bases.len() + 1));
    let mut tasks = Vec::new();
    for base in bases {
        let (barrier, base, img) = (barrier.clone(), base.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            let c = new_client(conns);
            barrier.wait().await;
            let t0 = std::time::Instant::now();
            pull(&c?, &base, &img, conns).await?;
            Ok::<Duration, String>(t0.elapsed())
        }));
    }
    barrier.wait().await;
    let t0 = std::time::Instant::now();
    let mut each = Vec::new();
    for t in tasks {
        each.push(match t.await {
            Ok(r) => r,
            Err(e) => Err(format!("pull task: {e}")),
        });
    }
    (t0.elapsed(), each)
}
