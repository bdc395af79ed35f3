//! The configuration, parsing and validation only: Ociregistry's `config.yaml` keys, parsed
//! strictly (an unknown or misspelt key is an error naming the key and its line), merged with
//! command-line flags (flags beat the file, the file beats defaults) into the plain
//! [`Settings`] the server runs with. It opens no socket and builds no TLS object
//! (`server::tls` does, from [`ServerTls`]); it imports no host module but the leaves `oci`
//! and `duration`.
//!
//! `file` is the file as written, `resolve` merges it with the flags section by section,
//! `position` finds lines with the YAML parser's marks, `error` says what is wrong;
//! `server_tls` reads the PEM files of `serverTlsConfig`, [`inventory`] the inventory's keys,
//! [`storage`] the `storage` section, [`cluster`] the `cluster` section.

use std::path::Path;
use std::time::Duration;

pub mod cluster;
mod error;
mod file;
mod host_pattern;
pub mod inventory;
mod position;
mod resolve;
mod server_tls;
mod settings;
pub mod storage;
#[cfg(test)]
mod tests;

pub use cluster::ClusterSettings;
pub use error::{ConfigError, HostPatternError, ParseError, SizeError, UnreadableFile};
pub use file::{
    AuthConfig, BreakerConfig, ClientAuth, ConfigDuration, EndpointConfig, FileConfig, HostName,
    RateLimitConfig, ReadableFile, RegistryConfig, Scheme, SecretString, ServerTlsFileConfig,
    TlsConfig, TokenConfig, UpstreamsConfig,
};
pub use host_pattern::{AllowRule, HostPattern, UpstreamPolicy};
pub use resolve::{default_plugin_dir, resolve};
pub use server_tls::{PemError, PrivateKey, ServerTls, TlsKey, TlsOrigin};
pub use settings::{
    BreakerSettings, CredentialConfig, Endpoint, FetchLimits, Overrides, PreloadSettings, Registry,
    Settings,
};
pub use storage::{Backend, DEFAULT_S3_REGION, S3Credentials, S3Settings, StorageSettings};

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
/// Default first cool-down of a failing upstream endpoint (`breaker.coolDown`).
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);
/// Default longest cool-down of a failing upstream endpoint (`breaker.maxCoolDown`).
pub const DEFAULT_BREAKER_MAX_COOL_DOWN: Duration = Duration::from_secs(300);
/// Public registries no alias may take (their names mean themselves).
pub const PUBLIC_REGISTRIES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
    "quay.io",
    "ghcr.io",
    "gcr.io",
    "mirror.gcr.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "registry.gitlab.com",
    "docker.elastic.co",
    "nvcr.io",
];
/// Default time a connection may sit with no request in flight (`idleTimeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<(FileConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cfg = parse_text(&text).map_err(|error| ConfigError::Parse {
        path: path.to_owned(),
        error,
    })?;
    Ok((cfg, text))
}

/// Parses config text; an empty file is an empty config. Errors name the key and line.
pub fn parse_text(text: &str) -> Result<FileConfig, ParseError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| position::parse_error(text, &e))
}
