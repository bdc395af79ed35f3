//! Reading the cache (through [`Store`]'s listing: a directory, or a bucket every replica
//! shares) into images: one per tag record, one per manifest pulled by
//! digest under a repository that no tag of it covers, and one per manifest that nothing
//! names ("untracked"). Each image knows its manifests (an index and its cached children),
//! its blobs, when it was first fetched, when it was last pulled and how many bytes it
//! holds on disk.
//!
//! Reading only: it takes no lock and writes nothing, so `list` and `prune` work while
//! servers run on the same store.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::oci::manifest::{self, Contents};
use crate::store::tags::ListedTag;
use crate::store::{AccessRecord, Store, StoreError};

/// What a manifest holds, as far as the inventory cares.
#[derive(Debug, Clone, Default)]
pub struct ManifestEntry {
    /// Bytes on disk.
    pub size: u64,
    /// When it was stored (first fetched), Unix seconds.
    pub created: u64,
    /// An index (or manifest list).
    pub is_index: bool,
    /// Child manifests of an index (hex).
    pub children: Vec<String>,
    /// Config and layers of an image (hex).
    pub blobs: Vec<String>,
    /// Its access record, if it was pulled by digest.
    pub access: Option<AccessRecord>,
}

/// A blob on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobEntry {
    /// Bytes.
    pub size: u64,
    /// When it was stored, Unix seconds.
    pub stored: u64,
}

/// What keeps an image in the cache: removing it is what pruning the image means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A tag record: `registry/repository:tag`.
    Tag {
        /// Registry.
        registry: String,
        /// Repository.
        repository: String,
        /// Tag.
        tag: String,
    },
    /// One repository name in the access record of manifest `hex`.
    Digest {
        /// The manifest.
        hex: String,
        /// `registry/repository`.
        repository: String,
    },
    /// Nothing names the manifest `hex`.
    Untracked(String),
}

/// `image` or `index` (or `unknown` when a tag's manifest is not on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// An image manifest.
    Image,
    /// An index / manifest list.
    Index,
    /// The manifest is missing.
    Unknown,
}

/// One row of `list`.
#[derive(Debug, Clone)]
pub struct Image {
    /// Registry (empty for untracked manifests).
    pub registry: String,
    /// Repository (empty for untracked manifests).
    pub repository: String,
    /// The tag, for images known by tag.
    pub tag: Option<String>,
    /// `sha256:...` of the top manifest.
    pub digest: String,
    /// Image or index.
    pub kind: ImageType,
    /// First fetched, Unix seconds.
    pub created: u64,
    /// Last pulled, Unix seconds, when known.
    pub last_pulled: Option<u64>,
    /// Bytes on disk: its manifests and the cached blobs they reference.
    pub size: u64,
    /// Its manifests on disk (hex): the top one and, for an index, its cached children.
    pub manifests: BTreeSet<String>,
    /// Its blobs on disk (hex).
    pub blobs: BTreeSet<String>,
    /// What keeps it.
    pub origin: Origin,
}

impl Image {
    /// `registry/repository:tag`, `registry/repository@sha256:...`, or `@sha256:...`.
    pub fn reference(&self) -> String {
        match (&self.tag, self.registry.is_empty()) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, false) => format!("{}/{}@{}", self.registry, self.repository, self.digest),
            (None, true) => format!("@{}", self.digest),
        }
    }

    /// When it was last used: last pulled, or created if never pulled since tracking began.
    pub fn last_used(&self) -> u64 {
        self.last_pulled.unwrap_or(self.created)
    }
}

/// The cache as read from disk.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// Manifests by hex.
    pub manifests: BTreeMap<String, ManifestEntry>,
    /// Blobs by hex.
    pub blobs: BTreeMap<String, BlobEntry>,
    /// Images, by reference.
    pub images: Vec<Image>,
}

impl Cache {
    /// Bytes of every manifest and blob on disk.
    pub fn total_bytes(&self) -> u64 {
        self.manifests.values().map(|m| m.size).sum::<u64>()
            + self.blobs.values().map(|b| b.size).sum::<u64>()
    }
}

/// A manifest's references: whether it is an index, the child manifests (hex) and the blobs
/// (hex) it keeps alive. A manifest that cannot be read references nothing.
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> (bool, Vec<String>, Vec<String>) {
    match manifest::parse(media_type, bytes) {
        Ok(Contents::Index(entries)) => (
            true,
            entries.iter().map(|e| e.digest.hex().to_owned()).collect(),
            Vec::new(),
        ),
        Ok(Contents::Image(blobs)) => (
            false,
            Vec::new(),
            blobs.iter().map(|b| b.digest.hex().to_owned()).collect(),
        ),
        Err(_) => (false, Vec::new(), Vec::new()),
    }
}

