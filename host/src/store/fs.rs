//! The filesystem backend ([`FsStore`]): the whole cache in one directory on local disk,
//! laid out as [`super::layout`] says. It implements [`Store`] and nothing else; its
//! listing and removal for the inventory are [`super::listing`]'s, its inventory lock
//! [`super::lock`]'s.
//!
//! A file appears under `blobs/` or `manifests/` only after its sha256 matched, through a
//! temp file, fsync and rename; nothing there is ever rewritten.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::access::AccessRecord;
use super::backend::{BlobReader, Claim, Manifest, Store, StoreFuture, StoredBlob, TagKey};
use super::error::StoreError;
use super::files::{open_from_caches, read_chunk, sync_dir, write_atomically};
use super::layout;
use super::listing::{self, ListedBlob, ListedManifest, Usage};
use super::lock::InventoryLock;
use super::staging::{self, Staged, temp_path_in};
use super::tags::{self, ListedTag, TagRecord};
use crate::metrics::ContentKind;
use crate::oci::reference::Digest;

/// Space kept free on the cache disk beyond the blob being written (at most 5% of it).
const SPACE_RESERVE: u64 = 64 * 1024 * 1024;
/// Bytes read from disk per chunk sent to a client of a stored blob (one client reading
/// fast: large reads cost fewer round trips).
const READ_CHUNK: usize = 256 * 1024;

/// The local-disk store rooted at the image path (a cheap handle: clones share the disk).
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (creating) the layout under `root` and removes temp files left by processes
    /// that are gone (and loose ones left by versions before per-process directories).
    pub fn open(root: &Path) -> io::Result<Self> {
        Self::open_with(root, true)
    }

    /// Opens (creating) the layout under `root` for a second process (such as
    /// `ociregistry load`) working beside a server: only temp directories of processes that
    /// are gone are removed; the server's downloads in progress are left alone.
    pub fn open_alongside(root: &Path) -> io::Result<Self> {
        Self::open_with(root, false)
    }

    fn open_with(root: &Path, loose: bool) -> io::Result<Self> {
        for dir in layout::DIRS {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let cleaned = staging::prepare(root, loose)?.cleaned;
        if cleaned > 0 {
            tracing::info!(
                cleaned,
                "removed temp files left by processes that are gone"
            );
        }
        Ok(FsStore {
            root: root.to_owned(),
        })
    }

    /// The store at `root` as it is: nothing on disk is created or cleaned (a cache another
    /// process opened, read by `list`; another backend's local copy). Staging into it
    /// needs [`FsStore::open`] or [`FsStore::open_alongside`].
    pub fn at(root: &Path) -> Self {
        FsStore {
            root: root.to_owned(),
        }
    }

    fn blob_file(&self, digest: &Digest) -> PathBuf {
        layout::blob(&self.root, digest.hex())
    }

    /// Where a verified blob lives (tests).
    #[cfg(test)]
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_file(digest)
    }

    fn manifest_path(&self, digest: &Digest) -> PathBuf {
        layout::manifest(&self.root, digest.hex())
    }

    async fn open_file(&self, digest: &Digest) -> Result<Option<StoredBlob>, StoreError> {
        open_blob_file(self.blob_file(digest)).await
    }

    async fn commit_file(
        &self,
        staged: &Staged,
        digest: &Digest,
        size: u64,
    ) -> Result<(), StoreError> {
        let temp = staged.temp();
        let target = self.blob_file(digest);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            // Another download of the same digest (for another registry) stored it first.
            let _ = tokio::fs::remove_file(temp).await;
            return Ok(());
        }
        tokio::fs::rename(temp, &target).await?;
        crate::metrics::global().disk_added(ContentKind::Blob, size);
        Ok(sync_dir(target.parent()).await?)
    }

    /// Stores a verified manifest; `Ok(false)` when it was there already.
    pub(super) async fn write_manifest(&self, m: &Manifest) -> Result<bool, StoreError> {
        if Digest::of(&m.bytes) != m.digest {
            return Err(StoreError::Unverified(m.digest.clone()));
        }
        let target = self.manifest_path(&m.digest);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(false);
        }
        // The media type goes first: whoever sees the manifest file can rely on it.
        let type_path = layout::manifest_type(&self.root, m.digest.hex());
        let type_temp = temp_path_in(&self.root, "type");
        write_atomically(&type_temp, &type_path, m.media_type.as_bytes()).await?;
        let temp = temp_path_in(&self.root, "manifest");
        write_atomically(&temp, &target, &m.bytes).await?;
        sync_dir(target.parent()).await?;
        Ok(true)
    }

    /// Whether manifest `digest` is stored: one `stat`.
    pub(super) fn has_manifest_file(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.manifest_path(digest)).is_ok()
    }

    /// A stored manifest by digest.
    pub(super) async fn read_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Manifest>, StoreError> {
        let bytes = match tokio::fs::read(self.manifest_path(digest)).await {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let type_path = layout::manifest_type(&self.root, digest.hex());
        let media_type = match tokio::fs::read_to_string(type_path).await {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => crate::oci::media::sniff(&bytes),
        };
        Ok(Some(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        }))
    }
}

