//! Import and export against a real filesystem store, with archives built here: an OCI
//! layout (tar, gzip tar, directory), `docker save` in its legacy and 25+ forms, corrupt
//! and incomplete ones, and the export -> import round trip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::export::{self, Selection};
use super::import::{self, Format, Options};
use super::layout::{CONTAINERD_NAME, REF_NAME};
use super::names::AsName;
use super::report::Progress;
use crate::oci::media;
use crate::oci::reference::{Digest, RepoName};
use crate::store::staging::tests::tmp_file_count;
use crate::store::{FsStore, Store, TagKey};

/// A small image: a layer tar (uncompressed), its gzip, a config naming its diff_id.
struct Img {
    layer: Vec<u8>,
    gz: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn digest(b: &[u8]) -> Digest {
    Digest::of(b)
}

fn img(seed: &str) -> Img {
    let mut t = tar::Builder::new(Vec::new());
    let content = format!("hello from {seed}\n").repeat(200);
    let mut h = tar::Header::new_ustar();
    h.set_path("hello.txt").unwrap();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append(&h, content.as_bytes()).unwrap();
    let layer = t.into_inner().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&layer).unwrap();
    let gz = enc.finish().unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{"Cmd":["/{seed}"]}}}}"#,
        digest(&layer)
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        media::OCI_MANIFEST,
        digest(&config),
        config.len(),
        digest(&gz),
        gz.len()
    )
    .into_bytes();
    Img {
        layer,
        gz,
        config,
        manifest,
    }
}

fn add(t: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append(&h, bytes).unwrap();
}

fn blob_path(b: &[u8]) -> String {
    format!("blobs/sha256/{}", digest(b).hex())
}

/// An OCI layout tar of `images`, each with the annotations given; blobs first.
fn oci_tar(images: &[(&Img, BTreeMap<String, String>)], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    add(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut descs = Vec::new();
    for (i, ann) in images {
        for b in [&i.gz, &i.config, &i.manifest] {
            add(&mut t, &blob_path(b), b);
        }
        descs.push(serde_json::json!({
            "mediaType": media::OCI_MANIFEST,
            "digest": digest(&i.manifest).to_string(),
            "size": i.manifest.len(),
            "annotations": ann,
        }));
    }
    for (p, b) in extra {
        add(&mut t, p, b);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": descs});
    add(&mut t, "index.json", &serde_json::to_vec(&index).unwrap());
    t.into_inner().unwrap()
}

fn named(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CONTAINERD_NAME.to_owned(), name.to_owned())])
}

fn opts(as_name: Option<&str>) -> Options {
    Options {
        as_name: as_name.map(|a| AsName::parse(a, "docker.io").unwrap()),
        default_ns: "docker.io".into(),
        max_manifest: 4 << 20,
    }
}

async fn run(store: &Arc<FsStore>, path: &Path, o: &Options) -> Result<import::Imported, String> {
    let s: Arc<dyn Store> = store.clone();
    import::import(s, path, o, Arc::new(|_| {}))
        .await
        .map_err(|e| e.to_string())
}

async fn tag_digest(store: &FsStore, registry: &str, repo: &str, tag: &str) -> Option<String> {
    let repo = RepoName::parse(repo).unwrap();
    let rec = store
        .get_tag(TagKey {
            registry,
            repo: &repo,
            tag,
        })
        .await
        .unwrap()?;
    Some(rec.entries[0].digest.clone())
}

/// Nothing visible and nothing left in tmp/.
async fn assert_empty(store: &FsStore, root: &Path) {
    assert!(store.list_manifests().await.unwrap().is_empty());
    assert!(store.list_blobs().await.unwrap().is_empty());
    assert!(store.list_tags().await.unwrap().is_empty());
    assert_eq!(tmp_file_count(root), 0, "staged files left behind");
}

