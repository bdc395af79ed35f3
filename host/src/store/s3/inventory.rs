//! The bucket as the inventory sees it, for [`super::S3Store`]: every blob, manifest (with
//! its access record) and tag record listed from the bucket, so that `list`, `prune` and
//! `maxSize` on any replica see what every replica cached; content removed from the bucket
//! and from this replica's local copy; and the inventory lease, so that one replica at a
//! time prunes or evicts. Other replicas' local copies of removed blobs are served (by
//! digest, verified bytes) until their sweep ([`S3Store::sweep`], every few minutes) finds
//! them gone from the bucket; their copies of manifests and tag records are read only while
//! the bucket cannot be reached.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode};

use super::S3Store;
use crate::metrics::ContentKind;
use crate::oci::reference::Digest;
use crate::store::access::AccessRecord;
use crate::store::backend::{Claim, INVENTORY_LEASE_TTL};
use crate::store::error::StoreError;
use crate::store::layout;
use crate::store::listing::{self, ListedBlob, ListedManifest, Usage};
use crate::store::tags::{self, ListedTag, TagRecord};

/// Most objects one listing walks (bounds its time and memory on a huge bucket).
const MAX_LISTED: usize = 5_000_000;
/// Objects read at once while listing manifests and tag records.
const READS_AT_ONCE: usize = 16;
/// How long a prune that waits for the inventory lease waits, and how often it looks.
const LEASE_WAIT: Duration = Duration::from_secs(60);
const LEASE_POLL: Duration = Duration::from_secs(2);
/// A local copy of a blob gone from the bucket stays while it was used (or written) within
/// this long: a commit writes the copy right after its upload, or keeps it when the upload
/// failed.
const SWEEP_IDLE: Duration = Duration::from_secs(60);

fn unix(meta: &ObjectMeta) -> u64 {
    u64::try_from(meta.last_modified.timestamp()).unwrap_or(0)
}

impl S3Store {
    /// Every object under the layout prefix `relative`, with the key relative to it.
    async fn list_under(&self, relative: &str) -> Result<Vec<(String, ObjectMeta)>, StoreError> {
        let base = format!("{}{relative}", self.prefix);
        let prefix = Key::parse(&base).map_err(object_store::Error::from)?;
        let mut listed = self.bucket.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listed.try_next().await? {
            if out.len() == MAX_LISTED {
                tracing::warn!(
                    prefix = %prefix,
                    "more than {MAX_LISTED} objects; the listing stopped there"
                );
                break;
            }
            let Some(rel) = meta.location.as_ref().strip_prefix(base.as_str()) else {
                continue;
            };
            out.push((rel.to_owned(), meta));
        }
        Ok(out)
    }

    pub(super) async fn list_blob_objects(&self) -> Result<Vec<ListedBlob>, StoreError> {
        Ok(self
            .list_under(layout::BLOBS_PREFIX)
            .await?
            .into_iter()
            .filter(|(name, _)| listing::is_hex_name(name))
            .map(|(hex, meta)| ListedBlob {
                hex,
                size: meta.size,
                stored: unix(&meta),
            })
            .collect())
    }

    pub(super) async fn list_manifest_objects(&self) -> Result<Vec<ListedManifest>, StoreError> {
        let objects = self.list_under(layout::MANIFESTS_PREFIX).await?;
        let with_access: std::collections::HashSet<&str> = objects
            .iter()
            .filter_map(|(name, _)| name.strip_suffix(layout::ACCESS_SUFFIX))
            .collect();
        let wanted: Vec<(Digest, bool, u64)> = objects
            .iter()
            .filter(|(name, _)| listing::is_hex_name(name))
            .filter_map(|(hex, meta)| {
                let digest = Digest::parse(&format!("sha256:{hex}")).ok()?;
                Some((digest, with_access.contains(hex.as_str()), unix(meta)))
            })
            .collect();
        futures_util::stream::iter(wanted)
            .map(|(digest, has_access, created)| async move {
                // Content under a digest never changes: the local copy, when there is one,
                // is the bucket's object.
                let manifest = match self.local.read_manifest(&digest).await? {
                    Some(m) => Some(m),
                    None => {
                        let m = self.read_bucket_manifest(&digest).await?;
                        if let Some(m) = &m {
                            self.keep_manifest(m).await;
                        }
                        m
                    }
                };
                let access = if has_access {
                    self.read_access(&digest).await?
                } else {
                    None
                };
                Ok::<_, StoreError>(manifest.map(|m| ListedManifest {
                    hex: digest.hex().to_owned(),
                    bytes: m.bytes.to_vec(),
                    media_type: m.media_type,
                    created,
                    access,
                }))
            })
            .buffer_unordered(READS_AT_ONCE)
            // Removed between the listing and the read: not there.
            .try_filter_map(|m| std::future::ready(Ok(m)))
            .try_collect()
            .await
    }

