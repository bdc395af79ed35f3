//! Local file I/O shared by the disk-backed parts of the store: atomic writes (temp file,
//! fsync, rename), directory fsync, and reads that skip the blocking pool when the kernel
//! has what is asked in its caches. It knows nothing of the cache layout.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

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
pub(super) async fn sync_dir(dir: Option<&Path>) -> io::Result<()> {
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
pub(super) fn open_from_caches(path: &Path) -> Option<io::Result<Option<(std::fs::File, u64)>>> {
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
pub(super) fn open_from_caches(_path: &Path) -> Option<io::Result<Option<(std::fs::File, u64)>>> {
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
mod tests {
    use super::*;

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
}
