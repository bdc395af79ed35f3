//! Pulls with real `skopeo` and verification of what it wrote.
//!
//! Pulls go to skopeo's `dir:` transport, which keeps the manifest bytes exactly as served
//! (an `oci:` destination would have to convert a Docker v2s2 manifest) and stores each blob
//! under its hex digest, so every byte can be checked against the upstream's digests.
//!
//! Note: skopeo cannot express an in-path upstream *with a port*
//! (`127.0.0.1:PROXY/127.0.0.1:UP/repo:tag` is an invalid docker reference, and so is a
//! registries.conf mirror `location` like that), so skopeo pulls through the proxy use its
//! `defaultNs` route; in-path and `?ns=` are exercised with plain HTTP.

use crate::images::PushedImage;
use crate::procs::run_with_timeout;
use crate::sha256_file;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `user:password` for `--src-creds`.
    pub creds: Option<String>,
    /// `--all` (every instance of an index).
    pub all: bool,
    /// `--override-arch` (to pick a platform of an index).
    pub arch: Option<String>,
}

/// Pulls `reference` with skopeo into a temp dir (`--all` when `img` is an index) and checks
/// every file against `img`; a failed pull panics with `context` and skopeo's error.
pub fn pull_and_verify(reference: &str, img: &PushedImage, context: &str) {
    let all = img.manifest.is_index();
    let dest = tempfile::tempdir().expect("tempdir");
    pull_to_dir(
        reference,
        dest.path(),
        &PullOptions {
            all,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("skopeo pull {reference}{context}: {e}"));
    verify_dir_pull(dest.path(), img, all);
}

/// `skopeo copy --src-tls-verify=false docker://<reference> dir:<dest>`.
/// Returns Err(stderr) when skopeo fails.
pub fn pull_to_dir(reference: &str, dest: &Path, opts: &PullOptions) -> Result<(), String> {
    let mut cmd = Command::new("skopeo");
    if let Some(a) = &opts.arch {
        cmd.args(["--override-arch", a, "--override-os", "linux"]);
    }
    cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
    if let Some(c) = &opts.creds {
        cmd.args(["--src-creds", c]);
    }
    if opts.all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()));
    let (ok, _out, err) = run_with_timeout(cmd, Duration::from_secs(180));
    if ok { Ok(()) } else { Err(err) }
}

/// `skopeo inspect --raw` (the manifest bytes as served).
pub fn inspect_raw(reference: &str, creds: Option<&str>) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    cmd.arg(format!("docker://{reference}"));
    let (ok, out, err) = run_with_timeout(cmd, Duration::from_secs(60));
    if ok { Ok(out.into_bytes()) } else { Err(err) }
}

/// Checks a `dir:` pull of `img` byte for byte.
///
/// `all`: the pull used `--all` (an index and every child); otherwise for an index the
/// amd64 child is expected as `manifest.json`.
pub fn verify_dir_pull(dest: &Path, img: &PushedImage, all: bool) {
    let top = if img.manifest.is_index() && !all {
        img.children
            .iter()
            .find(|c| c.platform.as_deref() == Some("linux/amd64"))
            .expect("amd64 child")
    } else {
        &img.manifest
    };
    let got = std::fs::read(dest.join("manifest.json")).expect("read pulled manifest.json");
    assert_eq!(
        crate::sha256_digest(&got),
        top.digest,
        "pulled manifest digest of {}",
        img.reference()
    );
    assert!(
        got == top.bytes,
        "pulled manifest bytes differ from the upstream's"
    );
    let mut expected_blobs = top.blobs.clone();
    if img.manifest.is_index() && all {
        for c in &img.children {
            let p = dest.join(format!("{}.manifest.json", c.hex()));
            let b = std::fs::read(&p)
                .unwrap_or_else(|e| panic!("child manifest {} missing: {e}", p.display()));
            assert_eq!(crate::sha256_digest(&b), c.digest, "child manifest digest");
            expected_blobs.extend(c.blobs.iter().cloned());
        }
    }
    for b in &expected_blobs {
        let p = dest.join(b.hex());
        let meta =
            std::fs::metadata(&p).unwrap_or_else(|e| panic!("blob {} missing: {e}", b.digest));
        assert_eq!(meta.len(), b.size, "size of pulled blob {}", b.digest);
        assert_eq!(sha256_file(&p), b.digest, "sha256 of pulled blob");
    }
    // Nothing unexpected: every blob-like file hashes to its name.
    for e in std::fs::read_dir(dest).expect("read dest") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|c| c.is_ascii_hexdigit()) {
            assert_eq!(
                sha256_file(&e.path()),
                format!("sha256:{name}"),
                "pulled file {name}"
            );
        }
    }
}
