//! Reading an upstream's answer: a body read with a size cap ([`read_limited`]), and a
//! non-success status turned into an error that keeps its meaning ([`upstream_status`]).

use bytes::Bytes;
use http::{StatusCode, header};

use super::Upstream;
use crate::oci::error::{ErrorCode, RegistryError};

/// Reads a small upstream body (a manifest, a tag list) of at most `limit` bytes.
pub async fn read_limited(
    upstream: &Upstream,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large(upstream, limit));
    }
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::time::timeout(upstream.timeout(), resp.chunk())
            .await
            .map_err(|_| {
                RegistryError::bad_gateway(format!(
                    "upstream {} stalled sending a manifest",
                    upstream.name
                ))
            })?
            .map_err(|e| {
                RegistryError::bad_gateway(format!(
                    "upstream {} broke off: {}",
                    upstream.name,
                    super::describe(&e)
                ))
            })?;
        let Some(chunk) = chunk else { break };
        upstream.metrics.upstream_bytes.inc_by(chunk.len() as u64);
        if buf.len() + chunk.len() > limit {
            return Err(too_large(upstream, limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn too_large(upstream: &Upstream, limit: usize) -> RegistryError {
    RegistryError::bad_gateway(format!(
        "upstream {} sent a manifest larger than {} MiB; refused",
        upstream.name,
        limit / (1024 * 1024)
    ))
}

/// Turns an upstream's non-success answer into our error, keeping its meaning.
pub fn upstream_status(
    upstream: &Upstream,
    resp: reqwest::Response,
    not_found: ErrorCode,
    what: &str,
) -> RegistryError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 64)
        .map(str::to_owned);
    let code = ErrorCode::from_upstream_status(status, not_found);
    let (our_status, message) = match status.as_u16() {
        404 => (
            StatusCode::NOT_FOUND,
            format!("{what} not found at upstream {}", upstream.name),
        ),
        401 => (
            StatusCode::UNAUTHORIZED,
            format!(
                "upstream {} requires credentials for {what}: configure registries[].auth",
                upstream.name
            ),
        ),
        403 => (
            StatusCode::FORBIDDEN,
            format!("upstream {} denied access to {what}", upstream.name),
        ),
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "upstream {} is rate-limiting requests for {what}",
                upstream.name
            ),
        ),
        s => (
            if s == 503 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            },
            format!("upstream {} answered {status} for {what}", upstream.name),
        ),
    };
    RegistryError {
        status: our_status,
        code,
        message,
        retry_after,
    }
}

/// The upstream policy refused the registry a request names: 403 `DENIED`, naming the policy.
impl From<crate::upstream::policy::PolicyError> for RegistryError {
    fn from(e: crate::upstream::policy::PolicyError) -> Self {
        RegistryError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, e.to_string())
    }
}
