//! [`ConfigError`]: what is wrong with the configuration, naming the file, key and line.

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
    /// The YAML is malformed or a key/value is wrong (serde's message names key and line).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with key path and location.
        message: String,
    },
    /// A value is inconsistent with another (found after parsing).
    #[error("config file {path}: {key}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path, such as `registries[1].auth.passwordFromEnv`.
        key: String,
        /// Where that entry starts, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}
