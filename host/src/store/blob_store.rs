//! Content-addressed storage on local disk: put-verified, get (a [`StoredBlob`] read by
//! range) and stat for blobs and manifests (removal is the inventory's prune).
//!
//! This is the storage seam: the serving code only calls these methods and never sees a file
//! or a path of a stored blob, so another backend (S3-compatible, shared by replicas) can
//! stand behind the same calls later. Downloads stage in this store's `tmp/` either way.
//!
//! Temp files: every process writes its own into a directory of its own under `tmp/`, on
//! which it holds an exclusive `flock` for its whole life. Start-up removes only the
//! directories whose lock it can take (their process is gone), so a second `serve` that
//! fails to bind, or an `ociregistry load` beside a server, never removes a file in use.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;

use crate::metrics::ContentKind;
use crate::oci::reference::Digest;
use crate::store::StoreError;
use crate::store::layout;

/// Space kept free on the cache disk beyond the blob being written (at most 5% of it).
const SPACE_RESERVE: u64 = 64 * 1024 * 1024;
/// Bytes read from disk per chunk sent to a client of a stored blob (one client reading
/// fast: large reads cost fewer round trips).
const READ_CHUNK: usize = 256 * 1024;

/// A manifest as cached: the upstream's exact bytes and media type.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Media type as the upstream declared it.
    pub media_type: String,
    /// The bytes, unchanged.
    pub bytes: Bytes,
}

/// A stored blob opened for reading: its size, and its bytes by range.
#[derive(Debug)]
pub struct StoredBlob {
    file: std::fs::File,
    size: u64,
}

impl StoredBlob {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Streams bytes `[start, end)`.
    pub fn read(
        self,
        start: u64,
        end: u64,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
        let file = Arc::new(self.file);
        futures_util::stream::try_unfold(start, move |pos| {
            let file = file.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = (end - pos).min(READ_CHUNK as u64) as usize;
                let chunk = read_chunk(file, pos, want).await?;
                Ok(Some((chunk.clone(), pos + chunk.len() as u64)))
            }
        })
    }
}

/// A blob being written: a temp file of this process's, readable while it is written
/// ([`Staged::open`] falls back to the stored blob once it was committed), made the blob
/// by [`BlobStore::commit_blob`] or removed by [`Staged::discard`].
#[derive(Debug, Clone)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
}

impl Staged {
    /// Creates the temp file for writing (blocking).
    pub fn create(&self) -> io::Result<std::fs::File> {
        std::fs::File::create(&self.temp)
    }

    /// Opens what was written so far for reading: the temp file, or the stored blob once
    /// it was committed (blocking).
    pub fn open(&self) -> io::Result<std::fs::File> {
        std::fs::File::open(&self.temp).or_else(|_| std::fs::File::open(&self.target))
    }

    /// Removes the temp file (a failed or cancelled download).
    pub async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.temp).await;
    }

    /// The temp file (tests).
    #[cfg(test)]
    pub(crate) fn temp_path(&self) -> &Path {
        &self.temp
    }
}

