//! Manifest media types: `Accept` negotiation (parsed in one linear pass into a small,
//! bounded set) and deciding a fetched manifest's media type from its own bytes.

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
/// Docker v2 schema 1 (unsigned).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Every manifest type we ask upstreams for when the client did not say (or for digests,
/// whose content is fixed whatever we accept).
pub const ALL_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
];

/// At most this many types outside [`ALL_MANIFESTS`] are kept from a client's `Accept`
/// (further ones are ignored), so that neither the work per item nor what is kept or sent
/// upstream grows with the header.
pub const MAX_OTHER_TYPES: usize = 8;

/// The media types a client accepts, gathered from every `Accept` header line (clients such
/// as containers/image send several lines, all of which count): the known manifest types as
/// a bit set, plus a few other concrete types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    /// Bit `i` set: `ALL_MANIFESTS[i]` accepted.
    known: u8,
    /// Other concrete types (lowercase), at most [`MAX_OTHER_TYPES`], in order of appearance.
    other: Vec<String>,
}

#[cfg(test)]
thread_local! {
    /// Comparisons made while parsing (tests bound the work per item).
    static COMPARISONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_comparison() {
    #[cfg(test)]
    COMPARISONS.with(|c| c.set(c.get() + 1));
}

impl Accept {
    /// Collects the types from all `Accept` header values; parameters (`;q=`) and wildcards
    /// are dropped. Linear in the header size: each item is compared with at most
    /// `ALL_MANIFESTS.len() + MAX_OTHER_TYPES` short strings.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut accept = Accept::default();
        for value in headers.get_all(http::header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let ty = item.split(';').next().unwrap_or("").trim();
                accept.add(ty);
            }
        }
        accept
    }

    fn add(&mut self, ty: &str) {
        if ty.is_empty() || ty.contains('*') {
            return;
        }
        for (i, known) in ALL_MANIFESTS.iter().enumerate() {
            count_comparison();
            if ty.eq_ignore_ascii_case(known) {
                self.known |= 1 << i;
                return;
            }
        }
        if self.other.len() >= MAX_OTHER_TYPES || ty.len() > 255 {
            return;
        }
        for t in &self.other {
            count_comparison();
            if t.eq_ignore_ascii_case(ty) {
                return;
            }
        }
        self.other.push(ty.to_ascii_lowercase());
    }

    /// True when the client named no manifest type (no header, or only wildcards or other
    /// types): any manifest may be returned.
    pub fn is_any(&self) -> bool {
        self.known == 0
    }

    /// Whether a manifest of this media type may be returned to the client.
    pub fn allows(&self, media_type: &str) -> bool {
        if self.is_any() {
            return true;
        }
        ALL_MANIFESTS
            .iter()
            .enumerate()
            .any(|(i, k)| self.known & (1 << i) != 0 && k.eq_ignore_ascii_case(media_type))
            || self
                .other
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// The value to send upstream: the manifest types the client named (and its few other
    /// types), else all manifest types. Bounded whatever the client sent.
    pub fn upstream_header(&self) -> String {
        if self.is_any() {
            return ALL_MANIFESTS.join(", ");
        }
        let known = ALL_MANIFESTS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.known & (1 << i) != 0)
            .map(|(_, k)| *k);
        known
            .chain(self.other.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A short canonical form of what this accepts (the same for any header with the same
    /// meaning, whatever its order, case, parameters or repetitions), for keying shared fetches.
    pub fn canonical_key(&self) -> String {
        if self.is_any() {
            return "*".to_owned();
        }
        let mut other: Vec<&str> = self.other.iter().map(String::as_str).collect();
        other.sort_unstable();
        format!("{:02x};{}", self.known, other.join(","))
    }
}

/// Why a fetched manifest's media type cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    /// The body is not JSON (or not a JSON object).
    #[error("the body is not a JSON manifest")]
    NotJson,
    /// The `Content-Type` names a different type than the manifest's own `mediaType`.
    #[error("Content-Type {header} contradicts the manifest's mediaType {field}")]
    Contradicts {
        /// The upstream's `Content-Type`.
        header: String,
        /// The manifest's `mediaType`.
        field: String,
    },
    /// The declared type (field or header) is a kind of manifest the bytes are not.
    #[error("declared as {declared} but the body is {shape}")]
    WrongShape {
        /// The type declared.
        declared: String,
        /// What the body looks like.
        shape: &'static str,
    },
}

/// What a manifest body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Has `manifests`.
    Index,
    /// Has `config` (and `layers`).
    Image,
    /// `schemaVersion: 1` with `fsLayers`.
    Schema1,
    /// None of those (an artifact or something newer).
    Other,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Index => "an index (it has manifests)",
            Shape::Image => "an image manifest (it has config and layers)",
            Shape::Schema1 => "a schema 1 manifest",
            Shape::Other => "neither an index nor an image manifest",
        }
    }

    /// The known types a body of this shape may have, the default first.
    fn compatible(self) -> &'static [&'static str] {
        match self {
            Shape::Index => &[OCI_INDEX, DOCKER_LIST],
            Shape::Image => &[OCI_MANIFEST, DOCKER_MANIFEST],
            Shape::Schema1 => &[DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1],
            Shape::Other => &[],
        }
    }
}

