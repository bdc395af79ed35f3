//! Reading what a manifest points to: the entries of an index (with their platforms), or
//! the config and layer blobs of an image manifest (OCI, Docker v2 schema 2, or the old
//! schema 1 `fsLayers`). Used by preloading (what to fetch) and by the inventory (what a
//! manifest keeps alive).

use std::fmt;

use serde::Deserialize;

use crate::oci::media;
use crate::oci::reference::{Digest, ReferenceError};

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not the JSON of a manifest.
    #[error("manifest of type {media_type} is not valid JSON: {source}")]
    Json {
        /// The media type it was stored or served as.
        media_type: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A digest in it is malformed.
    #[error("manifest refers to {0}")]
    Digest(#[source] ReferenceError),
    /// Neither an index nor an image manifest.
    #[error("manifest of type {media_type} has neither manifests, config nor fsLayers")]
    Empty {
        /// The media type it was stored or served as.
        media_type: String,
    },
}

/// What an index entry says about its platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPlatform {
    /// `platform.os`.
    pub os: String,
    /// `platform.architecture`.
    pub arch: String,
    /// `platform.variant`.
    pub variant: Option<String>,
}

impl fmt::Display for EntryPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// An index / manifest list: one entry per platform (or attestation).
    Index(Vec<Entry>),
    /// An image: its blobs, config first, each once. Foreign layers (with `urls`, served
    /// elsewhere) are left out.
    Image(Vec<Blob>),
}

/// One index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The child manifest.
    pub digest: Digest,
    /// Its platform, if the index says.
    pub platform: Option<EntryPlatform>,
}

/// A blob a manifest needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    /// Its size as the manifest says (0 when it does not).
    pub size: u64,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<RawFsLayer>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    urls: Vec<String>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawFsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

fn digest(d: &str) -> Result<Digest, ManifestError> {
    Digest::parse(d).map_err(ManifestError::Digest)
}

/// Reads a manifest of `media_type` (as cached).
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Contents, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        media_type: media_type.to_owned(),
        source,
    })?;
    let is_index = media_type == media::OCI_INDEX
        || media_type == media::DOCKER_LIST
        || raw
            .media_type
            .as_deref()
            .is_some_and(|t| t == media::OCI_INDEX || t == media::DOCKER_LIST)
        || (raw.manifests.is_some() && raw.config.is_none());
    if is_index {
        let entries = raw
            .manifests
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                Ok(Entry {
                    digest: digest(&d.digest)?,
                    platform: d.platform.map(|p| EntryPlatform {
                        os: p.os,
                        arch: p.architecture,
                        variant: p.variant.filter(|v| !v.is_empty()),
                    }),
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        return Ok(Contents::Index(entries));
    }
    let mut blobs: Vec<Blob> = Vec::new();
    let mut add = |d: Digest, size: u64| {
        if !blobs.iter().any(|b| b.digest == d) {
            blobs.push(Blob { digest: d, size });
        }
    };
    if let Some(fs_layers) = raw.fs_layers {
        for l in fs_layers {
            add(digest(&l.blob_sum)?, 0);
        }
        return Ok(Contents::Image(blobs));
    }
    let Some(config) = raw.config else {
        return Err(ManifestError::Empty {
            media_type: media_type.to_owned(),
        });
    };
    add(digest(&config.digest)?, config.size);
    for l in raw.layers.unwrap_or_default() {
        if l.urls.is_empty() {
            add(digest(&l.digest)?, l.size);
        }
    }
    Ok(Contents::Image(blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let e = parse("application/x", b"{").unwrap_err().to_string();
        assert!(
            e.starts_with("manifest of type application/x is not valid JSON: "),
            "{e}"
        );
        let e = parse("application/x", br#"{"schemaVersion":2}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest of type application/x has neither manifests, config nor fsLayers"
        );
        let m = r#"{"config":{"digest":"sha256:nothex","size":1}}"#;
        let e = parse(media::OCI_MANIFEST, m.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("manifest refers to invalid digest"), "{e}");
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"{}","size":10}},
            "layers":[{{"digest":"{}","size":20}},{{"digest":"{}","size":30,"urls":["https://x"]}},{{"digest":"{}","size":20}}]}}"#,
            media::OCI_MANIFEST,
            d('a'),
            d('b'),
            d('c'),
            d('b')
        );
        let Contents::Image(blobs) = parse(media::OCI_MANIFEST, m.as_bytes()).unwrap() else {
            panic!("not an image");
        };
        let got: Vec<(String, u64)> = blobs
            .iter()
            .map(|b| (b.digest.to_string(), b.size))
            .collect();
        assert_eq!(got, vec![(d('a'), 10), (d('b'), 20)]);
    }

    #[test]
    fn index() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},{{"digest":"{}","size":1}}]}}"#,
            d('a'),
            d('b')
        );
        let Contents::Index(entries) = parse(media::DOCKER_LIST, m.as_bytes()).unwrap() else {
            panic!("not an index");
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].platform.as_ref().map(ToString::to_string),
            Some("linux/arm/v7".into())
        );
        assert_eq!(entries[1].platform, None);
    }

    #[test]
    fn schema1_and_errors() {
        let m = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"{}"}}]}}"#,
            d('a'),
            d('a')
        );
        let Contents::Image(blobs) = parse(media::DOCKER_SCHEMA1_SIGNED, m.as_bytes()).unwrap()
        else {
            panic!("not an image");
        };
        assert_eq!(blobs.len(), 1);
        assert!(parse(media::OCI_MANIFEST, b"nope").is_err());
        assert!(parse(media::OCI_MANIFEST, br#"{"schemaVersion":2}"#).is_err());
        let bad = r#"{"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(parse(media::OCI_MANIFEST, bad.as_bytes()).is_err());
    }
}
