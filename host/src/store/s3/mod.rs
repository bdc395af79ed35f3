//! The S3-compatible backend ([`S3Store`]): blobs, manifests and tag records as objects in a
//! bucket under a key prefix (the keys of [`crate::store::layout`]), with downloads staged
//! on local disk and a local read-through copy of blobs. It implements [`Store`] and
//! nothing else.
//!
//! Blob bytes move in [`blobs`], the bucket client is built and checked in [`client`], tag
//! records are updated in [`records`], leases (one upstream fetch per blob across replicas,
//! one pruning replica) live in [`leases`]; [`inventory`] lists and removes content for
//! `list`, `prune` and `maxSize`; [`fallback`] keeps local copies of manifests and tag
//! records and serves them while the bucket cannot be reached.
//!
//! Content appears under a digest key only once verified and fully sent (a conditional
//! create, or a completed multipart upload); tag records are updated with conditional
//! writes against the ETag read, so replicas sharing a bucket do not lose each other's
//! entries.

mod blobs;
mod bound;
mod client;
mod fallback;
mod inventory;
mod leases;
mod records;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

use super::access::AccessRecord;
use super::backend::{Claim, Manifest, Store, StoreFuture, StoredBlob, TagKey};
use super::error::StoreError;
use super::layout;
use super::listing::{ListedBlob, ListedManifest, Usage};
use super::staging::{self, Staged, temp_path_in};
use super::tags::{ListedTag, TagRecord};
use crate::metrics::ContentKind;
use crate::oci::reference::Digest;
use blobs::{FillTarget, Fills, ObjectBlob};

/// Blob uploads to the bucket at once (memory: one part of [`blobs::PART_SIZE`] each).
const UPLOADS_AT_ONCE: usize = 1;

/// Where the bucket is and how to sign in to it (plain values; the configuration maps to
/// it). Its `Debug` shows no secret (nor a password in the endpoint URL).
#[derive(Clone)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix: empty, or ending in `/`.
    pub prefix: String,
    /// Region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`), addressed path-style, plain
    /// HTTP allowed; `None` is AWS.
    pub endpoint: Option<String>,
    /// Static keys; `None` takes them from the environment (keys, web identity, container
    /// credentials, instance metadata).
    pub credentials: Option<S3Keys>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field(
                "endpoint",
                &self.endpoint.as_ref().map(|_| client::where_is(self)),
            )
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Static S3 credentials (their `Debug` shows none of them).
#[derive(Clone)]
pub struct S3Keys {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Keys")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The S3-compatible store (one per process; its handles share connections).
pub struct S3Store {
    /// Small requests.
    bucket: Arc<AmazonS3>,
    /// Streamed blob reads.
    streams: Arc<AmazonS3>,
    /// The readiness check (no retries).
    probe: Arc<AmazonS3>,
    /// The local copies, laid out as the filesystem store.
    local: super::fs::FsStore,
    bucket_name: String,
    prefix: String,
    place: String,
    local_root: PathBuf,
    fills: Arc<Fills>,
    /// Uploads running at once: each holds up to one part in memory, and clients already
    /// have their bytes, so a queue costs only how soon the others see the blob.
    uploads: tokio::sync::Semaphore,
    /// `storage.localCache.maxSize`, when set.
    bound: Option<Arc<bound::LocalBound>>,
    /// Serialises this process's tag record updates (the conditional writes handle the
    /// other processes).
    tag_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket_name)
            .field("prefix", &self.prefix)
            .field("at", &self.place)
            .field("local_root", &self.local_root)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Creates the local layout (staging and the local copy) under `local_root`, removing
    /// temp files of processes that are gone, then checks that the bucket is reachable and
    /// the credentials work ([`StoreError::Bucket`] names what failed, within 10 s).
    ///
    /// The credentials need `s3:ListBucket` (checked here; without it S3 answers 403
    /// instead of 404 for a missing key), `s3:GetObject`, `s3:PutObject` and
    /// `s3:DeleteObject` (tag records) on the prefix, and `s3:AbortMultipartUpload`.
    pub async fn open(opts: S3Options, local_root: &Path) -> Result<S3Store, StoreError> {
        if !(opts.prefix.is_empty() || opts.prefix.ends_with('/')) {
            return Err(client::bucket_error(
                &opts,
                format!("prefix {:?} must be empty or end in '/'", opts.prefix),
            ));
        }
        let root = local_root.to_owned();
        let prepared = tokio::task::spawn_blocking(move || {
            for dir in layout::DIRS {
                std::fs::create_dir_all(root.join(dir))?;
            }
            staging::prepare(&root, true)
        })
        .await
        .map_err(std::io::Error::other)??;
        if prepared.cleaned > 0 {
            tracing::info!(
                cleaned = prepared.cleaned,
                "removed temp files left by processes that are gone"
            );
        }
        let probe_key = Key::parse(format!("{}{}", opts.prefix, layout::PROBE_KEY))
            .map_err(|e| client::bucket_error(&opts, format!("bad prefix: {e}")))?;
        let probe = client::build(&opts, client::Profile::Probe)?;
        client::probe(&probe, &probe_key, &opts.bucket, &client::where_is(&opts)).await?;
        let bucket = client::build(&opts, client::Profile::Requests)?;
        blobs::abort_left_uploads(&bucket, &prepared.notes).await;
        Ok(S3Store {
            bucket,
            streams: client::build(&opts, client::Profile::Streams)?,
            probe,
            local: super::fs::FsStore::at(local_root),
            place: client::where_is(&opts),
            bucket_name: opts.bucket,
            prefix: opts.prefix,
            local_root: local_root.to_owned(),
            fills: Arc::default(),
            uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
            bound: None,
            tag_lock: tokio::sync::Mutex::const_new(()),
        })
    }

