//! Which names an imported image gets: the reference the archive carries for it (the
//! `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation of an OCI
//! layout, a `docker save`'s `RepoTags`), normalised the mirror's way (`alpine:3.20` is
//! `docker.io/library/alpine:3.20`), or the one `--as` gives.
//!
//! `--as REGISTRY/REPO:TAG` names the one image of an archive (refused for an archive of
//! several); `--as REGISTRY/REPO` puts every image of the archive into that repository,
//! each keeping its own tag (an image with none becomes `latest` when it is the only one).

use std::fmt;

use super::error::Problem;
use crate::oci::reference::{Digest, Reference, RepoName};
use crate::preload::list::parse_reference;

/// A full image name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Canonical registry name.
    pub registry: String,
    /// Repository.
    pub repo: RepoName,
    /// A tag, or the digest the image is known by.
    pub reference: Reference,
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = match self.reference {
            Reference::Tag(_) => ':',
            Reference::Digest(_) => '@',
        };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

/// What `--as` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsName {
    /// Canonical registry name.
    pub registry: String,
    /// Repository.
    pub repo: RepoName,
    /// The tag, when one was given.
    pub tag: Option<String>,
}

impl fmt::Display for AsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

/// A `--as` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--as {value:?}: {reason}")]
pub struct AsError {
    value: String,
    reason: String,
}

impl AsName {
    /// Reads `[REGISTRY/]REPO[:TAG]` (no digest); a missing registry is `default_ns`.
    pub fn parse(s: &str, default_ns: &str) -> Result<AsName, AsError> {
        let bad = |reason: String| AsError {
            value: s.to_owned(),
            reason,
        };
        if s.contains('@') {
            return Err(bad("give a tag, not a digest".into()));
        }
        let last = s.rsplit('/').next().unwrap_or(s);
        let has_tag = last.contains(':');
        let (registry, repo, reference) =
            parse_reference(s, default_ns).map_err(|e| bad(e.to_string()))?;
        let tag = match reference {
            Reference::Tag(t) if has_tag => Some(t),
            _ => None,
        };
        Ok(AsName {
            registry,
            repo,
            tag,
        })
    }
}

/// A name an archive carries: a full reference, or (an OCI `ref.name`) a tag alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// A full reference.
    Full(ImageName),
    /// Only a tag.
    Tag(String),
}

/// Reads a name found in an archive. An OCI `ref.name` without `/` or `:` is a tag alone
/// (the spec's meaning); anything else is a reference as docker writes it.
pub fn carried(value: &str, default_ns: &str, ref_name: bool) -> Result<Carried, Problem> {
    let bad = |reason: String| Problem::BadName {
        name: value.to_owned(),
        reason,
    };
    if ref_name && !value.contains('/') && !value.contains(':') && !value.contains('@') {
        crate::oci::reference::validate_tag(value).map_err(|e| bad(e.to_string()))?;
        return Ok(Carried::Tag(value.to_owned()));
    }
    let (registry, repo, reference) =
        parse_reference(value, default_ns).map_err(|e| bad(e.to_string()))?;
    Ok(Carried::Full(ImageName {
        registry,
        repo,
        reference,
    }))
}

