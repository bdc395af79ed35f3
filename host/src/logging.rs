//! Log output: `tracing` to stderr, as text or JSON, at the level from `--log-level`,
//! the config's `logLevel`, or `RUST_LOG`, in that order.

use tracing_subscriber::EnvFilter;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber. `level` is a level name or a full filter directive.
pub fn init(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(directive(l)).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
