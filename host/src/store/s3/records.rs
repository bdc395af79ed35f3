//! Tag records in the bucket for [`super::S3Store`]: read, and updated by read-modify-write
//! with conditional writes against the ETag read (retried a bounded number of times), so
//! replicas writing one record do not lose each other's entries. The record format is
//! [`crate::store::tags`]'s; the keys are [`crate::store::layout`]'s.

use std::time::SystemTime;

use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};

use super::S3Store;
use crate::oci::reference::Digest;
use crate::store::backend::TagKey;
use crate::store::error::StoreError;
use crate::store::layout;
use crate::store::tags::TagRecord;

/// How many times a tag record update is tried when another writer changed it meanwhile.
const TAG_ATTEMPTS: usize = 5;

impl S3Store {
    fn tag_key(&self, t: TagKey<'_>) -> Result<Key, StoreError> {
        self.key(&layout::tag_record_key(t.registry, t.repo.as_str(), t.tag))
    }

    /// A tag record (`None` when unreadable) and the ETag it was read with; `None` when
    /// there is no record.
    async fn read_tag(&self, key: &Key) -> Result<super::client::Versioned<TagRecord>, StoreError> {
        super::client::read_json(&self.bucket, key).await
    }

    /// Reads a tag record, lets `change` edit it (it returns whether to write), and writes
    /// it back only if nobody changed it meanwhile; tried [`TAG_ATTEMPTS`] times. Returns
    /// what `change` decided last (`None`: no record, and `change` made none).
    pub(super) async fn update_tag(
        &self,
        t: TagKey<'_>,
        change: impl Fn(Option<TagRecord>) -> Option<(TagRecord, bool)>,
    ) -> Result<Option<bool>, StoreError> {
        let _guard = self.tag_lock.lock().await;
        let key = self.tag_key(t)?;
        for _ in 0..TAG_ATTEMPTS {
            let read = self.read_tag(&key).await?;
            let (current, e_tag) = match read {
                Some((r, e_tag)) => (r, Some(e_tag)),
                None => (None, None),
            };
            let Some((record, write)) = change(current) else {
                return Ok(None);
            };
            if !write {
                return Ok(Some(false));
            }
            let mode = match e_tag {
                Some(e_tag) => PutMode::Update(UpdateVersion {
                    e_tag,
                    version: None,
                }),
                None => PutMode::Create,
            };
            let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
            if super::client::write_json(&self.bucket, &key, json, mode)
                .await?
                .is_some()
            {
                self.keep_tag(t, &record).await;
                return Ok(Some(true));
            }
        }
        // As the bucket answered the last write: its condition failed.
        Err(object_store::Error::Precondition {
            path: key.to_string(),
            source: format!("the record kept changing under {TAG_ATTEMPTS} conditional writes")
                .into(),
        }
        .into())
    }

    pub(super) async fn tag_last_modified(
        &self,
        tag: TagKey<'_>,
    ) -> Result<Option<SystemTime>, StoreError> {
        match self.bucket.head(&self.tag_key(tag)?).await {
            Ok(meta) => Ok(Some(SystemTime::from(meta.last_modified))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn tag_record(
        &self,
        tag: TagKey<'_>,
    ) -> Result<Option<TagRecord>, StoreError> {
        let read = self.read_tag(&self.tag_key(tag)?).await?;
        // Unreadable is as good as missing.
        Ok(read.and_then(|(r, _)| r))
    }

    pub(super) async fn record_tag(
        &self,
        tag: TagKey<'_>,
        media_type: &str,
        digest: &Digest,
        endpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_tag(tag, |current| {
            let mut record = current.unwrap_or_default();
            record.resolved(media_type, digest, crate::timefmt::now(), endpoint);
            Some((record, true))
        })
        .await?;
        Ok(())
    }

    pub(super) async fn record_access(&self, tag: TagKey<'_>, at: u64) -> Result<bool, StoreError> {
        let done = self
            .update_tag(tag, |current| {
                let mut record = current?;
                if record.accessed_at.is_some_and(|t| t >= at) {
                    return Some((record, false));
                }
                record.accessed_at = Some(at);
                Some((record, true))
            })
            .await?;
        // A record there (written now, or holding a later time already).
        Ok(done.is_some())
    }

    pub(super) async fn forget_tag(&self, tag: TagKey<'_>) -> Result<bool, StoreError> {
        let _guard = self.tag_lock.lock().await;
        let key = self.tag_key(tag)?;
        if !self.exists(&key).await? {
            return Ok(false);
        }
        match self.bucket.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // The local copy goes too, or the bucket's next outage would bring the tag back.
        if let Err(e) = crate::store::tags::remove(&self.local_root, tag).await {
            tracing::warn!(registry = tag.registry, repo = %tag.repo, tag = tag.tag, error = %e,
                "could not remove the local copy of the tag record");
        }
        Ok(true)
    }
}
