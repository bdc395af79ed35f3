//! Leases in the bucket for [`super::S3Store`]: which replica downloads a blob from the
//! upstream while the others stream it from that one (`leases/blobs/<hex>`), and which one
//! prunes and evicts (`leases/inventory`; keys from [`crate::store::layout`]). A lease is
//! an object holding `{owner, id, expiresAt}`:
//! created with a conditional create (`If-None-Match: *`), taken over when expired with a
//! conditional update against the ETag read, renewed the same way, deleted on release.
//!
//! Conditional writes are not atomic on every S3-compatible server (s3s-fs lets several
//! concurrent creators all succeed), so after a successful write the claimer waits a short
//! settle time and reads the lease back: only the writer whose random `id` is there owns
//! it. This also guards S3-compatible stores with weak conditional writes; on AWS S3 the
//! conditional create alone decides. A loser may be told of another loser whose write it
//! read back before the last write landed; that one is itself downloading the blob (from
//! the owner), so the chain ends at the owner: every write read back is later than the
//! reader's own, so no two claimers point at each other. Expiry compares Unix seconds of the replicas' clocks:
//! they must agree to well within the lease's lifetime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::S3Store;
use crate::oci::reference::Digest;
use crate::store::backend::{Claim, Lease, StoreFuture};
use crate::store::error::StoreError;
use crate::store::layout;

/// How long a claimer waits after its write before reading the lease back.
const SETTLE: Duration = Duration::from_millis(200);
/// How many times a claim is tried when the lease changes under it.
const CLAIM_ATTEMPTS: usize = 4;

/// The lease object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseRecord {
    /// The owner's advertised pull URL.
    owner: String,
    /// A random nonce of this claim: tells two claims of one owner apart.
    id: String,
    /// Unix seconds after which the lease is free.
    expires_at: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn nonce() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// A lease (`None`: unreadable) and the ETag it was read with; `None` when there is none.
async fn read(
    bucket: &AmazonS3,
    key: &Key,
) -> Result<super::client::Versioned<LeaseRecord>, StoreError> {
    super::client::read_json(bucket, key).await
}

/// Writes `record` with `mode`; the new ETag, or `None` when another writer was first.
async fn write(
    bucket: &AmazonS3,
    key: &Key,
    record: &LeaseRecord,
    mode: PutMode,
) -> Result<Option<Option<String>>, StoreError> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    super::client::write_json(bucket, key, json, mode).await
}

fn update(e_tag: Option<String>) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag,
        version: None,
    })
}

impl S3Store {
    /// Claims the fetch lease of blob `digest`.
    pub(super) async fn claim(
        &self,
        digest: &Digest,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let key = self.key(&layout::blob_lease_key(digest.hex()))?;
        self.claim_key(key, owner, ttl).await
    }

    /// Claims the lease object `key` for `owner` for `ttl`, unless another owner's lease
    /// there is live.
    pub(super) async fn claim_key(
        &self,
        key: Key,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let id = nonce();
        for attempt in 1..=CLAIM_ATTEMPTS {
            let mode = match read(&self.bucket, &key).await? {
                None => PutMode::Create,
                Some((Some(r), _)) if r.owner != owner && r.expires_at > unix_now() => {
                    return Ok(Claim::Taken { owner: r.owner });
                }
                // Unreadable: maybe read while another claimer's write was landing (not
                // every server swaps objects atomically); look again before taking it.
                Some((None, _)) if attempt < CLAIM_ATTEMPTS => {
                    tokio::time::sleep(SETTLE).await;
                    continue;
                }
                // Expired, left by an earlier life of this replica, or garbage.
                Some((_, e_tag)) => update(e_tag),
            };
            let record = LeaseRecord {
                owner: owner.to_owned(),
                id: id.clone(),
                expires_at: unix_now() + ttl.as_secs().max(1),
            };
            if write(&self.bucket, &key, &record, mode).await?.is_none() {
                // Another claimer was first: see who.
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            match read(&self.bucket, &key).await? {
                Some((Some(r), e_tag)) if r.id == id => {
                    return Ok(Claim::Owner(Box::new(S3Lease {
                        bucket: self.bucket.clone(),
                        key,
                        record: Mutex::new(record),
                        e_tag: Mutex::new(e_tag),
                        ttl,
                    })));
                }
                Some((Some(r), _)) => return Ok(Claim::Taken { owner: r.owner }),
                // Gone or unreadable meanwhile: try again.
                _ => continue,
            }
        }
        Err(std::io::Error::other(format!(
            "the lease {key} kept changing; gave up after {CLAIM_ATTEMPTS} attempts"
        ))
        .into())
    }
}

/// A lease this replica holds in the bucket.
#[derive(Debug)]
struct S3Lease {
    bucket: Arc<AmazonS3>,
    key: Key,
    record: Mutex<LeaseRecord>,
    /// The ETag of the lease as this replica last wrote it.
    e_tag: Mutex<Option<String>>,
    ttl: Duration,
}

impl S3Lease {
    fn id(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }

    async fn extend(&self) -> Result<(), StoreError> {
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        record.expires_at = unix_now() + self.ttl.as_secs().max(1);
        let e_tag = self.e_tag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match write(&self.bucket, &self.key, &record, update(e_tag)).await? {
            Some(e_tag) => {
                *self.e_tag.lock().unwrap_or_else(|p| p.into_inner()) = e_tag;
                *self.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
                Ok(())
            }
            None => Err(std::io::Error::other(format!(
                "the lease {} was taken over by another replica",
                self.key
            ))
            .into()),
        }
    }

    async fn give_up(self: Box<Self>) -> Result<(), StoreError> {
        match read(&self.bucket, &self.key).await? {
            Some((Some(r), _)) if r.id == self.id() => {}
            // Not ours any more (expired and taken over): leave it.
            _ => return Ok(()),
        }
        match self.bucket.delete(&self.key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Lease for S3Lease {
    fn renew(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.extend())
    }

    fn release(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(self.give_up())
    }
}
