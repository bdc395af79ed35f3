//! Tests of [`super::S3Store`] against a real s3s-fs server on 127.0.0.1 (from `$S3S_FS`,
//! `s3s-fs` on `PATH`, or `/tmp/s3s-root/bin/s3s-fs`; skipped when missing, unless
//! `CI=true`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::*;
use crate::oci::reference::RepoName;
use crate::store::staging::tests::tmp_file_count;

const ACCESS_KEY: &str = "AKTESTS3STORE";
const SECRET_KEY: &str = "SKsecret-never-shown";
const BUCKET: &str = "mirror-cache";
const PREFIX: &str = "cache/";

/// A running s3s-fs with a fresh data directory holding [`BUCKET`]; killed on drop.
struct S3sFs {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Ok("true" | "1" | "yes")
    )
}

fn s3s_fs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/tmp/s3s-root/bin/s3s-fs")).filter(|p| p.is_file()))
}

/// A port nothing listens on (just released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl S3sFs {
    /// Starts a server; `None` (with the reason printed) when s3s-fs is not installed.
    fn start() -> Option<S3sFs> {
        let Some(bin) = s3s_fs_bin() else {
            let why = "s3s-fs not found ($S3S_FS, PATH, /tmp/s3s-root/bin/s3s-fs); \
                       scripts/install-test-deps.sh installs it";
            assert!(!in_ci(), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = S3sFs { child, port, data };
        // Bounded wait for the port to accept.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn options(&self) -> S3Options {
        options_at(&self.endpoint())
    }

    /// Where s3s-fs keeps object `key` of the bucket.
    fn object_file(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }
}

fn options_at(endpoint: &str) -> S3Options {
    S3Options {
        bucket: BUCKET.into(),
        prefix: PREFIX.into(),
        region: "us-east-1".into(),
        endpoint: Some(endpoint.into()),
        credentials: Some(S3Keys {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }),
    }
}

async fn commit_bytes(store: &S3Store, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let staged = store.stage(&digest);
    let mut f = staged.create().unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    store
        .commit_blob(&staged, &digest, data.len() as u64)
        .await
        .unwrap();
    digest
}

async fn read_all(store: &S3Store, digest: &Digest) -> Vec<u8> {
    let blob = store.open_blob(digest).await.unwrap().unwrap();
    let size = blob.size();
    let parts: Vec<Bytes> = blob.read(0, size).try_collect().await.unwrap();
    parts.concat()
}

/// Waits (bounded) for the local copy of `digest` under `root` to appear.
async fn local_copy(root: &Path, digest: &Digest) -> PathBuf {
    let path = layout::blob(root, digest.hex());
    for _ in 0..500 {
        if path.is_file() {
            return path;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no local copy of {digest} after 10 s");
}

#[tokio::test]
async fn the_s3_store_keeps_the_contract() {
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::open(s3.options(), local.path()).await.unwrap();
    assert_eq!(
        store.describe(),
        format!(
            "s3 bucket {BUCKET} at {}, local copy {}",
            s3.endpoint(),
            local.path().display()
        )
    );
    crate::store::contract::check(Arc::new(store)).await;
    assert_eq!(tmp_file_count(local.path()), 0);
    // The contract ends by removing what it stored: from the bucket (under the prefix,
    // where the layout put it) and from the local copy.
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let hex = Digest::of(&data).hex().to_owned();
    assert!(
        !s3.object_file(&format!("{PREFIX}blobs/sha256/{hex}"))
            .exists()
    );
    assert!(!local.path().join("blobs/sha256").join(&hex).exists());
    let manifest = Digest::of(br#"{"schemaVersion":2}"#);
    assert!(
        !s3.object_file(&format!("{PREFIX}manifests/sha256/{}", manifest.hex()))
            .exists()
    );
    assert!(
        !local
            .path()
            .join("manifests/sha256")
            .join(manifest.hex())
            .exists()
    );
    // Stored again, it is where the layout says, under the prefix.
    let store = S3Store::open(s3.options(), local.path()).await.unwrap();
    let bytes = bytes::Bytes::from_static(br#"{"schemaVersion":2}"#);
    let m = crate::store::Manifest {
        digest: manifest.clone(),
        media_type: crate::oci::media::OCI_MANIFEST.into(),
        bytes,
    };
    store.put_manifest(&m).await.unwrap();
    assert!(
        s3.object_file(&format!("{PREFIX}manifests/sha256/{}", manifest.hex()))
            .is_file()
    );
}

#[tokio::test]
async fn a_second_replica_sees_what_the_first_stored() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let digest = commit_bytes(&a, &data).await;
    let bytes = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"x"}"#);
    let m = Manifest {
        digest: Digest::of(&bytes),
        media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
        bytes: bytes.clone(),
    };
    a.put_manifest(&m).await.unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let key = TagKey {
        registry: "registry.example:5000",
        repo: &repo,
        tag: "v1.0",
    };
    a.put_tag(key, "type/one", &m.digest).await.unwrap();

    // The blob: from the bucket first, then from the local copy filled in the background.
    let local = layout::blob(root_b.path(), digest.hex());
    assert!(!local.exists());
    assert_eq!(b.stat_blob(&digest).await.unwrap(), Some(300_000));
    let blob = b.open_blob(&digest).await.unwrap().unwrap();
    assert_eq!(blob.size(), 300_000);
    let part: Vec<Bytes> = blob.read(1000, 250_000).try_collect().await.unwrap();
    assert_eq!(part.concat(), &data[1000..250_000]);
    let filled = local_copy(root_b.path(), &digest).await;
    assert_eq!(std::fs::read(&filled).unwrap(), data);
    assert_eq!(read_all(&b, &digest).await, data);
    assert_eq!(tmp_file_count(root_b.path()), 0);

    assert!(b.has_manifest(&m.digest).await.unwrap());
    let got = b.get_manifest(&m.digest).await.unwrap().unwrap();
    assert_eq!((got.bytes, got.media_type), (bytes, m.media_type.clone()));

    // Both replicas write one tag record: neither loses the other's entry.
    b.put_tag(key, "type/two", &digest).await.unwrap();
    assert!(a.set_tag_accessed(key, 500).await.unwrap());
    let rec = a.get_tag(key).await.unwrap().unwrap();
    let types: Vec<&str> = rec.entries.iter().map(|e| e.media_type.as_str()).collect();
    assert_eq!(types, ["type/two", "type/one"]);
    assert_eq!(rec.accessed_at, Some(500));
    assert!(b.tag_modified(key).await.unwrap().is_some());
    assert!(b.remove_tag(key).await.unwrap());
    assert!(a.get_tag(key).await.unwrap().is_none());
}

#[tokio::test]
async fn a_multipart_blob_round_trips_byte_for_byte() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();
    // Two full parts and a short one.
    let data: Vec<u8> = (0..(2 * blobs::PART_SIZE + 1_234_567))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let digest = commit_bytes(&a, &data).await;
    assert_eq!(b.stat_blob(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(read_all(&b, &digest).await == data, "bytes differ");
    let filled = local_copy(root_b.path(), &digest).await;
    assert!(std::fs::read(filled).unwrap() == data);
}

#[tokio::test]
async fn a_failed_commit_leaves_nothing_under_the_digest() {
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::open(s3.options(), local.path()).await.unwrap();
    for len in [1000usize, blobs::PART_SIZE + 10] {
        let data = vec![7u8; len];
        let digest = Digest::of(&data);
        let staged = store.stage(&digest);
        std::fs::write(staged.temp(), &data).unwrap();
        std::fs::remove_file(staged.temp()).unwrap();
        assert!(
            store
                .commit_blob(&staged, &digest, len as u64)
                .await
                .is_err()
        );
        assert_eq!(store.stat_blob(&digest).await.unwrap(), None);
        assert!(store.open_blob(&digest).await.unwrap().is_none());
        let key = format!("{PREFIX}blobs/sha256/{}", digest.hex());
        assert!(!s3.object_file(&key).exists());
    }
    // A staged file shorter than its size is refused before anything is sent.
    let data = vec![9u8; 5000];
    let digest = Digest::of(&data);
    let staged = store.stage(&digest);
    std::fs::write(staged.temp(), &data[..4000]).unwrap();
    assert!(store.commit_blob(&staged, &digest, 5000).await.is_err());
    assert_eq!(store.stat_blob(&digest).await.unwrap(), None);
}

/// Opens against `opts`, expecting a [`StoreError::Bucket`] quickly; returns its message.
async fn open_fails(opts: S3Options) -> String {
    let local = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let e = S3Store::open(opts, local.path()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, StoreError::Bucket { .. }), "{e:?}");
    let text = e.to_string();
    eprintln!("open failed as expected: {text}");
    assert!(!text.contains(SECRET_KEY), "{text}");
    assert!(!format!("{e:?}").contains(SECRET_KEY), "{e:?}");
    text
}

#[tokio::test]
async fn open_names_the_bucket_and_what_failed() {
    let Some(s3) = S3sFs::start() else { return };
    let endpoint = s3.endpoint();

    let mut wrong_secret = s3.options();
    if let Some(keys) = wrong_secret.credentials.as_mut() {
        keys.secret_access_key = "wrong-secret-value".into();
    }
    let text = open_fails(wrong_secret).await;
    assert!(
        text.starts_with(&format!("bucket {BUCKET} at {endpoint}: access denied")),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value"), "{text}");

    let missing = S3Options {
        bucket: "no-such-bucket".into(),
        ..s3.options()
    };
    let text = open_fails(missing).await;
    assert!(
        text.starts_with(&format!(
            "bucket no-such-bucket at {endpoint}: no such bucket"
        )),
        "{text}"
    );

    drop(s3);
    let text = open_fails(options_at(&endpoint)).await;
    assert!(
        text.starts_with(&format!("bucket {BUCKET} at {endpoint}: unreachable")),
        "{text}"
    );
    let stopped = options_at(&format!("http://127.0.0.1:{}", free_port()));
    open_fails(stopped).await;
}

#[test]
fn credentials_are_not_shown_by_debug() {
    let opts = options_at("http://user:endpoint-password@127.0.0.1:1");
    let shown = format!("{opts:?}");
    for secret in [SECRET_KEY, ACCESS_KEY, "endpoint-password"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("http://127.0.0.1:1"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_record_changed_between_read_and_write_is_reread_not_overwritten() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let key = TagKey {
        registry: "registry.example",
        repo: &repo,
        tag: "latest",
    };
    let (d1, d2) = (Digest::of(b"one"), Digest::of(b"two"));
    a.put_tag(key, "type/one", &d1).await.unwrap();

    // Replica b writes the record after a read it and before a writes it back.
    let handle = tokio::runtime::Handle::current();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let wrote = a
        .update_tag(key, |current| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::task::block_in_place(|| {
                    handle.block_on(b.put_tag(key, "type/two", &d2)).unwrap()
                });
            }
            let mut record = current?;
            record.accessed_at = Some(42);
            Some((record, true))
        })
        .await
        .unwrap();
    assert_eq!(wrote, Some(true));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "read again"
    );
    let rec = b.get_tag(key).await.unwrap().unwrap();
    let types: Vec<&str> = rec.entries.iter().map(|e| e.media_type.as_str()).collect();
    assert_eq!(types, ["type/two", "type/one"], "b's entry kept");
    assert_eq!(rec.accessed_at, Some(42), "a's change made");
}

#[tokio::test]
async fn with_the_bucket_gone_the_local_copies_are_served_and_the_rest_fails() {
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::open(s3.options(), local.path()).await.unwrap();
    store.check_remote().await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let digest = commit_bytes(&store, &data).await;
    let bytes = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
    let m = Manifest {
        digest: Digest::of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes,
    };
    store.put_manifest(&m).await.unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let tag = TagKey {
        registry: "registry.example",
        repo: &repo,
        tag: "1.0",
    };
    store.put_tag(tag, &m.media_type, &m.digest).await.unwrap();
    let other = Digest::of(b"never stored");
    let endpoint = s3.endpoint();
    drop(s3); // the bucket goes away

    let e = store.check_remote().await.unwrap_err().to_string();
    assert!(e.contains(BUCKET) && e.contains(&endpoint), "{e}");
    assert!(!e.contains(SECRET_KEY));
    // What this replica holds: served from its disk.
    assert_eq!(read_all(&store, &digest).await, data);
    assert!(store.has_manifest(&m.digest).await.unwrap());
    let got = store.get_manifest(&m.digest).await.unwrap().unwrap();
    assert_eq!(
        (got.bytes, got.media_type),
        (m.bytes.clone(), m.media_type.clone())
    );
    assert!(store.tag_modified(tag).await.unwrap().is_some());
    let rec = store.get_tag(tag).await.unwrap().unwrap();
    assert_eq!(rec.entries[0].digest(), Some(m.digest.clone()));
    // What only the bucket could answer: an error, not "not found".
    assert!(store.has_manifest(&other).await.is_err());
    assert!(store.stat_blob(&other).await.is_err());
    let missing = TagKey { tag: "2.0", ..tag };
    assert!(store.get_tag(missing).await.is_err());
}

const TTL: Duration = Duration::from_secs(30);

async fn owned(claim: Claim) -> Box<dyn crate::store::Lease> {
    match claim {
        Claim::Owner(lease) => lease,
        Claim::Taken { owner } => panic!("taken by {owner}"),
    }
}

#[tokio::test]
async fn a_second_fetch_claimer_is_told_the_owner() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();
    let digest = Digest::of(b"leased");
    let lease = owned(a.claim_fetch(&digest, "http://a:1", TTL).await.unwrap()).await;
    // The lease is an object under the prefix naming the owner.
    let text =
        std::fs::read_to_string(s3.object_file(&format!("{PREFIX}leases/blobs/{}", digest.hex())))
            .unwrap();
    assert!(text.contains("\"owner\":\"http://a:1\""), "{text}");
    match b.claim_fetch(&digest, "http://b:1", TTL).await.unwrap() {
        Claim::Taken { owner } => assert_eq!(owner, "http://a:1"),
        Claim::Owner(_) => panic!("two owners"),
    }
    lease.renew().await.unwrap();
    // Released: the next claim owns it.
    lease.release().await.unwrap();
    let next = owned(b.claim_fetch(&digest, "http://b:1", TTL).await.unwrap()).await;
    next.release().await.unwrap();
}

#[tokio::test]
async fn concurrent_fetch_claims_have_one_owner() {
    let Some(s3) = S3sFs::start() else { return };
    let mut stores = Vec::new();
    let mut roots = Vec::new();
    for _ in 0..6 {
        let root = tempfile::tempdir().unwrap();
        stores.push(Arc::new(
            S3Store::open(s3.options(), root.path()).await.unwrap(),
        ));
        roots.push(root);
    }
    for round in 0..5 {
        let digest = Digest::of(format!("raced {round}").as_bytes());
        let claims = futures_util::future::join_all(stores.iter().enumerate().map(|(i, s)| {
            let (s, digest) = (s.clone(), digest.clone());
            async move { s.claim_fetch(&digest, &format!("http://r{i}:1"), TTL).await }
        }))
        .await;
        let mut owners = Vec::new();
        let mut named = Vec::new();
        for (i, c) in claims.into_iter().enumerate() {
            match c.unwrap() {
                Claim::Owner(_) => owners.push(format!("http://r{i}:1")),
                Claim::Taken { owner } => named.push(owner),
            }
        }
        assert_eq!(
            owners.len(),
            1,
            "round {round}: owners {owners:?}, taken {named:?}"
        );
        // A claimer may be told of one whose write it read back before a later write
        // landed: that one claimed too (and streams from the owner), never an outsider.
        assert!(
            named
                .iter()
                .all(|o| (0..6).any(|i| *o == format!("http://r{i}:1"))),
            "{owners:?} {named:?}"
        );
    }
}

#[tokio::test]
async fn an_expired_fetch_lease_is_taken_over() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();
    let digest = Digest::of(b"expiring");
    // A one-second lease whose owner died (never renewed nor released).
    let dead = owned(
        a.claim_fetch(&digest, "http://a:1", Duration::from_secs(1))
            .await
            .unwrap(),
    )
    .await;
    drop(dead);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.claim_fetch(&digest, "http://b:1", TTL).await.unwrap() {
            Claim::Owner(lease) => {
                // The old owner can neither renew nor remove it.
                let text = std::fs::read_to_string(
                    s3.object_file(&format!("{PREFIX}leases/blobs/{}", digest.hex())),
                )
                .unwrap();
                assert!(text.contains("http://b:1"), "{text}");
                lease.release().await.unwrap();
                break;
            }
            Claim::Taken { owner } => {
                assert_eq!(owner, "http://a:1");
                assert!(Instant::now() < deadline, "lease never expired");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // A stale lease of one's own earlier life counts as expired.
    let _mine = owned(a.claim_fetch(&digest, "http://a:1", TTL).await.unwrap()).await;
    let again = owned(a.claim_fetch(&digest, "http://a:1", TTL).await.unwrap()).await;
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_local_copy_keeps_the_recently_used_and_reads_the_rest_from_the_bucket() {
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::open(s3.options(), local.path())
        .await
        .unwrap()
        .with_local_bound(Some(1_000_000));
    let blobs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 400_000]).collect();
    let mut digests = Vec::new();
    for data in &blobs {
        digests.push(commit_bytes(&store, data).await);
    }
    let copies = || -> Vec<PathBuf> {
        std::fs::read_dir(local.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let size = |files: &[PathBuf]| -> u64 {
        files
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    };
    let mut settled = false;
    for _ in 0..500 {
        if size(&copies()) <= 900_000 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "local copies still hold {} bytes", size(&copies()));
    assert!(!copies().is_empty(), "the newest copy stays");
    assert!(
        layout::blob(local.path(), digests[3].hex()).is_file(),
        "the most recently written copy stays"
    );
    // Every blob is still served, from the copy or from the bucket.
    for (data, digest) in blobs.iter().zip(&digests) {
        assert_eq!(&read_all(&store, digest).await, data);
    }
}

#[tokio::test]
async fn one_replica_at_a_time_holds_the_inventory_and_a_removal_is_seen_by_all() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();

    let held = owned(a.lock_inventory("replica a", false).await.unwrap()).await;
    match b.lock_inventory("replica b", false).await.unwrap() {
        Claim::Taken { owner } => assert_eq!(owner, "replica a"),
        Claim::Owner(_) => panic!("two replicas hold the inventory lease"),
    }
    held.release().await.unwrap();
    let next = owned(b.lock_inventory("replica b", false).await.unwrap()).await;

    // What A stored, B lists; what B removes, A no longer has (nor B's local copy).
    let data = vec![9u8; 70_000];
    let digest = commit_bytes(&a, &data).await;
    let listed = b.list_blobs().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].hex.as_str(), listed[0].size),
        (digest.hex(), 70_000)
    );
    assert_eq!(read_all(&b, &digest).await, data);
    local_copy(root_b.path(), &digest).await;
    b.remove_blob(&digest).await.unwrap();
    next.release().await.unwrap();
    assert!(!layout::blob(root_b.path(), digest.hex()).exists());
    assert!(a.list_blobs().await.unwrap().is_empty());
    let (blobs, _) = a.usage().await.unwrap();
    assert_eq!(blobs.items, 0);
}

