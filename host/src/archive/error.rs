//! What can be wrong with an archive or its import and export: one error type naming the
//! archive and, when one entry is to blame, that entry.

use std::fmt;

use crate::oci::reference::Digest;
use crate::store::StoreError;

/// An archive could not be imported or exported.
#[derive(Debug, thiserror::Error)]
pub struct ArchiveError {
    /// The archive (file or directory) as given.
    pub archive: String,
    /// The entry to blame (`blobs/sha256/...`, `manifest.json`), if one is.
    pub entry: Option<String>,
    /// What is wrong.
    #[source]
    pub problem: Problem,
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(e) => write!(f, "{}: entry {e}: {}", self.archive, self.problem),
            None => write!(f, "{}: {}", self.archive, self.problem),
        }
    }
}

impl ArchiveError {
    /// An error of the archive `archive` as a whole.
    pub fn whole(archive: &str, problem: Problem) -> ArchiveError {
        ArchiveError {
            archive: archive.to_owned(),
            entry: None,
            problem,
        }
    }

    /// An error of one entry of `archive`.
    pub fn entry(archive: &str, entry: &str, problem: Problem) -> ArchiveError {
        ArchiveError {
            archive: archive.to_owned(),
            entry: Some(entry.to_owned()),
            problem,
        }
    }
}

/// What is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The store refused (disk full, bucket unreachable).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Content that does not hash to the digest it is stored or named under.
    #[error("content hashes to {found}, not {expected}: the archive is corrupt")]
    DigestMismatch {
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        found: Digest,
    },
    /// Content whose size differs from what its descriptor says.
    #[error("{size} bytes, but {what} says {expected}")]
    SizeMismatch {
        /// Bytes found.
        size: u64,
        /// Bytes expected.
        expected: u64,
        /// Who said so.
        what: String,
    },
    /// A blob under another algorithm than sha256.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    Algorithm(String),
    /// A `blobs/` entry whose name is not a digest.
    #[error("not a blob name (blobs/sha256/<64 hex digits>)")]
    BlobName,
    /// A metadata file too large to be one.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Bad JSON in a metadata file, manifest or config.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A manifest that cannot be read.
    #[error("{0}")]
    Manifest(String),
    /// Neither an OCI layout nor a `docker save` archive.
    #[error(
        "neither index.json (an OCI image layout) nor manifest.json (docker save) found: not an image archive"
    )]
    NotAnArchive,
    /// Something named in the archive is not in it.
    #[error("{what} needs {missing}, which the archive does not hold")]
    Missing {
        /// Who needs it.
        what: String,
        /// What is missing.
        missing: String,
    },
    /// An image that nothing names.
    #[error("image {0} carries no name: give --as REGISTRY/REPO:TAG")]
    NoName(Digest),
    /// An image named by a tag alone (OCI `ref.name`), without a repository.
    #[error("image {digest} carries only the tag {tag:?}, no repository: give --as REGISTRY/REPO")]
    TagOnly {
        /// The image.
        digest: Digest,
        /// Its tag.
        tag: String,
    },
    /// A name that is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `--as` with a tag, for an archive of several images.
    #[error(
        "--as {0} names one image, but the archive holds {1}: give --as REGISTRY/REPO (no tag) to keep each image's own tag"
    )]
    AsSeveral(String, usize),
    /// The archive holds no image at all.
    #[error("the archive holds no image")]
    Empty,
    /// A blob of the cache that does not match its digest (export).
    #[error("cached blob {digest} is corrupt: its bytes hash to {found}")]
    CorruptCache {
        /// The blob.
        digest: Digest,
        /// What it hashes to.
        found: Digest,
    },
    /// A cached blob whose length changed while it was read (export).
    #[error("cached blob {digest} gave {got} bytes, {size} expected")]
    ShortBlob {
        /// The blob.
        digest: Digest,
        /// Bytes read.
        got: u64,
        /// Its size.
        size: u64,
    },
}