#[tokio::test]
async fn oci_layout_as_tar_gzip_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = img("a");
    let tar = oci_tar(&[(&a, named("quay.io/org/app:v1"))], &[]);
    let plain = dir.path().join("a.tar");
    std::fs::write(&plain, &tar).unwrap();
    let gz = dir.path().join("a.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let layout = dir.path().join("layout");
    tar::Archive::new(&tar[..]).unpack(&layout).unwrap();
    for (i, src) in [&plain, &gz, &layout].into_iter().enumerate() {
        let root = dir.path().join(format!("cache{i}"));
        let store = Arc::new(FsStore::open(&root).unwrap());
        let done = run(&store, src, &opts(None)).await.unwrap();
        assert_eq!(done.format, Format::OciLayout);
        assert_eq!(done.images[0].names, ["quay.io/org/app:v1"]);
        assert_eq!(done.blobs, 2);
        let want = digest(&a.manifest).to_string();
        assert_eq!(
            tag_digest(&store, "quay.io", "org/app", "v1").await,
            Some(want.clone())
        );
        let m = store
            .get_manifest(&digest(&a.manifest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &m.bytes[..],
            &a.manifest[..],
            "manifest stored byte for byte"
        );
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        for b in [&a.gz, &a.config] {
            assert_eq!(
                store.stat_blob(&digest(b)).await.unwrap(),
                Some(b.len() as u64)
            );
        }
        assert_eq!(tmp_file_count(&root), 0);
    }
}

#[tokio::test]
async fn names_ref_name_and_as() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (img("a"), img("b"));
    let tag_only = BTreeMap::from([(REF_NAME.to_owned(), "v1".to_owned())]);
    let path = dir.path().join("t.tar");
    std::fs::write(&path, oci_tar(&[(&a, tag_only.clone())], &[])).unwrap();
    let root = dir.path().join("c");
    let store = Arc::new(FsStore::open(&root).unwrap());
    let e = run(&store, &path, &opts(None)).await.unwrap_err();
    assert!(e.contains("carries only the tag \"v1\""), "{e}");
    assert_empty(&store, &root).await;
    let done = run(&store, &path, &opts(Some("r.io/x/y"))).await.unwrap();
    assert_eq!(done.images[0].names, ["r.io/x/y:v1"]);
    // Two images: --as with a tag is refused, without one each keeps its tag.
    let two = dir.path().join("two.tar");
    let other = BTreeMap::from([(REF_NAME.to_owned(), "v2".to_owned())]);
    std::fs::write(&two, oci_tar(&[(&a, tag_only), (&b, other)], &[])).unwrap();
    let e = run(&store, &two, &opts(Some("r.io/x/y:z")))
        .await
        .unwrap_err();
    assert!(
        e.contains("names one image, but the archive holds 2"),
        "{e}"
    );
    let done = run(&store, &two, &opts(Some("r.io/x/z"))).await.unwrap();
    let names: Vec<_> = done.images.iter().flat_map(|i| i.names.clone()).collect();
    assert_eq!(names, ["r.io/x/z:v1", "r.io/x/z:v2"]);
    // No name at all.
    let none = dir.path().join("none.tar");
    std::fs::write(&none, oci_tar(&[(&a, BTreeMap::new())], &[])).unwrap();
    let e = run(&store, &none, &opts(None)).await.unwrap_err();
    assert!(e.contains("carries no name: give --as"), "{e}");
}

#[tokio::test]
async fn docker_save_25_names_come_from_manifest_json() {
    let dir = tempfile::tempdir().unwrap();
    let a = img("a");
    let mj = serde_json::json!([{
        "Config": blob_path(&a.config),
        "RepoTags": ["alpine:3.20"],
        "Layers": [blob_path(&a.gz)],
    }]);
    let mj = serde_json::to_vec(&mj).unwrap();
    let path = dir.path().join("d.tar");
    std::fs::write(
        &path,
        oci_tar(&[(&a, BTreeMap::new())], &[("manifest.json", &mj)]),
    )
    .unwrap();
    let store = Arc::new(FsStore::open(&dir.path().join("c")).unwrap());
    let done = run(&store, &path, &opts(None)).await.unwrap();
    assert_eq!(
        done.format,
        Format::OciLayout,
        "the OCI index is used: manifests as saved"
    );
    assert_eq!(done.images[0].names, ["docker.io/library/alpine:3.20"]);
    assert_eq!(done.images[0].digest, digest(&a.manifest));
}

/// A legacy `docker save`: `<id>/layer.tar` (a symlink), `<hex>.json` config.
fn legacy_tar(images: &[(&Img, &str)], flip: bool) -> Vec<u8> {
    legacy_tar_with(images, flip, false)
}

fn legacy_tar_with(images: &[(&Img, &str)], flip: bool, gzip: bool) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    for (n, (i, name)) in images.iter().enumerate() {
        let cfg = format!("{}.json", digest(&i.config).hex());
        add(&mut t, &cfg, &i.config);
        let mut layer = if gzip { i.gz.clone() } else { i.layer.clone() };
        if flip {
            layer[600] ^= 1;
        }
        let lpath = format!("layer{n}/layer.tar");
        add(&mut t, &format!("real{n}.tar"), &layer);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        t.append_link(&mut h, &lpath, format!("../real{n}.tar"))
            .unwrap();
        entries.push(serde_json::json!({"Config": cfg, "RepoTags": [name], "Layers": [lpath]}));
    }
    add(
        &mut t,
        "manifest.json",
        &serde_json::to_vec(&entries).unwrap(),
    );
    t.into_inner().unwrap()
}

