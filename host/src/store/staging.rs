//! Staging on local disk: the temp files downloads are written to before they are
//! verified and committed, in a directory of this process's own under `tmp/`, and the
//! clean-up of those left by processes that are gone. It does not decide what becomes
//! visible (the [`super::Store`] does, at commit).
//!
//! Every process writes its temp files into a directory of its own under `tmp/`, on which
//! it holds an exclusive `flock` for its whole life. Start-up removes only the directories
//! whose lock it can take (their process is gone), so a second `serve` that fails to bind,
//! or an `ociregistry load` beside a server, never removes a file in use. Notes a process
//! leaves there (named [`NOTE_PREFIX`]..., such as the multipart uploads a bucket store had
//! open) are read before their directory goes, for the store to finish their business.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use super::layout;

/// A blob being written: a temp file of this process's, readable while it is written
/// ([`Staged::open`] falls back to the local copy once it was committed), made the blob
/// by [`super::Store::commit_blob`] or removed by [`Staged::discard`].
#[derive(Debug, Clone)]
pub struct Staged {
    temp: PathBuf,
    committed: PathBuf,
}

impl Staged {
    /// A blob staged at `temp`, found at `committed` on local disk once committed.
    pub(super) fn new(temp: PathBuf, committed: PathBuf) -> Self {
        Staged { temp, committed }
    }

    /// The temp file.
    pub(crate) fn temp(&self) -> &Path {
        &self.temp
    }

    /// Whether the blob's bytes are on this disk once committed (the filesystem store), or
    /// only in a shared backend for now (blocking: one `stat`).
    pub fn is_here(&self) -> bool {
        self.committed.is_file()
    }

    /// Creates the temp file for writing (blocking).
    pub fn create(&self) -> io::Result<std::fs::File> {
        std::fs::File::create(&self.temp)
    }

    /// Opens what was written so far for reading: the temp file, or the stored blob once
    /// it was committed (blocking).
    pub fn open(&self) -> io::Result<std::fs::File> {
        std::fs::File::open(&self.temp).or_else(|_| std::fs::File::open(&self.committed))
    }

    /// Removes the temp file (a failed or cancelled download).
    pub async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

/// The name start of a note a process keeps in its temp directory while some business is
/// open (see [`prepare`]).
pub(super) const NOTE_PREFIX: &str = "note-";

/// What [`prepare`] found.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// Temp files removed.
    pub(super) cleaned: usize,
    /// The contents of the notes left by processes that are gone.
    pub(super) notes: Vec<Vec<u8>>,
}

/// Removes temp files under `root` left by processes that are gone (with `loose`, also
/// loose ones left by versions before per-process directories), reading their notes first,
/// then claims this process's own directory, so that a start-up failure is seen here rather
/// than at the first pull.
pub(super) fn prepare(root: &Path, loose: bool) -> io::Result<Prepared> {
    let prepared = clean_tmp(&layout::tmp_dir(root), loose)?;
    own_tmp_dir(root)?;
    Ok(prepared)
}

/// A fresh path for a note labelled `label` in this process's own temp directory (see
/// [`prepare`]).
pub(super) fn note_path_in(root: &Path, label: &str) -> PathBuf {
    temp_path_in(root, &format!("{NOTE_PREFIX}{label}"))
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

/// Removes from `tmp` every directory whose lock can be taken (its process is gone), after
/// reading its notes, and, with `loose`, every file directly in it.
fn clean_tmp(tmp: &Path, loose: bool) -> io::Result<Prepared> {
    use rustix::fs::{FlockOperation, flock};
    let mut out = Prepared::default();
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
            for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                out.cleaned += 1;
                if file.file_name().to_string_lossy().starts_with(NOTE_PREFIX)
                    && let Ok(note) = std::fs::read(file.path())
                {
                    out.notes.push(note);
                }
            }
            let _ = std::fs::remove_dir_all(&path);
        } else if loose && std::fs::remove_file(&path).is_ok() {
            out.cleaned += 1;
        }
    }
    Ok(out)
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
}
