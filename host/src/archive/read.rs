//! Reading an archive's entries into the store's staging (blocking): a tar (gzip or not,
//! detected by its magic bytes) read once from start to end, or a directory walked. Every
//! regular file is copied to a temp file of its own and hashed on the way; a
//! `blobs/sha256/<hex>` entry must hash to its name. The small metadata files
//! (`index.json`, `manifest.json`, `oci-layout`, `repositories`) are kept in memory; links
//! are remembered. Nothing here becomes visible: [`super::import`] decides what is committed.
//!
//! Memory stays bounded whatever the archive: files are copied through one 64 KiB buffer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use sha2::Digest as _;

use super::error::{ArchiveError, Problem};
use crate::oci::reference::Digest;
use crate::store::{Staged, Store};

/// Files kept in memory rather than staged.
const META_FILES: &[&str] = &["index.json", "manifest.json", "oci-layout", "repositories"];
/// The largest metadata file accepted.
pub const MAX_META: u64 = 16 << 20;
/// Entries of a directory walked (a bound against a directory that is not a layout).
const MAX_DIR_ENTRIES: usize = 1_000_000;

/// A staged file: where it is, what it hashes to, how long it is.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// The temp file.
    pub staged: Staged,
    /// sha256 of its bytes.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// It starts with gzip's magic bytes.
    pub gzip: bool,
}

/// What an archive held, staged.
#[derive(Debug, Default)]
pub struct Staging {
    /// `blobs/sha256/<hex>` entries, verified.
    pub blobs: HashMap<Digest, StagedFile>,
    /// Every other regular file, by path (a `docker save`'s configs and layer tars).
    pub files: HashMap<String, StagedFile>,
    /// Metadata files, by name.
    pub meta: HashMap<String, Vec<u8>>,
    /// Links: path -> the path it points to (relative to the archive's root).
    pub links: HashMap<String, String>,
    /// Bytes staged.
    pub bytes: u64,
}

impl Staging {
    /// The staged file at `path`, following links (a few hops at most).
    pub fn file(&self, path: &str) -> Option<&StagedFile> {
        let mut p = normalize(path)?;
        for _ in 0..8 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            if let Some(d) = blob_digest(&p).and_then(Result::ok)
                && let Some(f) = self.blobs.get(&d)
            {
                return Some(f);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    /// Removes every staged temp file (blocking; those committed are gone already).
    pub fn discard_blocking(&self) {
        for f in self.blobs.values().chain(self.files.values()) {
            let _ = std::fs::remove_file(f.staged.temp());
        }
    }
}

/// An archive path without `./`, `.` components or a leading `/`; `None` for one that
/// climbs out with `..`.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The digest a `blobs/<alg>/<hex>` path names: `None` when the path is not under
/// `blobs/`, an error when it is but names no sha256 digest.
pub fn blob_digest(path: &str) -> Option<Result<Digest, Problem>> {
    let rest = path.strip_prefix("blobs/")?;
    let Some((alg, hex)) = rest.split_once('/') else {
        return Some(Err(Problem::BlobName));
    };
    if alg != "sha256" {
        return Some(Err(Problem::Algorithm(alg.to_owned())));
    }
    Some(Digest::parse(&format!("sha256:{hex}")).map_err(|_| Problem::BlobName))
}

/// Reads the archive at `path` (a tar, a gzip-compressed tar, or a directory) into the
/// staging of `store`. `progress` is called with the bytes read from disk as they are.
/// On error every file staged so far is removed.
pub fn read_archive(
    path: &Path,
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staging, ArchiveError> {
    let name = path.display().to_string();
    let mut staging = Staging::default();
    let read = if path.is_dir() {
        read_dir(path, &name, store, &mut staging, progress)
    } else {
        read_tar(path, &name, store, &mut staging, progress)
    };
    match read {
        Ok(()) => Ok(staging),
        Err(e) => {
            staging.discard_blocking();
            Err(e)
        }
    }
}

/// The size to show progress against: the file's length, or a directory's files' total.
pub fn total_size(path: &Path) -> u64 {
    if !path.is_dir() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    let mut budget = MAX_DIR_ENTRIES;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return total;
            }
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Counts the bytes read through it.
struct Counting<'a, R> {
    inner: R,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

fn read_tar(
    path: &Path,
    name: &str,
    store: &dyn Store,
    staging: &mut Staging,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), ArchiveError> {
    let whole = |e: io::Error| ArchiveError::whole(name, Problem::Io(e));
    let file = std::fs::File::open(path).map_err(whole)?;
    let mut input = BufReader::with_capacity(
        1 << 16,
        Counting {
            inner: file,
            progress,
        },
    );
    let gzip = input.fill_buf().map_err(whole)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(whole)?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            ArchiveError::whole(
                name,
                Problem::Io(io::Error::new(
                    e.kind(),
                    format!("not a valid tar after {count} entries: {e}"),
                )),
            )
        })?;
        count += 1;
        let raw = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(whole)?;
        let Some(entry_path) = normalize(&raw) else {
            return Err(ArchiveError::entry(
                name,
                &raw,
                Problem::Io(io::Error::other("path climbs out of the archive")),
            ));
        };
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                stage_file(&entry_path, size, &mut entry, name, store, staging)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ArchiveError::entry(name, &entry_path, Problem::Io(e)))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // A symbolic link is relative to its own directory, a hard link to the root.
                let joined = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                    match entry_path.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{target}"),
                        None => target,
                    }
                } else {
                    target
                };
                if let Some(t) = normalize(&joined) {
                    staging.links.insert(entry_path, t);
                }
            }
            _ => {}
        }
    }
    // Whatever follows the tar's end (gzip padding, zeros) is left unread.
    if count == 0 {
        return Err(ArchiveError::whole(name, Problem::NotAnArchive));
    }
    Ok(())
}

