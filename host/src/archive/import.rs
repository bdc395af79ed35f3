//! Importing one archive: read it into staging ([`super::read`]), make sense of it (an OCI
//! layout's `index.json`, which `docker save` 25+ writes too, or a legacy `docker save`'s
//! `manifest.json`), name its images ([`super::names`]), and only once all of it is valid
//! commit it: blobs, then manifests (children before their index), then tag records. An
//! error before that drops every staged file, so nothing half-imported becomes visible; a
//! failure while committing can leave blobs that nothing references (collected by the
//! next prune), never a manifest without its blobs or a tag without its manifest.
//!
//! An index whose children the archive does not hold (an export of an image of which only
//! some platforms were cached, `ctr export --platform`) is stored as it is; the mirror
//! fetches a missing child from the upstream when a client asks for it and the upstream
//! can be reached.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;

use super::docker::{self, LayerDesc, SavedImage};
use super::error::{ArchiveError, Problem};
use super::layout::{CONTAINERD_NAME, IndexJson, REF_NAME};
use super::names::{self, AsName, Carried, ImageName};
use super::read::{self, MAX_META, StagedFile, Staging};
use crate::oci::manifest::{self, Contents};
use crate::oci::media;
use crate::oci::reference::{Digest, Reference};
use crate::store::{AccessRecord, Manifest, Staged, Store, TagKey};

/// Index levels followed below `index.json` (an index of indexes is rare; deeper is refused).
const MAX_DEPTH: usize = 3;

/// How to import.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--as`.
    pub as_name: Option<AsName>,
    /// Registry of names that carry none (`alpine:3.20`): `defaultNs`, docker.io unless set.
    pub default_ns: String,
    /// The largest manifest accepted (`maxManifestSize`).
    pub max_manifest: usize,
}

/// The form an archive had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout (`ctr export`, `skopeo copy oci-archive:`, `ociregistry export`,
    /// `docker save` 25+).
    OciLayout,
    /// A legacy `docker save` (`manifest.json`, layer tars): manifests built here.
    DockerSave,
}

/// One image imported.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// Its names, as stored.
    pub names: Vec<String>,
    /// Its top manifest.
    pub digest: Digest,
    /// The manifest was built here (a legacy `docker save`): not the registry's.
    pub built: bool,
}

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Its form.
    pub format: Format,
    /// The images.
    pub images: Vec<ImportedImage>,
    /// Manifests stored (tops and children).
    pub manifests: usize,
    /// Blobs stored.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Index children the archive did not hold.
    pub missing_children: usize,
}

/// What is to be committed.
#[derive(Debug, Default)]
struct Plan {
    blobs: Vec<(Staged, Digest, u64)>,
    blob_set: HashSet<Digest>,
    manifests: Vec<Manifest>,
    manifest_set: HashSet<Digest>,
    images: Vec<PlannedImage>,
    missing_children: usize,
}

#[derive(Debug)]
struct PlannedImage {
    digest: Digest,
    media_type: String,
    names: Vec<ImageName>,
    built: bool,
}

