//! Exporting cached images as one OCI image layout tar: `oci-layout`, every blob and
//! manifest under `blobs/sha256/`, and `index.json` last, one descriptor per image
//! annotated with its tag (`org.opencontainers.image.ref.name`) and its full reference
//! (`io.containerd.image.name`, what `ctr import` and `load --archive` read).
//!
//! The tar is written as a stream to `FILE.tmp` (renamed to `FILE` once complete and
//! fsynced): each blob is read from the store in chunks and hashed on the way, so memory
//! stays flat whatever the image size, and a blob whose bytes do not match its digest
//! aborts the export (naming the blob) and removes the partial file.
//!
//! Only what is cached is written: an index keeps all its entries, but children never
//! pulled (other platforms) are not in the file and are counted as "not cached"; an image
//! manifest whose blobs are not all cached is left out like a child never pulled.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::error::{ArchiveError, Problem};
use super::layout::{CONTAINERD_NAME, Descriptor, IndexJson, OCI_LAYOUT, REF_NAME};
use super::report::Progress;
use crate::inventory::criteria::{Criteria, CriteriaError};
use crate::inventory::scan::{self, Cache, Image};
use crate::oci::media;
use crate::oci::reference::{Digest, Reference};
use crate::preload::list::parse_reference;
use crate::store::{Store, StoreError};

/// Index levels followed below a selected image.
const MAX_DEPTH: usize = 3;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Images whose reference matches this regex.
    pub pattern: Option<String>,
    /// Images by reference (`alpine:3.20`, `quay.io/org/app@sha256:...`).
    pub refs: Vec<String>,
    /// Only images pulled (or, never pulled, first fetched) within this long.
    pub since: Option<Duration>,
    /// Registry of references that name none.
    pub default_ns: String,
}

/// The images could not be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A bad `--pattern`.
    #[error(transparent)]
    Criteria(#[from] CriteriaError),
    /// A reference that cannot be read.
    #[error("invalid reference {reference:?}: {reason}")]
    Reference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A reference that names no cached image.
    #[error("{0} is not cached")]
    NotCached(String),
    /// The store could not be read.
    #[error("cannot read the cache: {0}")]
    Store(#[from] StoreError),
}

/// Reads the cache and picks the images `sel` names (untracked manifests, which nothing
/// names, are never picked).
pub async fn select(
    store: &dyn Store,
    sel: &Selection,
) -> Result<(Cache, Vec<Image>), SelectError> {
    let cache = scan::scan(store).await?;
    let criteria = Criteria::pattern(sel.pattern.as_deref())?;
    let cutoff = sel
        .since
        .map(|d| crate::timefmt::now().saturating_sub(d.as_secs()));
    let mut wanted: Vec<(String, bool)> = Vec::new();
    for r in &sel.refs {
        let (registry, repo, reference) =
            parse_reference(r, &sel.default_ns).map_err(|e| SelectError::Reference {
                reference: r.clone(),
                reason: e.to_string(),
            })?;
        let s = match &reference {
            Reference::Tag(t) => format!("{registry}/{repo}:{t}"),
            Reference::Digest(d) => format!("{registry}/{repo}@{d}"),
        };
        wanted.push((s, false));
    }
    let mut picked = Vec::new();
    for img in &cache.images {
        if img.registry.is_empty() {
            continue;
        }
        let by_ref = if wanted.is_empty() {
            true
        } else {
            let r = img.reference();
            let digest_ref = format!("{}/{}@{}", img.registry, img.repository, img.digest);
            let mut hit = false;
            for (w, seen) in wanted.iter_mut() {
                if *w == r || *w == digest_ref {
                    *seen = true;
                    hit = true;
                }
            }
            hit
        };
        if by_ref && criteria.matches(img) && cutoff.is_none_or(|c| img.last_used() >= c) {
            picked.push(img.clone());
        }
    }
    if let Some((w, _)) = wanted.iter().find(|(_, seen)| !seen) {
        return Err(SelectError::NotCached(w.clone()));
    }
    Ok((cache, picked))
}

/// One image written.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// Its reference.
    pub reference: String,
    /// Its top manifest.
    pub digest: String,
    /// Index children not in the file (never pulled, or not all their blobs cached).
    pub not_cached: usize,
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// The images written.
    pub images: Vec<ExportedImage>,
    /// Images left out, with why.
    pub skipped: Vec<(String, String)>,
    /// Manifests written.
    pub manifests: usize,
    /// Blobs written.
    pub blobs: usize,
    /// Bytes of blobs and manifests written.
    pub bytes: u64,
}