/// The shape a known type requires, None for types we do not know.
fn required_shape(media_type: &str) -> Option<Shape> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Shape::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Shape::Image),
        DOCKER_SCHEMA1_SIGNED | DOCKER_SCHEMA1 => Some(Shape::Schema1),
        _ => None,
    }
}

/// A `Content-Type` that names a specific manifest type (not a generic JSON or text type).
fn is_specific(content_type: &str) -> bool {
    ALL_MANIFESTS.contains(&content_type)
        || content_type == DOCKER_SCHEMA1
        || content_type.starts_with("application/vnd.")
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde::de::IgnoredAny>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
}

impl Probe {
    fn shape(&self) -> Shape {
        if self.manifests.is_some() {
            Shape::Index
        } else if self.config.is_some() {
            Shape::Image
        } else if self.schema_version == Some(1) || self.fs_layers.is_some() {
            Shape::Schema1
        } else {
            Shape::Other
        }
    }
}

/// The media type of a manifest fetched from an upstream that answered `content_type`
/// (lowercase, without parameters). The manifest's own `mediaType` decides when it has one,
/// and a specific `Content-Type` that differs from it is refused; without one, the type is
/// inferred from the body's shape, the header only choosing among the types compatible with
/// it. A known type the body's shape contradicts is refused.
pub fn decide(bytes: &[u8], content_type: Option<&str>) -> Result<String, MediaTypeError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|_| MediaTypeError::NotJson)?;
    let shape = probe.shape();
    let header = content_type.filter(|t| is_specific(t));
    let declared = match (probe.media_type, header) {
        (Some(field), Some(header)) if !field.eq_ignore_ascii_case(header) => {
            return Err(MediaTypeError::Contradicts {
                header: header.to_owned(),
                field,
            });
        }
        (Some(field), _) => field,
        (None, Some(header)) if shape.compatible().contains(&header) => header.to_owned(),
        (None, Some(header)) if required_shape(header).is_some() => {
            return Err(MediaTypeError::WrongShape {
                declared: header.to_owned(),
                shape: shape.describe(),
            });
        }
        // An unknown specific type on a body of known shape: the shape decides.
        (None, Some(header)) => match shape.compatible().first() {
            Some(t) => (*t).to_owned(),
            None => header.to_owned(),
        },
        (None, None) => shape
            .compatible()
            .first()
            .unwrap_or(&OCI_MANIFEST)
            .to_string(),
    };
    match required_shape(&declared) {
        Some(required) if required != shape => Err(MediaTypeError::WrongShape {
            declared,
            shape: shape.describe(),
        }),
        _ => Ok(declared),
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
    fn accept_is_bounded_canonical_and_linear() {
        // 200k distinct types plus every known one, repeated: the work per item is bounded
        // and what is kept (and sent upstream, and keyed on) stays small.
        let mut big = String::new();
        for i in 0..200_000 {
            big.push_str(&format!("application/x-{i}; q=0.{}, ", i % 10));
        }
        big.push_str(&ALL_MANIFESTS.join(", ").to_uppercase());
        let items = big.split(',').count();
        let mut h = http::HeaderMap::new();
        h.append("accept", HeaderValue::from_str(&big).unwrap());
        COMPARISONS.with(|c| c.set(0));
        let a = Accept::from_headers(&h);
        let work = COMPARISONS.with(std::cell::Cell::get);
        assert!(
            work <= items * (ALL_MANIFESTS.len() + MAX_OTHER_TYPES),
            "{work} comparisons for {items} items"
        );
        assert!(a.other.len() <= MAX_OTHER_TYPES);
        assert!(ALL_MANIFESTS.iter().all(|t| a.allows(t)));
        assert!(a.upstream_header().len() < 1024);
        // Same meaning, different order/case/repetition: same key.
        let mut h2 = http::HeaderMap::new();
        h2.append("accept", HeaderValue::from_static(OCI_INDEX));
        h2.append("accept", HeaderValue::from_static("APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON;q=1, */*, application/vnd.oci.image.index.v1+json"));
        let mut h3 = http::HeaderMap::new();
        h3.append("accept", HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"));
        let (k2, k3) = (
            Accept::from_headers(&h2).canonical_key(),
            Accept::from_headers(&h3).canonical_key(),
        );
        assert_eq!(k2, k3);
        assert!(k2.len() < 16, "{k2}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        #[test]
        fn accept_work_is_linear(types in proptest::collection::vec("[a-z/.+*-]{0,30}", 0..2000)) {
            let value = types.join(",");
            let mut h = http::HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.append("accept", v);
            }
            COMPARISONS.with(|c| c.set(0));
            let a = Accept::from_headers(&h);
            let work = COMPARISONS.with(std::cell::Cell::get);
            proptest::prop_assert!(work <= (types.len() + 1) * (ALL_MANIFESTS.len() + MAX_OTHER_TYPES));
            proptest::prop_assert!(a.canonical_key().len() <= 8 * 256 + 16);
        }
    }

    fn image(mt: Option<&str>) -> Vec<u8> {
        let mt = mt
            .map(|t| format!(r#""mediaType":"{t}","#))
            .unwrap_or_default();
        format!(r#"{{"schemaVersion":2,{mt}"config":{{}},"layers":[]}}"#).into_bytes()
    }

    fn index(mt: Option<&str>) -> Vec<u8> {
        let mt = mt
            .map(|t| format!(r#""mediaType":"{t}","#))
            .unwrap_or_default();
        format!(r#"{{"schemaVersion":2,{mt}"manifests":[]}}"#).into_bytes()
    }

    #[test]
    fn the_manifest_decides_its_own_type() {
        // The field wins; a generic or missing header is fine.
        for ct in [None, Some("application/json"), Some(DOCKER_MANIFEST)] {
            assert_eq!(
                decide(&image(Some(DOCKER_MANIFEST)), ct).unwrap(),
                DOCKER_MANIFEST
            );
        }
        // A specific header that contradicts the field is refused.
        assert!(matches!(
            decide(&image(Some(DOCKER_MANIFEST)), Some(OCI_INDEX)),
            Err(MediaTypeError::Contradicts { .. })
        ));
        assert!(matches!(
            decide(&index(Some(OCI_INDEX)), Some(DOCKER_LIST)),
            Err(MediaTypeError::Contradicts { .. })
        ));
        // A field that contradicts the shape is refused.
        assert!(matches!(
            decide(&image(Some(OCI_INDEX)), Some(OCI_INDEX)),
            Err(MediaTypeError::WrongShape { .. })
        ));
        // No field: the shape decides, the header breaks ties among compatible types.
        assert_eq!(decide(&image(None), None).unwrap(), OCI_MANIFEST);
        assert_eq!(
            decide(&index(None), Some("application/json")).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            decide(&index(None), Some(DOCKER_LIST)).unwrap(),
            DOCKER_LIST
        );
        assert!(matches!(
            decide(&image(None), Some(OCI_INDEX)),
            Err(MediaTypeError::WrongShape { .. })
        ));
        let schema1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[],"signatures":[]}"#;
        assert_eq!(
            decide(schema1, Some(DOCKER_SCHEMA1)).unwrap(),
            DOCKER_SCHEMA1
        );
        assert_eq!(decide(schema1, None).unwrap(), DOCKER_SCHEMA1_SIGNED);
        // Artifacts keep their own type; non-JSON is refused.
        assert_eq!(
            decide(br#"{"mediaType":"application/vnd.example+json"}"#, None).unwrap(),
            "application/vnd.example+json"
        );
        assert_eq!(
            decide(b"garbage", Some(OCI_MANIFEST)),
            Err(MediaTypeError::NotJson)
        );
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(br#"{"mediaType":"x/y"}"#), "x/y");
        assert_eq!(sniff(br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
        assert_eq!(sniff(b"garbage"), OCI_MANIFEST);
    }
}
