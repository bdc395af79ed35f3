//! Blob answers: the bytes the mirror has or is downloading ([`crate::mirror::blobs`]),
//! by `Range`, with the blob headers.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::mirror::Mirror;
use crate::mirror::blobs::BlobAnswer;
use crate::oci::error::ErrorCode;
use crate::oci::reference::{Digest, RepoName};
use crate::server::error::RegistryError;
use crate::server::range::{self, RangeAnswer};
use crate::server::response::{self, Body};

pub(super) async fn blob(
    app: &Arc<Mirror>,
    registry: &str,
    repo: &RepoName,
    digest: Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let found = crate::mirror::blobs::blob(app, registry, repo, &digest, head).await?;
    answer(&digest, found, headers, head)
}

/// The response for `found`, the blob `digest` as the mirror has it, by `Range`.
pub(super) fn answer(
    digest: &Digest,
    found: BlobAnswer,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let digest = digest.clone();
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match found {
        BlobAnswer::Stored(stored) => {
            blob_response(&digest, stored.size(), range_header, head, |start, end| {
                response::stream(stored.read(start, end))
            })
        }
        BlobAnswer::Elsewhere { url } => {
            let location = HeaderValue::from_str(&url).map_err(|_| {
                RegistryError::internal("the store gave a URL that is not a header value")
            })?;
            let mut out = Response::new(response::empty());
            *out.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            response::digest_headers(out.headers_mut(), &digest);
            out.headers_mut().insert(header::LOCATION, location);
            Ok(out)
        }
        BlobAnswer::AtUpstream { size } => {
            let mut out = Response::new(response::empty());
            blob_headers(out.headers_mut(), &digest);
            if let Some(len) = size {
                out.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            Ok(out)
        }
        BlobAnswer::Downloading(following) => match following.total() {
            Some(total) => blob_response(&digest, total, range_header, false, |start, end| {
                response::stream(following.read(start, Some(end)))
            }),
            // Size unknown until the upstream finishes: stream it all, chunked.
            None => {
                let mut resp = Response::new(response::stream(following.read(0, None)));
                blob_headers(resp.headers_mut(), &digest);
                Ok(resp)
            }
        },
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response::digest_headers(h, digest);
}

pub(super) fn blob_response(
    digest: &Digest,
    total: u64,
    range_header: Option<&str>,
    head: bool,
    body: impl FnOnce(u64, u64) -> Body,
) -> Result<Response<Body>, RegistryError> {
    let (status, start, end) = match range::answer(range_header, total) {
        RangeAnswer::Full => (StatusCode::OK, 0, total),
        RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeAnswer::Unsatisfiable => {
            let mut e = response::error(
                &RegistryError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::RangeInvalid,
                    format!("range not satisfiable for a blob of {total} bytes"),
                ),
                head,
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(e);
        }
    };
    let mut resp = Response::new(if head {
        response::empty()
    } else {
        body(start, end)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    blob_headers(h, digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
