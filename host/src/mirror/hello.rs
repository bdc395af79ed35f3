//! The built-in hello-world image: a two-platform (linux/amd64, linux/arm64) OCI image made
//! at build time by `host/build/hello_image.rs` and embedded in the binary, looked up here by
//! tag and digest. It neither reads the store nor asks an upstream; when a request is for it
//! (`helloWorld`, the default registry) is decided by the server, which also answers it.

use bytes::Bytes;

use crate::oci::reference::{Digest, Reference, RepoName};
use crate::store::Manifest;

/// The one tag the image has.
pub const TAG: &str = "latest";

/// What a part of the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The image index over both platforms (what `latest` names).
    Index,
    /// One platform's image manifest.
    Manifest,
    /// One platform's image config.
    Config,
    /// One platform's only layer (`/hello`, gzip'd tar).
    Layer,
}

/// One piece of the image, as the build script wrote it.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) role: Role,
    /// OCI architecture of a per-platform part.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the tests find parts by platform")
    )]
    pub(crate) arch: Option<&'static str>,
    pub(crate) media_type: &'static str,
    /// `sha256:` of `bytes`, computed at build time.
    pub(crate) digest: &'static str,
    pub(crate) bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/hello_world.rs"));

/// Whether `repo` names the built-in image: `hello-world` or `library/hello-world`.
pub fn is_hello_world(repo: &RepoName) -> bool {
    matches!(repo.as_str(), "hello-world" | "library/hello-world")
}

/// The manifest `reference` names: [`TAG`] or the index's digest gives the index, a
/// platform manifest's digest gives that manifest; anything else `None`.
pub fn manifest(reference: &Reference) -> Option<Manifest> {
    let part = match reference {
        Reference::Tag(tag) => (tag == TAG).then(index)?,
        Reference::Digest(d) => PARTS.iter().find(|p| {
            matches!(p.role, Role::Index | Role::Manifest) && p.digest == d.to_string()
        })?,
    };
    Some(as_manifest(part))
}

/// The blob `digest` (any part of the image, as registries serve manifests as blobs too).
pub fn blob(digest: &Digest) -> Option<Bytes> {
    let d = digest.to_string();
    PARTS
        .iter()
        .find(|p| p.digest == d)
        .map(|p| Bytes::from_static(p.bytes))
}

/// The index (`latest`).
fn index() -> &'static Part {
    // The build script writes the index first.
    &PARTS[0]
}

