//! Mapping a request path and query to what it asks for and from which upstream.
//!
//! The upstream is chosen, in order, by the `ns` query parameter (containerd mirrors), by a
//! first path segment that looks like a host (`/v2/quay.io/org/img/...`, skopeo, crane and
//! podman mirrors with a path) or is a registry's alias (`/v2/corp/team/app/...` for an
//! entry with `aliases: [corp]`: docker references cannot carry a port in the path), then
//! by `defaultNs`. An alias also works as the `ns` value. Every segment is percent-decoded and
//! validated before use, so `..`, `%2e%2e` and friends are refused here.

use percent_encoding::percent_decode_str;

use crate::metrics::RouteKind;
use crate::oci::error::ErrorCode;
use crate::oci::reference::{self, Digest, Reference, RepoName};
use crate::server::error::RegistryError;

/// The longest request path looked at.
const MAX_PATH: usize = 2048;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(Reference),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(Digest),
    /// `/v2/<name>/tags/list`.
    Tags,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(Digest),
    /// `/v2/<name>/blobs/uploads/...`: push, refused.
    Upload,
}

/// How the client named the upstream; used to rewrite pagination links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `?ns=`.
    Ns,
    /// First path segment.
    Path,
    /// `defaultNs`.
    Default,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What is asked for.
    pub route: Route,
    /// Upstream registry host (validated, lower-case; not yet canonicalised).
    pub registry: String,
    /// Repository within it (empty for [`Route::Base`]).
    pub repo: Option<RepoName>,
    /// How the upstream was named.
    pub via: Via,
}

/// Parses a request path (`/v2/...`, still percent-encoded) and its query; `alias` gives the
/// registry an alias stands for.
pub fn parse(
    path: &str,
    query: Option<&str>,
    default_ns: &str,
    alias: impl Fn(&str) -> Option<String>,
) -> Result<Target, RegistryError> {
    if path.len() > MAX_PATH {
        return Err(RegistryError::name_invalid("request path too long"));
    }
    let ns = query
        .and_then(|q| query_param(q, "ns"))
        .transpose()?
        .map(|ns| alias(&ns).unwrap_or(ns));
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(not_found());
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Target {
            route: Route::Base,
            registry: ns.unwrap_or_else(|| default_ns.to_owned()),
            repo: None,
            via: Via::Default,
        });
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(not_found());
    };
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let s = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| RegistryError::name_invalid("path is not valid UTF-8"))?;
        if s.contains('/') || s == "." || s == ".." {
            return Err(RegistryError::name_invalid(format!(
                "invalid path segment {:?}",
                s.chars().take(40).collect::<String>()
            )));
        }
        segments.push(s.into_owned());
    }
    let n = segments.len();
    let (route, name_len) = if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
        (Route::Tags, n - 2)
    } else if let Some(i) = segments.iter().rposition(|s| s == "uploads")
        && i >= 2
        && segments[i - 1] == "blobs"
    {
        (Route::Upload, i - 1)
    } else if n >= 3 {
        let reference = &segments[n - 1];
        match segments[n - 2].as_str() {
            "manifests" => (Route::Manifest(Reference::parse(reference)?), n - 2),
            "blobs" => (Route::Blob(Digest::parse(reference)?), n - 2),
            "referrers" => (Route::Referrers(Digest::parse(reference)?), n - 2),
            _ => return Err(not_found()),
        }
    } else {
        return Err(not_found());
    };
    let name = &segments[..name_len];
    let (registry, name, via) = match ns {
        Some(ns) => (ns, name, Via::Ns),
        None if name.len() > 1
            && let Some(registry) = alias(&name[0]) =>
        {
            (registry, &name[1..], Via::Path)
        }
        None if name.len() > 1 && reference::looks_like_host(&name[0]) => {
            (reference::parse_host(&name[0])?, &name[1..], Via::Path)
        }
        None => (default_ns.to_owned(), name, Via::Default),
    };
    let repo = RepoName::parse(&name.join("/"))?;
    Ok(Target {
        route,
        registry,
        repo: Some(repo),
        via,
    })
}

fn not_found() -> RegistryError {
    RegistryError::not_found(ErrorCode::NameUnknown, "no such API endpoint")
}

/// One query parameter (`application/x-www-form-urlencoded`: `+` is a space, then
/// percent-decoding; the first one wins); `ns` values are validated as hosts. Bytes that
/// are not UTF-8 decode to U+FFFD, which no host contains: that is the UTF-8 error.
fn query_param(query: &str, key: &str) -> Option<Result<String, RegistryError>> {
    form_urlencoded::parse(query.as_bytes()).find_map(|(k, v)| {
        (k == key).then(|| {
            if v.contains(char::REPLACEMENT_CHARACTER) {
                return Err(RegistryError::name_invalid("ns is not valid UTF-8"));
            }
            Ok(reference::parse_host(&v)?)
        })
    })
}

