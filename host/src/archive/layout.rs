//! The OCI image layout as archives hold it: `oci-layout`, `index.json` and its
//! descriptors, and the annotations that name images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The OCI annotation naming a reference (per the spec a tag; some tools write a whole
/// reference).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full reference (`ctr export`, `docker save` 25+).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The content of `oci-layout`.
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// `sha256:...`.
    pub digest: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexJson {
    /// 2.
    #[serde(default)]
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The images.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}