/// The names of one image (`digest`) of an archive of `images` images, from what it
/// carries and `--as`.
pub fn resolve(
    digest: &Digest,
    carried: &[Carried],
    as_name: Option<&AsName>,
    images: usize,
) -> Result<Vec<ImageName>, Problem> {
    let mut out: Vec<ImageName> = Vec::new();
    let mut push = |n: ImageName| {
        if !out.contains(&n) {
            out.push(n);
        }
    };
    match as_name {
        Some(a) => {
            if let Some(tag) = &a.tag {
                if images > 1 {
                    return Err(Problem::AsSeveral(a.to_string(), images));
                }
                push(ImageName {
                    registry: a.registry.clone(),
                    repo: a.repo.clone(),
                    reference: Reference::Tag(tag.clone()),
                });
            } else {
                for c in carried {
                    let tag = match c {
                        Carried::Tag(t) => Reference::Tag(t.clone()),
                        Carried::Full(n) => n.reference.clone(),
                    };
                    push(ImageName {
                        registry: a.registry.clone(),
                        repo: a.repo.clone(),
                        reference: tag,
                    });
                }
                if carried.is_empty() {
                    if images > 1 {
                        return Err(Problem::NoName(digest.clone()));
                    }
                    push(ImageName {
                        registry: a.registry.clone(),
                        repo: a.repo.clone(),
                        reference: Reference::Tag("latest".into()),
                    });
                }
            }
        }
        None => {
            for c in carried {
                match c {
                    Carried::Full(n) => push(n.clone()),
                    Carried::Tag(t) => {
                        return Err(Problem::TagOnly {
                            digest: digest.clone(),
                            tag: t.clone(),
                        });
                    }
                }
            }
            if carried.is_empty() {
                return Err(Problem::NoName(digest.clone()));
            }
        }
    }
    // A digest name must be this image's own digest.
    for n in &out {
        if let Reference::Digest(d) = &n.reference
            && d != digest
        {
            return Err(Problem::BadName {
                name: n.to_string(),
                reason: format!("names another digest than the image's {digest}"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> Carried {
        carried(s, "docker.io", false).unwrap()
    }

    #[test]
    fn names_are_normalised_the_mirrors_way() {
        let d = Digest::of(b"x");
        let n = resolve(&d, &[full("alpine:3.20")], None, 1).unwrap();
        assert_eq!(n[0].to_string(), "docker.io/library/alpine:3.20");
        let n = resolve(&d, &[full("127.0.0.1:5000/org/app:v1")], None, 1).unwrap();
        assert_eq!(n[0].to_string(), "127.0.0.1:5000/org/app:v1");
        let n = resolve(&d, &[full("index.docker.io/org/app")], None, 1).unwrap();
        assert_eq!(n[0].to_string(), "docker.io/org/app:latest");
        assert_eq!(
            carried("v1", "docker.io", true).unwrap(),
            Carried::Tag("v1".into())
        );
        assert!(matches!(
            carried("myimage:v1", "docker.io", true).unwrap(),
            Carried::Full(_)
        ));
    }

    #[test]
    fn as_rules() {
        let d = Digest::of(b"x");
        let with_tag = AsName::parse("quay.io/org/app:v2", "docker.io").unwrap();
        let repo_only = AsName::parse("quay.io/org/app", "docker.io").unwrap();
        assert_eq!(repo_only.tag, None);
        // One image: --as with a tag renames it.
        let n = resolve(&d, &[full("alpine:3.20")], Some(&with_tag), 1).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].to_string(), "quay.io/org/app:v2");
        // Several: only a repository, each keeps its tag.
        assert!(matches!(
            resolve(&d, &[full("alpine:3.20")], Some(&with_tag), 2),
            Err(Problem::AsSeveral(_, 2))
        ));
        let n = resolve(
            &d,
            &[full("alpine:3.20"), Carried::Tag("edge".into())],
            Some(&repo_only),
            2,
        )
        .unwrap();
        let s: Vec<String> = n.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["quay.io/org/app:3.20", "quay.io/org/app:edge"]);
        // No name: refused without --as; `latest` for the only image with a repository.
        assert!(matches!(resolve(&d, &[], None, 1), Err(Problem::NoName(_))));
        let n = resolve(&d, &[], Some(&repo_only), 1).unwrap();
        assert_eq!(n[0].to_string(), "quay.io/org/app:latest");
        assert!(matches!(
            resolve(&d, &[Carried::Tag("v1".into())], None, 1),
            Err(Problem::TagOnly { .. })
        ));
        assert!(AsName::parse("app@sha256:00", "docker.io").is_err());
        // A digest name must be the image's.
        let other = format!("r.io/app@{}", Digest::of(b"y"));
        assert!(resolve(&d, &[full(&other)], None, 1).is_err());
        let own = format!("r.io/app@{d}");
        assert!(resolve(&d, &[full(&own)], None, 1).is_ok());
    }
}