/// Imports the archive at `path` into `store`; `progress` gets the bytes read from disk.
pub async fn import(
    store: Arc<dyn Store>,
    path: &Path,
    opts: &Options,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Imported, ArchiveError> {
    let archive = path.display().to_string();
    let (staging, plan, format) = {
        let store = store.clone();
        let path = path.to_owned();
        let opts = opts.clone();
        let name = archive.clone();
        tokio::task::spawn_blocking(move || {
            let staging = read::read_archive(&path, &*store, &*progress)?;
            match make_plan(&staging, &name, &opts) {
                Ok((plan, format)) => Ok((staging, plan, format)),
                Err(e) => {
                    staging.discard_blocking();
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| ArchiveError::whole(&archive, Problem::Io(std::io::Error::other(e))))??
    };
    let committed = commit(&*store, &plan).await;
    let staging = Arc::new(staging);
    let _ = tokio::task::spawn_blocking(move || staging.discard_blocking()).await;
    committed.map_err(|p| ArchiveError::whole(&archive, p))?;
    Ok(Imported {
        format,
        images: plan
            .images
            .iter()
            .map(|i| ImportedImage {
                names: i.names.iter().map(ToString::to_string).collect(),
                digest: i.digest.clone(),
                built: i.built,
            })
            .collect(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes: plan.blobs.iter().map(|(_, _, s)| s).sum(),
        missing_children: plan.missing_children,
    })
}

/// Blobs, then manifests, then names.
async fn commit(store: &dyn Store, plan: &Plan) -> Result<(), Problem> {
    for (staged, digest, size) in &plan.blobs {
        store.commit_blob(staged, digest, *size).await?;
    }
    for m in &plan.manifests {
        store.put_manifest(m).await?;
    }
    let now = crate::timefmt::now();
    for img in &plan.images {
        for n in &img.names {
            match &n.reference {
                Reference::Tag(tag) => {
                    let key = TagKey {
                        registry: &n.registry,
                        repo: &n.repo,
                        tag,
                    };
                    store.put_tag(key, &img.media_type, &img.digest).await?;
                }
                Reference::Digest(d) => {
                    let mut rec = store.get_access(d).await?.unwrap_or_default();
                    let repo = format!("{}/{}", n.registry, n.repo);
                    if !rec.repositories.contains(&repo) {
                        rec.repositories.push(repo);
                    }
                    rec.accessed_at = rec.accessed_at.max(now);
                    store.set_access(d, Some(&AccessRecord { ..rec })).await?;
                }
            }
        }
    }
    Ok(())
}

fn make_plan(
    staging: &Staging,
    archive: &str,
    opts: &Options,
) -> Result<(Plan, Format), ArchiveError> {
    let mut plan = Plan::default();
    if let Some(index) = staging.meta.get("index.json") {
        oci_plan(staging, archive, opts, index, &mut plan)?;
        Ok((plan, Format::OciLayout))
    } else if let Some(m) = staging.meta.get("manifest.json") {
        docker_plan(staging, archive, opts, m, &mut plan)?;
        Ok((plan, Format::DockerSave))
    } else {
        Err(ArchiveError::whole(archive, Problem::NotAnArchive))
    }
}

fn blob_entry(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

impl Plan {
    fn add_blob(&mut self, f: &StagedFile) {
        if self.blob_set.insert(f.digest.clone()) {
            self.blobs
                .push((f.staged.clone(), f.digest.clone(), f.size));
        }
    }

    fn add_manifest(&mut self, m: Manifest) {
        if self.manifest_set.insert(m.digest.clone()) {
            self.manifests.push(m);
        }
    }

    /// Plans manifest `digest` of an OCI layout and everything below it; its media type
    /// and, for an image, its config's digest. `None` when it is an index child the
    /// archive does not hold.
    fn walk(
        &mut self,
        staging: &Staging,
        archive: &str,
        opts: &Options,
        digest: &Digest,
        declared: Option<&str>,
        depth: usize,
    ) -> Result<Option<(String, Option<Digest>)>, ArchiveError> {
        let entry = blob_entry(digest);
        let err = |p: Problem| ArchiveError::entry(archive, &entry, p);
        let Some(file) = staging.blobs.get(digest) else {
            if depth == 0 {
                return Err(ArchiveError::entry(
                    archive,
                    "index.json",
                    Problem::Missing {
                        what: "index.json".into(),
                        missing: format!("manifest {digest}"),
                    },
                ));
            }
            self.missing_children += 1;
            return Ok(None);
        };
        if file.size > opts.max_manifest as u64 {
            return Err(err(Problem::TooLarge {
                limit: opts.max_manifest as u64,
            }));
        }
        let bytes = std::fs::read(file.staged.temp()).map_err(|e| err(Problem::Io(e)))?;
        if Digest::of(&bytes) != *digest {
            return Err(err(Problem::DigestMismatch {
                expected: digest.clone(),
                found: Digest::of(&bytes),
            }));
        }
        let media_type =
            media::decide(&bytes, declared).map_err(|e| err(Problem::Manifest(e.to_string())))?;
        let contents = manifest::parse(&media_type, &bytes)
            .map_err(|e| err(Problem::Manifest(e.to_string())))?;
        let mut config = None;
        match contents {
            Contents::Index(entries) => {
                if depth >= MAX_DEPTH {
                    return Err(err(Problem::Manifest(format!(
                        "indexes nested deeper than {MAX_DEPTH} levels"
                    ))));
                }
                for e in &entries {
                    self.walk(staging, archive, opts, &e.digest, None, depth + 1)?;
                }
            }
            Contents::Image(blobs) => {
                for b in &blobs {
                    let Some(f) = staging.blobs.get(&b.digest) else {
                        return Err(err(Problem::Missing {
                            what: format!("manifest {digest}"),
                            missing: format!("blob {}", b.digest),
                        }));
                    };
                    if b.size != 0 && b.size != f.size {
                        return Err(ArchiveError::entry(
                            archive,
                            &blob_entry(&b.digest),
                            Problem::SizeMismatch {
                                size: f.size,
                                expected: b.size,
                                what: format!("manifest {digest}"),
                            },
                        ));
                    }
                    self.add_blob(f);
                }
                config = blobs.first().map(|b| b.digest.clone());
            }
        }
        self.add_manifest(Manifest {
            digest: digest.clone(),
            media_type: media_type.clone(),
            bytes: Bytes::from(bytes),
        });
        Ok(Some((media_type, config)))
    }
}

fn json<T: serde::de::DeserializeOwned>(
    archive: &str,
    entry: &str,
    bytes: &[u8],
) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::entry(archive, entry, Problem::Json(e)))
}

fn oci_plan(
    staging: &Staging,
    archive: &str,
    opts: &Options,
    index: &[u8],
    plan: &mut Plan,
) -> Result<(), ArchiveError> {
    let index: IndexJson = json(archive, "index.json", index)?;
    // `docker save` 25+ names its images in manifest.json too: by config.
    let mut docker_tags: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    if let Some(m) = staging.meta.get("manifest.json") {
        let saved: Vec<SavedImage> = json(archive, "manifest.json", m)?;
        for s in saved {
            if let Some(f) = staging.file(&s.config) {
                docker_tags
                    .entry(f.digest.clone())
                    .or_default()
                    .extend(s.repo_tags.unwrap_or_default());
            }
        }
    }
    // Names by image, in index order.
    let mut order: Vec<(Digest, String)> = Vec::new();
    let mut carried: BTreeMap<Digest, Vec<Carried>> = BTreeMap::new();
    let bad = |p: Problem| ArchiveError::entry(archive, "index.json", p);
    for desc in &index.manifests {
        let digest = Digest::parse(&desc.digest).map_err(|e| {
            bad(Problem::BadName {
                name: desc.digest.clone(),
                reason: e.to_string(),
            })
        })?;
        if let Some(f) = staging.blobs.get(&digest)
            && desc.size != 0
            && desc.size != f.size
        {
            return Err(ArchiveError::entry(
                archive,
                &blob_entry(&digest),
                Problem::SizeMismatch {
                    size: f.size,
                    expected: desc.size,
                    what: "index.json".into(),
                },
            ));
        }
        let Some((media_type, config)) = plan.walk(
            staging,
            archive,
            opts,
            &digest,
            desc.media_type.as_deref(),
            0,
        )?
        else {
            continue;
        };
        let list = carried.entry(digest.clone()).or_default();
        if !order.iter().any(|(d, _)| *d == digest) {
            order.push((digest.clone(), media_type));
        }
        let mut found = Vec::new();
        if let Some(n) = desc.annotations.get(CONTAINERD_NAME) {
            found.push(names::carried(n, &opts.default_ns, false).map_err(bad)?);
        } else if let Some(n) = desc.annotations.get(REF_NAME) {
            found.push(names::carried(n, &opts.default_ns, true).map_err(bad)?);
        } else if let Some(tags) = config.as_ref().and_then(|c| docker_tags.get(c)) {
            for t in tags {
                found.push(
                    names::carried(t, &opts.default_ns, false)
                        .map_err(|p| ArchiveError::entry(archive, "manifest.json", p))?,
                );
            }
        }
        for f in found {
            if !list.contains(&f) {
                list.push(f);
            }
        }
    }
    if order.is_empty() {
        return Err(ArchiveError::whole(archive, Problem::Empty));
    }
    let count = order.len();
    for (digest, media_type) in order {
        let c = carried.remove(&digest).unwrap_or_default();
        let names = names::resolve(&digest, &c, opts.as_name.as_ref(), count)
            .map_err(|p| ArchiveError::entry(archive, "index.json", p))?;
        plan.images.push(PlannedImage {
            digest,
            media_type,
            names,
            built: false,
        });
    }
    Ok(())
}

fn docker_plan(
    staging: &Staging,
    archive: &str,
    opts: &Options,
    manifest_json: &[u8],
    plan: &mut Plan,
) -> Result<(), ArchiveError> {
    let saved: Vec<SavedImage> = json(archive, "manifest.json", manifest_json)?;
    if saved.is_empty() {
        return Err(ArchiveError::whole(archive, Problem::Empty));
    }
    let missing = |what: &str, path: &str| {
        ArchiveError::entry(
            archive,
            "manifest.json",
            Problem::Missing {
                what: what.to_owned(),
                missing: path.to_owned(),
            },
        )
    };
    let count = saved.len();
    for s in &saved {
        let config = staging
            .file(&s.config)
            .ok_or_else(|| missing("an image", &s.config))?;
        let centry = s.config.as_str();
        let cerr = |p: Problem| ArchiveError::entry(archive, centry, p);
        // `<hex>.json` (or `blobs/sha256/<hex>`) names the config's digest.
        let stem = s
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if let Ok(named) = Digest::parse(&format!("sha256:{stem}"))
            && named != config.digest
        {
            return Err(cerr(Problem::DigestMismatch {
                expected: named,
                found: config.digest.clone(),
            }));
        }
        if config.size > MAX_META {
            return Err(cerr(Problem::TooLarge { limit: MAX_META }));
        }
        let config_bytes = std::fs::read(config.staged.temp()).map_err(|e| cerr(Problem::Io(e)))?;
        let parsed: docker::Config = json(archive, centry, &config_bytes)?;
        let diff_ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != s.layers.len() {
            return Err(cerr(Problem::Manifest(format!(
                "the config lists {} layers (rootfs.diff_ids), manifest.json {}",
                diff_ids.len(),
                s.layers.len()
            ))));
        }
        plan.add_blob(config);
        let mut layers = Vec::new();
        for (path, diff_id) in s.layers.iter().zip(&diff_ids) {
            let f = staging
                .file(path)
                .ok_or_else(|| missing(&format!("image {}", s.config), path))?;
            let lerr = |p: Problem| ArchiveError::entry(archive, path, p);
            let expected = Digest::parse(diff_id).map_err(|e| {
                cerr(Problem::BadName {
                    name: diff_id.clone(),
                    reason: e.to_string(),
                })
            })?;
            let uncompressed = if f.gzip {
                gunzip_digest(f).map_err(|e| lerr(Problem::Io(e)))?
            } else {
                f.digest.clone()
            };
            if uncompressed != expected {
                return Err(lerr(Problem::DigestMismatch {
                    expected,
                    found: uncompressed,
                }));
            }
            plan.add_blob(f);
            layers.push(LayerDesc {
                digest: f.digest.to_string(),
                size: f.size,
                gzip: f.gzip,
            });
        }
        let bytes = docker::build_manifest(config.digest.to_string(), config.size, &layers);
        let digest = Digest::of(&bytes);
        plan.add_manifest(Manifest {
            digest: digest.clone(),
            media_type: media::OCI_MANIFEST.to_owned(),
            bytes: Bytes::from(bytes),
        });
        let mut carried = Vec::new();
        for t in s.repo_tags.iter().flatten() {
            carried.push(
                names::carried(t, &opts.default_ns, false)
                    .map_err(|p| ArchiveError::entry(archive, "manifest.json", p))?,
            );
        }
        let names = names::resolve(&digest, &carried, opts.as_name.as_ref(), count)
            .map_err(|p| ArchiveError::entry(archive, "manifest.json", p))?;
        plan.images.push(PlannedImage {
            digest,
            media_type: media::OCI_MANIFEST.to_owned(),
            names,
            built: true,
        });
    }
    Ok(())
}

/// sha256 of a staged gzip file's uncompressed bytes.
fn gunzip_digest(f: &StagedFile) -> std::io::Result<Digest> {
    let file = std::fs::File::open(f.staged.temp())?;
    let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_sha256_hex(hex::encode(hasher.finalize())))
}