    pub(super) async fn list_tag_objects(&self) -> Result<Vec<ListedTag>, StoreError> {
        let objects = self.list_under(layout::TAGS_PREFIX).await?;
        futures_util::stream::iter(objects)
            .map(|(rel, meta)| async move {
                let Some((registry, repository, tag)) = tags::parse_relative(&rel) else {
                    return Ok(None);
                };
                let read =
                    super::client::read_json::<TagRecord>(&self.bucket, &meta.location).await?;
                let record = match read {
                    Some((Some(r), _)) => r,
                    Some((None, _)) => {
                        tracing::warn!(key = %meta.location, "unreadable tag record; skipped");
                        return Ok(None);
                    }
                    // Removed between the listing and the read.
                    None => return Ok(None),
                };
                Ok::<_, StoreError>(Some(ListedTag {
                    registry: registry.to_owned(),
                    repository: repository.to_owned(),
                    tag: tag.to_owned(),
                    record,
                    modified: unix(&meta),
                }))
            })
            .buffer_unordered(READS_AT_ONCE)
            .try_filter_map(|t| std::future::ready(Ok(t)))
            .try_collect()
            .await
    }

    pub(super) async fn bucket_usage(&self) -> Result<(Usage, Usage), StoreError> {
        let mut blobs = Usage::default();
        for (name, meta) in self.list_under(layout::BLOBS_PREFIX).await? {
            if listing::is_hex_name(&name) {
                blobs.bytes += meta.size;
                blobs.items += 1;
            }
        }
        let mut manifests = Usage::default();
        for (name, meta) in self.list_under(layout::MANIFESTS_PREFIX).await? {
            if listing::is_hex_name(&name) {
                manifests.bytes += meta.size;
                manifests.items += 1;
            }
        }
        Ok((blobs, manifests))
    }

    fn access_key(&self, digest: &Digest) -> Result<Key, StoreError> {
        self.key(&layout::manifest_access_key(digest.hex()))
    }

    pub(super) async fn read_access(
        &self,
        digest: &Digest,
    ) -> Result<Option<AccessRecord>, StoreError> {
        let read = super::client::read_json(&self.bucket, &self.access_key(digest)?).await?;
        Ok(read.and_then(|(r, _)| r))
    }

    pub(super) async fn write_access(
        &self,
        digest: &Digest,
        record: Option<&AccessRecord>,
    ) -> Result<(), StoreError> {
        let key = self.access_key(digest)?;
        match record {
            Some(r) => {
                let json = serde_json::to_vec(r).map_err(std::io::Error::other)?;
                super::client::write_json(&self.bucket, &key, json, PutMode::Overwrite).await?;
                Ok(())
            }
            None => self.delete(&key).await,
        }
    }

    /// Deletes `key` (gone already is fine).
    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        match self.bucket.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes content `key`, taking its bytes off the `kind` gauge when it was there.
    async fn delete_counted(&self, key: &Key, kind: ContentKind) -> Result<(), StoreError> {
        let size = match self.bucket.head(key).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.delete(key).await?;
        crate::metrics::global().disk_removed(kind, size);
        Ok(())
    }

    pub(super) async fn delete_manifest(&self, digest: &Digest) -> Result<(), StoreError> {
        let key = self.key(&layout::manifest_key(digest.hex()))?;
        self.delete_counted(&key, ContentKind::Manifest).await?;
        self.delete(&self.access_key(digest)?).await?;
        // The local copy goes too, or the bucket's next outage would serve it again.
        let root = &self.local_root;
        for path in [
            layout::manifest(root, digest.hex()),
            layout::manifest_type(root, digest.hex()),
            layout::manifest_access(root, digest.hex()),
        ] {
            listing::remove(&path)?;
        }
        Ok(())
    }

    pub(super) async fn delete_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        self.delete_counted(&self.blob_key(digest)?, ContentKind::Blob)
            .await?;
        listing::remove(&self.local_blob(digest))?;
        Ok(())
    }

    /// Removes local copies of blobs that are not in the bucket and were idle for
    /// [`SWEEP_IDLE`]; how many went. Nothing goes when the bucket cannot be listed.
    pub(super) async fn sweep(&self) -> Result<usize, StoreError> {
        let in_bucket: std::collections::HashSet<String> = self
            .list_blob_objects()
            .await?
            .into_iter()
            .map(|b| b.hex)
            .collect();
        let root = self.local_root.clone();
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let idle_since = crate::timefmt::now().saturating_sub(SWEEP_IDLE.as_secs());
            let mut removed = 0;
            for copy in listing::blobs(&root)? {
                if in_bucket.contains(&copy.hex) || copy.stored > idle_since {
                    continue;
                }
                listing::remove(&layout::blob(&root, &copy.hex))?;
                removed += 1;
            }
            Ok(removed)
        })
        .await
        .map_err(std::io::Error::other)??;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed local copies of blobs no longer in the bucket (pruned by another replica)"
            );
        }
        Ok(removed)
    }

    /// The inventory lease for `owner`; waits (bounded by [`LEASE_WAIT`]) when `wait`.
    pub(super) async fn claim_inventory(
        &self,
        owner: &str,
        wait: bool,
    ) -> Result<Claim, StoreError> {
        let key = self.key(layout::INVENTORY_LEASE_KEY)?;
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let claim = self
                .claim_key(key.clone(), owner, INVENTORY_LEASE_TTL)
                .await?;
            match claim {
                Claim::Taken { .. } if wait && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(LEASE_POLL).await;
                }
                other => return Ok(other),
            }
        }
    }
}