impl Store for FsStore {
    fn describe(&self) -> String {
        format!("filesystem {}", self.root.display())
    }

    fn kind(&self) -> &'static str {
        "filesystem"
    }

    fn local_root(&self) -> &Path {
        &self.root
    }

    fn ensure_space(&self, size: u64) -> Result<(), StoreError> {
        ensure_space_at(&self.root, size)
    }

    fn stage(&self, digest: &Digest) -> Staged {
        Staged::new(
            temp_path_in(&self.root, digest.hex()),
            self.blob_file(digest),
        )
    }

    fn stat_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.blob_file(digest)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn open_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<StoredBlob>> {
        Box::pin(self.open_file(digest))
    }

    fn commit_blob<'a>(
        &'a self,
        staged: &'a Staged,
        digest: &'a Digest,
        size: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.commit_file(staged, digest, size))
    }

    fn has_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, bool> {
        // One `stat`, cheap enough to do in place on the serving path.
        Box::pin(std::future::ready(Ok(self.has_manifest_file(digest))))
    }

    fn get_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Manifest>> {
        Box::pin(self.read_manifest(digest))
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Manifest) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.write_manifest(manifest).await? {
                let size = manifest.bytes.len() as u64;
                crate::metrics::global().disk_added(ContentKind::Manifest, size);
            }
            Ok(())
        })
    }

    fn tag_modified<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<SystemTime>> {
        // One `stat`, as for manifests.
        Box::pin(std::future::ready(Ok(tags::modified(&self.root, tag))))
    }

    fn get_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<TagRecord>> {
        Box::pin(async move { Ok(tags::get(&self.root, tag).await) })
    }

    fn put_tag_from<'a>(
        &'a self,
        tag: TagKey<'a>,
        media_type: &'a str,
        digest: &'a Digest,
        endpoint: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(tags::put(&self.root, tag, media_type, digest, endpoint).await?) })
    }

    fn set_tag_accessed<'a>(&'a self, tag: TagKey<'a>, at: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(tags::set_accessed(&self.root, tag, at).await?) })
    }

    fn remove_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(tags::remove(&self.root, tag).await?) })
    }

    fn list_blobs(&self) -> StoreFuture<'_, Vec<ListedBlob>> {
        let root = self.root.clone();
        Box::pin(blocking(move || listing::blobs(&root)))
    }

    fn list_manifests(&self) -> StoreFuture<'_, Vec<ListedManifest>> {
        let root = self.root.clone();
        Box::pin(blocking(move || listing::manifests(&root)))
    }

    fn list_tags(&self) -> StoreFuture<'_, Vec<ListedTag>> {
        let root = self.root.clone();
        Box::pin(blocking(move || Ok(tags::list(&root))))
    }

    fn usage(&self) -> StoreFuture<'_, (Usage, Usage)> {
        let root = self.root.clone();
        Box::pin(blocking(move || listing::usage(&root)))
    }

    fn get_access<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<AccessRecord>> {
        let (root, hex) = (self.root.clone(), digest.hex().to_owned());
        Box::pin(blocking(move || Ok(super::access::read(&root, &hex))))
    }

    fn set_access<'a>(
        &'a self,
        digest: &'a Digest,
        record: Option<&'a AccessRecord>,
    ) -> StoreFuture<'a, ()> {
        let (root, hex, record) = (self.root.clone(), digest.hex().to_owned(), record.cloned());
        Box::pin(blocking(move || match record {
            Some(r) => super::access::write(&root, &hex, &r),
            None => super::access::remove(&root, &hex),
        }))
    }

    fn remove_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        let (root, hex) = (self.root.clone(), digest.hex().to_owned());
        Box::pin(blocking(move || listing::remove_manifest(&root, &hex)))
    }

    fn remove_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        let (root, hex) = (self.root.clone(), digest.hex().to_owned());
        Box::pin(blocking(move || listing::remove_blob(&root, &hex)))
    }

    fn lock_inventory<'a>(&'a self, owner: &'a str, _wait: bool) -> StoreFuture<'a, Claim> {
        // Every holder of the file lock holds it briefly (a flush, an invalidate) or is a
        // prune the caller would wait for anyway: always wait.
        let _ = owner;
        Box::pin(async move {
            let lock = InventoryLock::acquire_async(self.root.clone()).await?;
            Ok(Claim::Owner(Box::new(lock)))
        })
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)??)
}

