//! Reading an upstream's answer: a body read with a size cap ([`read_limited`]), and a
//! failure status turned into an error that keeps its meaning ([`upstream_status`]).

use bytes::Bytes;
use http::header;

use super::{Refusal, Subject, Upstream, UpstreamError};

/// Reads a small upstream body (a manifest, a tag list) of at most `limit` bytes.
pub async fn read_limited(
    upstream: &Upstream,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large(upstream, limit));
    }
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::time::timeout(upstream.timeout(), resp.chunk())
            .await
            .map_err(|_| {
                UpstreamError::Failed(format!(
                    "upstream {} stalled sending a manifest",
                    upstream.name
                ))
            })?
            .map_err(|e| {
                UpstreamError::Failed(format!(
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

fn too_large(upstream: &Upstream, limit: usize) -> UpstreamError {
    UpstreamError::TooLarge {
        upstream: upstream.name.clone(),
        limit_mib: limit / (1024 * 1024),
    }
}

/// Turns an upstream's failure answer about `what` (a `subject`) into our error, keeping
/// its meaning and its `Retry-After`.
pub fn upstream_status(
    upstream: &Upstream,
    resp: reqwest::Response,
    subject: Subject,
    what: &str,
) -> UpstreamError {
    let status = resp.status();
    let answered = resp.url().clone();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 64)
        .map(str::to_owned);
    let (refusal, message) = match status.as_u16() {
        404 => (
            Refusal::NotFound(subject),
            format!("{what} not found at upstream {}", upstream.name),
        ),
        401 => (
            Refusal::Unauthorized,
            format!(
                "upstream {} requires credentials for {what}: {}",
                upstream.name,
                upstream.rejection_hint(&answered)
            ),
        ),
        403 => (
            Refusal::Denied,
            format!("upstream {} denied access to {what}", upstream.name),
        ),
        429 => (
            Refusal::TooManyRequests,
            format!(
                "upstream {} is rate-limiting requests for {what}",
                upstream.name
            ),
        ),
        s => (
            if s == 503 {
                Refusal::Unavailable
            } else {
                Refusal::Other
            },
            format!("upstream {} answered {status} for {what}", upstream.name),
        ),
    };
    UpstreamError::Refused {
        refusal,
        message,
        retry_after,
    }
}
