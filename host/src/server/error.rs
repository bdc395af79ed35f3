//! Failures as the client sees them: an HTTP status, an OCI error code, a message safe to
//! show (never a secret) and, for 429 and 503, a `Retry-After`. The one place where the
//! mirror's, the store's and the upstream's typed errors get their status and code.

use http::StatusCode;

use crate::mirror::MirrorError;
use crate::oci::error::ErrorCode;
use crate::store::StoreError;
use crate::upstream::{Refusal, Subject, UpstreamError};

/// An error to send to a client: status, code and a message safe to show (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {}: {message}", code.as_str())]
pub struct RegistryError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// OCI error code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` to pass on (seconds), for 429 and 503.
    pub retry_after: Option<String>,
}

impl RegistryError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 NAME_INVALID.
    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, message)
    }

    /// 400 DIGEST_INVALID.
    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
    }

    /// 405 UNSUPPORTED.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            message,
        )
    }

    /// 404 with the given code.
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 502 UNAVAILABLE: the upstream could not be reached or sent something unusable.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message)
    }

    /// 500 UNAVAILABLE: local trouble (disk).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        crate::oci::error::body(self.code, &self.message)
    }
}

impl From<crate::oci::reference::ReferenceError> for RegistryError {
    fn from(e: crate::oci::reference::ReferenceError) -> Self {
        use crate::oci::reference::ReferenceError as R;
        match e {
            R::Digest(..) => RegistryError::digest_invalid(e.to_string()),
            // No manifest can have a tag outside the grammar: the distribution-spec
            // conformance suite (and distribution itself) answer 404 MANIFEST_UNKNOWN.
            R::Tag(..) => RegistryError::not_found(ErrorCode::ManifestUnknown, e.to_string()),
            R::Name(..) | R::Host(..) => RegistryError::name_invalid(e.to_string()),
        }
    }
}

/// An upstream failure keeps its meaning: not found, unauthorized, denied, rate-limited
/// (with the upstream's `Retry-After`), unavailable, or a policy refusal (403 `DENIED`).
impl From<UpstreamError> for RegistryError {
    fn from(e: UpstreamError) -> Self {
        let message = e.to_string();
        match e {
            UpstreamError::Refused {
                refusal,
                retry_after,
                ..
            } => {
                let (status, code) = match refusal {
                    Refusal::NotFound(subject) => (
                        StatusCode::NOT_FOUND,
                        match subject {
                            Subject::Blob => ErrorCode::BlobUnknown,
                            Subject::Manifest => ErrorCode::ManifestUnknown,
                            Subject::Repository => ErrorCode::NameUnknown,
                        },
                    ),
                    Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
                    Refusal::Denied => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                    Refusal::TooManyRequests => {
                        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
                    }
                    Refusal::Unavailable => {
                        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                    }
                    Refusal::Other => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
                };
                RegistryError {
                    status,
                    code,
                    message,
                    retry_after,
                }
            }
            // The token endpoint's 401, 403 and 429 pass on; anything else is the upstream's
            // trouble (a 404 keeps saying that credentials are the issue).
            UpstreamError::TokenRefused { status, .. } => {
                let (status, code) = match status {
                    401 => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
                    403 => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                    429 => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
                    404 => (StatusCode::BAD_GATEWAY, ErrorCode::Unauthorized),
                    _ => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
                };
                RegistryError::new(status, code, message)
            }
            UpstreamError::Policy(_) | UpstreamError::RealmPolicy { .. } => {
                RegistryError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
            }
            UpstreamError::NoCredential { .. } => RegistryError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            ),
            UpstreamError::Failed(_) | UpstreamError::TooLarge { .. } => {
                RegistryError::bad_gateway(message)
            }
            UpstreamError::Internal(_) => RegistryError::internal(message),
        }
    }
}

/// The upstream policy refused the registry a request names: 403 `DENIED`, naming the policy.
impl From<crate::upstream::policy::PolicyError> for RegistryError {
    fn from(e: crate::upstream::policy::PolicyError) -> Self {
        UpstreamError::Policy(e).into()
    }
}

/// Seconds a client is asked to wait when the cache's storage (a bucket) cannot be reached.
const STORAGE_RETRY_AFTER: &str = "10";

