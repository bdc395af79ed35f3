//! The storage trait: what the mirror asks of a cache backend (verified blobs read by range,
//! blobs staged while they download then committed, manifests, tag records), and the types
//! it hands back. It owns no storage itself; [`super::fs::FsStore`] is the local-disk
//! backend, and `super::contract` (tests) holds the tests every backend must pass.
//!
//! The methods return boxed futures (`Arc<dyn Store>` must be object-safe); one allocation
//! per call, next to a syscall or a network round trip at least.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::access::AccessRecord;
use super::error::StoreError;
use super::listing::{ListedBlob, ListedManifest, Usage};
use super::staging::Staged;
use super::tags::{ListedTag, TagRecord};
use crate::oci::reference::{Digest, RepoName};

/// What a [`Store`] method returns: a boxed future of a result.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

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

/// Reads one stored blob by range; each backend has its own (a file, an object).
pub trait BlobReader: Send + fmt::Debug {
    /// Streams bytes `[start, end)`.
    fn read(self: Box<Self>, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>>;
}

/// A stored blob opened for reading: its size, and its bytes by range.
#[derive(Debug)]
pub struct StoredBlob {
    size: u64,
    reader: Box<dyn BlobReader>,
}

impl StoredBlob {
    /// A blob of `size` bytes read by `reader`.
    pub fn new(size: u64, reader: Box<dyn BlobReader>) -> Self {
        StoredBlob { size, reader }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Streams bytes `[start, end)`.
    pub fn read(self, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>> {
        self.reader.read(start, end)
    }
}

/// A tag's name in the store: `registry/repo:tag`.
#[derive(Debug, Clone, Copy)]
pub struct TagKey<'a> {
    /// Canonical registry name.
    pub registry: &'a str,
    /// Repository.
    pub repo: &'a RepoName,
    /// Tag.
    pub tag: &'a str,
}

/// How long the inventory lease ([`Store::lock_inventory`]) lives unless renewed; its
/// holder renews it every third of that while it prunes.
pub const INVENTORY_LEASE_TTL: Duration = Duration::from_secs(600);

/// Who does a job that one replica at a time must do (fetch a blob from the upstream,
/// prune), among the processes sharing a store.
#[derive(Debug)]
pub enum Claim {
    /// The caller does: it renews the lease while it works and releases it when done.
    Owner(Box<dyn Lease>),
    /// Another process does; `owner` names it (for a blob fetch: its advertised URL, how
    /// it is reached).
    Taken {
        /// The holder's name.
        owner: String,
    },
}

/// A held lease (a blob fetch, the inventory). Dropping it without [`Lease::release`] lets
/// it expire.
pub trait Lease: Send + Sync + fmt::Debug {
    /// Extends the lease by its lifetime again; an error when it is no longer ours.
    fn renew(&self) -> StoreFuture<'_, ()>;

    /// Gives the lease up (only if it is still ours), so that the next claim owns it.
    fn release(self: Box<Self>) -> StoreFuture<'static, ()>;
}

/// The fetch lease of a store with one writer (the filesystem): the process's own single
/// flight is all the coordination there is.
#[derive(Debug)]
pub struct LocalLease;

impl Lease for LocalLease {
    fn renew(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A cache backend. Content is visible under its digest only once verified; nothing under
/// a digest is ever rewritten. Tag records are the only mutable entries.
pub trait Store: Send + Sync + fmt::Debug {
    /// Names the backend and where it keeps the cache, for logs (`filesystem /var/cache`).
    fn describe(&self) -> String;

    /// The backend's kind, for readiness and metric labels: `filesystem`, `s3`.
    fn kind(&self) -> &'static str;

    /// Checks that the backend beyond the local directory answers (readiness: a bucket that
    /// cannot be reached). The local directory is probed separately; the filesystem store
    /// has nothing beyond it.
    fn check_remote(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The directory on local disk this store works in: downloads stage there, and for the
    /// filesystem store it holds the whole cache (the inventory scans it).
    fn local_root(&self) -> &Path;

    /// Refuses ([`StoreError::DiskFull`]) when a blob of `size` bytes cannot be staged and
    /// stored, so a full disk gives the client a clear error before anything is written.
    fn ensure_space(&self, size: u64) -> Result<(), StoreError>;

    /// Where the blob `digest` is written while it downloads (a local temp file).
    fn stage(&self, digest: &Digest) -> Staged;

    /// The stored blob's size, if present.
    fn stat_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>>;

    /// Opens a stored blob for reading; `None` when it is not stored.
    fn open_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<StoredBlob>>;

    /// Makes a fully written, fsynced and verified staged blob of `size` bytes visible as
    /// the blob `digest` (a no-op, the staged file dropped, when it is there already).
    fn commit_blob<'a>(
        &'a self,
        staged: &'a Staged,
        digest: &'a Digest,
        size: u64,
    ) -> StoreFuture<'a, ()>;

    /// Whether manifest `digest` is stored (cheap: done on the serving path, so that a
    /// manifest another process pruned is seen as gone at once).
    fn has_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, bool>;

    /// A stored manifest by digest.
    fn get_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Manifest>>;

    /// Stores a manifest after checking that its bytes hash to its digest
    /// ([`StoreError::Unverified`] otherwise).
    fn put_manifest<'a>(&'a self, manifest: &'a Manifest) -> StoreFuture<'a, ()>;

    /// When the record of a tag was last written; `None` when there is none (cheap: done on
    /// the serving path, so that a record another process changed is seen at once).
    fn tag_modified<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<SystemTime>>;

    /// A tag's record; missing or unreadable is `None`.
    fn get_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<TagRecord>>;

    /// `put_tag_from` without an endpoint (content that came from no upstream: an archive,
    /// tests).
    #[allow(dead_code)]
    fn put_tag<'a>(
        &'a self,
        tag: TagKey<'a>,
        media_type: &'a str,
        digest: &'a Digest,
    ) -> StoreFuture<'a, ()> {
        self.put_tag_from(tag, media_type, digest, None)
    }

