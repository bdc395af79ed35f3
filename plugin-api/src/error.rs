//! The error a plugin returns, and that the host gets back from a plugin call.

use std::fmt;

/// What went wrong, coarsely; the message says the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginErrorKind {
    /// The `providerOpts` string is malformed or does not fit the provider's options.
    /// Retrying will not help; it is a configuration error.
    InvalidOptions,
    /// The call failed (I/O, network, the credential service said no, ...). May be retried.
    Failed,
    /// The plugin panicked. The panic was caught inside the plugin and turned into this error.
    Panicked,
}

/// An error from a plugin call: a kind and a one-line message.
///
/// The message must never contain a secret: it ends up in the host's logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    kind: PluginErrorKind,
    message: String,
}

impl PluginError {
    /// A failed call ([`PluginErrorKind::Failed`]).
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(PluginErrorKind::Failed, message)
    }

    /// A configuration error ([`PluginErrorKind::InvalidOptions`]).
    pub fn invalid_options(message: impl Into<String>) -> Self {
        Self::with_kind(PluginErrorKind::InvalidOptions, message)
    }

    /// An error of the given kind.
    pub fn with_kind(kind: PluginErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }

    /// A failed call described by `context` and an error with its whole `source()` chain,
    /// on one line: `context: error: cause: root cause`.
    pub fn from_error(
        context: impl fmt::Display,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        let mut message = format!("{context}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Many error types repeat their source in their own message; skip repeats.
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self::new(message)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> PluginErrorKind {
        self.kind
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        PluginError::new(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        PluginError::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn from_error_walks_the_chain() {
        let e = Outer(std::io::Error::other("inner"));
        let p = PluginError::from_error("reading token", &e);
        assert_eq!(p.to_string(), "reading token: outer: inner");
        assert_eq!(p.kind(), PluginErrorKind::Failed);
    }
}
