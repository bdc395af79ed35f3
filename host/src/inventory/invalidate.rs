//! Forgetting a cached tag so that its next pull asks the upstream: the `REGISTRY/REPO:TAG`
//! a person types, as the cache names it ([`tag_reference`]), and removing its tag records
//! from the cache directory or through the store (a bucket). The `invalidate` verb and the
//! admin API call it; neither the lock nor what is printed is decided here.

use std::path::Path;

use crate::oci::reference::{self, ReferenceError, RepoName};
use crate::store::tags;
pub use crate::store::tags::RemoveError;
use crate::store::{Store, StoreError, TagKey};
use crate::upstream::canonical_name;

/// A reference that does not name a cached tag.
#[derive(Debug, thiserror::Error)]
#[error("invalid reference {reference:?}: {problem} (expected REGISTRY/REPOSITORY:TAG)")]
pub struct TagReferenceError {
    /// What was given.
    pub reference: String,
    /// What is wrong with it.
    pub problem: TagProblem,
}

/// What is wrong with a reference given to `invalidate`.
#[derive(Debug, thiserror::Error)]
pub enum TagProblem {
    /// No `/`: no registry named.
    #[error("no registry")]
    NoRegistry,
    /// A digest: there is nothing to invalidate.
    #[error("digests never change; only a tag can be invalidated")]
    Digest,
    /// No `:tag`.
    #[error("no tag")]
    NoTag,
    /// The registry, repository or tag is malformed.
    #[error(transparent)]
    Name(#[from] ReferenceError),
}

/// `registry/repo:tag` as the cache names it: the registry canonical, and for docker.io a
/// one-component name also under `library/`.
pub fn tag_reference(s: &str) -> Result<Vec<(String, RepoName, String)>, TagReferenceError> {
    let bad = |problem: TagProblem| TagReferenceError {
        reference: s.to_owned(),
        problem,
    };
    let (registry, rest) = s
        .split_once('/')
        .ok_or_else(|| bad(TagProblem::NoRegistry))?;
    let host = reference::parse_host(registry).map_err(|e| bad(e.into()))?;
    let registry = canonical_name(&host).to_owned();
    if rest.contains('@') {
        return Err(bad(TagProblem::Digest));
    }
    let (repo, tag) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad(TagProblem::NoTag))?;
    let repo = RepoName::parse(repo).map_err(|e| bad(e.into()))?;
    reference::validate_tag(tag).map_err(|e| bad(e.into()))?;
    let mut out = vec![(registry.clone(), repo.clone(), tag.to_owned())];
    let prefixed = repo.with_library_prefix();
    if registry == crate::upstream::DOCKER_HUB && prefixed != repo {
        out.push((registry, prefixed, tag.to_owned()));
    }
    Ok(out)
}

/// Removes the tag records `refs` under `root` (blocking; the caller holds the inventory
/// lock); the references removed, `registry/repo:tag` (none when none was cached).
pub fn remove_blocking(
    root: &Path,
    refs: Vec<(String, RepoName, String)>,
) -> Result<Vec<String>, RemoveError> {
    let mut removed = Vec::new();
    for (registry, repo, tag) in refs {
        if tags::remove_in(root, &registry, &repo, &tag)? {
            removed.push(format!("{registry}/{repo}:{tag}"));
        }
    }
    Ok(removed)
}

/// Removes the tag records `refs` through the store (the bucket's, for every replica);
/// the references removed, `registry/repo:tag`.
pub async fn remove_in_store(
    store: &dyn Store,
    refs: Vec<(String, RepoName, String)>,
) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for (registry, repo, tag) in refs {
        let key = TagKey {
            registry: &registry,
            repo: &repo,
            tag: &tag,
        };
        if store.remove_tag(key).await? {
            removed.push(format!("{registry}/{repo}:{tag}"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_references() {
        let r = tag_reference("docker.io/alpine:3.20").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].1.as_str(), "library/alpine");
        let r = tag_reference("127.0.0.1:5000/org/app:v1").unwrap();
        assert_eq!(
            r,
            vec![(
                "127.0.0.1:5000".into(),
                RepoName::parse("org/app").unwrap(),
                "v1".into()
            )]
        );
        for bad in [
            "alpine",
            "quay.io/app",
            "quay.io/app@sha256:00",
            "quay.io/../x:1",
            "quay.io/app:bad tag",
        ] {
            assert!(tag_reference(bad).is_err(), "{bad}");
        }
    }
}