/// The local-disk store rooted at the image path (a cheap handle: clones share the disk).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
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
        let cleaned = clean_tmp(&layout::tmp_dir(root), loose)?;
        if cleaned > 0 {
            tracing::info!(
                cleaned,
                "removed temp files left by processes that are gone"
            );
        }
        // Claimed now, so that a start-up failure is seen here rather than at the first pull.
        own_tmp_dir(root)?;
        Ok(BlobStore {
            root: root.to_owned(),
        })
    }

    /// The image path.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// Whether manifest `digest` is stored: one `stat`, cheap enough to do in place on the
    /// serving path (as for tag records), so that a manifest another process pruned is seen
    /// as gone at once.
    pub fn has_manifest(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.manifest_path(digest)).is_ok()
    }

    /// A fresh, unique temp file path (not yet created).
    pub(super) fn temp_path(&self, label: &str) -> PathBuf {
        temp_path_in(&self.root, label)
    }

    /// Where the blob `digest` is written while it downloads.
    pub fn stage(&self, digest: &Digest) -> Staged {
        Staged {
            temp: self.temp_path(digest.hex()),
            target: self.blob_file(digest),
        }
    }

    /// Refuses ([`StoreError::DiskFull`]) when the disk holding the cache has less room than
    /// `size` plus a reserve, so a full disk gives the client a clear error before anything
    /// is written.
    pub fn ensure_space(&self, size: u64) -> Result<(), StoreError> {
        let Ok(st) = rustix::fs::statvfs(&self.root) else {
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

    /// The cached blob's size, if present.
    pub async fn stat_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_file(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a cached blob for reading; `None` when it is not stored.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<StoredBlob>, StoreError> {
        let path = self.blob_file(digest);
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
        Ok(opened?.map(|(file, size)| StoredBlob { file, size }))
    }

    /// Makes a fully written, fsynced and verified staged blob of `size` bytes visible as
    /// the blob `digest`.
    pub async fn commit_blob(
        &self,
        staged: &Staged,
        digest: &Digest,
        size: u64,
    ) -> Result<(), StoreError> {
        let temp = &staged.temp;
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

    /// Stores a manifest after checking that its bytes hash to `digest`.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        if Digest::of(&m.bytes) != m.digest {
            return Err(StoreError::Unverified(m.digest.clone()));
        }
        let target = self.manifest_path(&m.digest);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(());
        }
        // The media type goes first: whoever sees the manifest file can rely on it.
        let type_path = layout::manifest_type(&self.root, m.digest.hex());
        write_atomically(&self.temp_path("type"), &type_path, m.media_type.as_bytes()).await?;
        write_atomically(&self.temp_path("manifest"), &target, &m.bytes).await?;
        crate::metrics::global().disk_added(ContentKind::Manifest, m.bytes.len() as u64);
        Ok(sync_dir(target.parent()).await?)
    }

    /// A cached manifest by digest.
    pub async fn get_manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(digest);
        let bytes = match tokio::fs::read(&path).await {
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

/// Whether a file can be created, written and removed in the temp directory of the cache at
/// `root` (blocking; the readiness probe).
pub fn probe_write(root: &Path) -> io::Result<()> {
    let path = temp_path_in(root, "readyz");
    let result = std::fs::write(&path, b"ok");
    let _ = std::fs::remove_file(&path);
    result
}

/// A fresh, unique temp file path in the cache at `root` (not yet created), in this
/// process's own locked directory under `tmp/` (labelled, with a process-wide sequence
/// number). Should that directory not be available (a read-only disk), directly in `tmp/`
/// with the process id, as before: whatever writes there fails anyway.
pub(super) fn temp_path_in(root: &Path, label: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    match own_tmp_dir(root) {
        Ok(dir) => dir.join(format!("{label}.{n}.part")),
        Err(_) => layout::tmp_dir(root).join(format!("{label}.{}.{n}.part", std::process::id())),
    }
}

/// This process's temp directories, by cache root, each with its held lock (an open file
/// of the directory, kept for the life of the process).
static OWN_TMP: LazyLock<Mutex<HashMap<PathBuf, (PathBuf, std::fs::File)>>> =
    LazyLock::new(Mutex::default);

/// This process's own directory under `<root>/tmp/`, created and locked on first use.
fn own_tmp_dir(root: &Path) -> io::Result<PathBuf> {
    let mut own = OWN_TMP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((dir, _)) = own.get(root) {
        return Ok(dir.clone());
    }
    let (dir, lock) = claim_tmp_dir(&layout::tmp_dir(root))?;
    own.insert(root.to_owned(), (dir.clone(), lock));
    Ok(dir)
}

/// Creates a fresh directory in `tmp` and takes its lock. A cleaner in another process
/// may take the lock of a directory just created and remove it before its creator locks
/// it: the creator then finds that the locked directory is no longer at its path, and
/// tries another name.
fn claim_tmp_dir(tmp: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    use rustix::fs::{FlockOperation, flock};
    use std::os::unix::fs::MetadataExt;
    let mut last = io::Error::other("no temp directory could be claimed");
    for _ in 0..8 {
        let dir = tmp.join(format!("{}.{:016x}", std::process::id(), fastrand::u64(..)));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let lock = std::fs::File::open(&dir)?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) => {
                last = e.into();
                continue;
            }
        }
        let held = lock.metadata()?;
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => return Ok((dir, lock)),
            Ok(_) => continue,
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Removes from `tmp` every directory whose lock can be taken (its process is gone) and,
/// with `loose`, every file directly in it. Returns how many files went.
fn clean_tmp(tmp: &Path, loose: bool) -> io::Result<usize> {
    use rustix::fs::{FlockOperation, flock};
    let mut cleaned = 0usize;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            let Ok(lock) = std::fs::File::open(&path) else {
                continue;
            };
            // Held: a live process (this one included) writes there.
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            cleaned += std::fs::read_dir(&path).map_or(0, |rd| rd.count());
            let _ = std::fs::remove_dir_all(&path);
        } else if loose && std::fs::remove_file(&path).is_ok() {
            cleaned += 1;
        }
    }
    Ok(cleaned)
}

/// Writes `bytes` to `temp`, fsyncs, and renames it over `target`, in one trip to the
/// blocking pool.
pub(super) async fn write_atomically(temp: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let (temp, target, bytes) = (temp.to_owned(), target.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || write_atomically_blocking(&temp, &target, &bytes))
        .await
        .map_err(io::Error::other)?
}