    /// Bounds the local copy of blobs to `max` bytes (`storage.localCache.maxSize`): the least
    /// recently used copies go (the bucket keeps every blob).
    pub fn with_local_bound(mut self, max: Option<u64>) -> Self {
        self.bound = max.map(bound::LocalBound::new);
        self
    }

    /// A local copy was added: trims the copies when bounded.
    fn copy_added(&self) {
        if let Some(b) = &self.bound {
            b.added(&self.local_root);
        }
    }

    /// The object key of `relative` (a layout key) under the prefix.
    fn key(&self, relative: &str) -> Result<Key, StoreError> {
        Ok(Key::parse(format!("{}{relative}", self.prefix)).map_err(object_store::Error::from)?)
    }

    fn blob_key(&self, digest: &Digest) -> Result<Key, StoreError> {
        self.key(&layout::blob_key(digest.hex()))
    }

    /// The local read-through copy of a blob.
    fn local_blob(&self, digest: &Digest) -> PathBuf {
        layout::blob(&self.local_root, digest.hex())
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        if let Ok(m) = tokio::fs::metadata(self.local_blob(digest)).await {
            return Ok(Some(m.len()));
        }
        match self.bucket.head(&self.blob_key(digest)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn open_stored(&self, digest: &Digest) -> Result<Option<StoredBlob>, StoreError> {
        if let Some(local) = super::fs::open_blob_file(self.local_blob(digest)).await? {
            if self.bound.is_some() {
                bound::touch(self.local_blob(digest));
            }
            return Ok(Some(local));
        }
        let key = self.blob_key(digest)?;
        let size = match self.bucket.head(&key).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        blobs::fill_in_background(
            self.fills.clone(),
            FillTarget {
                bucket: self.streams.clone(),
                key: key.clone(),
                local_root: self.local_root.clone(),
                local: self.local_blob(digest),
                bound: self.bound.clone(),
            },
            digest.clone(),
        );
        let reader = ObjectBlob {
            bucket: self.streams.clone(),
            key,
        };
        Ok(Some(StoredBlob::new(size, Box::new(reader))))
    }

    async fn commit(&self, staged: &Staged, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let temp = staged.temp();
        let local = self.local_blob(digest);
        if tokio::fs::try_exists(&local).await.unwrap_or(false) {
            // Stored already (by another download of the same digest, or read before).
            let _ = tokio::fs::remove_file(temp).await;
            return Ok(());
        }
        let permit = self.uploads.acquire().await;
        let key = self.blob_key(digest)?;
        let uploaded = blobs::upload(&self.bucket, &key, temp, size, &self.local_root).await;
        drop(permit);
        let uploaded = match uploaded {
            // The staged file itself is wrong (short, gone): nothing is kept.
            Err(e) if !e.is_remote() => return Err(e),
            other => other,
        };
        // The bytes are verified: this replica keeps (and serves) them whatever the bucket
        // said. A blob whose upload failed stays on this replica only; the others fetch it
        // themselves.
        tokio::fs::rename(temp, &local).await?;
        super::files::sync_dir(local.parent()).await?;
        self.copy_added();
        if uploaded? {
            crate::metrics::global().disk_added(ContentKind::Blob, size);
        }
        Ok(())
    }

    async fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        if Digest::of(&m.bytes) != m.digest {
            return Err(StoreError::Unverified(m.digest.clone()));
        }
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, m.media_type.clone().into());
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let key = self.key(&layout::manifest_key(m.digest.hex()))?;
        match self
            .bucket
            .put_opts(&key, m.bytes.clone().into(), opts)
            .await
        {
            Ok(_) => {
                crate::metrics::global().disk_added(ContentKind::Manifest, m.bytes.len() as u64);
            }
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.keep_manifest(m).await;
        Ok(())
    }

    async fn read_manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        match self.read_bucket_manifest(digest).await {
            Ok(Some(m)) => {
                self.keep_manifest(&m).await;
                Ok(Some(m))
            }
            Ok(None) => Ok(None),
            Err(e) => self.local_manifest(digest, e).await,
        }
    }