/// Reads the cache in `store`.
pub async fn scan(store: &dyn Store) -> Result<Cache, StoreError> {
    let mut cache = Cache::default();
    for b in store.list_blobs().await? {
        cache.blobs.insert(
            b.hex,
            BlobEntry {
                size: b.size,
                stored: b.stored,
            },
        );
    }
    for m in store.list_manifests().await? {
        let (is_index, children, blobs) = parse_manifest(&m.bytes, &m.media_type);
        cache.manifests.insert(
            m.hex,
            ManifestEntry {
                size: m.bytes.len() as u64,
                created: m.created,
                is_index,
                children,
                blobs,
                access: m.access,
            },
        );
    }
    let tags = store.list_tags().await?;
    build_images(&mut cache, tags);
    Ok(cache)
}

/// A manifest and, for an index, its cached children.
fn closure(cache: &Cache, top: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(m) = cache.manifests.get(top) {
        out.insert(top.to_owned());
        for c in &m.children {
            if cache.manifests.contains_key(c) {
                out.insert(c.clone());
            }
        }
    }
    out
}

fn image_of(
    cache: &Cache,
    (registry, repository): (&str, &str),
    tag: Option<String>,
    tops: &[String],
    origin: Origin,
    fallback_created: u64,
    last_pulled: Option<u64>,
) -> Image {
    let mut manifests = BTreeSet::new();
    for t in tops {
        manifests.extend(closure(cache, t));
    }
    let blobs: BTreeSet<String> = manifests
        .iter()
        .filter_map(|m| cache.manifests.get(m))
        .flat_map(|m| m.blobs.iter())
        .filter(|b| cache.blobs.contains_key(*b))
        .cloned()
        .collect();
    let size = manifests
        .iter()
        .filter_map(|m| cache.manifests.get(m))
        .map(|m| m.size)
        .sum::<u64>()
        + blobs
            .iter()
            .filter_map(|b| cache.blobs.get(b))
            .map(|b| b.size)
            .sum::<u64>();
    let top = tops.first().and_then(|t| cache.manifests.get(t));
    let kind = match top {
        Some(m) if m.is_index => ImageType::Index,
        Some(_) => ImageType::Image,
        None => ImageType::Unknown,
    };
    let created = tops
        .iter()
        .filter_map(|t| cache.manifests.get(t))
        .map(|m| m.created)
        .min()
        .unwrap_or(fallback_created);
    Image {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        tag,
        digest: tops
            .first()
            .map(|h| format!("sha256:{h}"))
            .unwrap_or_default(),
        kind,
        created,
        last_pulled,
        size,
        manifests,
        blobs,
        origin,
    }
}