/// The mirror's failures: a full cache disk is 507, a bucket that cannot be reached 503
/// (with `Retry-After`), other disk trouble 500; no download
/// slot and a download every client left are 503 (the first with `Retry-After`); what an
/// air-gapped mirror has not cached is 404; an upstream that sent something unusable 502.
impl From<MirrorError> for RegistryError {
    fn from(e: MirrorError) -> Self {
        let message = e.to_string();
        let retry_after = e.retry_after().map(|s| s.to_string());
        match e {
            MirrorError::Upstream(u) => u.into(),
            MirrorError::Store(StoreError::DiskFull { .. }) => RegistryError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::Unavailable,
                message,
            ),
            MirrorError::Cache(s) | MirrorError::CacheWrite(s) | MirrorError::Store(s)
                if s.is_remote() =>
            {
                // The details (the bucket's URL, its answer) are logged, not sent.
                let mut r = RegistryError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the cache's storage cannot be reached; what this mirror holds locally is \
                     still served; retry later",
                );
                r.retry_after = Some(STORAGE_RETRY_AFTER.to_owned());
                r
            }
            MirrorError::Cache(_) | MirrorError::CacheWrite(_) | MirrorError::Store(_) => {
                RegistryError::internal(message)
            }
            MirrorError::NoSlot { .. } => {
                let mut r = RegistryError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    message,
                );
                r.retry_after = retry_after;
                r
            }
            MirrorError::Cancelled(_) => RegistryError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            ),
            MirrorError::BlobNotCached(_) => {
                RegistryError::not_found(ErrorCode::BlobUnknown, message)
            }
            MirrorError::ManifestNotCached(_) => {
                RegistryError::not_found(ErrorCode::ManifestUnknown, message)
            }
            MirrorError::BlobTooLarge { .. }
            | MirrorError::InvalidManifest { .. }
            | MirrorError::BadUpstream(_) => RegistryError::bad_gateway(message),
            MirrorError::Internal(_) => RegistryError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = RegistryError::name_invalid("bad \"name\"");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn invalid_tags_are_unknown_manifests_and_invalid_digests_stay_400() {
        use crate::oci::reference::Reference;
        for tag in ["-bad", "a+b", ".hidden", &"a".repeat(129)] {
            let e = RegistryError::from(Reference::parse(tag).unwrap_err());
            assert_eq!(e.status, 404, "{tag}");
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
        }
        let e = RegistryError::from(Reference::parse("sha256:xyz").unwrap_err());
        assert_eq!(e.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    }

    #[test]
    fn mirror_errors_keep_their_status_code_and_message() {
        let e = RegistryError::from(MirrorError::NoSlot {
            max_fetches: 2,
            max_per_registry: 1,
            wait: std::time::Duration::from_millis(500),
        });
        assert_eq!(e.status, 503);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.retry_after.as_deref(), Some("1"));
        assert_eq!(
            e.message,
            "too many upstream downloads running (maxUpstreamFetches 2, maxUpstreamFetchesPerRegistry 1); none came free within 0.5s, retry later"
        );
        let e = RegistryError::from(MirrorError::Store(StoreError::DiskFull {
            free_mib: 1,
            needed_mib: 64,
        }));
        assert_eq!(e.status, 507);
        assert_eq!(
            e.message,
            "cache disk full: 1 MiB free, 64 MiB needed; cached content is still served"
        );
        let e = RegistryError::from(MirrorError::Cache(StoreError::from(std::io::Error::other(
            "boom",
        ))));
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (500, "cache error: boom")
        );
        let e = RegistryError::from(MirrorError::Cache(StoreError::Bucket {
            bucket: "mirror-cache".into(),
            endpoint: "http://10.0.0.9:9000".into(),
            reason: "unreachable".into(),
        }));
        assert_eq!(e.status, 503);
        assert_eq!(e.retry_after.as_deref(), Some("10"));
        assert!(!e.message.contains("10.0.0.9"), "{}", e.message);
        let e = RegistryError::from(MirrorError::Upstream(UpstreamError::TokenRefused {
            status: 404,
            message: "token endpoint of r answered 404".into(),
        }));
        assert_eq!((e.status.as_u16(), e.code), (502, ErrorCode::Unauthorized));
        let e = RegistryError::from(MirrorError::Upstream(UpstreamError::Refused {
            refusal: Refusal::TooManyRequests,
            message: "slow down".into(),
            retry_after: Some("7".into()),
        }));
        assert_eq!(
            (e.status.as_u16(), e.code),
            (429, ErrorCode::TooManyRequests)
        );
        assert_eq!(e.retry_after.as_deref(), Some("7"));
    }
}
