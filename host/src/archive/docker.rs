//! `docker save`'s own format: `manifest.json` (one entry per image: its config file, its
//! layer tars, its `RepoTags`), and the OCI image manifest made for an image saved in the
//! legacy form, whose registry manifest the archive does not hold.
//!
//! Why that manifest cannot be the registry's: a registry holds compressed layers, and
//! `docker save` (before 25, or with the classic image store) writes them uncompressed;
//! compressing them again gives other bytes (compressor, level, timestamps), so other
//! digests. The layers are stored as they are (`application/vnd.oci.image.layer.v1.tar`,
//! digest = the config's `diff_id`, checked), and the manifest is a correct OCI one whose
//! digest `load` prints.

use serde::{Deserialize, Serialize};

use crate::oci::media;

/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One entry of `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SavedImage {
    /// The config file's path.
    pub config: String,
    /// `name:tag` references (null when the image was saved by id).
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// The layer tars' paths, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// What an image config says of its layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `rootfs`.
    pub rootfs: Option<RootFs>,
}

/// `rootfs` of a config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// The uncompressed layers' digests.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Desc<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Desc<'a>,
    layers: Vec<Desc<'a>>,
}

/// A layer of a built manifest: digest, size, gzip-compressed.
#[derive(Debug, Clone)]
pub struct LayerDesc {
    /// `sha256:...`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Compressed with gzip.
    pub gzip: bool,
}

/// The OCI image manifest of a saved image: its config and layers as stored. The same
/// archive always gives the same bytes.
pub fn build_manifest(config_digest: String, config_size: u64, layers: &[LayerDesc]) -> Vec<u8> {
    let m = ImageManifest {
        schema_version: 2,
        media_type: media::OCI_MANIFEST,
        config: Desc {
            media_type: OCI_CONFIG,
            digest: config_digest,
            size: config_size,
        },
        layers: layers
            .iter()
            .map(|l| Desc {
                media_type: if l.gzip {
                    OCI_LAYER_GZIP
                } else {
                    OCI_LAYER_TAR
                },
                digest: l.digest.clone(),
                size: l.size,
            })
            .collect(),
    };
    serde_json::to_vec(&m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_manifest_is_oci_and_stable() {
        let l = LayerDesc {
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 10,
            gzip: false,
        };
        let a = build_manifest(
            format!("sha256:{}", "a".repeat(64)),
            5,
            std::slice::from_ref(&l),
        );
        let b = build_manifest(format!("sha256:{}", "a".repeat(64)), 5, &[l]);
        assert_eq!(a, b);
        let parsed = crate::oci::manifest::parse(media::OCI_MANIFEST, &a).unwrap();
        assert!(matches!(parsed, crate::oci::manifest::Contents::Image(ref v) if v.len() == 2));
        let text = String::from_utf8(a).unwrap();
        assert!(
            text.contains(OCI_LAYER_TAR) && text.contains(OCI_CONFIG),
            "{text}"
        );
    }
}
