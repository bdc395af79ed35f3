//! Blob bytes between the bucket and local disk for [`super::S3Store`]: the ranged, streamed
//! read of a blob object, the upload of a verified staged file (one put, or a multipart
//! upload in parts read from the file, noted in the staging directory while open so that a
//! process killed mid-upload has it aborted at the next start), and the background fill of
//! the local read-through copy. It does not decide where anything lives (the store and [`crate::store::layout`] do).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oci::reference::Digest;
use crate::store::backend::BlobReader;
use crate::store::error::StoreError;
use crate::store::files::sync_dir;
use crate::store::staging::{note_path_in, temp_path_in};

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

/// An open multipart upload, as noted in the staging directory (see
/// [`crate::store::staging`]) while it runs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadNote {
    /// The object key.
    key: String,
    /// The bucket's id of the upload.
    upload_id: String,
}

/// Uploads the verified file at `path` (`size` bytes) as the object `key`. Nothing appears
/// under `key` unless every byte was sent. Returns whether this upload stored it (`false`:
/// it was there already, another replica stored it). A multipart upload is noted under
/// `local_root`'s staging while it is open.
pub(super) async fn upload(
    bucket: &AmazonS3,
    key: &Key,
    path: &Path,
    size: u64,
    local_root: &Path,
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
    let id = bucket.create_multipart(key).await?;
    let note = note_path_in(local_root, "multipart");
    let noted = UploadNote {
        key: key.to_string(),
        upload_id: id.clone(),
    };
    if let Err(e) = write_note(&note, &noted).await {
        let _ = bucket.abort_multipart(key, &id).await;
        return Err(e.into());
    }
    let sent = match send_parts(bucket, key, &id, &mut file, size).await {
        Ok(parts) => bucket
            .complete_multipart(key, &id, parts)
            .await
            .map_err(Into::into),
        Err(e) => Err(e),
    };
    let result = match sent {
        Ok(_) => Ok(true),
        Err(e) => {
            // Nothing becomes visible under the key; the parts sent so far are dropped.
            if let Err(abort) = bucket.abort_multipart(key, &id).await {
                tracing::warn!(%key, error = %abort, "could not abort a failed multipart upload \
                    (a lifecycle rule on the bucket removes it)");
            }
            Err(e)
        }
    };
    let _ = tokio::fs::remove_file(&note).await;
    result
}

/// Writes `note` to `path`, synced: it must outlive a crash.
async fn write_note(path: &Path, note: &UploadNote) -> io::Result<()> {
    let json = serde_json::to_vec(note).map_err(io::Error::other)?;
    let mut f = tokio::fs::File::create(path).await?;
    f.write_all(&json).await?;
    f.sync_all().await
}

/// Aborts the multipart uploads noted by processes that are gone (killed mid-upload); a
/// failure is logged (a lifecycle rule on the bucket is the backstop).
pub(super) async fn abort_left_uploads(bucket: &AmazonS3, notes: &[Vec<u8>]) {
    let mut aborted = 0usize;
    for note in notes {
        let Ok(n) = serde_json::from_slice::<UploadNote>(note) else {
            continue;
        };
        let Ok(key) = Key::parse(&n.key) else {
            continue;
        };
        let id: MultipartId = n.upload_id;
        match bucket.abort_multipart(&key, &id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not abort a multipart upload left by a process \
                    that is gone (a lifecycle rule on the bucket removes it)");
            }
        }
    }
    if aborted > 0 {
        tracing::info!(
            aborted,
            "aborted multipart uploads left by processes that are gone"
        );
    }
}

/// Sends `size` bytes of `file` as parts of [`PART_SIZE`], one at a time; their ids.
async fn send_parts(
    bucket: &AmazonS3,
    key: &Key,
    id: &MultipartId,
    file: &mut tokio::fs::File,
    size: u64,
) -> Result<Vec<PartId>, StoreError> {
    let mut sent = 0u64;
    let mut parts = Vec::new();
    while sent < size {
        let want = (size - sent).min(PART_SIZE as u64) as usize;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).await?;
        parts.push(
            bucket
                .put_part(key, id, parts.len(), PutPayload::from(buf))
                .await?,
        );
        sent += want as u64;
    }
    Ok(parts)
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
