//! Checks on the proxy's on-disk cache (layout in notes/CONTRACTS.md).

use crate::images::PushedImage;
use crate::sha256_file;
use std::path::{Path, PathBuf};

/// Where the cache keeps blob `digest` (`sha256:<hex>` or bare `<hex>`):
/// `<image_path>/blobs/sha256/<hex>`.
pub fn blob_file(image_path: &Path, digest: &str) -> PathBuf {
    image_path
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Where the cache keeps manifest `digest` (`sha256:<hex>` or bare `<hex>`):
/// `<image_path>/manifests/sha256/<hex>` (its media type is beside it in `<hex>.type`).
pub fn manifest_file(image_path: &Path, digest: &str) -> PathBuf {
    image_path
        .join("manifests/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The files of downloads in progress (or left behind): everything under `<image_path>/tmp/`.
pub fn tmp_files(image_path: &Path) -> Vec<PathBuf> {
    list_files(&image_path.join("tmp"))
}

/// Every file in `blobs/sha256/` and `manifests/sha256/` (except `*.type` and the `*.access`
/// last-pull records) hashes to its name. Returns the number of (blob, manifest) files checked.
pub fn verify_cache(image_path: &Path) -> (usize, usize) {
    let mut counts = [0usize; 2];
    for (i, sub) in ["blobs/sha256", "manifests/sha256"].iter().enumerate() {
        let dir = image_path.join(sub);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".access") {
                // Last-pull record of a manifest pulled by digest (issue 6): JSON, not content.
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).expect("read .access"))
                        .unwrap_or_else(|err| panic!("{}: not JSON: {err}", e.path().display()));
                assert!(v.get("accessedAt").is_some(), "{}: {v}", e.path().display());
                continue;
            }
            if name.ends_with(".type") {
                let t = std::fs::read_to_string(e.path()).expect("read .type");
                assert!(
                    t.trim().starts_with("application/"),
                    "{}: not a media type: {t:?}",
                    e.path().display()
                );
                continue;
            }
            assert!(
                e.file_type().expect("file type").is_file(),
                "{} is not a regular file",
                e.path().display()
            );
            assert_eq!(
                sha256_file(&e.path()),
                format!("sha256:{name}"),
                "cache file {} does not hash to its name",
                e.path().display()
            );
            counts[i] += 1;
        }
    }
    (counts[0], counts[1])
}

/// Asserts that every manifest and blob of `img` is in the cache, manifests with their media
/// type in `<hex>.type`. Waits (bounded) for files to appear: a server may rename a verified
/// file into place just after it sent the last byte.
pub fn assert_image_cached(image_path: &Path, img: &PushedImage) {
    let mut wanted: Vec<PathBuf> = img
        .manifests()
        .iter()
        .flat_map(|m| {
            let p = manifest_file(image_path, &m.digest);
            [p.with_extension("type"), p]
        })
        .collect();
    wanted.extend(img.blobs().iter().map(|b| blob_file(image_path, &b.digest)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !wanted.iter().all(|p| p.is_file()) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for m in img.manifests() {
        let p = manifest_file(image_path, &m.digest);
        let b = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("manifest {} not cached at {}: {e}", m.digest, p.display()));
        assert!(b == m.bytes, "cached manifest {} differs", m.digest);
        let t = std::fs::read_to_string(p.with_extension("type"))
            .unwrap_or_else(|e| panic!("{}.type missing: {e}", p.display()));
        assert_eq!(t.trim(), m.media_type, "cached media type of {}", m.digest);
    }
    for b in img.blobs() {
        let p = blob_file(image_path, &b.digest);
        let meta = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("blob {} not cached at {}: {e}", b.digest, p.display()));
        assert_eq!(meta.len(), b.size, "cached blob {} size", b.digest);
    }
}

/// Every regular file under `root` (relative paths, sorted).
pub fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            assert!(budget > 0, "too many files under {}", root.display());
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p.strip_prefix(root).unwrap_or(&p).to_owned()),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}