impl Exported {
    /// Index children left out, over all images.
    pub fn not_cached(&self) -> usize {
        self.images.iter().map(|i| i.not_cached).sum()
    }
}

/// What goes into the file.
#[derive(Debug, Default)]
struct Contents {
    manifests: Vec<String>,
    manifest_set: HashSet<String>,
    blobs: Vec<String>,
    blob_set: HashSet<String>,
}

impl Contents {
    /// Adds manifest `hex` and what it needs, if it is complete in `cache`; how many index
    /// children are left out below it, or `None` when it cannot be written.
    fn add(&mut self, cache: &Cache, hex: &str, depth: usize) -> Option<usize> {
        let m = cache.manifests.get(hex)?;
        let mut missing = 0;
        if m.is_index {
            for c in &m.children {
                if depth >= MAX_DEPTH {
                    missing += 1;
                    continue;
                }
                match self.add(cache, c, depth + 1) {
                    Some(n) => missing += n,
                    None => missing += 1,
                }
            }
        } else {
            if !m.blobs.iter().all(|b| cache.blobs.contains_key(b)) {
                return None;
            }
            for b in &m.blobs {
                if self.blob_set.insert(b.clone()) {
                    self.blobs.push(b.clone());
                }
            }
        }
        if self.manifest_set.insert(hex.to_owned()) {
            self.manifests.push(hex.to_owned());
        }
        Some(missing)
    }
}