fn read_dir(
    root: &Path,
    name: &str,
    store: &dyn Store,
    staging: &mut Staging,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), ArchiveError> {
    let mut stack = vec![root.to_owned()];
    let mut budget = MAX_DIR_ENTRIES;
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| ArchiveError::whole(name, Problem::Io(e)))?;
        for e in rd {
            let e = e.map_err(|e| ArchiveError::whole(name, Problem::Io(e)))?;
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return Err(ArchiveError::whole(
                    name,
                    Problem::Io(io::Error::other("more than a million entries")),
                ));
            }
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            let meta = std::fs::metadata(&path)
                .map_err(|err| ArchiveError::entry(name, &rel, Problem::Io(err)))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let file = std::fs::File::open(&path)
                .map_err(|err| ArchiveError::entry(name, &rel, Problem::Io(err)))?;
            let mut counted = Counting {
                inner: file,
                progress,
            };
            stage_file(&rel, meta.len(), &mut counted, name, store, staging)?;
        }
    }
    Ok(())
}

/// Stages (or keeps in memory) one regular file of `size` bytes read from `input`.
fn stage_file(
    path: &str,
    size: u64,
    input: &mut dyn Read,
    archive: &str,
    store: &dyn Store,
    staging: &mut Staging,
) -> Result<(), ArchiveError> {
    let err = |p: Problem| ArchiveError::entry(archive, path, p);
    if META_FILES.contains(&path) {
        if size > MAX_META {
            return Err(err(Problem::TooLarge { limit: MAX_META }));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        input
            .take(MAX_META + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(Problem::Io(e)))?;
        staging.meta.insert(path.to_owned(), bytes);
        return Ok(());
    }
    let named = match blob_digest(path) {
        Some(Ok(d)) => Some(d),
        Some(Err(p)) => return Err(err(p)),
        None => None,
    };
    store
        .ensure_space(size)
        .map_err(|e| err(Problem::Store(e)))?;
    // A file that is not a named blob is staged under a name of its own until it is known.
    let label = named.clone().unwrap_or_else(|| Digest::of(path.as_bytes()));
    let staged = store.stage(&label);
    let copied = copy_hashing(input, &staged);
    let (digest, written, gzip) = match copied {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(staged.temp());
            return Err(err(Problem::Io(e)));
        }
    };
    let file = StagedFile {
        staged,
        digest: digest.clone(),
        size: written,
        gzip,
    };
    if written != size {
        let _ = std::fs::remove_file(file.staged.temp());
        return Err(err(Problem::SizeMismatch {
            size: written,
            expected: size,
            what: "its header".into(),
        }));
    }
    staging.bytes += written;
    match named {
        Some(expected) if expected != digest => {
            let _ = std::fs::remove_file(file.staged.temp());
            Err(err(Problem::DigestMismatch {
                expected,
                found: digest,
            }))
        }
        Some(expected) => {
            if let Some(old) = staging.blobs.insert(expected, file) {
                let _ = std::fs::remove_file(old.staged.temp());
            }
            Ok(())
        }
        None => {
            if let Some(old) = staging.files.insert(path.to_owned(), file) {
                let _ = std::fs::remove_file(old.staged.temp());
            }
            Ok(())
        }
    }
}

/// Copies `input` into the staged temp file, fsyncs it; its sha256, length and whether it
/// starts with gzip's magic.
fn copy_hashing(input: &mut dyn Read, staged: &Staged) -> io::Result<(Digest, u64, bool)> {
    let mut out = staged.create()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = 0u64;
    let mut head: Vec<u8> = Vec::with_capacity(2);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if head.len() < 2 {
            let want = (2 - head.len()).min(n);
            head.extend_from_slice(&buf[..want]);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        written += n as u64;
    }
    out.sync_all()?;
    let digest = Digest::from_sha256_hex(hex::encode(hasher.finalize()));
    Ok((digest, written, head == [0x1f, 0x8b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../b"), None);
        assert!(matches!(
            blob_digest("blobs/sha512/aa"),
            Some(Err(Problem::Algorithm(_)))
        ));
        assert!(matches!(
            blob_digest("blobs/sha256/xyz"),
            Some(Err(Problem::BlobName))
        ));
        assert!(blob_digest("abc/layer.tar").is_none());
        let hex = "a".repeat(64);
        assert!(matches!(
            blob_digest(&format!("blobs/sha256/{hex}")),
            Some(Ok(_))
        ));
    }
}
