//! The configuration: Ociregistry's `config.yaml` keys, parsed strictly (an unknown or
//! misspelt key is an error naming the key and its line), merged with command-line flags
//! (flags beat the file, the file beats defaults) into the [`Settings`] the server runs with.

use std::path::Path;
use std::time::Duration;

mod error;
mod file;
mod host_pattern;
pub mod inventory;
mod resolve;
mod settings;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use file::{
    AuthConfig, ClientAuth, ConfigDuration, FileConfig, HostName, ReadableFile, RegistryConfig,
    Scheme, SecretString, ServerTlsFileConfig, TlsConfig, TokenConfig, UpstreamsConfig,
};
pub use host_pattern::{AllowRule, HostPattern, UpstreamPolicy};
pub use resolve::{default_plugin_dir, resolve};
pub use settings::{
    CredentialConfig, FetchLimits, Overrides, PreloadSettings, Registry, ServerTls, Settings,
};

/// The registry clients get when a request names none (docker's `registry-mirrors`).
pub const DEFAULT_NS: &str = "docker.io";
/// Where the cache lives when neither flag nor file says.
pub const DEFAULT_IMAGE_PATH: &str = "ociregistry-cache";
/// The pull port when neither flag nor file says.
pub const DEFAULT_PORT: u16 = 8080;
/// The listen address when neither flag nor file says: every interface, as a mirror serves
/// other machines.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// How long an upstream may take to answer (headers, or the next chunk of a body).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit on one provider call, `create` or `fetch` (`auth.token.timeout`).
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on one tag revalidation (`revalidateTimeout`).
pub const DEFAULT_REVALIDATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default manifest size cap (`maxManifestSize`).
pub const DEFAULT_MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Default cap on concurrent client connections (`maxConnections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on connections from one address (`maxConnectionsPerClient`): well above what
/// a node's containerd opens, well below `maxConnections`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Default provider token refresh period (`auth.token.expiry`).
pub const DEFAULT_TOKEN_EXPIRY: Duration = Duration::from_secs(12 * 3600);
/// Default time in-flight pulls and upstream fetches get after SIGTERM (`shutdownGrace`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default cap on one blob's size (`maxBlobSize`): 16 GiB, above the largest layers seen in
/// practice (CUDA and ML images ship single layers of several GiB; registries such as
/// docker.io cap a layer at 10 GB), far below what could fill a disk unnoticed.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 16 * 1024 * 1024 * 1024;
/// Default cap on concurrent upstream blob downloads (`maxUpstreamFetches`).
pub const DEFAULT_MAX_UPSTREAM_FETCHES: usize = 64;
/// Default cap on concurrent blob downloads from one upstream
/// (`maxUpstreamFetchesPerRegistry`).
pub const DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY: usize = 16;
/// Default longest wait for a download slot (`upstreamFetchWait`).
pub const DEFAULT_UPSTREAM_FETCH_WAIT: Duration = Duration::from_secs(10);
/// Default time from accept to the first request, and for each HTTP/1 request head
/// (`headerTimeout`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may sit with no request in flight (`idleTimeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<(FileConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cfg = parse_text(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    Ok((cfg, text))
}

/// Parses config text; an empty file is an empty config. Errors name the key and line.
pub fn parse_text(text: &str) -> Result<FileConfig, String> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| with_key_and_line(text, &e))
}

/// serde's message, led by the line and the key written there. The parser's location points
/// at the offending key or value; its path stops at the enclosing map, so the key is read
/// off the line itself. Unknown top-level keys come without a location: found by name.
fn with_key_and_line(text: &str, e: &serde_yaml_ng::Error) -> String {
    let message = e.to_string();
    let line = match e.location() {
        Some(loc) => Some(loc.line()),
        None => unknown_field(&message).and_then(|key| {
            text.lines()
                .position(|l| {
                    l.trim_start()
                        .trim_start_matches("- ")
                        .starts_with(&format!("{key}:"))
                })
                .map(|i| i + 1)
        }),
    };
    let Some(mut line) = line else {
        return message;
    };
    // A value refused after it was read (a file that cannot be read) is located at the start
    // of its enclosing mapping: find the line that holds the value itself.
    if let Some(path) = message
        .split("cannot read ")
        .nth(1)
        .and_then(|r| r.split(": ").next())
        .filter(|p| !p.is_empty())
    {
        if let Some(i) = text
            .lines()
            .enumerate()
            .skip(line.saturating_sub(1))
            .find(|(_, l)| l.contains(path))
            .map(|(i, _)| i)
        {
            line = i + 1;
        }
    }
    let key = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.trim_start().trim_start_matches("- ").split_once(':'))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.contains(' '));
    let message = message
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_owned())
        .unwrap_or(message);
    match key {
        Some(k) => format!("line {line}, key `{k}`: {message}"),
        None => format!("line {line}: {message}"),
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    rest.split('`').next()
}
