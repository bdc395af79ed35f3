//! Tag records: which manifest digest a tag pointed to when it was fetched, per media type
//! (an upstream may answer differently for clients that accept different types).

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::backend::TagKey;
use super::files::write_atomically;
use super::layout;
use super::staging::temp_path_in;
use crate::oci::reference::{Digest, RepoName};

/// One tag's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TagRecord {
    /// What the tag resolved to, newest first.
    pub entries: Vec<TagEntry>,
    /// When a client last pulled the tag (Unix seconds), flushed from memory now and then
    /// by `crate::inventory::access`.
    #[serde(
        rename = "accessedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub accessed_at: Option<u64>,
}

impl TagRecord {
    /// Records that the tag resolved to `digest` of `media_type` at `fetched_at` (Unix
    /// seconds), answered by `endpoint` (a registry with `endpoints`): newest first, one
    /// entry per media type.
    pub fn resolved(
        &mut self,
        media_type: &str,
        digest: &Digest,
        fetched_at: u64,
        endpoint: Option<&str>,
    ) {
        self.entries.retain(|e| e.media_type != media_type);
        self.entries.insert(
            0,
            TagEntry {
                media_type: media_type.to_owned(),
                digest: digest.to_string(),
                fetched_at,
                endpoint: endpoint.map(str::to_owned),
            },
        );
    }
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
    /// The upstream endpoint that answered (`registries[].endpoints`); absent for a
    /// registry reached at its own name, and in records written before endpoints existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl TagEntry {
    /// The digest, parsed (records are written by us, but disks lie).
    pub fn digest(&self) -> Option<Digest> {
        Digest::parse(&self.digest).ok()
    }
}

/// Where a tag's record lives under the image path `root`.
fn record_path(root: &Path, t: TagKey<'_>) -> PathBuf {
    layout::tag_record(root, t.registry, t.repo.as_str(), t.tag)
}

/// When the record of a tag was last written; `None` when there is none. One `stat`.
pub(super) fn modified(root: &Path, t: TagKey<'_>) -> Option<SystemTime> {
    std::fs::metadata(record_path(root, t))
        .and_then(|m| m.modified())
        .ok()
}

/// The record of a tag; missing or unreadable is `None`.
pub(super) async fn get(root: &Path, t: TagKey<'_>) -> Option<TagRecord> {
    read(&record_path(root, t)).await
}

/// Reads the tag record at `path`; missing or unreadable is `None`.
async fn read(path: &Path) -> Option<TagRecord> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `record` to `path` through a temp file and rename.
async fn write(root: &Path, path: &Path, record: &TagRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    write_atomically(&temp_path_in(root, "tag"), path, &bytes).await
}

/// Writes a whole record (a copy of one kept elsewhere).
pub(super) async fn save(root: &Path, t: TagKey<'_>, record: &TagRecord) -> io::Result<()> {
    let _guard = RECORD_LOCK.lock().await;
    let path = record_path(root, t);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    write(root, &path, record).await
}

/// Records that the tag now resolves to `digest` for `media_type`, as `endpoint` said.
pub(super) async fn put(
    root: &Path,
    t: TagKey<'_>,
    media_type: &str,
    digest: &Digest,
    endpoint: Option<&str>,
) -> io::Result<()> {
    let _guard = RECORD_LOCK.lock().await;
    let path = record_path(root, t);
    let mut record = read(&path).await.unwrap_or_default();
    record.resolved(media_type, digest, crate::timefmt::now(), endpoint);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    write(root, &path, &record).await
}

/// Records that the tag was last pulled at `at` (kept if a later time is already there).
/// A tag with no record (never cached, or pruned meanwhile) gets none: `Ok(false)`.
pub(super) async fn set_accessed(root: &Path, t: TagKey<'_>, at: u64) -> io::Result<bool> {
    let _guard = RECORD_LOCK.lock().await;
    let path = record_path(root, t);
    let Some(mut record) = read(&path).await else {
        return Ok(false);
    };
    if record.accessed_at.is_some_and(|t| t >= at) {
        return Ok(true);
    }
    record.accessed_at = Some(at);
    write(root, &path, &record).await?;
    Ok(true)
}

/// Forgets a tag; `Ok(false)` when there was none.
pub(super) async fn remove(root: &Path, t: TagKey<'_>) -> io::Result<bool> {
    let _guard = RECORD_LOCK.lock().await;
    match tokio::fs::remove_file(record_path(root, t)).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A tag record as the inventory lists it ([`super::Store::list_tags`]).
#[derive(Debug, Clone)]
pub struct ListedTag {
    /// Registry (canonical name).
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// The record.
    pub record: TagRecord,
    /// When the record was last written (Unix seconds).
    pub modified: u64,
}

/// Splits a tag record's key or path relative to `tags/` (`<registry>/<repo>/@tags/<tag>.json`)
/// into registry, repository and tag; `None` for anything else.
pub(super) fn parse_relative(rel: &str) -> Option<(&str, &str, &str)> {
    let (dir, file) = rel.rsplit_once('/')?;
    let tag = file.strip_suffix(layout::TAG_SUFFIX)?;
    let repo_path = dir.strip_suffix(layout::TAG_DIR)?.strip_suffix('/')?;
    let (registry, repository) = repo_path.split_once('/')?;
    (!registry.is_empty() && !repository.is_empty() && !tag.is_empty())
        .then_some((registry, repository, tag))
}

/// Every tag record under the image path `root` (blocking; reading only). Unreadable
/// records are skipped (and logged); past a million directory entries the listing stops.
pub(super) fn list(root: &Path) -> Vec<ListedTag> {
    let base = layout::tags_dir(root);
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    let mut budget = 1_000_000usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                tracing::warn!("tags/ holds more than a million entries; listing stopped there");
                return out;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            let path = e.path();
            let Some(rel) = path
                .strip_prefix(&base)
                .ok()
                .map(|r| r.to_string_lossy().replace('\\', "/"))
            else {
                continue;
            };
            let Some((registry, repository, tag)) = parse_relative(&rel) else {
                continue;
            };
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<TagRecord>(&bytes) else {
                tracing::warn!(path = %path.display(), "unreadable tag record; skipped");
                continue;
            };
            out.push(ListedTag {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                tag: tag.to_owned(),
                modified: e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map_or(0, crate::timefmt::unix_secs),
                record,
            });
        }
    }
    out
}

/// A tag record that could not be removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot remove {}: {source}", path.display())]
pub struct RemoveError {
    path: PathBuf,
    source: io::Error,
}

/// Removes the record of `registry/repo:tag` under the image path `root` (blocking; the
/// caller holds the inventory lock); `Ok(false)` when there was none.
pub fn remove_in(
    root: &Path,
    registry: &str,
    repo: &RepoName,
    tag: &str,
) -> Result<bool, RemoveError> {
    let path = layout::tag_record(root, registry, repo.as_str(), tag);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RemoveError { path, source }),
    }
}
