//! What a replica keeps on its own disk beside the bucket, so that it goes on serving what
//! it has when the bucket cannot be reached: copies of the manifests and tag records it
//! read or wrote (blobs have their read-through copy in [`super::blobs`]). The bucket stays
//! the truth: a copy is read only when the bucket fails (not when it says "not found"),
//! with a warning. It does not decide what is stored.

use std::time::SystemTime;

use super::S3Store;
use crate::oci::reference::Digest;
use crate::store::backend::{Manifest, TagKey};
use crate::store::error::StoreError;
use crate::store::tags::{self, TagRecord};

impl S3Store {
    /// Keeps a copy of a manifest read from or written to the bucket (best effort).
    pub(super) async fn keep_manifest(&self, m: &Manifest) {
        if let Err(e) = self.local.write_manifest(m).await {
            tracing::debug!(digest = %m.digest, error = %e, "no local copy of the manifest");
        }
    }

    /// Keeps a copy of a tag record read from or written to the bucket (best effort).
    pub(super) async fn keep_tag(&self, t: TagKey<'_>, record: &TagRecord) {
        if let Err(e) = tags::save(&self.local_root, t, record).await {
            tracing::debug!(registry = t.registry, repo = %t.repo, tag = t.tag, error = %e,
                "no local copy of the tag record");
        }
    }

    /// The bucket failed with `e` answering for manifest `digest`: the local copy, if any.
    pub(super) async fn local_manifest(
        &self,
        digest: &Digest,
        e: StoreError,
    ) -> Result<Option<Manifest>, StoreError> {
        match self.local.read_manifest(digest).await {
            Ok(Some(m)) => {
                self.warn_serving_copy(&e, "manifest");
                Ok(Some(m))
            }
            _ => Err(e),
        }
    }

    /// The bucket failed with `e` asking whether manifest `digest` is there.
    pub(super) fn local_has_manifest(
        &self,
        digest: &Digest,
        e: StoreError,
    ) -> Result<bool, StoreError> {
        if self.local.has_manifest_file(digest) {
            self.warn_serving_copy(&e, "manifest");
            return Ok(true);
        }
        Err(e)
    }

    /// The bucket failed with `e` answering for a tag record: the local copy's time.
    pub(super) fn local_tag_modified(
        &self,
        t: TagKey<'_>,
        e: StoreError,
    ) -> Result<Option<SystemTime>, StoreError> {
        match tags::modified(&self.local_root, t) {
            Some(at) => {
                self.warn_serving_copy(&e, "tag record");
                Ok(Some(at))
            }
            None => Err(e),
        }
    }

    /// The bucket failed with `e` answering for a tag record: the local copy.
    pub(super) async fn local_tag(
        &self,
        t: TagKey<'_>,
        e: StoreError,
    ) -> Result<Option<TagRecord>, StoreError> {
        match tags::get(&self.local_root, t).await {
            Some(r) => {
                self.warn_serving_copy(&e, "tag record");
                Ok(Some(r))
            }
            None => Err(e),
        }
    }

    fn warn_serving_copy(&self, e: &StoreError, what: &str) {
        tracing::warn!(bucket = %self.bucket_name, error = %e,
            "bucket unreachable; serving this replica's local copy of the {what}");
    }
}