#[tokio::test]
async fn local_copies_of_blobs_pruned_elsewhere_are_swept_once_idle() {
    let Some(s3) = S3sFs::start() else { return };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = S3Store::open(s3.options(), root_a.path()).await.unwrap();
    let b = S3Store::open(s3.options(), root_b.path()).await.unwrap();
    let (kept, pruned) = (vec![1u8; 5_000], vec![2u8; 6_000]);
    let (kept, pruned) = (
        commit_bytes(&a, &kept).await,
        commit_bytes(&a, &pruned).await,
    );
    b.remove_blob(&pruned).await.unwrap();
    let copy = |d: &Digest| layout::blob(root_a.path(), d.hex());
    // Just written: used within the idle time, kept.
    assert_eq!(a.sweep_local_copies().await.unwrap(), 0);
    assert!(copy(&pruned).exists());
    // Idle for longer: the copy of the pruned blob goes, the other stays.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for d in [&kept, &pruned] {
        std::fs::File::options()
            .write(true)
            .open(copy(d))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert_eq!(a.sweep_local_copies().await.unwrap(), 1);
    assert!(!copy(&pruned).exists());
    assert!(copy(&kept).exists());
    assert_eq!(a.stat_blob(&pruned).await.unwrap(), None);
}

#[tokio::test]
async fn multipart_uploads_left_by_a_killed_process_are_aborted_at_the_next_start() {
    use object_store::multipart::MultipartStore;
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let raw = client::build(&s3.options(), client::Profile::Requests).unwrap();
    let key = |name: &str| Key::parse(format!("{PREFIX}blobs/sha256/{name}")).unwrap();
    let part = || object_store::PutPayload::from(vec![7u8; 5 * 1024 * 1024]);
    // Two uploads open, as a killed replica leaves them; one is in its notes.
    let (left, other) = (key("left"), key("other"));
    let left_id = raw.create_multipart(&left).await.unwrap();
    let left_part = raw.put_part(&left, &left_id, 0, part()).await.unwrap();
    let other_id = raw.create_multipart(&other).await.unwrap();
    let other_part = raw.put_part(&other, &other_id, 0, part()).await.unwrap();
    let dead = local.path().join("tmp/99999.deadbeefdeadbeef");
    std::fs::create_dir_all(&dead).unwrap();
    let note = serde_json::json!({"key": left.to_string(), "uploadId": left_id});
    std::fs::write(dead.join("note-multipart.0.part"), note.to_string()).unwrap();

    let _store = S3Store::open(s3.options(), local.path()).await.unwrap();
    assert!(!dead.exists(), "the dead process's directory is cleaned");
    // The noted upload is gone: it can no longer be completed; the other one can.
    assert!(
        raw.complete_multipart(&left, &left_id, vec![left_part])
            .await
            .is_err(),
        "the left upload was not aborted"
    );
    assert!(raw.head(&left).await.is_err());
    raw.complete_multipart(&other, &other_id, vec![other_part])
        .await
        .unwrap();
    assert!(raw.head(&other).await.is_ok());
}

#[tokio::test]
async fn a_large_upload_leaves_no_note_once_done() {
    let Some(s3) = S3sFs::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let store = S3Store::open(s3.options(), local.path()).await.unwrap();
    let data: Vec<u8> = (0..(blobs::PART_SIZE as u32 + 1000))
        .map(|i| (i % 241) as u8)
        .collect();
    let digest = commit_bytes(&store, &data).await;
    assert_eq!(
        std::fs::read(s3.object_file(&format!("{PREFIX}blobs/sha256/{}", digest.hex()))).unwrap(),
        data
    );
    assert_eq!(
        tmp_file_count(local.path()),
        0,
        "no note nor temp file left"
    );
}