    /// Records that the tag now resolves to `digest` for `media_type` (other media types'
    /// entries kept), noting which upstream endpoint answered (a registry with `endpoints`).
    fn put_tag_from<'a>(
        &'a self,
        tag: TagKey<'a>,
        media_type: &'a str,
        digest: &'a Digest,
        endpoint: Option<&'a str>,
    ) -> StoreFuture<'a, ()>;

    /// Records that the tag was last pulled at `at` (Unix seconds; a later time already
    /// there is kept). A tag with no record gets none: `false`.
    fn set_tag_accessed<'a>(&'a self, tag: TagKey<'a>, at: u64) -> StoreFuture<'a, bool>;

    /// Forgets a tag so that its next pull asks the upstream; `false` when there was none.
    fn remove_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, bool>;

    /// A URL from which a client can GET the stored blob `digest` itself for `ttl` (a
    /// presigned bucket URL), when the backend can give one and holds the blob; the default
    /// (local disk): `None`, the mirror serves the bytes.
    fn blob_url<'a>(
        &'a self,
        digest: &'a Digest,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        let _ = (digest, ttl);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Claims the upstream fetch of blob `digest` for `owner` (this replica's advertised
    /// URL) for `ttl`, unless another live claim holds it. A lease of `owner` itself (left
    /// by an earlier life of this replica) counts as expired. The default (one machine):
    /// always [`Claim::Owner`].
    fn claim_fetch<'a>(
        &'a self,
        digest: &'a Digest,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        let _ = (digest, owner, ttl);
        Box::pin(std::future::ready(Ok(Claim::Owner(Box::new(LocalLease)))))
    }

    // The inventory's view (`list`, `prune`, `maxSize`): everything listed with its size
    // and times, content removed, and who may prune. Listing only reads, so it works while
    // other processes serve from the same store.

    /// Every stored blob, with its size and when it was stored.
    fn list_blobs(&self) -> StoreFuture<'_, Vec<ListedBlob>>;

    /// Every stored manifest, with its bytes, media type, time and access record.
    fn list_manifests(&self) -> StoreFuture<'_, Vec<ListedManifest>>;

    /// Every tag record (unreadable ones skipped and logged).
    fn list_tags(&self) -> StoreFuture<'_, Vec<ListedTag>>;

    /// Bytes and number of the stored blobs and manifests (blobs first): cheaper than
    /// listing them with their contents.
    fn usage(&self) -> StoreFuture<'_, (Usage, Usage)>;

    /// The access record of manifest `digest` (last pull by digest); missing or unreadable
    /// is `None`.
    fn get_access<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<AccessRecord>>;

    /// Writes the access record of manifest `digest`, or removes it (`None`).
    fn set_access<'a>(
        &'a self,
        digest: &'a Digest,
        record: Option<&'a AccessRecord>,
    ) -> StoreFuture<'a, ()>;

    /// Removes manifest `digest` with its media type and access record (gone already is
    /// fine).
    fn remove_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()>;

    /// Removes blob `digest` (gone already is fine). A read in progress keeps its bytes.
    fn remove_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()>;

    /// Takes the right to prune and evict, as `owner` (a name for logs), for
    /// [`INVENTORY_LEASE_TTL`] unless renewed. On the filesystem this waits for the file
    /// lock (other processes on the directory hold it briefly); on a shared store it is a
    /// lease that one replica holds at a time: [`Claim::Taken`] names the holder when
    /// `wait` is false, or when it still holds it after a bounded wait.
    fn lock_inventory<'a>(&'a self, owner: &'a str, wait: bool) -> StoreFuture<'a, Claim>;

    /// Removes local copies of blobs the shared store no longer holds (pruned through
    /// another replica) and that were not used for a while; how many went. The default (the
    /// local disk is the store): none.
    fn sweep_local_copies(&self) -> StoreFuture<'_, usize> {
        Box::pin(std::future::ready(Ok(0)))
    }
}