#[tokio::test]
async fn legacy_docker_save_builds_an_oci_manifest_and_checks_diff_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (img("a"), img("b"));
    let path = dir.path().join("s.tar");
    std::fs::write(
        &path,
        legacy_tar(&[(&a, "alpine:3.20"), (&b, "r.io/b:1")], false),
    )
    .unwrap();
    let root = dir.path().join("c");
    let store = Arc::new(FsStore::open(&root).unwrap());
    let done = run(&store, &path, &opts(None)).await.unwrap();
    assert_eq!(done.format, Format::DockerSave);
    assert!(done.images.iter().all(|i| i.built));
    let d = &done.images[0].digest;
    assert_eq!(
        tag_digest(&store, "docker.io", "library/alpine", "3.20").await,
        Some(d.to_string())
    );
    let m = store.get_manifest(d).await.unwrap().unwrap();
    let parsed = crate::oci::manifest::parse(&m.media_type, &m.bytes).unwrap();
    let crate::oci::manifest::Contents::Image(blobs) = parsed else {
        panic!("not an image")
    };
    assert_eq!(blobs[0].digest, digest(&a.config));
    assert_eq!(
        blobs[1].digest,
        digest(&a.layer),
        "uncompressed layer = diff_id"
    );
    // Again: the same digest (the built manifest is stable).
    let again = run(&store, &path, &opts(None)).await.unwrap();
    assert_eq!(&again.images[0].digest, d);

    // Gzip-compressed layer tars are stored as they are, checked against the diff_id
    // once uncompressed.
    let gz = dir.path().join("gz.tar");
    std::fs::write(&gz, legacy_tar_with(&[(&a, "r.io/gz:1")], false, true)).unwrap();
    let done = run(&store, &gz, &opts(None)).await.unwrap();
    let m = store
        .get_manifest(&done.images[0].digest)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(m.bytes.to_vec()).unwrap();
    assert!(
        text.contains(&digest(&a.gz).to_string()) && text.contains("tar+gzip"),
        "{text}"
    );

    // A flipped byte in a layer: refused, naming the entry, nothing visible.
    let root2 = dir.path().join("c2");
    let store2 = Arc::new(FsStore::open(&root2).unwrap());
    let bad = dir.path().join("bad.tar");
    std::fs::write(
        &bad,
        legacy_tar(&[(&a, "alpine:3.20"), (&b, "r.io/b:1")], true),
    )
    .unwrap();
    let e = run(&store2, &bad, &opts(None)).await.unwrap_err();
    assert!(
        e.contains("entry layer0/layer.tar: content hashes to"),
        "{e}"
    );
    assert_empty(&store2, &root2).await;
}

#[tokio::test]
async fn corrupt_or_incomplete_oci_archives_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let store = Arc::new(FsStore::open(&root).unwrap());
    let a = img("a");
    let good = oci_tar(&[(&a, named("r.io/a:1"))], &[]);
    // A flipped byte inside the layer blob.
    let mut bad = good.clone();
    let at = bad
        .windows(a.gz.len())
        .position(|w| w == &a.gz[..])
        .unwrap();
    bad[at + 20] ^= 0x40;
    let p = dir.path().join("bad.tar");
    std::fs::write(&p, &bad).unwrap();
    let e = run(&store, &p, &opts(None)).await.unwrap_err();
    assert!(
        e.contains(&format!("entry {}: content hashes to", blob_path(&a.gz))),
        "{e}"
    );
    assert_empty(&store, &root).await;
    // A layer left out.
    let mut t = tar::Builder::new(Vec::new());
    for b in [&a.config, &a.manifest] {
        add(&mut t, &blob_path(b), b);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": media::OCI_MANIFEST,
        "digest": digest(&a.manifest).to_string(), "size": a.manifest.len(),
        "annotations": named("r.io/a:1")}]});
    add(&mut t, "index.json", &serde_json::to_vec(&index).unwrap());
    let p = dir.path().join("short.tar");
    std::fs::write(&p, t.into_inner().unwrap()).unwrap();
    let e = run(&store, &p, &opts(None)).await.unwrap_err();
    assert!(
        e.contains(&format!(
            "blob {}, which the archive does not hold",
            digest(&a.gz)
        )),
        "{e}"
    );
    assert_empty(&store, &root).await;
    // Truncated tar.
    let p = dir.path().join("cut.tar");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    assert!(run(&store, &p, &opts(None)).await.is_err());
    assert_empty(&store, &root).await;
    // Not an archive.
    let p = dir.path().join("x.tar");
    let mut t = tar::Builder::new(Vec::new());
    add(&mut t, "hello.txt", b"hi");
    std::fs::write(&p, t.into_inner().unwrap()).unwrap();
    let e = run(&store, &p, &opts(None)).await.unwrap_err();
    assert!(e.contains("not an image archive"), "{e}");
    assert_empty(&store, &root).await;
}

