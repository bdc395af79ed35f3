//! The registry API calls the mirror makes, with the upstream's answers read here (status,
//! headers, body), so that what leaves `upstream/` is plain values or an [`UpstreamError`]:
//! a manifest ([`Upstream::get_manifest`]), where a tag points ([`Upstream::head_tag`]), a
//! blob's size ([`Upstream::blob_size`]), its body ([`Upstream::get_blob`]) and the rest of
//! it from an offset ([`Upstream::resume_blob`]).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{Method, StatusCode, header};

use super::answer::{read_limited, upstream_status};
use super::{BodyError, Subject, Upstream, UpstreamError};
use crate::oci::reference::{Digest, Reference, RepoName};

/// An upstream's body, chunk by chunk.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// A manifest as the upstream sent it.
#[derive(Debug)]
pub struct FetchedManifest {
    /// Its bytes (at most the limit asked for).
    pub bytes: Bytes,
    /// Its `Content-Type`, parameters dropped, lower case.
    pub content_type: Option<String>,
    /// The `Docker-Content-Digest` the upstream announced.
    pub announced: Option<Digest>,
    /// The endpoint that answered (its URL), for a registry with `endpoints`.
    pub endpoint: Option<String>,
}

/// Where the upstream says a tag points now.
#[derive(Debug)]
pub enum TagHead {
    /// It answered, announcing this digest (or none), from this endpoint (for a registry
    /// with `endpoints`).
    Points(Option<Digest>, Option<String>),
    /// It says the tag does not exist.
    Gone(UpstreamError),
    /// It answered with another failure status (shown as `503 Service Unavailable`).
    Refused(String),
}

/// A blob's body as the upstream started sending it.
pub struct BlobBody {
    /// The size it announced.
    pub total: Option<u64>,
    /// The body.
    pub body: BodyStream,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

fn header_digest(resp: &reqwest::Response) -> Option<Digest> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok())
}

impl Upstream {
    /// `GET` of manifest `reference` in `repo`, accepting `accept`, read up to `limit`
    /// bytes.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
        limit: usize,
    ) -> Result<FetchedManifest, UpstreamError> {
        let (resp, endpoint) = self
            .request_at(
                Method::GET,
                repo,
                &format!("manifests/{reference}"),
                Some(accept),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(upstream_status(
                self,
                resp,
                Subject::Manifest,
                &format!("manifest {repo}:{reference}"),
            ));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let announced = header_digest(&resp);
        let bytes = read_limited(self, resp, limit).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
            announced,
            endpoint,
        })
    }

    /// `HEAD` of tag `tag` in `repo`, accepting `accept`: where it points now.
    pub async fn head_tag(
        &self,
        repo: &RepoName,
        tag: &str,
        accept: &str,
    ) -> Result<TagHead, UpstreamError> {
        let (resp, endpoint) = self
            .request_at(
                Method::HEAD,
                repo,
                &format!("manifests/{tag}"),
                Some(accept),
                None,
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(TagHead::Points(header_digest(&resp), endpoint));
        }
        if status == StatusCode::NOT_FOUND {
            let what = format!("manifest {repo}:{tag}");
            return Ok(TagHead::Gone(upstream_status(
                self,
                resp,
                Subject::Manifest,
                &what,
            )));
        }
        Ok(TagHead::Refused(status.to_string()))
    }

    /// `HEAD` of blob `digest` in `repo`: its size, if the upstream said.
    pub async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let resp = self.blob_request(Method::HEAD, repo, digest).await?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()))
    }

    /// `GET` of blob `digest` in `repo`: its body as it starts arriving.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobBody, UpstreamError> {
        let resp = self.blob_request(Method::GET, repo, digest).await?;
        Ok(BlobBody {
            total: resp.content_length(),
            body: Box::pin(resp.bytes_stream().map_err(BodyError::from)),
        })
    }

    /// `method` on blob `digest` in `repo`; anything but a success is the upstream's refusal.
    async fn blob_request(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let resp = self
            .request(method, repo, &format!("blobs/{digest}"), None)
            .await?;
        if !resp.status().is_success() {
            let what = format!("blob {digest}");
            return Err(upstream_status(self, resp, Subject::Blob, &what));
        }
        Ok(resp)
    }

    /// The rest of blob `digest` from byte `from` (after the upstream broke off): only a
    /// `206` whose `Content-Range` starts exactly there (and agrees on the size `total`,
    /// when known) is used; `None` otherwise.
    pub async fn resume_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
        total: Option<u64>,
    ) -> Option<BodyStream> {
        let path = format!("blobs/{digest}");
        let resp = self
            .request_with(Method::GET, repo, &path, None, Some(from))
            .await
            .ok()?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let range = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
        let (start, size) = parse_content_range(range)?;
        if start != from || total.is_some_and(|t| size != Some(t)) {
            return None;
        }
        Some(Box::pin(resp.bytes_stream().map_err(BodyError::from)))
    }
}

/// `bytes START-END/SIZE` -> (START, SIZE if known).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, size.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
