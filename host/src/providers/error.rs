//! The typed error of one credential provider call on the host side: the provider's name,
//! the kind of failure (kept from the plugin's `PluginErrorKind`, or decided by the host
//! for timeouts and panics) and the one-line message. It does not own the plugin-side
//! error ([`ociregistry_plugin_api::PluginError`]) nor how failures are scheduled.
//!
//! The message is the plugin's own, which the plugin API requires to be free of secrets;
//! the host adds nothing secret to it.

use std::fmt;

use ociregistry_plugin_api::{PluginError, PluginErrorKind};

/// What kind of failure a provider call had; the label `kind` in logs, metrics and
/// `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderErrorKind {
    /// The provider refused its `providerOpts` (a configuration error; retrying will not help).
    InvalidOptions,
    /// The call failed (I/O, network, the credential service said no, ...). Also a plugin
    /// error kind this host does not know yet.
    Failed,
    /// The provider panicked (caught in the plugin, or on the host's thread).
    Panicked,
    /// The provider did not answer in time (its `create` or its `fetch`).
    TimedOut,
    /// Too many earlier calls are still hung; no new call was started.
    Hung,
}

impl ProviderErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ProviderErrorKind; 5] = [
        ProviderErrorKind::InvalidOptions,
        ProviderErrorKind::Failed,
        ProviderErrorKind::Panicked,
        ProviderErrorKind::TimedOut,
        ProviderErrorKind::Hung,
    ];

    /// The label: `invalid_options`, `failed`, `panicked`, `timed_out` or `hung`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderErrorKind::InvalidOptions => "invalid_options",
            ProviderErrorKind::Failed => "failed",
            ProviderErrorKind::Panicked => "panicked",
            ProviderErrorKind::TimedOut => "timed_out",
            ProviderErrorKind::Hung => "hung",
        }
    }
}

impl fmt::Display for ProviderErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<PluginErrorKind> for ProviderErrorKind {
    fn from(kind: PluginErrorKind) -> Self {
        match kind {
            PluginErrorKind::InvalidOptions => ProviderErrorKind::InvalidOptions,
            PluginErrorKind::Panicked => ProviderErrorKind::Panicked,
            // `PluginErrorKind` is non-exhaustive: a kind added later counts as a failure.
            _ => ProviderErrorKind::Failed,
        }
    }
}

/// Why a provider call failed: which provider, what kind, and its message (never a secret).
/// Displays as the message alone, as the provider wrote it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    provider: String,
    kind: ProviderErrorKind,
    message: String,
}

impl ProviderError {
    /// An error of `kind` from `provider`. The message is made one line
    /// ([`one_line_message`]): it goes to logs, `--check` and `/readyz` as is.
    pub fn new(
        provider: impl Into<String>,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        ProviderError {
            provider: provider.into(),
            kind,
            message: one_line_message(&message.into()),
        }
    }

    /// The plugin's error, keeping its kind and message.
    pub fn from_plugin(provider: impl Into<String>, error: &PluginError) -> Self {
        Self::new(provider, error.kind().into(), error.message())
    }

    /// The provider's name (tests).
    #[cfg(test)]
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> ProviderErrorKind {
        self.kind
    }
}

/// The longest provider message kept, in characters; longer ones end with `...`.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// A plugin's message as one line: whitespace runs (newlines included) become one space,
/// other control characters are escaped (`\u{1b}`), and it is cut at
/// [`MAX_MESSAGE_CHARS`]. Plugins are third-party code: their text must not be able to
/// forge log lines or terminal escapes.
pub fn one_line_message(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        if count > 0 {
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= MAX_MESSAGE_CHARS {
                out.push_str("...");
                return out;
            }
            if c.is_control() {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
            count += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_capped_line_without_control_characters() {
        let e = ProviderError::new(
            "p",
            ProviderErrorKind::Failed,
            "first\nfake log line\r\n\u{1b}[31mred",
        );
        assert_eq!(e.to_string(), "first fake log line \\u{1b}[31mred");
        let long = "x".repeat(2000);
        let e = ProviderError::from_plugin("p", &PluginError::new(long));
        assert_eq!(e.to_string().chars().count(), MAX_MESSAGE_CHARS + 3);
        assert!(e.to_string().ends_with("..."));
    }

    #[test]
    fn the_plugins_kind_and_message_are_kept() {
        let e = ProviderError::from_plugin("ecr", &PluginError::invalid_options("bad region"));
        assert_eq!(e.kind(), ProviderErrorKind::InvalidOptions);
        assert_eq!(e.provider(), "ecr");
        assert_eq!(e.to_string(), "bad region");
        let e = ProviderError::from_plugin("ecr", &PluginError::new("denied"));
        assert_eq!(e.kind().as_str(), "failed");
        let e = ProviderError::from_plugin(
            "ecr",
            &PluginError::with_kind(PluginErrorKind::Panicked, "boom"),
        );
        assert_eq!(e.kind().to_string(), "panicked");
        let labels: Vec<_> = ProviderErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            ["invalid_options", "failed", "panicked", "timed_out", "hung"]
        );
    }
}