#[tokio::test]
async fn export_then_import_reproduces_the_cache_and_a_corrupt_blob_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (img("a"), img("b"));
    let src = dir.path().join("src.tar");
    std::fs::write(
        &src,
        oci_tar(
            &[(&a, named("r.io/org/a:1")), (&b, named("r.io/org/b:2"))],
            &[],
        ),
    )
    .unwrap();
    let root = dir.path().join("c1");
    let store = Arc::new(FsStore::open(&root).unwrap());
    run(&store, &src, &opts(None)).await.unwrap();
    let sel = Selection {
        pattern: Some("org/a".into()),
        default_ns: "docker.io".into(),
        ..Selection::default()
    };
    let (cache, images) = export::select(&*store, &sel).await.unwrap();
    assert_eq!(images.len(), 1);
    let out = dir.path().join("out.tar");
    let progress = Progress::for_stderr("test", 0);
    let done = export::export(&*store, &cache, &images, &out, &progress)
        .await
        .unwrap();
    assert_eq!((done.images.len(), done.manifests, done.blobs), (1, 1, 2));
    let root2 = dir.path().join("c2");
    let store2 = Arc::new(FsStore::open(&root2).unwrap());
    let again = run(&store2, &out, &opts(None)).await.unwrap();
    assert_eq!(again.images[0].names, ["r.io/org/a:1"]);
    assert_eq!(
        tag_digest(&store2, "r.io", "org/a", "1").await,
        Some(digest(&a.manifest).to_string())
    );
    assert_eq!(tag_digest(&store2, "r.io", "org/b", "2").await, None);
    // By reference; one not cached is an error.
    let sel = Selection {
        refs: vec!["r.io/org/b:2".into()],
        default_ns: "docker.io".into(),
        ..Selection::default()
    };
    assert_eq!(export::select(&*store, &sel).await.unwrap().1.len(), 1);
    let sel = Selection {
        refs: vec!["r.io/org/b:3".into()],
        default_ns: "docker.io".into(),
        ..Selection::default()
    };
    assert!(export::select(&*store, &sel).await.is_err());
    // A cached blob whose bytes changed on disk: the export stops, naming it; no file.
    let layer = root.join("blobs/sha256").join(digest(&a.gz).hex());
    assert!(layer.is_file(), "the filesystem layout keeps blobs there");
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let out2 = dir.path().join("out2.tar");
    let e = export::export(&*store, &cache, &images, &out2, &progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("cached blob {} is corrupt", digest(&a.gz))),
        "{e}"
    );
    assert!(!out2.exists() && !dir.path().join("out2.tar.tmp").exists());
}

#[tokio::test]
async fn an_image_cached_by_digest_only_round_trips_with_its_repository() {
    let dir = tempfile::tempdir().unwrap();
    let a = img("a");
    let src = dir.path().join("src.tar");
    let name = format!("r.io/org/a@{}", digest(&a.manifest));
    std::fs::write(&src, oci_tar(&[(&a, named(&name))], &[])).unwrap();
    let store = Arc::new(FsStore::open(&dir.path().join("c1")).unwrap());
    let done = run(&store, &src, &opts(None)).await.unwrap();
    assert_eq!(done.images[0].names, std::slice::from_ref(&name));
    assert!(store.list_tags().await.unwrap().is_empty());
    let sel = Selection {
        pattern: Some(".".into()),
        default_ns: "docker.io".into(),
        ..Selection::default()
    };
    let (cache, images) = export::select(&*store, &sel).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference(), name, "listed as repository@digest");
    let out = dir.path().join("out.tar");
    export::export(
        &*store,
        &cache,
        &images,
        &out,
        &Progress::for_stderr("t", 0),
    )
    .await
    .unwrap();
    let store2 = Arc::new(FsStore::open(&dir.path().join("c2")).unwrap());
    run(&store2, &out, &opts(None)).await.unwrap();
    let access = store2
        .get_access(&digest(&a.manifest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(access.repositories, ["r.io/org/a"]);
    let (_, again) = export::select(&*store2, &sel).await.unwrap();
    assert_eq!(again[0].reference(), name);
}
