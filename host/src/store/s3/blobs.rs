//! Blob bytes between the bucket and local disk for [`super::S3Store`]: the ranged, streamed
//! read of a blob object, the upload of a verified staged file (one put, or a multipart
//! upload in parts read from the file), and the background fill of the local read-through
//! copy. It does not decide where anything lives (the store and [`crate::store::layout`] do).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oci::reference::Digest;
use crate::store::backend::BlobReader;
use crate::store::error::StoreError;
use crate::store::files::sync_dir;
use crate::store::staging::temp_path_in;

/// Blobs of this size and above are uploaded in parts of this size (bounded memory; S3
/// wants parts of 5 MiB at least).
pub(super) const PART_SIZE: usize = 8 * 1024 * 1024;

/// A blob object, read by range from the bucket as a stream.
#[derive(Debug)]
pub(super) struct ObjectBlob {
    pub(super) bucket: Arc<AmazonS3>,
    pub(super) key: Key,
}

impl BlobReader for ObjectBlob {
    fn read(self: Box<Self>, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>> {
        if start >= end {
            return Box::pin(futures_util::stream::empty());
        }
        let ObjectBlob { bucket, key } = *self;
        let opened = async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(start..end)),
                ..GetOptions::default()
            };
            let got = bucket.get_opts(&key, opts).await.map_err(io::Error::from)?;
            Ok::<_, io::Error>(got.into_stream().map_err(io::Error::from))
        };
        Box::pin(futures_util::stream::once(opened).try_flatten())
    }
}

/// Uploads the verified file at `path` (`size` bytes) as the object `key`. Nothing appears
/// under `key` unless every byte was sent. Returns whether this upload stored it (`false`:
/// it was there already, another replica stored it).
pub(super) async fn upload(
    bucket: &AmazonS3,
    key: &Key,
    path: &Path,
    size: u64,
) -> Result<bool, StoreError> {
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    if len != size {
        return Err(
            io::Error::other(format!("staged blob is {len} bytes, {size} expected")).into(),
        );
    }
    if size < PART_SIZE as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        return match bucket.put_opts(key, bytes.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    // Large: skip the upload when another replica stored it already.
    match bucket.head(key).await {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut upload = bucket.put_multipart(key).await?;
    match send_parts(&mut *upload, &mut file, size).await {
        Ok(()) => match upload.complete().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let _ = upload.abort().await;
                Err(e.into())
            }
        },
        Err(e) => {
            // Nothing becomes visible under the key; the parts sent so far are dropped.
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// Sends `size` bytes of `file` as parts of [`PART_SIZE`], one at a time.
async fn send_parts(
    upload: &mut dyn MultipartUpload,
    file: &mut tokio::fs::File,
    size: u64,
) -> Result<(), StoreError> {
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(PART_SIZE as u64) as usize;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).await?;
        upload.put_part(PutPayload::from(buf)).await?;
        sent += want as u64;
    }
    Ok(())
}

/// The digests whose local copy is being filled, so that each is filled once at a time.
#[derive(Debug, Default)]
pub(super) struct Fills(Mutex<HashSet<String>>);

impl Fills {
    /// Claims `hex`; `false` when a fill of it runs already.
    fn claim(&self, hex: &str) -> bool {
        self.lock().insert(hex.to_owned())
    }

    fn release(&self, hex: &str) {
        self.lock().remove(hex);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a fill reads from and writes to.
#[derive(Debug, Clone)]
pub(super) struct FillTarget {
    /// The blob object.
    pub(super) bucket: Arc<AmazonS3>,
    pub(super) key: Key,
    /// The local root (staging) and the local copy's path.
    pub(super) local_root: PathBuf,
    pub(super) local: PathBuf,
    /// The local copy's bound, if any.
    pub(super) bound: Option<Arc<super::bound::LocalBound>>,
}

/// Starts filling the local copy of blob `digest` from the bucket in the background,
/// unless a fill of it runs already.
pub(super) fn fill_in_background(fills: Arc<Fills>, target: FillTarget, digest: Digest) {
    let hex = digest.hex().to_owned();
    if !fills.claim(&hex) {
        return;
    }
    tokio::spawn(async move {
        if let Err(e) = fill(&target, &digest).await {
            tracing::warn!(digest = %digest, error = %e, "could not keep a local copy of a blob");
        }
        fills.release(&hex);
    });
}

/// Streams the blob object to a temp file, checks its sha256, and renames it into place.
async fn fill(t: &FillTarget, digest: &Digest) -> Result<(), StoreError> {
    if tokio::fs::try_exists(&t.local).await.unwrap_or(false) {
        return Ok(());
    }
    let got = t.bucket.get_opts(&t.key, GetOptions::default()).await?;
    crate::store::fs::ensure_space_at(&t.local_root, got.meta.size)?;
    let temp = temp_path_in(&t.local_root, digest.hex());
    let result = async {
        let mut file = tokio::fs::File::create(&temp).await?;
        let mut hash = Sha256::new();
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hash.update(&chunk);
            file.write_all(&chunk).await?;
        }
        let hex = hex::encode(hash.finalize());
        if hex != digest.hex() {
            return Err(io::Error::other(format!(
                "bucket object of {digest} hashes to sha256:{hex}"
            ))
            .into());
        }
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, &t.local).await?;
        sync_dir(t.local.parent()).await?;
        if let Some(b) = &t.bound {
            b.added(&t.local_root);
        }
        Ok::<_, StoreError>(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}
