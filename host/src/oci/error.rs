//! The OCI error vocabulary: the codes, and the body every failing response carries,
//! `{"errors":[{"code":"...","message":"...","detail":...}]}`. Which status goes with which
//! failure is decided by the HTTP layer above, not here.

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
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The JSON error body for `code` and `message`.
pub fn body(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::json!({
        "errors": [{
            "code": code.as_str(),
            "message": message,
            "detail": serde_json::Value::Null,
        }]
    })
    .to_string()
    .into_bytes()
}
