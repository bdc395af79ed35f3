//! [`ConfigError`]: what is wrong with the configuration, naming the file, key and line; and
//! [`ParseError`], a config text the parser refused.

use std::fmt;
use std::path::PathBuf;

/// A configuration problem, with the file, key and line where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or a key/value is wrong.
    #[error("config file {path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser refused, with its line and key.
        error: ParseError,
    },
    /// A value is inconsistent with another (found after parsing).
    #[error("config file {path}: {key}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path, such as `registries[1].auth.passwordFromEnv`.
        key: String,
        /// Where that key (or, for rules spanning an entry, the entry) is written, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Config text the YAML parser or a key's type refused: the line the parser marked, the key
/// written there, and the parser's message (which names the key path). It reads as its
/// one-line message, `line 5, key `usr`: ...` (it derefs to that `str`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rendered}")]
pub struct ParseError {
    /// The 1-based line the parser marked.
    pub line: Option<usize>,
    /// The key written at that place.
    pub key: Option<String>,
    /// The parser's message, without its position.
    pub message: String,
    rendered: String,
}

impl ParseError {
    /// A parse error at `line`, on `key`.
    pub fn new(line: Option<usize>, key: Option<String>, message: String) -> ParseError {
        let rendered = match (line, &key) {
            (Some(l), Some(k)) => format!("line {l}, key `{k}`: {message}"),
            (Some(l), None) => format!("line {l}: {message}"),
            (None, _) => message.clone(),
        };
        ParseError {
            line,
            key,
            message,
            rendered,
        }
    }
}

impl std::ops::Deref for ParseError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.rendered
    }
}

impl From<ParseError> for String {
    fn from(e: ParseError) -> String {
        e.rendered
    }
}

/// A file the config names that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {error}")]
pub struct UnreadableFile {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: std::io::Error,
}

/// Why a host pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    /// Empty or too long.
    #[error("invalid host pattern {0:?}")]
    Invalid(String),
    /// A character a host cannot hold.
    #[error("invalid host pattern {0:?}: letters, digits, `.`, `-`, `:` (IPv6) and `*` only")]
    Characters(String),
    /// `host:port`.
    #[error("host pattern {0:?} has a port: patterns match the host without port")]
    Port(String),
}

/// Why a size (`maxSize`, `maxBlobSize`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number.
    #[error("invalid size {0:?} (examples: 500MB, 50GiB, 1073741824)")]
    Number(String),
    /// An unknown unit.
    #[error("invalid size unit in {0:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")]
    Unit(String),
    /// Zero, or beyond 10^18 bytes.
    #[error("size {0:?} out of range")]
    Range(String),
}

/// Where the settings came from: the file and its text, for errors found after parsing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    /// The config file (`<none>` without one).
    pub path: &'a std::path::Path,
    /// Its text (empty without one).
    pub text: &'a str,
}

impl Source<'_> {
    /// `key` is wrong; its line is that of the node at `at` (see [`super::position`]).
    pub fn invalid(
        &self,
        key: impl Into<String>,
        at: &[super::position::Step<'_>],
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.into(),
            line: super::position::line_of(self.text, at),
            message: message.to_string(),
        }
    }
}

/// Why a value was not accepted, in words for its key's error (the value checks of the
/// `storage` and `cluster` sections; the key and line are added where it is reported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);