/// The metrics label of a route.
impl From<&Route> for RouteKind {
    fn from(r: &Route) -> Self {
        match r {
            Route::Base => RouteKind::Base,
            Route::Manifest(_) => RouteKind::Manifest,
            Route::Blob(_) => RouteKind::Blob,
            Route::Tags => RouteKind::Tags,
            Route::Referrers(_) => RouteKind::Referrers,
            Route::Upload => RouteKind::Upload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str, q: Option<&str>) -> Result<Target, RegistryError> {
        parse(path, q, "docker.io", |a| {
            (a == "corp").then(|| "registry.corp.example:8443".to_owned())
        })
    }

    #[test]
    fn an_alias_in_the_path_or_ns_names_its_registry() {
        let t = p("/v2/corp/team/app/manifests/1", None).unwrap();
        assert_eq!(t.registry, "registry.corp.example:8443");
        assert_eq!(t.repo.unwrap().as_str(), "team/app");
        assert_eq!(t.via, Via::Path);
        let t = p("/v2/team/app/manifests/1", Some("ns=corp")).unwrap();
        assert_eq!(t.registry, "registry.corp.example:8443");
        assert_eq!(t.repo.unwrap().as_str(), "team/app");
        // A one-segment name is a docker.io repository, alias or not.
        let t = p("/v2/corp/manifests/1", None).unwrap();
        assert_eq!(t.registry, "docker.io");
    }

    #[test]
    fn ns_query_is_form_decoded_first_wins_and_utf8() {
        let ns = |q: &str| query_param(q, "ns").map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(
            ns("a=1&ns=127.0.0.1%3A5000&ns=x.example"),
            Some(Ok("127.0.0.1:5000".into()))
        );
        assert_eq!(ns("nsx=a.example&n=b"), None);
        assert!(ns("ns=%FF.example").is_some_and(|r| r.unwrap_err().contains("not valid UTF-8")));
        assert!(
            ns("ns=a+b").is_some_and(|r| r.is_err()),
            "+ is a space, no host has one"
        );
    }

    #[test]
    fn containerd_ns() {
        let t = p("/v2/library/alpine/manifests/3.20", Some("ns=docker.io")).unwrap();
        assert_eq!(t.registry, "docker.io");
        assert_eq!(t.repo.unwrap().as_str(), "library/alpine");
        assert_eq!(t.route, Route::Manifest(Reference::Tag("3.20".into())));
        let t = p("/v2/app/manifests/v1", Some("ns=127.0.0.1%3A5000")).unwrap();
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert_eq!(t.via, Via::Ns);
    }

    #[test]
    fn in_path_upstream() {
        let t = p("/v2/quay.io/org/team/img/manifests/latest", None).unwrap();
        assert_eq!(t.registry, "quay.io");
        assert_eq!(t.repo.unwrap().as_str(), "org/team/img");
        let t = p(
            "/v2/127.0.0.1:5000/app/blobs/sha256:".to_owned().as_str(),
            None,
        );
        assert!(t.is_err());
        let d = format!("sha256:{}", "a".repeat(64));
        let t = p(&format!("/v2/127.0.0.1:5000/app/blobs/{d}"), None).unwrap();
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert!(matches!(t.route, Route::Blob(_)));
    }

    #[test]
    fn default_ns_and_depth() {
        let t = p("/v2/alpine/manifests/3.20", None).unwrap();
        assert_eq!((t.registry.as_str(), t.via), ("docker.io", Via::Default));
        let t = p("/v2/a/b/c/d/e/tags/list", None).unwrap();
        assert_eq!(t.route, Route::Tags);
        assert_eq!(t.repo.unwrap().as_str(), "a/b/c/d/e");
        assert_eq!(p("/v2/", None).unwrap().route, Route::Base);
        assert_eq!(p("/v2", None).unwrap().route, Route::Base);
    }

    #[test]
    fn uploads_are_recognised() {
        assert_eq!(
            p("/v2/app/blobs/uploads/", None).unwrap().route,
            Route::Upload
        );
        assert_eq!(
            p("/v2/app/blobs/uploads/abc-123", None).unwrap().route,
            Route::Upload
        );
    }

    #[test]
    fn hostile_paths() {
        for path in [
            "/v2/../etc/passwd/manifests/x",
            "/v2/%2e%2e/%2e%2e/manifests/x",
            "/v2/a/%2e%2e/manifests/x",
            "/v2/a%2fb/manifests/x",
            "/v2/a/manifests/..",
            "/v2/a/manifests/%2e%2e",
            "/v2/a/blobs/sha256:zz",
            "/v2/a/blobs/..%2f..%2fetc",
            "/v2/A/manifests/x",
        ] {
            let e = p(path, None).unwrap_err();
            assert_eq!(e.status, 400, "{path}: {e:?}");
        }
        assert_eq!(
            p(&format!("/v2/{}/manifests/x", "a".repeat(300)), None)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            p("/v2/a/manifests/x", Some("ns=..")).unwrap_err().status,
            400
        );
        assert_eq!(p("/etc/passwd", None).unwrap_err().status, 404);
    }
}