/// [`write_atomically`] on the calling thread; the temp file is removed on failure.
pub(super) fn write_atomically_blocking(
    temp: &Path,
    target: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    use std::io::Write;
    let result = (|| {
        let mut f = std::fs::File::create(temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(temp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

/// fsyncs a directory so a rename in it survives a crash.
async fn sync_dir(dir: Option<&Path>) -> io::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

/// Opens `path` for reading if the kernel can resolve it from its caches alone (`openat2`
/// with `RESOLVE_CACHED`: no disk I/O, so fine on an async thread; a blob served recently
/// always can). `None` when it cannot be sure without I/O (or the call is not supported):
/// the caller then opens it on a blocking thread.
#[cfg(target_os = "linux")]
fn open_from_caches(path: &Path) -> Option<io::Result<Option<(std::fs::File, u64)>>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    match openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::CACHED,
    ) {
        Ok(fd) => {
            let file = std::fs::File::from(fd);
            Some(file.metadata().map(|m| Some((file, m.len()))))
        }
        // A cached lookup that ends in "no such file" is a definite answer.
        Err(rustix::io::Errno::NOENT) => Some(Ok(None)),
        Err(_) => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn open_from_caches(_path: &Path) -> Option<io::Result<Option<(std::fs::File, u64)>>> {
    None
}

/// Reads `len` bytes at `offset`: straight from the page cache when they are there (the
/// usual case: a blob being followed was just written, a warm one was just read), else on a
/// blocking thread. One copy either way; the page-cache path saves the hop to the blocking
/// pool and back, which costs more than the copy itself.
pub(crate) async fn read_chunk(
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
) -> io::Result<Bytes> {
    if let Some(chunk) = read_cached(&file, offset, len) {
        return Ok(chunk);
    }
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            ));
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// Up to `len` bytes at `offset` if the kernel can hand them over without waiting for the
/// disk (`preadv2` with `RWF_NOWAIT`, safe to call on an async thread); `None` when any of
/// them would need disk I/O, at the end of the file, or where the call is not supported:
/// the caller then reads on a blocking thread.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, offset: u64, len: usize) -> Option<Bytes> {
    use rustix::io::{ReadWriteFlags, preadv2};
    let mut buf = vec![0u8; len];
    match preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Some(Bytes::from(buf))
        }
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _offset: u64, _len: usize) -> Option<Bytes> {
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Files under `<root>/tmp/` (the per-process directories themselves not counted).
    pub(crate) fn tmp_file_count(root: &Path) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(root.join("tmp")).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                n += std::fs::read_dir(e.path()).unwrap().count();
            } else {
                n += 1;
            }
        }
        n
    }

    #[tokio::test]
    async fn manifests_round_trip_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let m = Manifest {
            digest: Digest::of(&bytes),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: bytes.clone(),
        };
        store.put_manifest(&m).await.unwrap();
        let got = store.get_manifest(&m.digest).await.unwrap().unwrap();
        assert_eq!(got.bytes, bytes);
        assert_eq!(got.media_type, m.media_type);

        let wrong = Manifest {
            digest: Digest::of(b"other"),
            ..m
        };
        assert!(store.put_manifest(&wrong).await.is_err());
        assert!(store.get_manifest(&wrong.digest).await.unwrap().is_none());
        assert_eq!(tmp_file_count(dir.path()), 0);
    }

    #[tokio::test]
    async fn blobs_open_from_the_kernels_caches_when_they_can() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"blob bytes");
        let path = store.blob_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
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
        BlobStore::open(dir.path()).unwrap();
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
        let first = BlobStore::open(dir.path()).unwrap();
        let own = first.temp_path("blob");
        std::fs::write(&own, b"mine").unwrap();
        BlobStore::open(dir.path()).unwrap();
        BlobStore::open_alongside(dir.path()).unwrap();
        assert!(
            live.join("blob.part").is_file(),
            "a live process's file was removed"
        );
        assert!(own.is_file(), "this process's own file was removed");
        assert!(own.starts_with(dir.path().join("tmp")));
        drop(held);
        BlobStore::open_alongside(dir.path()).unwrap();
        assert!(!live.exists(), "its process gone, the directory goes");
    }

    #[tokio::test]
    async fn page_cached_reads_skip_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![5u8; 100_000]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // Just written, so in the page cache: served on the calling thread.
        #[cfg(target_os = "linux")]
        assert_eq!(read_cached(&f, 10, 1000).map(|b| b.len()), Some(1000));
        assert_eq!(read_cached(&f, 100_000, 10), None, "nothing past the end");
        let f = Arc::new(f);
        assert_eq!(read_chunk(f.clone(), 99_990, 100).await.unwrap().len(), 10);
        assert!(read_chunk(f, 100_000, 10).await.is_err());
    }

    #[tokio::test]
    async fn stored_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let blob = StoredBlob { file: f, size: 10 };
        let parts: Vec<Bytes> = futures_util::TryStreamExt::try_collect(blob.read(3, 7))
            .await
            .unwrap();
        assert_eq!(parts.concat(), b"3456");
    }
}