    async fn read_bucket_manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let key = self.key(&layout::manifest_key(digest.hex()))?;
        let got = match self.bucket.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let declared = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref().trim().to_owned())
            .filter(|t| !t.is_empty());
        let bytes = got.bytes().await?;
        let media_type = declared.unwrap_or_else(|| crate::oci::media::sniff(&bytes));
        Ok(Some(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        }))
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        match self.bucket.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Counts a failed call to the bucket in `store_errors_total{backend="s3",op}`.
fn counted<'a, T: 'a>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let result = call.await;
        if let Err(StoreError::Remote(_) | StoreError::Bucket { .. }) = &result {
            crate::metrics::global().store_error("s3", op);
        }
        result
    })
}

impl Store for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn check_remote(&self) -> StoreFuture<'_, ()> {
        counted("check", async move {
            let key = self.key(layout::PROBE_KEY)?;
            client::probe(&self.probe, &key, &self.bucket_name, &self.place).await
        })
    }

    fn describe(&self) -> String {
        format!(
            "s3 bucket {} at {}, local copy {}",
            self.bucket_name,
            self.place,
            self.local_root.display()
        )
    }

    fn local_root(&self) -> &Path {
        &self.local_root
    }

    fn ensure_space(&self, size: u64) -> Result<(), StoreError> {
        super::fs::ensure_space_at(&self.local_root, size)
    }

    fn stage(&self, digest: &Digest) -> Staged {
        Staged::new(
            temp_path_in(&self.local_root, digest.hex()),
            self.local_blob(digest),
        )
    }

    fn stat_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>> {
        counted("stat_blob", self.stat(digest))
    }

    fn open_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<StoredBlob>> {
        counted("open_blob", self.open_stored(digest))
    }

    fn commit_blob<'a>(
        &'a self,
        staged: &'a Staged,
        digest: &'a Digest,
        size: u64,
    ) -> StoreFuture<'a, ()> {
        counted("commit_blob", self.commit(staged, digest, size))
    }

    fn has_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, bool> {
        counted("has_manifest", async move {
            match self
                .exists(&self.key(&layout::manifest_key(digest.hex()))?)
                .await
            {
                Ok(found) => Ok(found),
                Err(e) => self.local_has_manifest(digest, e),
            }
        })
    }

    fn get_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Manifest>> {
        counted("get_manifest", self.read_manifest(digest))
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Manifest) -> StoreFuture<'a, ()> {
        counted("put_manifest", self.write_manifest(manifest))
    }

    fn tag_modified<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<SystemTime>> {
        counted("tag_modified", async move {
            match self.tag_last_modified(tag).await {
                Ok(at) => Ok(at),
                Err(e) => self.local_tag_modified(tag, e),
            }
        })
    }

    fn get_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, Option<TagRecord>> {
        counted("get_tag", async move {
            match self.tag_record(tag).await {
                Ok(Some(r)) => {
                    self.keep_tag(tag, &r).await;
                    Ok(Some(r))
                }
                Ok(None) => Ok(None),
                Err(e) => self.local_tag(tag, e).await,
            }
        })
    }

    fn put_tag_from<'a>(
        &'a self,
        tag: TagKey<'a>,
        media_type: &'a str,
        digest: &'a Digest,
        endpoint: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        counted(
            "put_tag",
            self.record_tag(tag, media_type, digest, endpoint),
        )
    }

    fn set_tag_accessed<'a>(&'a self, tag: TagKey<'a>, at: u64) -> StoreFuture<'a, bool> {
        counted("set_tag_accessed", self.record_access(tag, at))
    }

    fn remove_tag<'a>(&'a self, tag: TagKey<'a>) -> StoreFuture<'a, bool> {
        counted("remove_tag", self.forget_tag(tag))
    }

    fn blob_url<'a>(
        &'a self,
        digest: &'a Digest,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        counted("blob_url", async move {
            let key = self.blob_key(digest)?;
            match self.bucket.head(&key).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let url = object_store::signer::Signer::signed_url(
                &*self.bucket,
                http::Method::GET,
                &key,
                ttl,
            )
            .await?;
            Ok(Some(url.to_string()))
        })
    }

    fn claim_fetch<'a>(
        &'a self,
        digest: &'a Digest,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        counted("claim_fetch", self.claim(digest, owner, ttl))
    }

    fn list_blobs(&self) -> StoreFuture<'_, Vec<ListedBlob>> {
        counted("list", self.list_blob_objects())
    }

    fn list_manifests(&self) -> StoreFuture<'_, Vec<ListedManifest>> {
        counted("list", self.list_manifest_objects())
    }

    fn list_tags(&self) -> StoreFuture<'_, Vec<ListedTag>> {
        counted("list", self.list_tag_objects())
    }

    fn usage(&self) -> StoreFuture<'_, (Usage, Usage)> {
        counted("list", self.bucket_usage())
    }

    fn get_access<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<AccessRecord>> {
        counted("get_access", self.read_access(digest))
    }

    fn set_access<'a>(
        &'a self,
        digest: &'a Digest,
        record: Option<&'a AccessRecord>,
    ) -> StoreFuture<'a, ()> {
        counted("set_access", self.write_access(digest, record))
    }

    fn remove_manifest<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        counted("remove", self.delete_manifest(digest))
    }

    fn remove_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        counted("remove", self.delete_blob(digest))
    }

    fn lock_inventory<'a>(&'a self, owner: &'a str, wait: bool) -> StoreFuture<'a, Claim> {
        counted("lock_inventory", self.claim_inventory(owner, wait))
    }

    fn sweep_local_copies(&self) -> StoreFuture<'_, usize> {
        counted("list", self.sweep())
    }
}
