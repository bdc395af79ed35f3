//! Image lists: a file of image references, one per line, `#` comments and blank lines
//! ignored. Each line is validated with [`crate::oci::reference`]; a bad line is kept with
//! its line number and reason so that the rest of the list still loads.
//!
//! A reference is `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`, as docker writes it: the first
//! component is the registry when it looks like a host (has `.` or `:`, or is `localhost`),
//! else the registry is `defaultNs`; no tag means `latest`; a digest wins over a tag; on
//! docker.io a one-component repository gets `library/`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::oci::reference::{self, Digest, Reference, ReferenceError, RepoName};
use crate::upstream::{DOCKER_HUB, canonical_name};

/// One image to preload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Canonical registry name (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository within it (`library/alpine`).
    pub repo: RepoName,
    /// Tag or digest.
    pub reference: Reference,
    /// The line as written.
    pub written: String,
    /// 1-based line number in the list.
    pub line: usize,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = match self.reference {
            Reference::Tag(_) => ':',
            Reference::Digest(_) => '@',
        };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

/// A line that is not a valid reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
    /// Why it was refused.
    pub reason: String,
}

/// Why a line is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReference {
    /// The line has spaces in it (two references on one line?).
    #[error("a reference contains no spaces (one reference per line)")]
    Whitespace,
    /// Its registry, repository, tag or digest is invalid.
    #[error(transparent)]
    Invalid(#[from] ReferenceError),
}

/// A parsed list.
#[derive(Debug, Clone, Default)]
pub struct ImageList {
    /// Where it was read from.
    pub path: PathBuf,
    /// Valid references, in file order, each once.
    pub images: Vec<ImageRef>,
    /// Refused lines.
    pub bad: Vec<BadLine>,
}

/// The list file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read image list {path}: {source}")]
pub struct ListError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Reads and parses an image list.
pub fn read(path: &Path, default_ns: &str) -> Result<ImageList, ListError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListError {
        path: path.to_owned(),
        source,
    })?;
    let mut list = parse(&text, default_ns);
    list.path = path.to_owned();
    Ok(list)
}

/// Parses list text; duplicates (after normalisation) are kept once.
pub fn parse(text: &str, default_ns: &str) -> ImageList {
    let mut list = ImageList::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        // A `#` starts a comment anywhere on a line: references never contain one.
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match parse_reference(content, default_ns) {
            Ok((registry, repo, reference)) => {
                let img = ImageRef {
                    registry,
                    repo,
                    reference,
                    written: content.to_owned(),
                    line,
                };
                if !list.images.iter().any(|o| o.to_string() == img.to_string()) {
                    list.images.push(img);
                }
            }
            Err(reason) => list.bad.push(BadLine {
                line,
                text: content.chars().take(120).collect(),
                reason: reason.to_string(),
            }),
        }
    }
    list
}

/// `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]` -> (registry, repository, tag or digest).
pub fn parse_reference(
    s: &str,
    default_ns: &str,
) -> Result<(String, RepoName, Reference), BadReference> {
    if s.chars().any(char::is_whitespace) {
        return Err(BadReference::Whitespace);
    }
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(Digest::parse(d)?)),
        None => (s, None),
    };
    // The tag is after the last `:` that follows the last `/` (a registry port is not a tag).
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
        }
        None => (name_and_tag, None),
    };
    if let Some(t) = tag {
        reference::validate_tag(t)?;
    }
    let (registry, repo) = match name.split_once('/') {
        Some((first, rest)) if reference::looks_like_host(first) => {
            (reference::parse_host(first)?, rest)
        }
        _ => (default_ns.to_owned(), name),
    };
    let registry = canonical_name(&registry).to_owned();
    let mut repo = RepoName::parse(repo)?;
    if registry == DOCKER_HUB {
        repo = repo.with_library_prefix();
    }
    let reference = match (digest, tag) {
        (Some(d), _) => Reference::Digest(d),
        (None, Some(t)) => Reference::Tag(t.to_owned()),
        (None, None) => Reference::Tag("latest".to_owned()),
    };
    Ok((registry, repo, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_reference_messages() {
        assert_eq!(
            parse_reference("alpine busybox", "docker.io")
                .unwrap_err()
                .to_string(),
            "a reference contains no spaces (one reference per line)"
        );
        let e = parse_reference("alpine:t!", "docker.io").unwrap_err();
        assert_eq!(
            e.to_string(),
            crate::oci::reference::validate_tag("t!")
                .unwrap_err()
                .to_string(),
            "the reference's own message"
        );
    }

    fn one(s: &str) -> (String, String, String) {
        let (r, n, t) = parse_reference(s, "docker.io").unwrap();
        (r, n.to_string(), t.to_string())
    }

    #[test]
    fn references() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            one("docker.io/library/alpine:3.20"),
            ("docker.io".into(), "library/alpine".into(), "3.20".into())
        );
        assert_eq!(
            one("alpine"),
            ("docker.io".into(), "library/alpine".into(), "latest".into())
        );
        assert_eq!(
            one("index.docker.io/alpine:3"),
            ("docker.io".into(), "library/alpine".into(), "3".into())
        );
        assert_eq!(
            one("bitnami/redis:7"),
            ("docker.io".into(), "bitnami/redis".into(), "7".into())
        );
        assert_eq!(
            one(&format!("127.0.0.1:5000/app@{d}")),
            ("127.0.0.1:5000".into(), "app".into(), d.clone())
        );
        assert_eq!(
            one(&format!("quay.io/org/img:tag@{d}")),
            ("quay.io".into(), "org/img".into(), d.clone())
        );
        assert_eq!(
            one("localhost/a/b"),
            ("localhost".into(), "a/b".into(), "latest".into())
        );
        assert_eq!(
            one("127.0.0.1:5000/app"),
            ("127.0.0.1:5000".into(), "app".into(), "latest".into())
        );
    }

    #[test]
    fn default_ns_other_than_docker_hub_adds_no_library() {
        let (r, n, _) = parse_reference("app:1", "127.0.0.1:5000").unwrap();
        assert_eq!((r.as_str(), n.as_str()), ("127.0.0.1:5000", "app"));
    }

    #[test]
    fn bad_references() {
        for bad in [
            "Alpine:3",
            "alpine:",
            "alpine:.x",
            "a b",
            "quay.io/org/img@sha256:zz",
            "quay.io/org/img@md5:aa",
            "quay..io/x:1",
            "a//b",
            "/a",
        ] {
            assert!(parse_reference(bad, "docker.io").is_err(), "{bad}");
        }
    }

    #[test]
    fn list_with_comments_blank_and_bad_lines() {
        let text = "# images\n\nalpine:3.20   # the base\n  quay.io/org/img:tag\nNOT VALID\nalpine:3.20\n\t\n127.0.0.1:5000/x@sha256:123\n";
        let l = parse(text, "docker.io");
        let names: Vec<String> = l.images.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            vec!["docker.io/library/alpine:3.20", "quay.io/org/img:tag"]
        );
        assert_eq!(l.images[1].line, 4);
        let bad: Vec<usize> = l.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![5, 8]);
        assert!(l.bad[1].reason.contains("64"), "{}", l.bad[1].reason);
    }
}
