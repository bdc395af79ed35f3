//! Parsing and validation of what clients put in a request path: repository names, tags,
//! digests and upstream registry host names.
//!
//! Hand-written on purpose: the grammar is the distribution spec's plus this mirror's own
//! path-safety rules below, and it is proptested; reference crates parse the docker CLI's
//! normalised forms (`library/` added, default tags), which a mirror must not do silently.
//!
//! Everything here is validated against the OCI distribution grammar before it is used to
//! build a file path or an upstream URL, so a value that passes cannot escape the image path
//! (no component can be empty, `.` or `..`, or contain `/` or `%`).

use std::fmt;

/// The longest repository name accepted (distribution's own limit).
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag accepted (the OCI grammar's limit).
pub const MAX_TAG_LEN: usize = 128;
/// The longest registry host (with port) accepted.
pub const MAX_HOST_LEN: usize = 253 + 6;

/// Why a name, tag, digest or host was refused; each message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The repository name does not match the OCI grammar.
    #[error("invalid repository name {0:?}: {1}")]
    Name(String, &'static str),
    /// The tag does not match the OCI grammar.
    #[error("invalid tag {0:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag(String),
    /// The digest is malformed or uses an algorithm this registry cannot verify.
    #[error("invalid digest {0:?}: {1}")]
    Digest(String, &'static str),
    /// The upstream registry host is malformed.
    #[error("invalid registry host {0:?}")]
    Host(String),
}

/// A validated repository name such as `library/alpine` or `org/team/app`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Validates `name` against the OCI repository name grammar.
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        let bad = |why| Err(ReferenceError::Name(truncate(name), why));
        if name.is_empty() {
            return bad("empty");
        }
        if name.len() > MAX_NAME_LEN {
            return bad("longer than 255 characters");
        }
        for component in name.split('/') {
            if let Err(why) = check_component(component) {
                return bad(why);
            }
        }
        Ok(RepoName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number of `/`-separated components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// `library/NAME` for a one-component name (docker.io's convention), else unchanged.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.depth() == 1 {
            RepoName(format!("library/{}", self.0))
        } else {
            self.clone()
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component");
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("each component must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err("only lowercase letters, digits and single separators (. _ __ -) allowed");
        }
    }
    Ok(())
}

/// Validates a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let bytes = tag.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && tag.len() <= MAX_TAG_LEN {
        Ok(())
    } else {
        Err(ReferenceError::Tag(truncate(tag)))
    }
}

/// A validated sha256 digest (`sha256:` and 64 lowercase hex digits).
///
/// sha256 is the only algorithm the cache stores under; other well-formed algorithms are
/// refused with a clear message rather than fetched unverified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 hex>`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why| Err(ReferenceError::Digest(truncate(s), why));
        let Some((algo, hex)) = s.split_once(':') else {
            return bad("expected ALGORITHM:HEX");
        };
        match algo {
            "sha256" => {}
            "sha512" | "sha384" | "blake3" => return bad("only sha256 digests are supported"),
            _ => return bad("unknown algorithm"),
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return bad("sha256 needs 64 lowercase hex digits");
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest {
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    /// A digest from an already computed sha256 hex string (lowercase, 64 digits).
    pub fn from_sha256_hex(hex: String) -> Self {
        Digest { hex }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag such as `3.20` or `latest`.
    Tag(String),
    /// A content digest.
    Digest(Digest),
}

impl Reference {
    /// A digest if the string contains `:`, else a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            validate_tag(s)?;
            Ok(Reference::Tag(s.to_owned()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Does this first path segment name a registry host rather than a repository component?
/// Docker's rule: it contains `.` or `:`, or it is `localhost`.
pub fn looks_like_host(segment: &str) -> bool {
    segment.contains('.') || segment.contains(':') || segment == "localhost"
}

/// Validates and lower-cases an upstream host: `name[:port]`, or `[v6]:port`.
pub fn parse_host(s: &str) -> Result<String, ReferenceError> {
    let bad = || Err(ReferenceError::Host(truncate(s)));
    if s.is_empty() || s.len() > MAX_HOST_LEN {
        return bad();
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad();
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad();
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad(),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    // A port is 1-65535 written without leading zeros (`:08080` would name another
    // cache key for the same upstream; `:0` and `:65536` name none).
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || port.starts_with('0')
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p > 65535))
    {
        return bad();
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return bad();
        }
        // A name whose last label is numeric is an IPv4 address to URL parsers (`127.1`,
        // `2130706433`, `0x7f.1`): only the dotted-quad form is accepted.
        let last = host.rsplit('.').next().unwrap_or(host).to_ascii_lowercase();
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
            return bad();
        }
    }
    Ok(s.to_ascii_lowercase())
}

fn truncate(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/alpine",
            "org/team/app-x",
            "a__b/c.d/e--f",
            "0/1/2/3/4/5",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "..", "a/../b", "a//b", "/a", "a/", "A", "a_._b", "a___b", "-a", "a%2e", ".a",
            "a/.", "a b", "a\\b",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn library_prefix() {
        let n = RepoName::parse("alpine").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/alpine");
        let n = RepoName::parse("org/app").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "org/app");
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert_eq!(Digest::parse(&format!("sha256:{hex}")).unwrap().hex(), hex);
        for bad in [
            "sha256:",
            "sha256:ABC",
            "md5:aa",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let msg = Digest::parse(&format!("sha512:{}", "a".repeat(128)))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("only sha256"), "{msg}");
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn tags_and_refs() {
        assert!(matches!(Reference::parse("3.20"), Ok(Reference::Tag(_))));
        assert!(Reference::parse("..").is_err());
        assert!(Reference::parse(".hidden").is_err());
        assert!(Reference::parse(&"a".repeat(129)).is_err());
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "0".repeat(64))),
            Ok(Reference::Digest(_))
        ));
    }

    #[test]
    fn hosts() {
        assert!(looks_like_host("quay.io"));
        assert!(looks_like_host("127.0.0.1:5000"));
        assert!(looks_like_host("localhost"));
        assert!(!looks_like_host("library"));
        assert_eq!(parse_host("Quay.IO").unwrap(), "quay.io");
        assert!(parse_host("127.0.0.1:5000").is_ok());
        assert!(parse_host("[::1]:5000").is_ok());
        for bad in [
            "", "a..b", "a:b", "a:", "-a.com", "a/b", "a b", "[::1", "x:123456",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        // Ports: 1-65535 without leading zeros; IPv4 only as a dotted quad; IPv6 must parse.
        for bad in [
            "quay.io:65536",
            "quay.io:99999",
            "quay.io:08080",
            "quay.io:0",
            "quay.io:00443",
            "127.1:5000",
            "2130706433:5000",
            "0x7f.1",
            "[::g]:5000",
            "[:]:1",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        for ok in [
            "quay.io:65535",
            "quay.io:1",
            "[::ffff:127.0.0.1]:5000",
            "a.b2c:80",
        ] {
            assert!(parse_host(ok).is_ok(), "{ok}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever a client sends, an accepted name never yields a path component that could
        /// leave the cache directory.
        #[test]
        fn accepted_names_are_path_safe(s in "[a-z0-9._/%-]{0,40}") {
            if let Ok(n) = RepoName::parse(&s) {
                for c in n.as_str().split('/') {
                    prop_assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('%'));
                }
            }
        }

        #[test]
        fn digest_parse_never_panics(s in ".{0,80}") {
            let _ = Digest::parse(&s);
            let _ = Reference::parse(&s);
            let _ = parse_host(&s);
        }
    }
}
