//! The peer endpoint (`cluster`): `GET /_ociregistry/peer/v1/blobs/sha256:<hex>` on the pull
//! port, outside `/v2/` (clients never route there), for the other replicas sharing the
//! bucket. With the cluster's bearer token (compared in constant time), it serves a blob
//! from the store or from the download of it running here, as bytes arrive, with `Range`;
//! 404 when neither (it never starts a download). Who asks whom is the mirror's business
//! ([`crate::mirror::blobs::peer_blob`]).

use std::sync::Arc;

use http::{HeaderMap, Method, Response, StatusCode, header};

use crate::metrics::PeerFetch;
use crate::mirror::Mirror;
use crate::oci::error::ErrorCode;
use crate::oci::reference::Digest;
use crate::server::error::RegistryError;
use crate::server::response::{self, Body};

/// Where the peer endpoint's paths start.
pub const PREFIX: &str = "/_ociregistry/peer/";
/// Where its blob paths start.
const BLOBS: &str = "/_ociregistry/peer/v1/blobs/";

/// Answers a request whose path starts with [`PREFIX`].
pub async fn handle(
    app: &Arc<Mirror>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let head = method == Method::HEAD;
    match answer(app, method, path, headers).await {
        Ok(r) => r,
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                // The token given, if any, is not logged.
                tracing::warn!(path, "peer request without the cluster token refused");
            } else {
                tracing::debug!(path, status = e.status.as_u16(), error = %e.message, "peer request refused");
            }
            response::error(&e, head)
        }
    }
}

async fn answer(
    app: &Arc<Mirror>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, RegistryError> {
    let not_found = || RegistryError::not_found(ErrorCode::BlobUnknown, "no such peer resource");
    // Off unless `cluster` is set: as if there were no such path.
    let Some(cluster) = &app.settings.cluster else {
        return Err(not_found());
    };
    if !authorized(cluster.token.expose().as_bytes(), headers) {
        return Err(RegistryError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the peer endpoint needs the cluster token",
        ));
    }
    let Some(raw) = path.strip_prefix(BLOBS) else {
        return Err(not_found());
    };
    if !(*method == Method::GET || *method == Method::HEAD) {
        return Err(RegistryError::unsupported(format!(
            "{method} is not supported on the peer endpoint"
        )));
    }
    let digest = Digest::parse(raw)?;
    let head = *method == Method::HEAD;
    let Some(found) = crate::mirror::blobs::peer_blob(app, &digest).await? else {
        return Err(RegistryError::not_found(
            ErrorCode::BlobUnknown,
            format!("{digest} is neither stored nor downloading here"),
        ));
    };
    if !head {
        crate::metrics::global().peer_fetch(PeerFetch::ServedToPeer);
    }
    super::blobs::answer(&digest, found, headers, head)
}

/// Whether `headers` carry `Authorization: Bearer <token>`; compared in constant time.
fn authorized(token: &[u8], headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    subtle::ConstantTimeEq::ct_eq(given.trim().as_bytes(), token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = b"0123456789abcdef";
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(authorized(token, &with("Bearer 0123456789abcdef")));
        assert!(!authorized(token, &with("Bearer 0123456789abcdeX")));
        assert!(!authorized(token, &with("Bearer 0123456789abcde")));
        assert!(!authorized(token, &with("Basic 0123456789abcdef")));
        assert!(!authorized(token, &HeaderMap::new()));
    }
}