fn build_images(cache: &mut Cache, tag_records: Vec<ListedTag>) {
    let mut images = Vec::new();
    // (registry/repository, manifest hex) already shown as part of an image.
    let mut covered: HashSet<(String, String)> = HashSet::new();
    for t in tag_records {
        let mut tops: Vec<String> = Vec::new();
        for e in &t.record.entries {
            if let Some(h) = e.digest().map(|d| d.hex().to_owned())
                && !tops.contains(&h)
            {
                tops.push(h);
            }
        }
        // Cached manifests first, so the top one is one that is on disk.
        tops.sort_by_key(|h| !cache.manifests.contains_key(h));
        let fallback = t
            .record
            .entries
            .iter()
            .map(|e| e.fetched_at)
            .min()
            .unwrap_or(t.modified);
        let img = image_of(
            cache,
            (&t.registry, &t.repository),
            Some(t.tag.clone()),
            &tops,
            Origin::Tag {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                tag: t.tag,
            },
            fallback,
            t.record.accessed_at,
        );
        let key = format!("{}/{}", t.registry, t.repository);
        for m in &img.manifests {
            covered.insert((key.clone(), m.clone()));
        }
        images.push(img);
    }
    // Pulled by digest: indexes first, so that their children are covered by them.
    let mut by_digest: Vec<(String, String, bool)> = Vec::new();
    for (hex, m) in &cache.manifests {
        if let Some(acc) = &m.access {
            for r in &acc.repositories {
                by_digest.push((hex.clone(), r.clone(), m.is_index));
            }
        }
    }
    by_digest.sort_by_key(|(_, _, is_index)| !*is_index);
    for (hex, repo_key, _) in by_digest {
        if covered.contains(&(repo_key.clone(), hex.clone())) {
            continue;
        }
        let Some((registry, repository)) = repo_key.split_once('/') else {
            continue;
        };
        let last = cache
            .manifests
            .get(&hex)
            .and_then(|m| m.access.as_ref())
            .map(|a| a.accessed_at);
        let img = image_of(
            cache,
            (registry, repository),
            None,
            std::slice::from_ref(&hex),
            Origin::Digest {
                hex: hex.clone(),
                repository: repo_key.clone(),
            },
            0,
            last,
        );
        for m in &img.manifests {
            covered.insert((repo_key.clone(), m.clone()));
        }
        images.push(img);
    }
    // Manifests nothing names.
    let named: HashSet<&String> = covered.iter().map(|(_, m)| m).collect();
    let mut untracked: Vec<String> = cache
        .manifests
        .keys()
        .filter(|h| !named.contains(h))
        .cloned()
        .collect();
    // An untracked index covers its untracked children.
    untracked.sort_by_key(|h| !cache.manifests.get(h).is_some_and(|m| m.is_index));
    let mut done: HashSet<String> = HashSet::new();
    for hex in untracked {
        if done.contains(&hex) {
            continue;
        }
        let img = image_of(
            cache,
            ("", ""),
            None,
            std::slice::from_ref(&hex),
            Origin::Untracked(hex.clone()),
            0,
            None,
        );
        done.extend(img.manifests.iter().cloned());
        images.push(img);
    }
    images.sort_by_key(Image::reference);
    cache.images = images;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oci::media;
    use crate::oci::reference::{Digest, RepoName};
    use crate::store::{FsStore, Manifest, Store};
    use bytes::Bytes;
    use std::path::Path;

    /// Writes a blob of `content`; returns its hex.
    pub fn blob(root: &Path, content: &[u8]) -> String {
        let d = Digest::of(content);
        std::fs::write(root.join("blobs/sha256").join(d.hex()), content).unwrap();
        d.hex().to_owned()
    }

    /// Stores an image manifest referencing `blobs` (hex); returns its digest.
    pub async fn image(store: &FsStore, blobs: &[&str]) -> Digest {
        let desc = |h: &&str| format!(r#"{{"digest":"sha256:{h}","size":1}}"#);
        let config = desc(&blobs[0]);
        let layers: Vec<String> = blobs[1..].iter().map(desc).collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{config},"layers":[{}]}}"#,
            media::OCI_MANIFEST,
            layers.join(",")
        );
        put(store, json, media::OCI_MANIFEST).await
    }

    pub async fn index(store: &FsStore, children: &[&Digest]) -> Digest {
        let m: Vec<String> = children
            .iter()
            .map(|d| {
                format!(
                    r#"{{"digest":"{d}","size":1,"mediaType":"{}"}}"#,
                    media::OCI_MANIFEST
                )
            })
            .collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            media::OCI_INDEX,
            m.join(",")
        );
        put(store, json, media::OCI_INDEX).await
    }

    async fn put(store: &FsStore, json: String, media_type: &str) -> Digest {
        let bytes = Bytes::from(json);
        let m = Manifest {
            digest: Digest::of(&bytes),
            media_type: media_type.into(),
            bytes,
        };
        store.put_manifest(&m).await.unwrap();
        m.digest
    }

    pub async fn tag(store: &FsStore, repo: &str, tag: &str, d: &Digest, media_type: &str) {
        let repo = RepoName::parse(repo).unwrap();
        store
            .put_tag(
                crate::store::TagKey {
                    registry: "r.io",
                    repo: &repo,
                    tag,
                },
                media_type,
                d,
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn images_by_tag_digest_and_untracked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        let (c1, l1, l2) = (blob(root, b"c1"), blob(root, b"l1"), blob(root, b"shared"));
        let a = image(&store, &[&c1, &l1, &l2]).await;
        let c2 = blob(root, b"c2");
        let b = image(&store, &[&c2, &l2, "ab".repeat(32).as_str()]).await;
        let idx = index(&store, &[&a, &b]).await;
        tag(&store, "org/app", "v1", &idx, media::OCI_INDEX).await;
        // b pulled by digest in another repository; a pulled by digest within the index's.
        let access = AccessRecord {
            accessed_at: 5,
            repositories: vec!["r.io/other".into(), "r.io/org/app".into()],
        };
        store.set_access(&b, Some(&access)).await.unwrap();
        let lone = image(&store, &[&c1]).await;

        let cache = scan(&store).await.unwrap();
        let refs: Vec<String> = cache.images.iter().map(Image::reference).collect();
        assert_eq!(
            refs,
            vec![
                format!("@{lone}"),
                format!("r.io/org/app:v1"),
                format!("r.io/other@{b}"),
            ]
        );
        let v1 = &cache.images[1];
        assert_eq!(v1.kind, ImageType::Index);
        assert_eq!(v1.manifests.len(), 3);
        assert_eq!(v1.blobs.len(), 4, "the uncached layer is not counted");
        let other = &cache.images[2];
        assert_eq!(other.kind, ImageType::Image);
        assert_eq!(other.last_pulled, Some(5));
        assert_eq!(
            other.size,
            cache.manifests[b.hex()].size + 2 + 6,
            "manifest + cached config + cached shared layer"
        );
    }
}
