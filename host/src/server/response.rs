//! Building responses: the body type, OCI error responses, and the headers every answer
//! carries.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};

use crate::server::error::RegistryError;

/// The response body: a buffer or a stream of file chunks.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body from bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A 200 carrying `bytes` with its `Content-Length`; a HEAD answer gets the headers only.
pub fn bytes(bytes: impl Into<Bytes>, head: bool) -> Response<Body> {
    let bytes = bytes.into();
    let len = bytes.len();
    let mut resp = Response::new(if head { empty() } else { full(bytes) });
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body from a stream of chunks; an error aborts the transfer.
pub fn stream<S>(s: S) -> Body
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    use futures_util::StreamExt;
    StreamBody::new(s.map(|r| r.map(http_body::Frame::data))).boxed_unsync()
}

/// The OCI error response for `e`; HEAD answers get the headers only.
pub fn error(e: &RegistryError, head: bool) -> Response<Body> {
    let mut resp = bytes(e.body(), head);
    *resp.status_mut() = e.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if e.status == StatusCode::UNAUTHORIZED {
        // Clients authenticate to us never; tell them what the upstream wanted in the body.
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ociregistry\""),
        );
    }
    if let Some(ra) = e
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(header::RETRY_AFTER, ra);
    }
    resp
}

/// `Docker-Content-Digest` and the matching `ETag` of a manifest or blob.
pub fn digest_headers(h: &mut http::HeaderMap, digest: &crate::oci::reference::Digest) {
    let d = digest.to_string();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(v) = HeaderValue::from_str(&d) {
        h.insert("docker-content-digest", v);
    }
}

/// Sets the registry API version header on any response.
pub fn with_api_version(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}
