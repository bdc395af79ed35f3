//! Log output: `tracing` to stderr or to the file from `--log-file` / `logFile`, as text or
//! JSON, at the level from `--log-level`, the config's `logLevel`, or `RUST_LOG`, in that
//! order.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened for appending.
    #[error("cannot open the log file {} (logFile / --log-file): {source}", path.display())]
    OpenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the global subscriber. `level` is a level name or a full filter directive;
/// `file`, when given, receives the lines instead of stderr (appended; an error names it
/// when it cannot be opened).
pub fn init(level: Option<&str>, format: LogFormat, file: Option<&Path>) -> Result<(), LogError> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(directive(l)).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (writer, ansi) = match file {
        Some(path) => {
            let f = open_log_file(path)?;
            // One line on stderr says where the rest went.
            eprintln!("ociregistry: logging to {}", path.display());
            (BoxMakeWriter::new(Mutex::new(f)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Opens (creating it if needed) the log file for appending: every line goes to the end, so
/// another writer or logrotate's `copytruncate` never interleaves with a stale offset.
fn open_log_file(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::OpenFile {
            path: path.to_owned(),
            source,
        })
}

/// A bare level applies to this program and its plugins; dependencies stay at `warn` unless
/// the level is `trace` (full filter directives pass through unchanged).
fn directive(level: &str) -> String {
    let l = level.trim().to_ascii_lowercase();
    match l.as_str() {
        "error" | "warn" | "info" | "debug" => format!("warn,ociregistry={l},plugin={l}"),
        _ => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_log_file(dir.path()).unwrap_err().to_string();
        let want = format!(
            "cannot open the log file {} (logFile / --log-file): ",
            dir.path().display()
        );
        assert!(e.starts_with(&want), "{e}");
    }
}