/// Opens the blob file at `path` for reading by range; `None` when it is not there.
pub(super) async fn open_blob_file(path: PathBuf) -> Result<Option<StoredBlob>, StoreError> {
    let opened = match open_from_caches(&path) {
        Some(found) => found,
        None => tokio::task::spawn_blocking(move || match std::fs::File::open(path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(io::Error::other)?,
    };
    Ok(opened?.map(|(file, size)| StoredBlob::new(size, Box::new(FileBlob(file)))))
}

/// Refuses ([`StoreError::DiskFull`]) when the disk holding `root` has no room for `size`
/// bytes and the reserve.
pub(super) fn ensure_space_at(root: &Path, size: u64) -> Result<(), StoreError> {
    let Ok(st) = rustix::fs::statvfs(root) else {
        return Ok(());
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let disk = st.f_blocks.saturating_mul(st.f_frsize);
    let reserve = SPACE_RESERVE.min(disk / 20);
    if free < size.saturating_add(reserve) {
        return Err(StoreError::DiskFull {
            free_mib: free / (1024 * 1024),
            needed_mib: (size + reserve) / (1024 * 1024),
        });
    }
    Ok(())
}

/// A stored blob file, read by range.
#[derive(Debug)]
struct FileBlob(std::fs::File);

impl BlobReader for FileBlob {
    fn read(self: Box<Self>, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>> {
        let file = Arc::new(self.0);
        Box::pin(futures_util::stream::try_unfold(start, move |pos| {
            let file = file.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = (end - pos).min(READ_CHUNK as u64) as usize;
                let chunk = read_chunk(file, pos, want).await?;
                let next = pos + chunk.len() as u64;
                Ok(Some((chunk, next)))
            }
        }))
    }
}

/// Whether a file can be created, written and removed in the temp directory of the cache at
/// `root` (blocking; the readiness probe).
pub fn probe_write(root: &Path) -> io::Result<()> {
    let path = temp_path_in(root, "readyz");
    let result = std::fs::write(&path, b"ok");
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::staging::tests::tmp_file_count;

    #[tokio::test]
    async fn the_filesystem_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::open(dir.path()).unwrap());
        crate::store::contract::check(store).await;
        assert_eq!(tmp_file_count(dir.path()), 0);
    }

    #[tokio::test]
    async fn on_the_filesystem_every_fetch_claim_owns_the_fetch() {
        // One machine: the process's own single flight is the coordination.
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        let ttl = std::time::Duration::from_secs(30);
        for owner in ["http://a:1", "http://b:1"] {
            let claim = store.claim_fetch(&digest, owner, ttl).await.unwrap();
            assert!(matches!(claim, crate::store::Claim::Owner(_)), "{claim:?}");
        }
    }

    #[tokio::test]
    async fn blobs_open_from_the_kernels_caches_when_they_can() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"blob bytes");
        let path = store.blob_path(&digest);
        assert!(store.open_blob(&digest).await.unwrap().is_none());
        std::fs::write(&path, b"blob bytes").unwrap();
        let blob = store.open_blob(&digest).await.unwrap().unwrap();
        assert_eq!(blob.size(), 10);
        let parts: Vec<Bytes> = futures_util::TryStreamExt::try_collect(blob.read(2, 6))
            .await
            .unwrap();
        assert_eq!(parts.concat(), b"ob b");
        // Just written, so resolvable from the dentry cache: no blocking-pool hop.
        #[cfg(target_os = "linux")]
        assert_eq!(
            open_from_caches(&path).map(|r| r.unwrap().map(|(_, len)| len)),
            Some(Some(10))
        );
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp/123.dead")).unwrap();
        std::fs::write(dir.path().join("tmp/x.part"), b"partial").unwrap();
        std::fs::write(dir.path().join("tmp/123.dead/y.part"), b"partial").unwrap();
        FsStore::open(dir.path()).unwrap();
        assert_eq!(tmp_file_count(dir.path()), 0);
        assert!(!dir.path().join("tmp/123.dead").exists());
    }

    #[test]
    fn temp_files_of_a_live_process_survive_a_start() {
        use rustix::fs::{FlockOperation, flock};
        let dir = tempfile::tempdir().unwrap();
        // Another process's directory: its lock is held.
        let live = dir.path().join("tmp/456.live");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("blob.part"), b"in progress").unwrap();
        let held = std::fs::File::open(&live).unwrap();
        flock(&held, FlockOperation::NonBlockingLockExclusive).unwrap();
        // This process's own temp files, written before a second open (a `load`).
        FsStore::open(dir.path()).unwrap();
        let own = temp_path_in(dir.path(), "blob");
        std::fs::write(&own, b"mine").unwrap();
        FsStore::open(dir.path()).unwrap();
        FsStore::open_alongside(dir.path()).unwrap();
        assert!(
            live.join("blob.part").is_file(),
            "a live process's file was removed"
        );
        assert!(own.is_file(), "this process's own file was removed");
        assert!(own.starts_with(dir.path().join("tmp")));
        drop(held);
        FsStore::open_alongside(dir.path()).unwrap();
        assert!(!live.exists(), "its process gone, the directory goes");
    }
}
