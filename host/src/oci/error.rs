//! The OCI error model: every failing response carries
//! `{"errors":[{"code":"...","message":"...","detail":...}]}` with a status that matches the code.

use http::StatusCode;

/// OCI distribution error codes (plus `UNAVAILABLE` for upstream trouble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Repository name not known to registry.
    NameUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Provided digest did not match uploaded content / is malformed.
    DigestInvalid,
    /// The tag in the URL is malformed.
    TagInvalid,
    /// Manifest invalid (e.g. too large).
    ManifestInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported (push, delete).
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// Range not satisfiable.
    RangeInvalid,
    /// Upstream unreachable or misbehaving; cache trouble.
    Unavailable,
}

impl ErrorCode {
    /// The code string in the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The code for an upstream status that we pass on with its meaning.
    pub fn from_upstream_status(status: StatusCode, not_found: ErrorCode) -> ErrorCode {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Denied,
            404 => not_found,
            429 => ErrorCode::TooManyRequests,
            _ => ErrorCode::Unavailable,
        }
    }
}

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
        serde_json::json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": serde_json::Value::Null,
            }]
        })
        .to_string()
        .into_bytes()
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
}
