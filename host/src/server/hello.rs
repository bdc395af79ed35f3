//! Answers for the built-in hello-world image ([`crate::mirror::hello`]): when a request is
//! for it, and its manifests, blobs, tag list and (empty) referrers with the headers every
//! other answer carries. No upstream is asked and the cache is not touched.
//!
//! A request is for it when `helloWorld` is on (the default), the repository is
//! `hello-world` or `library/hello-world`, and the client named no upstream: no `?ns=` and
//! no registry in the path, so the default registry would have been asked. There the
//! built-in image wins over the default upstream's own `hello-world`, for every reference
//! (an unknown tag or digest is a 404, not a trip upstream); `?ns=docker.io` or
//! `/v2/docker.io/library/hello-world/...` reach the upstream's image as before.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};

use crate::mirror::hello;
use crate::oci::error::ErrorCode;
use crate::oci::media;
use crate::oci::reference::{Reference, RepoName};
use crate::server::error::RegistryError;
use crate::server::response::{self, Body};
use crate::server::router::{Route, Via};

/// Whether a request for `repo` named through `via` is answered by [`answer`].
pub(super) fn wanted(hello_world: bool, via: &Via, repo: &RepoName) -> bool {
    hello_world && *via == Via::Default && hello::is_hello_world(repo)
}

/// The answer to `route` on the built-in image.
pub(super) fn answer(
    route: Route,
    repo: &RepoName,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    match route {
        Route::Manifest(reference) => {
            let Some(m) = hello::manifest(&reference) else {
                let what = match &reference {
                    Reference::Tag(t) => format!("tag {t}"),
                    Reference::Digest(d) => format!("manifest {d}"),
                };
                return Err(RegistryError::not_found(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "{what} is not in the built-in hello-world image (it has :{}); name an \
                         upstream (?ns= or a registry in the path) or set helloWorld: false",
                        hello::TAG
                    ),
                ));
            };
            Ok(super::manifests::manifest_response(&m, head))
        }
        Route::Blob(digest) => {
            let Some(bytes) = hello::blob(&digest) else {
                return Err(RegistryError::not_found(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in the built-in hello-world image"),
                ));
            };
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            super::blobs::blob_response(&digest, bytes.len() as u64, range, head, |start, end| {
                response::full(bytes.slice(start as usize..end as usize))
            })
        }
        Route::Tags => {
            let body = serde_json::json!({ "name": repo.as_str(), "tags": [hello::TAG] });
            Ok(json(body.to_string().into(), "application/json", head))
        }
        Route::Referrers(_) => {
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": [],
            });
            Ok(json(body.to_string().into(), media::OCI_INDEX, head))
        }
        Route::Upload => Err(RegistryError::unsupported(
            "uploads are not supported: this registry is a pull-only mirror",
        )),
        Route::Base => Ok(super::handlers::json_ok(b"{}", head)),
    }
}

fn json(body: Bytes, content_type: &'static str, head: bool) -> Response<Body> {
    let mut resp = response::bytes(body, head);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
