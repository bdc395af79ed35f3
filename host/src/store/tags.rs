//! Tag records: which manifest digest a tag pointed to when it was fetched, per media type
//! (an upstream may answer differently for clients that accept different types).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oci::reference::{Digest, RepoName};
use crate::store::BlobStore;
use crate::store::blob_store::write_atomically;

/// One tag's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TagRecord {
    /// What the tag resolved to, newest first.
    pub entries: Vec<TagEntry>,
    /// When a client last pulled the tag (Unix seconds), flushed from memory now and then
    /// by [`crate::inventory::access`].
    #[serde(
        rename = "accessedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub accessed_at: Option<u64>,
}

/// Serialises read-modify-write updates of tag records within this process (a fetch
/// recording a new digest and a flush of access times must not undo each other).
static RECORD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The tag resolved to `digest` of `media_type` at `fetched_at` (Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEntry {
    /// Manifest media type.
    pub media_type: String,
    /// Manifest digest (`sha256:...`).
    pub digest: String,
    /// When it was fetched from the upstream.
    pub fetched_at: u64,
}

impl TagEntry {
    /// The digest, parsed (records are written by us, but disks lie).
    pub fn digest(&self) -> Option<Digest> {
        Digest::parse(&self.digest).ok()
    }
}

/// Where a tag's record lives.
pub fn record_path(store: &BlobStore, registry: &str, repo: &RepoName, tag: &str) -> PathBuf {
    record_path_in(store.root(), registry, repo, tag)
}

/// Where the record of `registry/repo:tag` lives under the image path `root`.
pub fn record_path_in(root: &Path, registry: &str, repo: &RepoName, tag: &str) -> PathBuf {
    // registry, repo and tag are validated: no component can be empty, `.` or `..`.
    root.join("tags")
        .join(registry)
        .join(repo.as_str())
        .join("@tags")
        .join(format!("{tag}.json"))
}

/// Reads the tag record at `path` (from [`record_path`]); missing or unreadable is `None`.
pub async fn read(path: &Path) -> Option<TagRecord> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `record` to `path` through a temp file and rename.
async fn write(store: &BlobStore, path: &Path, record: &TagRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    write_atomically(&store.temp_path("tag"), path, &bytes).await
}

/// Records that the tag now resolves to `digest` for `media_type`.
pub async fn put(
    store: &BlobStore,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    media_type: &str,
    digest: &Digest,
) -> io::Result<()> {
    let _guard = RECORD_LOCK.lock().await;
    let path = record_path(store, registry, repo, tag);
    let mut record = read(&path).await.unwrap_or_default();
    record.entries.retain(|e| e.media_type != media_type);
    record.entries.insert(
        0,
        TagEntry {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            fetched_at: crate::timefmt::now(),
        },
    );
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    write(store, &path, &record).await
}

/// Records that the tag was last pulled at `at` (kept if a later time is already there).
/// A tag with no record (never cached, or pruned meanwhile) gets none: `Ok(false)`.
pub async fn set_accessed(
    store: &BlobStore,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    at: u64,
) -> io::Result<bool> {
    let _guard = RECORD_LOCK.lock().await;
    let path = record_path(store, registry, repo, tag);
    let Some(mut record) = read(&path).await else {
        return Ok(false);
    };
    if record.accessed_at.is_some_and(|t| t >= at) {
        return Ok(true);
    }
    record.accessed_at = Some(at);
    write(store, &path, &record).await?;
    Ok(true)
}

/// Forgets a tag so that its next pull asks the upstream; `Ok(false)` when there was none.
pub async fn remove(
    store: &BlobStore,
    registry: &str,
    repo: &RepoName,
    tag: &str,
) -> io::Result<bool> {
    let _guard = RECORD_LOCK.lock().await;
    match tokio::fs::remove_file(record_path(store, registry, repo, tag)).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
