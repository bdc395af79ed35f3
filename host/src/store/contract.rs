//! The behaviour every [`Store`] backend must show, as one test routine each backend's
//! tests run against a fresh, empty store. It owns no backend.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::access::AccessRecord;
use super::backend::{Claim, Manifest, Store, TagKey};
use super::error::StoreError;
use crate::oci::reference::{Digest, RepoName};

/// Runs every check against `store`, which must be empty.
pub(crate) async fn check(store: Arc<dyn Store>) {
    manifests_are_verified_and_round_trip(&*store).await;
    blobs_become_visible_at_commit_and_read_by_range(&*store).await;
    tag_records_keep_one_entry_per_media_type(&*store).await;
    a_first_fetch_claim_owns_the_fetch(&*store).await;
    the_inventory_lists_and_removes_what_is_stored(&*store).await;
}

/// Runs after the checks above, on what they left: the manifest `{"schemaVersion":2}` and
/// the 600 000-byte blob.
async fn the_inventory_lists_and_removes_what_is_stored(store: &dyn Store) {
    let manifest = Digest::of(br#"{"schemaVersion":2}"#);
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let blob = Digest::of(&data);

    let blobs = store.list_blobs().await.unwrap();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert_eq!(
        (blobs[0].hex.as_str(), blobs[0].size),
        (blob.hex(), 600_000)
    );
    assert!(blobs[0].stored > 1_600_000_000, "stored at a Unix time");

    let access = AccessRecord {
        accessed_at: 1_700_000_000,
        repositories: vec!["registry.example/team/app".into()],
    };
    assert!(store.get_access(&manifest).await.unwrap().is_none());
    store.set_access(&manifest, Some(&access)).await.unwrap();
    assert_eq!(
        store.get_access(&manifest).await.unwrap(),
        Some(access.clone())
    );
    let manifests = store.list_manifests().await.unwrap();
    assert_eq!(manifests.len(), 1, "access records are not manifests");
    assert_eq!(manifests[0].hex, manifest.hex());
    assert_eq!(manifests[0].bytes, br#"{"schemaVersion":2}"#);
    assert_eq!(
        manifests[0].media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifests[0].access, Some(access));

    let repo = RepoName::parse("team/app").unwrap();
    let key = TagKey {
        registry: "registry.example",
        repo: &repo,
        tag: "2.0",
    };
    store.put_tag(key, "type/one", &manifest).await.unwrap();
    let tags = store.list_tags().await.unwrap();
    assert_eq!(tags.len(), 1, "{tags:?}");
    let t = &tags[0];
    assert_eq!(
        (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
        ("registry.example", "team/app", "2.0")
    );
    assert_eq!(t.record.entries[0].digest(), Some(manifest.clone()));
    assert!(t.modified > 1_600_000_000);

    let (b, m) = store.usage().await.unwrap();
    assert_eq!((b.items, b.bytes), (1, 600_000));
    assert_eq!((m.items, m.bytes), (1, 19));

    let claim = store.lock_inventory("contract", false).await.unwrap();
    let Claim::Owner(lease) = claim else {
        panic!("nobody else holds the inventory: {claim:?}");
    };
    store.remove_manifest(&manifest).await.unwrap();
    store.remove_manifest(&manifest).await.unwrap(); // gone already is fine
    store.remove_blob(&blob).await.unwrap();
    store.remove_blob(&blob).await.unwrap();
    assert!(store.remove_tag(key).await.unwrap());
    lease.release().await.unwrap();
    assert!(!store.has_manifest(&manifest).await.unwrap());
    assert!(store.get_manifest(&manifest).await.unwrap().is_none());
    assert!(store.get_access(&manifest).await.unwrap().is_none());
    assert_eq!(store.stat_blob(&blob).await.unwrap(), None);
    assert!(store.open_blob(&blob).await.unwrap().is_none());
    assert!(store.list_blobs().await.unwrap().is_empty());
    assert!(store.list_manifests().await.unwrap().is_empty());
    assert!(store.list_tags().await.unwrap().is_empty());
    let (b, m) = store.usage().await.unwrap();
    assert_eq!((b.items, m.items), (0, 0));
}

async fn a_first_fetch_claim_owns_the_fetch(store: &dyn Store) {
    let digest = Digest::of(b"claimed blob");
    let ttl = std::time::Duration::from_secs(30);
    match store.claim_fetch(&digest, "http://127.0.0.1:1", ttl).await {
        Ok(Claim::Owner(lease)) => {
            lease.renew().await.unwrap();
            lease.release().await.unwrap();
        }
        other => panic!("first claim: {other:?}"),
    }
}

async fn manifests_are_verified_and_round_trip(store: &dyn Store) {
    let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let m = Manifest {
        digest: Digest::of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: bytes.clone(),
    };
    assert!(!store.has_manifest(&m.digest).await.unwrap());
    assert!(store.get_manifest(&m.digest).await.unwrap().is_none());

    let wrong = Manifest {
        digest: Digest::of(b"other"),
        ..m.clone()
    };
    assert!(matches!(
        store.put_manifest(&wrong).await,
        Err(StoreError::Unverified(_))
    ));
    assert!(!store.has_manifest(&wrong.digest).await.unwrap());

    store.put_manifest(&m).await.unwrap();
    store.put_manifest(&m).await.unwrap(); // a second put of the same content is fine
    assert!(store.has_manifest(&m.digest).await.unwrap());
    let got = store.get_manifest(&m.digest).await.unwrap().unwrap();
    assert_eq!(got.bytes, bytes);
    assert_eq!(got.media_type, m.media_type);
}

async fn blobs_become_visible_at_commit_and_read_by_range(store: &dyn Store) {
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    assert_eq!(store.stat_blob(&digest).await.unwrap(), None);
    assert!(store.open_blob(&digest).await.unwrap().is_none());
    store.ensure_space(data.len() as u64).unwrap();

    let staged = store.stage(&digest);
    let mut f = staged.create().unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Staged is not stored.
    assert_eq!(store.stat_blob(&digest).await.unwrap(), None);
    store
        .commit_blob(&staged, &digest, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(store.stat_blob(&digest).await.unwrap(), Some(600_000));
    // Followers of the download still read it after the commit.
    assert_eq!(staged.open().unwrap().metadata().unwrap().len(), 600_000);

    let blob = store.open_blob(&digest).await.unwrap().unwrap();
    assert_eq!(blob.size(), 600_000);
    let whole: Vec<Bytes> = blob.read(0, 600_000).try_collect().await.unwrap();
    assert_eq!(whole.concat(), data);
    let blob = store.open_blob(&digest).await.unwrap().unwrap();
    let part: Vec<Bytes> = blob.read(299_990, 300_010).try_collect().await.unwrap();
    assert_eq!(part.concat(), &data[299_990..300_010]);

    // A second download of the same digest commits as a no-op and leaves no temp file.
    let again = store.stage(&digest);
    std::fs::write(again.temp(), &data).unwrap();
    store
        .commit_blob(&again, &digest, data.len() as u64)
        .await
        .unwrap();
    assert!(!again.temp().exists());
    assert_eq!(store.stat_blob(&digest).await.unwrap(), Some(600_000));
}

async fn tag_records_keep_one_entry_per_media_type(store: &dyn Store) {
    let repo = RepoName::parse("team/app").unwrap();
    let key = TagKey {
        registry: "registry.example",
        repo: &repo,
        tag: "1.0",
    };
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    assert!(store.get_tag(key).await.unwrap().is_none());
    assert!(store.tag_modified(key).await.unwrap().is_none());
    assert!(!store.set_tag_accessed(key, 100).await.unwrap());
    assert!(!store.remove_tag(key).await.unwrap());

    store.put_tag(key, "type/one", &a).await.unwrap();
    store.put_tag(key, "type/two", &b).await.unwrap();
    store.put_tag(key, "type/one", &b).await.unwrap();
    let rec = store.get_tag(key).await.unwrap().unwrap();
    let entries: Vec<(&str, Option<Digest>)> = rec
        .entries
        .iter()
        .map(|e| (e.media_type.as_str(), e.digest()))
        .collect();
    assert_eq!(
        entries,
        [("type/one", Some(b.clone())), ("type/two", Some(b.clone()))],
        "newest first, one per media type"
    );
    assert!(store.tag_modified(key).await.unwrap().is_some());

    assert!(store.set_tag_accessed(key, 200).await.unwrap());
    assert!(store.set_tag_accessed(key, 150).await.unwrap());
    let rec = store.get_tag(key).await.unwrap().unwrap();
    assert_eq!(rec.accessed_at, Some(200), "a later time is kept");

    assert!(store.remove_tag(key).await.unwrap());
    assert!(store.get_tag(key).await.unwrap().is_none());
}
