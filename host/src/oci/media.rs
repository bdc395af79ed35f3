//! Manifest media types and `Accept` negotiation.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 1 (signed), still served by some old registries.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest type we ask upstreams for when the client did not say (or for digests,
/// whose content is fixed whatever we accept).
pub const ALL_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
];

/// The media types a client accepts, gathered from every `Accept` header line (clients such
/// as containers/image send several lines, all of which count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    types: Vec<String>,
}

impl Accept {
    /// Collects the types from all `Accept` header values; parameters (`;q=`) are dropped.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut types = Vec::new();
        for value in headers.get_all(http::header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let ty = item.split(';').next().unwrap_or("").trim();
                if !ty.is_empty() && !types.iter().any(|t: &String| t.eq_ignore_ascii_case(ty)) {
                    types.push(ty.to_ascii_lowercase());
                }
            }
        }
        Accept { types }
    }

    /// True when the client named no manifest type (no header, or only wildcards): any
    /// manifest may be returned.
    pub fn is_any(&self) -> bool {
        !self
            .types
            .iter()
            .any(|t| ALL_MANIFESTS.contains(&t.as_str()))
    }

    /// Whether a manifest of this media type may be returned to the client.
    pub fn allows(&self, media_type: &str) -> bool {
        self.is_any()
            || self
                .types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// The value to send upstream: the client's types when it named manifest types, else all
    /// manifest types.
    pub fn upstream_header(&self) -> String {
        if self.is_any() {
            ALL_MANIFESTS.join(", ")
        } else {
            self.types.join(", ")
        }
    }
}

/// The media type of a manifest body when the upstream's `Content-Type` is missing or
/// generic: its own `mediaType` field, else OCI manifest or index by shape.
pub fn sniff(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => DOCKER_SCHEMA1_SIGNED.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn several_accept_lines_all_count() {
        let mut h = http::HeaderMap::new();
        h.append("accept", HeaderValue::from_static(OCI_MANIFEST));
        h.append(
            "accept",
            HeaderValue::from_static(
                "application/vnd.docker.distribution.manifest.v2+json; q=0.9, */*",
            ),
        );
        let a = Accept::from_headers(&h);
        assert!(a.allows(OCI_MANIFEST));
        assert!(a.allows(DOCKER_MANIFEST));
        assert!(!a.allows(OCI_INDEX));
        assert!(!a.is_any());
    }

    #[test]
    fn no_accept_means_anything() {
        let a = Accept::from_headers(&http::HeaderMap::new());
        assert!(a.is_any() && a.allows(OCI_INDEX));
        assert!(a.upstream_header().contains(OCI_INDEX));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(br#"{"mediaType":"x/y"}"#), "x/y");
        assert_eq!(sniff(br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
        assert_eq!(sniff(b"garbage"), OCI_MANIFEST);
    }
}
