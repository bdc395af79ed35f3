//! Every path of the cache layout under the image path, and every object key of the same
//! layout in a bucket ([`super::s3`]: relative keys, put under the bucket's prefix there),
//! built here and nowhere else (the rest of [`crate::store`] asks this file; nothing outside
//! the store sees a path or key of it):
//!
//! ```text
//! blobs/sha256/<hex>                         verified blob bytes
//! manifests/sha256/<hex>                     manifest bytes exactly as the upstream sent them
//! manifests/sha256/<hex>.type                their media type
//! manifests/sha256/<hex>.access              last pull by digest ([`super::access`])
//! tags/<registry>/<repository>/@tags/<tag>.json   tag -> digest records ([`super::tags`])
//! tmp/<pid>.<random>/                        one process's temp files (downloads in progress),
//!                                            under its flock; removed at start once unlocked
//! ```
//!
//! In a bucket, under its prefix: `blobs/sha256/<hex>`, `manifests/sha256/<hex>` (the media
//! type is the object's Content-Type, no `.type` object), `manifests/sha256/<hex>.access`
//! and the tag records, at the same relative keys; `leases/` (who fetches a blob, who
//! prunes); no `tmp/` (downloads stage on local disk, whose `blobs/sha256/` holds the
//! read-through copy).

use std::path::{Path, PathBuf};

/// The directories [`super::FsStore::open`] creates.
pub(super) const DIRS: [&str; 4] = ["blobs/sha256", "manifests/sha256", "tags", "tmp"];

/// The directory of a repository's tag records, under `tags/<registry>/<repository>/`.
pub(super) const TAG_DIR: &str = "@tags";
/// The file name ending of a tag record.
pub(super) const TAG_SUFFIX: &str = ".json";

/// Where verified blobs live.
pub(super) fn blobs_dir(root: &Path) -> PathBuf {
    root.join("blobs/sha256")
}

/// Where verified blob `hex` lives.
pub(super) fn blob(root: &Path, hex: &str) -> PathBuf {
    blobs_dir(root).join(hex)
}

/// Where manifests live.
pub(super) fn manifests_dir(root: &Path) -> PathBuf {
    root.join("manifests/sha256")
}

/// Where manifest `hex` lives.
pub(super) fn manifest(root: &Path, hex: &str) -> PathBuf {
    manifests_dir(root).join(hex)
}

/// Where the media type of manifest `hex` lives.
pub(super) fn manifest_type(root: &Path, hex: &str) -> PathBuf {
    manifests_dir(root).join(format!("{hex}.type"))
}

/// Where the access record of manifest `hex` lives.
pub(super) fn manifest_access(root: &Path, hex: &str) -> PathBuf {
    manifests_dir(root).join(format!("{hex}{ACCESS_SUFFIX}"))
}

/// Where the tag records live.
pub(super) fn tags_dir(root: &Path) -> PathBuf {
    root.join("tags")
}

/// Where the record of `registry/repo:tag` lives.
pub(super) fn tag_record(root: &Path, registry: &str, repo: &str, tag: &str) -> PathBuf {
    // registry, repo and tag are validated: no component can be empty, `.` or `..`.
    tags_dir(root)
        .join(registry)
        .join(repo)
        .join(TAG_DIR)
        .join(format!("{tag}{TAG_SUFFIX}"))
}

/// Where temp files live.
pub(super) fn tmp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

/// The object key of verified blob `hex`, relative to the bucket prefix.
pub(super) fn blob_key(hex: &str) -> String {
    format!("{BLOBS_PREFIX}{hex}")
}

/// The object key of manifest `hex`, relative to the bucket prefix (its media type is the
/// object's Content-Type).
pub(super) fn manifest_key(hex: &str) -> String {
    format!("{MANIFESTS_PREFIX}{hex}")
}

/// The key prefix of blobs, relative to the bucket prefix.
pub(super) const BLOBS_PREFIX: &str = "blobs/sha256/";
/// The key prefix of manifests and their access records, relative to the bucket prefix.
pub(super) const MANIFESTS_PREFIX: &str = "manifests/sha256/";
/// The key prefix of tag records, relative to the bucket prefix.
pub(super) const TAGS_PREFIX: &str = "tags/";
/// The name ending of an access record (after the manifest's hex).
pub(super) const ACCESS_SUFFIX: &str = ".access";

/// The object key of the access record of manifest `hex`, relative to the bucket prefix.
pub(super) fn manifest_access_key(hex: &str) -> String {
    format!("{MANIFESTS_PREFIX}{hex}{ACCESS_SUFFIX}")
}

/// The object key of the inventory lease (who prunes and evicts), relative to the bucket
/// prefix.
pub(super) const INVENTORY_LEASE_KEY: &str = "leases/inventory";

/// The object key of the record of `registry/repo:tag`, relative to the bucket prefix.
pub(super) fn tag_record_key(registry: &str, repo: &str, tag: &str) -> String {
    // registry, repo and tag are validated: no component can be empty, `.` or `..`.
    format!("{TAGS_PREFIX}{registry}/{repo}/{TAG_DIR}/{tag}{TAG_SUFFIX}")
}

/// The object key of the fetch lease of blob `hex` (who downloads it from the upstream),
/// relative to the bucket prefix.
pub(super) fn blob_lease_key(hex: &str) -> String {
    format!("leases/blobs/{hex}")
}

/// The key prefix [`super::s3::S3Store::open`] lists to check the bucket (nothing is
/// stored under it).
pub(super) const PROBE_KEY: &str = "ociregistry-probe/";

/// Whether `root` holds a cache at all (for the verbs that read one without creating it).
pub fn is_cache(root: &Path) -> bool {
    root.join("manifests").is_dir() || root.join("tags").is_dir()
}