/// A tar header for a regular file.
fn header(path: &str, size: u64, mtime: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Zeros after `size` bytes, to the next 512-byte boundary.
fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// Writes `images` (from `cache`) to `output` as an OCI layout tar.
pub async fn export(
    store: &dyn Store,
    cache: &Cache,
    images: &[Image],
    output: &Path,
    progress: &Progress,
) -> Result<Exported, ArchiveError> {
    let name = output.display().to_string();
    let mut out = Exported::default();
    let mut contents = Contents::default();
    let mut index: Vec<Descriptor> = Vec::new();
    for img in images {
        let hex = img.digest.trim_start_matches("sha256:");
        let Some(missing) = contents.add(cache, hex, 0) else {
            out.skipped.push((
                img.reference(),
                "its manifest or blobs are not all cached".into(),
            ));
            continue;
        };
        let Some(m) = cache.manifests.get(hex) else {
            continue;
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(CONTAINERD_NAME.to_owned(), img.reference());
        if let Some(t) = &img.tag {
            annotations.insert(REF_NAME.to_owned(), t.clone());
        }
        index.push(Descriptor {
            media_type: None,
            digest: img.digest.clone(),
            size: m.size,
            annotations,
        });
        out.images.push(ExportedImage {
            reference: img.reference(),
            digest: img.digest.clone(),
            not_cached: missing,
        });
    }
    let total: u64 = contents
        .blobs
        .iter()
        .filter_map(|b| cache.blobs.get(b))
        .map(|b| b.size)
        .sum::<u64>()
        + contents
            .manifests
            .iter()
            .filter_map(|m| cache.manifests.get(m))
            .map(|m| m.size)
            .sum::<u64>();
    progress.grow(total);
    let temp = temp_path(output);
    let written = write(store, &contents, &mut index, &temp, progress, &mut out).await;
    match written {
        Ok(()) => {}
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(ArchiveError { archive: name, ..e });
        }
    }
    if let Err(e) = tokio::fs::rename(&temp, output).await {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(ArchiveError::whole(&name, Problem::Io(e)));
    }
    Ok(out)
}

/// `FILE.tmp` next to `FILE`.
fn temp_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

async fn write(
    store: &dyn Store,
    contents: &Contents,
    index: &mut [Descriptor],
    temp: &Path,
    progress: &Progress,
    out: &mut Exported,
) -> Result<(), ArchiveError> {
    let whole = |e: std::io::Error| ArchiveError::whole("", Problem::Io(e));
    let file = tokio::fs::File::create(temp).await.map_err(whole)?;
    let mut w = tokio::io::BufWriter::with_capacity(1 << 16, file);
    let mtime = crate::timefmt::now();
    let count = progress.counter();
    let put = async |w: &mut tokio::io::BufWriter<tokio::fs::File>,
                     path: &str,
                     bytes: &[u8]|
           -> Result<(), ArchiveError> {
        let h = header(path, bytes.len() as u64, mtime).map_err(whole)?;
        w.write_all(h.as_bytes()).await.map_err(whole)?;
        w.write_all(bytes).await.map_err(whole)?;
        w.write_all(&[0u8; 512][..padding(bytes.len() as u64)])
            .await
            .map_err(whole)?;
        Ok(())
    };
    put(&mut w, "oci-layout", OCI_LAYOUT.as_bytes()).await?;
    for hex in &contents.blobs {
        let digest = Digest::from_sha256_hex(hex.clone());
        let entry = format!("blobs/sha256/{hex}");
        let err = |p: Problem| ArchiveError::entry("", &entry, p);
        let Some(blob) = store
            .open_blob(&digest)
            .await
            .map_err(|e| err(Problem::Store(e)))?
        else {
            return Err(err(Problem::Missing {
                what: "the export".into(),
                missing: format!("cached blob {digest} (pruned meanwhile?)"),
            }));
        };
        let size = blob.size();
        let h = header(&entry, size, mtime).map_err(|e| err(Problem::Io(e)))?;
        w.write_all(h.as_bytes())
            .await
            .map_err(|e| err(Problem::Io(e)))?;
        let mut stream = blob.read(0, size);
        let mut hasher = sha2::Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err(Problem::Io(e)))?;
            got += chunk.len() as u64;
            if got > size {
                break;
            }
            hasher.update(&chunk);
            w.write_all(&chunk).await.map_err(|e| err(Problem::Io(e)))?;
            count(chunk.len() as u64);
        }
        if got != size {
            return Err(err(Problem::ShortBlob {
                digest: digest.clone(),
                got,
                size,
            }));
        }
        let found = Digest::from_sha256_hex(hex::encode(hasher.finalize()));
        if found != digest {
            return Err(err(Problem::CorruptCache { digest, found }));
        }
        w.write_all(&[0u8; 512][..padding(size)])
            .await
            .map_err(|e| err(Problem::Io(e)))?;
        out.blobs += 1;
        out.bytes += size;
    }
    for hex in &contents.manifests {
        let digest = Digest::from_sha256_hex(hex.clone());
        let entry = format!("blobs/sha256/{hex}");
        let err = |p: Problem| ArchiveError::entry("", &entry, p);
        let Some(m) = store
            .get_manifest(&digest)
            .await
            .map_err(|e| err(Problem::Store(e)))?
        else {
            return Err(err(Problem::Missing {
                what: "the export".into(),
                missing: format!("cached manifest {digest} (pruned meanwhile?)"),
            }));
        };
        let found = Digest::of(&m.bytes);
        if found != digest {
            return Err(err(Problem::CorruptCache { digest, found }));
        }
        // The index names each top manifest with the media type it is cached under.
        for d in index.iter_mut().filter(|d| d.digest == digest.to_string()) {
            d.media_type = Some(m.media_type.clone());
        }
        put(&mut w, &entry, &m.bytes).await?;
        count(m.bytes.len() as u64);
        out.manifests += 1;
        out.bytes += m.bytes.len() as u64;
    }
    let index_json = IndexJson {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.to_owned()),
        manifests: index.to_vec(),
    };
    let bytes = serde_json::to_vec(&index_json)
        .map_err(|e| ArchiveError::entry("", "index.json", Problem::Json(e)))?;
    put(&mut w, "index.json", &bytes).await?;
    // The end of the archive: two zero blocks.
    w.write_all(&[0u8; 1024]).await.map_err(whole)?;
    w.flush().await.map_err(whole)?;
    let file = w.into_inner();
    file.sync_all().await.map_err(whole)?;
    Ok(())
}