fn as_manifest(p: &Part) -> Manifest {
    Manifest {
        digest: Digest::from_sha256_hex(p.digest.trim_start_matches("sha256:").to_owned()),
        media_type: p.media_type.to_owned(),
        bytes: Bytes::from_static(p.bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn part(role: Role, arch: &str) -> &'static Part {
        PARTS
            .iter()
            .find(|p| p.role == role && p.arch == Some(arch))
            .unwrap()
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The one file of a gzip'd one-entry tar: (name, mode, uid, mtime, bytes).
    fn only_file(layer: &[u8]) -> (String, u32, u32, u64, Vec<u8>) {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer)
            .read_to_end(&mut tar)
            .unwrap();
        let octal = |r: std::ops::Range<usize>| {
            let s = std::str::from_utf8(&tar[r]).unwrap();
            u64::from_str_radix(s.trim_end_matches(['\0', ' ']), 8).unwrap()
        };
        let name = std::str::from_utf8(&tar[..100])
            .unwrap()
            .trim_end_matches('\0')
            .to_owned();
        let size = octal(124..135) as usize;
        assert_eq!(tar[156], b'0', "a regular file");
        assert!(
            tar[512 + size.div_ceil(512) * 512..]
                .iter()
                .all(|&b| b == 0),
            "one entry, then the end of the archive"
        );
        (
            name,
            octal(100..107) as u32,
            octal(108..115) as u32,
            octal(136..147),
            tar[512..512 + size].to_vec(),
        )
    }

    #[test]
    fn every_digest_is_the_sha256_of_the_embedded_bytes() {
        for p in PARTS {
            assert_eq!(Digest::of(p.bytes).to_string(), p.digest, "{p:?}");
        }
    }

    /// The image is the same on every build and machine: a change of this digest is a change
    /// of the image (the generator, the message, or the pinned compressor), to be made on
    /// purpose (users may pin it).
    #[test]
    fn the_index_digest_is_stable() {
        assert_eq!(
            index().digest,
            "sha256:7c5bcd3996c030934dfecaa8e3f6405f7b36aa6a8289e05b07d3ca55ecbdbbac"
        );
    }

    #[test]
    fn the_index_lists_both_platforms_and_every_descriptor_is_exact() {
        let described = |v: &serde_json::Value| {
            let d = v["digest"].as_str().unwrap();
            let p = PARTS.iter().find(|p| p.digest == d).unwrap();
            assert_eq!(v["size"].as_u64().unwrap() as usize, p.bytes.len());
            assert_eq!(v["mediaType"].as_str().unwrap(), p.media_type);
            p
        };
        let top = json(index().bytes);
        assert_eq!(top["mediaType"], index().media_type);
        let entries = top["manifests"].as_array().unwrap();
        let mut arches = Vec::new();
        for e in entries {
            let m = described(e);
            assert_eq!(m.role, Role::Manifest);
            let arch = e["platform"]["architecture"].as_str().unwrap();
            assert_eq!(e["platform"]["os"], "linux");
            assert_eq!(m.arch, Some(arch));
            let manifest = json(m.bytes);
            let config = described(&manifest["config"]);
            assert_eq!(config.role, Role::Config);
            let config = json(config.bytes);
            assert_eq!(config["architecture"], arch);
            assert_eq!(config["os"], "linux");
            assert_eq!(config["config"]["Cmd"], serde_json::json!(["/hello"]));
            let layers = manifest["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 1);
            let layer = described(&layers[0]);
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(layer.bytes)
                .read_to_end(&mut tar)
                .unwrap();
            assert_eq!(
                config["rootfs"]["diff_ids"],
                serde_json::json!([Digest::of(&tar).to_string()])
            );
            arches.push(arch);
        }
        assert_eq!(arches, ["amd64", "arm64"]);
    }

    #[test]
    fn each_layer_holds_hello_as_the_executable_of_its_architecture() {
        for (arch, machine) in [("amd64", 62u16), ("arm64", 183)] {
            let (name, mode, uid, mtime, exe) = only_file(part(Role::Layer, arch).bytes);
            assert_eq!((name.as_str(), mode, uid, mtime), ("hello", 0o755, 0, 0));
            let built = EXECUTABLES.iter().find(|(a, _)| *a == arch).unwrap().1;
            assert_eq!(exe, built);
            assert_eq!(&exe[..4], b"\x7fELF");
            assert_eq!((exe[4], exe[5]), (2, 1), "64-bit little-endian");
            assert_eq!(u16::from_le_bytes([exe[16], exe[17]]), 2, "ET_EXEC");
            assert_eq!(u16::from_le_bytes([exe[18], exe[19]]), machine);
            let entry = u64::from_le_bytes(exe[24..32].try_into().unwrap());
            let filesz = u64::from_le_bytes(exe[64 + 32..64 + 40].try_into().unwrap());
            assert_eq!(
                filesz as usize,
                exe.len(),
                "one segment maps the whole file"
            );
            assert_eq!(entry, 0x40_0000 + 120, "entry right after the headers");
            let text = String::from_utf8_lossy(&exe);
            assert!(text.contains("Hello from ociregistry!"), "{arch}");
        }
    }

    /// The amd64 program runs here when this machine is x86-64 Linux and prints the message.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn the_amd64_program_runs_and_says_hello() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello");
        let (_, _, _, _, exe) = only_file(part(Role::Layer, "amd64").bytes);
        std::fs::write(&path, exe).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&path).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.starts_with("Hello from ociregistry!\n"),
            "{stdout:?}"
        );
    }

    #[test]
    fn lookups_by_tag_and_digest() {
        let latest = manifest(&Reference::Tag(TAG.into())).unwrap();
        assert_eq!(latest.digest.to_string(), index().digest);
        assert!(manifest(&Reference::Tag("v1".into())).is_none());
        let m = part(Role::Manifest, "arm64");
        let by_digest = manifest(&Reference::Digest(Digest::parse(m.digest).unwrap())).unwrap();
        assert_eq!(by_digest.bytes.as_ref(), m.bytes);
        let layer = part(Role::Layer, "amd64");
        let d = Digest::parse(layer.digest).unwrap();
        assert!(
            manifest(&Reference::Digest(d.clone())).is_none(),
            "a layer is no manifest"
        );
        assert_eq!(blob(&d).unwrap().as_ref(), layer.bytes);
        assert!(blob(&Digest::of(b"other")).is_none());
        for name in ["hello-world", "library/hello-world"] {
            assert!(is_hello_world(&RepoName::parse(name).unwrap()));
        }
        for name in ["hello", "org/hello-world", "library/hello-world/x"] {
            assert!(!is_hello_world(&RepoName::parse(name).unwrap()));
        }
    }
}
