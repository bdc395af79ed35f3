//! The credential a provider hands to the host, as plain Rust types.
//!
//! These are what plugin authors return and what the host consumes; the FFI-safe mirror
//! types that actually cross the library boundary live in the ABI module and are converted
//! to and from these at the edge.

use std::fmt;
use std::time::SystemTime;

/// A string that must never be shown: its `Debug` and `Display` print `<redacted>`.
///
/// Read the value with [`Secret::expose`] at the one place that needs it (building an
/// `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call this only where the value is sent, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// How the host presents a credential to the upstream registry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialKind {
    /// HTTP Basic: `Authorization: Basic base64(user:secret)`, and the same pair at a
    /// Bearer token endpoint when the upstream answers with a Bearer challenge.
    /// ECR's token decodes to `AWS:<password>`: user `AWS`, secret the password.
    Basic {
        /// The user name; not secret.
        user: String,
        /// The password or token.
        secret: Secret,
    },
    /// A ready token sent as `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// An identity (refresh) token, as docker's credential helpers return with the user
    /// `<token>` (plugin-api 1.1). The host exchanges it at the registry's token endpoint
    /// (OAuth2 `grant_type=refresh_token` POST to the Bearer challenge's realm with
    /// `service` and `scope`), as docker does; it is never sent to the registry itself.
    IdentityToken {
        /// The refresh token.
        token: Secret,
    },
}

/// A credential and, when the provider knows it, the moment it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// How to send it.
    pub kind: CredentialKind,
    /// When the provider says it expires; `None` when unknown.
    pub expires_at: Option<SystemTime>,
    /// Valid for the requested repository only (plugin-api 1.1; kubelet providers'
    /// `cacheKeyType: Image`): the host keeps one credential per repository for this
    /// registry entry and asks again, with the repository, for each new one.
    pub per_repository: bool,
}

impl Credential {
    /// A Basic credential without a known expiry.
    pub fn basic(user: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Credential {
            kind: CredentialKind::Basic {
                user: user.into(),
                secret: secret.into(),
            },
            expires_at: None,
            per_repository: false,
        }
    }

    /// An identity-token credential (see [`CredentialKind::IdentityToken`]).
    pub fn identity_token(token: impl Into<Secret>) -> Self {
        Credential {
            kind: CredentialKind::IdentityToken {
                token: token.into(),
            },
            expires_at: None,
            per_repository: false,
        }
    }

    /// A Bearer credential without a known expiry.
    pub fn bearer(token: impl Into<Secret>) -> Self {
        Credential {
            kind: CredentialKind::Bearer {
                token: token.into(),
            },
            expires_at: None,
            per_repository: false,
        }
    }

    /// The same credential, marked valid for the requested repository only.
    pub fn for_repository_only(mut self) -> Self {
        self.per_repository = true;
        self
    }

    /// The same credential with a known expiry.
    pub fn expiring_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = Credential::basic("AWS", "hunter2");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("AWS"));
        assert_eq!(format!("{}", Secret::new("x")), "<redacted>");
    }
}
