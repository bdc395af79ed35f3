//! Manifest answers: the manifest the mirror has or fetched ([`crate::mirror::manifests`]),
//! with its media type and digest headers.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, header};

use crate::mirror::Mirror;
use crate::oci::media::Accept;
use crate::oci::reference::{Reference, RepoName};
use crate::server::error::RegistryError;
use crate::server::response::{self, Body};
use crate::store::Manifest;

pub(super) async fn manifest(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    reference: Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let m = match reference {
        Reference::Digest(digest) => {
            crate::mirror::manifests::by_digest(app, registry, repo, digest).await?
        }
        Reference::Tag(tag) => {
            // Only a tag's answer depends on what the client accepts.
            let accept = Accept::from_headers(headers);
            crate::mirror::manifests::by_tag(app, registry, repo, &tag, &accept).await?
        }
    };
    Ok(manifest_response(&m, head))
}

pub(super) fn manifest_response(m: &Manifest, head: bool) -> Response<Body> {
    let mut resp = response::bytes(m.bytes.clone(), head);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&m.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    response::digest_headers(h, &m.digest);
    resp
}
