//! `tags/list` and `referrers`: passed through to the upstream, with pagination links
//! pointed back through this registry; referrers of registries without the API are an empty
//! index.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::mirror::Mirror;
use crate::oci::error::ErrorCode;
use crate::oci::media;
use crate::oci::reference::RepoName;
use crate::server::error::RegistryError;
use crate::server::handlers::json_ok;
use crate::server::response::{self, Body};
use crate::server::router::Via;
use crate::upstream::Subject;
use crate::upstream::answer::{read_limited, upstream_status};

pub(super) async fn passthrough(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    path: &str,
    query: Option<&str>,
    via: &Via,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let is_referrers = path.starts_with("referrers/");
    if app.settings.air_gapped {
        if is_referrers {
            return Ok(empty_index(head));
        }
        return Err(RegistryError::not_found(
            ErrorCode::NameUnknown,
            format!("{registry}/{repo}: tag listing needs the upstream (air-gapped)"),
        ));
    }
    let upstream = app.upstreams.resolve(registry)?;
    let allowed: &[&str] = if is_referrers {
        &["artifactType"]
    } else {
        &["n", "last"]
    };
    let forwarded = forwarded_query(query, allowed);
    let full_path = if forwarded.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{forwarded}")
    };
    let resp = upstream
        .request(Method::GET, repo, &full_path, None)
        .await?;
    let status = resp.status();
    if is_referrers && status == StatusCode::NOT_FOUND {
        // Registries without the referrers API: the spec's answer is an empty index.
        return Ok(empty_index(head));
    }
    if !status.is_success() {
        return Err(upstream_status(
            &upstream,
            resp,
            Subject::Repository,
            &format!("{repo} {path}"),
        )
        .into());
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let link = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(|l| rewrite_link(l, registry, via));
    let bytes = read_limited(&upstream, resp, app.settings.max_manifest_size).await?;
    let mut out = response::bytes(bytes, head);
    let h = out.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LINK, link);
    }
    Ok(out)
}

fn empty_index(head: bool) -> Response<Body> {
    let body: &'static [u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let mut resp = json_ok(body, head);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media::OCI_INDEX),
    );
    resp
}

/// Pagination links point at the upstream's paths; point them back through us.
fn rewrite_link(link: &str, registry: &str, via: &Via) -> String {
    match via {
        Via::Path => link.replacen("</v2/", &format!("</v2/{registry}/"), 1),
        Via::Ns => match link.find('>') {
            Some(i) => {
                let sep = if link[..i].contains('?') { '&' } else { '?' };
                format!(
                    "{}{sep}ns={}{}",
                    &link[..i],
                    registry.replace(':', "%3A"),
                    &link[i..]
                )
            }
            None => link.to_owned(),
        },
        Via::Default => link.to_owned(),
    }
}

/// The client's query parameters whose key is `allowed`, in their order, decoded and
/// encoded again (`application/x-www-form-urlencoded`); empty when there are none.
fn forwarded_query(query: Option<&str>, allowed: &[&str]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .filter(|(k, _)| allowed.contains(&k.as_ref())),
        )
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_query_parameters_are_forwarded() {
        let tags = &["n", "last"];
        assert_eq!(forwarded_query(None, tags), "");
        assert_eq!(forwarded_query(Some("ns=docker.io"), tags), "");
        assert_eq!(
            forwarded_query(Some("ns=docker.io&n=10&x=1&last=v1.0"), tags),
            "n=10&last=v1.0"
        );
        assert_eq!(
            forwarded_query(
                Some("artifactType=application%2Fvnd.example%2Bjson"),
                &["artifactType"]
            ),
            "artifactType=application%2Fvnd.example%2Bjson"
        );
    }

    #[test]
    fn links_are_rewritten() {
        let l = r#"</v2/app/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(
            rewrite_link(l, "127.0.0.1:5000", &Via::Path),
            r#"</v2/127.0.0.1:5000/app/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(
            rewrite_link(l, "127.0.0.1:5000", &Via::Ns),
            r#"</v2/app/tags/list?n=2&last=b&ns=127.0.0.1%3A5000>; rel="next""#
        );
    }
}
