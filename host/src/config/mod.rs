//! The configuration: Ociregistry's `config.yaml` keys, parsed strictly (an unknown or
//! misspelt key is an error naming the key and its line), merged with command-line flags
//! (flags beat the file, the file beats defaults) into the [`Settings`] the server runs with.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ociregistry_plugin_api::Secret;
use serde::Deserialize;

use crate::duration;
use crate::oci::reference;

pub mod inventory;

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

/// `http` or `https` towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP (test and lab registries).
    Http,
    /// TLS (the default).
    #[default]
    Https,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// A duration written Go-style (`6h`), or a bare number of milliseconds (Ociregistry's
/// `pullTimeout: 60000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 15m or 6h, or a number of milliseconds")
            }
            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration(Duration::from_millis(ms)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|ms| ConfigDuration(Duration::from_millis(ms)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                duration::parse(s).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A path to a file that must exist and be readable when the config is loaded, so that a
/// missing CA or key stops the server at start with the key and line named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableFile(pub PathBuf);

impl<'de> Deserialize<'de> for ReadableFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::from(String::deserialize(d)?);
        match std::fs::File::open(&path) {
            Ok(_) => Ok(ReadableFile(path)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }
}

/// An upstream host name (`quay.io`, `127.0.0.1:5000`), validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(pub String);

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        reference::parse_host(&s)
            .map(HostName)
            .map_err(serde::de::Error::custom)
    }
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Cache directory.
    pub image_path: Option<PathBuf>,
    /// Pull port.
    pub port: Option<u16>,
    /// Listen address.
    pub host: Option<String>,
    /// Where provider plugins are found.
    pub plugin_dir: Option<PathBuf>,
    /// Registry used when a request names none.
    pub default_ns: Option<HostName>,
    /// Never contact an upstream.
    pub air_gapped: Option<bool>,
    /// Re-check `:latest` upstream on every pull.
    pub always_pull_latest: Option<bool>,
    /// Upstream answer timeout.
    pub pull_timeout: Option<ConfigDuration>,
    /// Log level (`error`..`trace`).
    pub log_level: Option<String>,
    /// File the log lines are appended to instead of stderr (empty: stderr).
    pub log_file: Option<PathBuf>,
    /// How long a cached tag is trusted before it is revalidated upstream (default: forever).
    pub tag_ttl: Option<ConfigDuration>,
    /// Bound on one tag revalidation (default 5s).
    pub revalidate_timeout: Option<ConfigDuration>,
    /// Largest manifest accepted from an upstream, in bytes (default 4 MiB).
    pub max_manifest_size: Option<u64>,
    /// Most client connections served at once (default 4096).
    pub max_connections: Option<usize>,
    /// Most connections one client address may hold at once (default 256).
    pub max_connections_per_client: Option<usize>,
    /// Port of the Prometheus `/metrics` listener (absent or empty: off).
    pub metrics: Option<u16>,
    /// Port of the `/healthz` and `/readyz` listener (absent or empty: off).
    pub health: Option<u16>,
    /// Per-upstream settings.
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
    /// Image list `serve` preloads in the background once it listens.
    pub preload_images: Option<PathBuf>,
    /// Image list `ociregistry load` preloads.
    pub image_file: Option<PathBuf>,
    /// Operating system of the platform preloaded from an index (default `linux`).
    pub os: Option<String>,
    /// Architecture of the platform preloaded from an index (default: this machine's).
    pub arch: Option<String>,
    /// Background pruning (Ociregistry's `pruneConfig`).
    pub prune_config: Option<crate::inventory::config::PruneConfig>,
    /// Evict least-recently-pulled images while the cache is larger (`50GiB`, `500MB`).
    pub max_size: Option<crate::inventory::config::ByteSize>,
    /// How long fresh blobs are kept from pruning (default 5m).
    pub prune_grace: Option<ConfigDuration>,
    /// The admin API (off unless `address` is set).
    pub admin: Option<crate::inventory::config::AdminConfig>,
    /// TLS on the pull port (Ociregistry's key).
    pub server_tls_config: Option<ServerTlsFileConfig>,
    /// How long in-flight pulls and upstream fetches get after SIGTERM (default 30s).
    pub shutdown_grace: Option<ConfigDuration>,
    /// Which upstream hosts may be contacted (`allow`, `deny`).
    pub upstreams: Option<UpstreamsConfig>,
    /// Largest blob downloaded from an upstream (default 16GiB).
    pub max_blob_size: Option<crate::inventory::config::ByteSize>,
    /// Most upstream blob downloads at once (default 64).
    pub max_upstream_fetches: Option<usize>,
    /// Most blob downloads at once from one upstream (default 16).
    pub max_upstream_fetches_per_registry: Option<usize>,
    /// How long a request waits for a download slot before a 503 (default 10s).
    pub upstream_fetch_wait: Option<ConfigDuration>,
    /// Time from accept to the first request (TLS handshake, protocol detection, request
    /// head), and for each later HTTP/1 request head, on every listener (default 30s).
    pub header_timeout: Option<ConfigDuration>,
    /// A connection with no request in flight this long is closed (default 5m).
    pub idle_timeout: Option<ConfigDuration>,
}

/// `upstreams`: the upstream policy as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamsConfig {
    /// Hosts clients may name (default `["*"]`); `configured` means the `registries` entries
    /// and `defaultNs`; `{host, privateAddresses: true}` also consents to private addresses.
    pub allow: Option<Vec<AllowRule>>,
    /// Hosts never contacted, whoever names them and whatever redirects to them.
    #[serde(default)]
    pub deny: Vec<HostPattern>,
}

/// One `upstreams.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `configured`: the hosts of `registries` entries and `defaultNs`.
    Configured,
    /// A host pattern; with `private_addresses` its hosts may be on loopback, private,
    /// link-local and similar addresses.
    Host {
        /// The pattern.
        pattern: HostPattern,
        /// `privateAddresses: true`.
        private_addresses: bool,
    },
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Written {
            host: HostPattern,
            #[serde(default)]
            private_addresses: bool,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AllowRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a host pattern, `configured`, or {host: PATTERN, privateAddresses: true}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                if s == "configured" {
                    return Ok(AllowRule::Configured);
                }
                HostPattern::parse(s)
                    .map(|pattern| AllowRule::Host {
                        pattern,
                        private_addresses: false,
                    })
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let w = Written::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(AllowRule::Host {
                    pattern: w.host,
                    private_addresses: w.private_addresses,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A host pattern (`quay.io`, `*.corp.example`, `127.0.0.*`): a host name or address
/// without port, lower-cased; `*` matches any run of characters, dots included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(String);

impl HostPattern {
    /// Validates a pattern; a `host:port` form is refused (patterns match hosts, not ports).
    pub fn parse(s: &str) -> Result<Self, String> {
        let p = s.trim().to_ascii_lowercase();
        let p = p
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(&p)
            .to_owned();
        if p.is_empty() || p.len() > reference::MAX_HOST_LEN {
            return Err(format!("invalid host pattern {s:?}"));
        }
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b':'))
        {
            return Err(format!(
                "invalid host pattern {s:?}: letters, digits, `.`, `-`, `:` (IPv6) and `*` only"
            ));
        }
        if p.matches(':').count() == 1 {
            return Err(format!(
                "host pattern {s:?} has a port: patterns match the host without port"
            ));
        }
        Ok(HostPattern(p))
    }

    /// Whether `host` (lower-case, without port or brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        glob(self.0.as_bytes(), host.as_bytes())
    }

    /// The pattern as written (lower-cased).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `*`-only glob, linear in practice (the classic backtrack-to-last-star walk).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// The upstream policy after validation (`upstreams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// `upstreams.allow` (default: `*`).
    pub allow: Vec<AllowRule>,
    /// `upstreams.deny`.
    pub deny: Vec<HostPattern>,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            allow: vec![AllowRule::Host {
                pattern: HostPattern("*".into()),
                private_addresses: false,
            }],
            deny: Vec::new(),
        }
    }
}

/// One `registries[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryConfig {
    /// The registry as clients name it (`quay.io`, `127.0.0.1:5000`).
    pub name: HostName,
    /// http or https (default https).
    #[serde(default)]
    pub scheme: Scheme,
    /// Credentials.
    pub auth: Option<AuthConfig>,
    /// TLS towards this upstream.
    pub tls: Option<TlsConfig>,
    /// Overrides the global `tagTtl` for this upstream.
    pub tag_ttl: Option<ConfigDuration>,
    /// Hosts this registry's redirects may reach on private addresses (patterns).
    #[serde(default)]
    pub redirect_hosts: Vec<HostPattern>,
}

/// `registries[].auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// Basic / token-endpoint user.
    pub user: Option<String>,
    /// Its password, inline.
    pub password: Option<SecretString>,
    /// Its password, from this environment variable.
    pub password_from_env: Option<String>,
    /// External auth: a provider plugin or a static token.
    pub token: Option<TokenConfig>,
    /// Token-realm hosts besides the registry's own domain that may receive the credential.
    #[serde(default)]
    pub realms: Vec<HostPattern>,
}

/// `registries[].auth.token` (Ociregistry's external auth).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenConfig {
    /// Provider plugin name (`ecr`, `file`, ...).
    pub provider: Option<String>,
    /// `k=v,k2=v2` handed to the provider.
    pub provider_opts: Option<String>,
    /// Refresh period (default 12h).
    pub expiry: Option<ConfigDuration>,
    /// How long one provider call may take before it counts as failed (default 30s).
    pub timeout: Option<ConfigDuration>,
    /// A literal token, used as is; no plugin is called.
    #[serde(rename = "static")]
    pub static_token: Option<SecretString>,
}

/// `registries[].tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// Extra CA bundle (PEM) trusted for this upstream.
    pub ca: Option<ReadableFile>,
    /// Client certificate (PEM).
    pub cert: Option<ReadableFile>,
    /// Client key (PEM).
    pub key: Option<ReadableFile>,
    /// Skip server certificate verification (only when asked).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `serverTlsConfig.clientAuth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Any client may connect (the default).
    #[default]
    None,
    /// A client must present a certificate signed by one of `ca`.
    Verify,
}

/// `serverTlsConfig`: TLS for clients on the pull port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsFileConfig {
    /// Server certificate chain (PEM), leaf first.
    pub cert: ReadableFile,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: ReadableFile,
    /// CAs (PEM) that client certificates must chain to (`clientAuth: verify`).
    pub ca: Option<ReadableFile>,
    /// `none` (default) or `verify`.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// TLS on the pull port, after validation.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// Client CA file.
    pub ca: Option<PathBuf>,
    /// Whether client certificates are required.
    pub client_auth: ClientAuth,
    /// The acceptor built from these files when the config was read (`None` only where a
    /// `ServerTls` is made by hand, as in tests).
    pub built: Option<crate::server::tls::BuiltAcceptor>,
}

/// A string from the config that is a secret: never printed.
#[derive(Clone, Deserialize)]
pub struct SecretString(String);

impl SecretString {
    /// Into the shared secret wrapper.
    pub fn to_secret(&self) -> Secret {
        Secret::new(self.0.clone())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a registry's credential is obtained, after validation.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    /// Anonymous (the upstream's own token flow may still run anonymously).
    None,
    /// User and password from config or environment.
    Basic {
        /// User.
        user: String,
        /// Password.
        password: Secret,
    },
    /// `auth.token.static`.
    Static(Secret),
    /// `auth.token.provider`.
    Provider {
        /// Plugin name.
        provider: String,
        /// Raw `providerOpts`.
        opts: String,
        /// Refresh period.
        every: Duration,
        /// Limit on one provider call.
        timeout: Duration,
    },
}

/// One upstream after validation.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Name as clients write it; docker.io's aliases read as `docker.io`.
    pub name: String,
    /// http or https.
    pub scheme: Scheme,
    /// Credential source.
    pub credential: CredentialConfig,
    /// TLS settings.
    pub tls: TlsConfig,
    /// How long its cached tags are trusted (`None`: until `alwaysPullLatest` or forever).
    pub tag_ttl: Option<Duration>,
    /// `redirectHosts`: hosts its redirects may reach on private addresses.
    pub redirect_hosts: Vec<HostPattern>,
    /// `auth.realms`: extra token-realm hosts that may receive its credential.
    pub realms: Vec<HostPattern>,
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--image-path`.
    pub image_path: Option<PathBuf>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--host`.
    pub host: Option<String>,
    /// `--plugin-dir`.
    pub plugin_dir: Option<PathBuf>,
    /// `--default-ns`.
    pub default_ns: Option<String>,
    /// `--air-gapped`.
    pub air_gapped: bool,
    /// `--always-pull-latest`.
    pub always_pull_latest: bool,
    /// `--pull-timeout`.
    pub pull_timeout: Option<Duration>,
    /// `--admin-address`.
    pub admin_address: Option<String>,
    /// `--shutdown-grace`.
    pub shutdown_grace: Option<Duration>,
    /// `--metrics`.
    pub metrics: Option<u16>,
    /// `--health`.
    pub health: Option<u16>,
    /// `--log-file`.
    pub log_file: Option<PathBuf>,
}

/// What the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Cache directory.
    pub image_path: PathBuf,
    /// Pull port (0: any free port).
    pub port: u16,
    /// Listen address.
    pub host: String,
    /// Provider plugin directory.
    pub plugin_dir: PathBuf,
    /// Registry for requests that name none.
    pub default_ns: String,
    /// Never go upstream.
    pub air_gapped: bool,
    /// Re-check `:latest` upstream.
    pub always_pull_latest: bool,
    /// Upstream answer timeout.
    pub pull_timeout: Duration,
    /// Configured upstreams.
    pub registries: Vec<Registry>,
    /// Log level from the file, if any.
    pub log_level: Option<String>,
    /// Where log lines go instead of stderr, if anywhere.
    pub log_file: Option<PathBuf>,
    /// Default trust period of cached tags.
    pub tag_ttl: Option<Duration>,
    /// Bound on one tag revalidation.
    pub revalidate_timeout: Duration,
    /// Largest manifest accepted.
    pub max_manifest_size: usize,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most connections from one client address.
    pub max_connections_per_client: usize,
    /// Pruning, `maxSize` and the admin API.
    pub inventory: crate::inventory::config::InventorySettings,
    /// TLS on the pull port (`None`: plain HTTP).
    pub server_tls: Option<ServerTls>,
    /// How long in-flight pulls and upstream fetches get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Cache warming: image lists and the platform default.
    pub preload: PreloadSettings,
    /// Port of the metrics listener, if on (0: any free port).
    pub metrics_port: Option<u16>,
    /// Port of the health listener, if on (0: any free port).
    pub health_port: Option<u16>,
    /// Which upstream hosts may be contacted (`upstreams`).
    pub upstream_policy: UpstreamPolicy,
    /// Downloads from upstreams: size cap and concurrency limits.
    pub fetch_limits: FetchLimits,
    /// Accept to first request, and each HTTP/1 request head, on every listener.
    pub header_timeout: Duration,
    /// Longest time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
}

/// `maxBlobSize`, `maxUpstreamFetches`, `maxUpstreamFetchesPerRegistry`, `upstreamFetchWait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Largest blob downloaded.
    pub max_blob_size: u64,
    /// Most blob downloads at once.
    pub max_fetches: usize,
    /// Most blob downloads at once from one upstream.
    pub max_fetches_per_registry: usize,
    /// Longest wait for a download slot.
    pub wait: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_fetches: DEFAULT_MAX_UPSTREAM_FETCHES,
            max_fetches_per_registry: DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY,
            wait: DEFAULT_UPSTREAM_FETCH_WAIT,
        }
    }
}

/// `preloadImages`, `imageFile`, `os` and `arch`: what to warm the cache with.
#[derive(Debug, Clone, Default)]
pub struct PreloadSettings {
    /// `preloadImages`: the list `serve` preloads.
    pub preload_images: Option<PathBuf>,
    /// `imageFile`: the list `load` preloads.
    pub image_file: Option<PathBuf>,
    /// Platforms taken from an index: `--platform` values, else the one `os`/`arch` name;
    /// empty means this machine's.
    pub platforms: Vec<crate::preload::platform::Platform>,
}

impl Settings {
    /// How long a cached tag of `registry` is trusted; `None` means until forced.
    pub fn tag_ttl(&self, registry: &str) -> Option<Duration> {
        self.registries
            .iter()
            .find(|r| r.name == registry)
            .and_then(|r| r.tag_ttl)
            .or(self.tag_ttl)
    }
}

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

/// The default plugin directory: `plugins/` next to the binary when it exists (an installed
/// layout), else the binary's own directory (where `cargo build` puts the bundled plugins).
pub fn default_plugin_dir() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let beside = exe_dir.join("plugins");
    if beside.is_dir() { beside } else { exe_dir }
}

/// Merges file and flags into settings and validates cross-key rules.
pub fn resolve(
    file: Option<(FileConfig, String, PathBuf)>,
    o: Overrides,
) -> Result<Settings, ConfigError> {
    let (cfg, text, path) = match file {
        Some((cfg, text, path)) => (cfg, text, path),
        None => (
            FileConfig::default(),
            String::new(),
            PathBuf::from("<none>"),
        ),
    };
    let invalid = |key: String, line: Option<usize>, message: String| ConfigError::Invalid {
        path: path.clone(),
        key,
        line,
        message,
    };
    let mut seen = HashSet::new();
    let mut registries = Vec::new();
    for (i, r) in cfg.registries.iter().enumerate() {
        let line = line_of_entry(&text, &r.name.0);
        let key = |k: &str| format!("registries[{i}]{k}");
        // Requests name docker.io's aliases as `docker.io`: so must the settings.
        let name = crate::upstream::canonical_name(&r.name.0).to_owned();
        if !seen.insert(name.clone()) {
            return Err(invalid(
                key(".name"),
                line,
                format!("{} is listed twice", r.name.0),
            ));
        }
        let tls = r.tls.clone().unwrap_or_default();
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(invalid(
                key(".tls"),
                line,
                "cert and key must be given together".into(),
            ));
        }
        if r.scheme == Scheme::Http && r.name.0.ends_with(":443") {
            return Err(invalid(
                key(".name"),
                line,
                "port 443 means https here (quay.io:443 is quay.io); use scheme: https or another port".into(),
            ));
        }
        if r.scheme == Scheme::Http && r.tls.is_some() {
            return Err(invalid(
                key(".tls"),
                line,
                "tls settings need scheme: https".into(),
            ));
        }
        let credential = credential_of(r.auth.as_ref())
            .map_err(|(k, message)| invalid(key(&format!(".auth{k}")), line, message))?;
        registries.push(Registry {
            name,
            scheme: r.scheme,
            credential,
            tls,
            tag_ttl: r.tag_ttl.map(|d| d.0),
            redirect_hosts: r.redirect_hosts.clone(),
            realms: r
                .auth
                .as_ref()
                .map(|a| a.realms.clone())
                .unwrap_or_default(),
        });
    }
    let default_ns = match o.default_ns {
        Some(ns) => reference::parse_host(&ns)
            .map_err(|e| invalid("--default-ns".into(), None, e.to_string()))?,
        None => cfg
            .default_ns
            .map(|h| h.0)
            .unwrap_or_else(|| DEFAULT_NS.to_owned()),
    };
    let pull_timeout = o
        .pull_timeout
        .or(cfg.pull_timeout.map(|d| d.0))
        .unwrap_or(DEFAULT_PULL_TIMEOUT);
    if pull_timeout.is_zero() {
        return Err(invalid(
            "pullTimeout".into(),
            None,
            "must be more than zero".into(),
        ));
    }
    let max_manifest_size = match cfg.max_manifest_size {
        None => DEFAULT_MAX_MANIFEST_SIZE,
        Some(n) if (1024..=64 * 1024 * 1024).contains(&n) => n as usize,
        Some(_) => {
            return Err(invalid(
                "maxManifestSize".into(),
                None,
                "must be between 1024 and 67108864 bytes".into(),
            ));
        }
    };
    let max_connections = match cfg.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(0) => {
            return Err(invalid(
                "maxConnections".into(),
                None,
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
    };
    let preload = PreloadSettings {
        platforms: crate::preload::platform::Platform::from_config(
            cfg.os.as_deref(),
            cfg.arch.as_deref(),
        )
        .map_err(|(key, message)| invalid(key.into(), None, message))?
        .into_iter()
        .collect(),
        preload_images: cfg.preload_images,
        image_file: cfg.image_file,
    };
    let inventory = crate::inventory::config::InventorySettings::resolve(
        &path,
        cfg.prune_config.as_ref(),
        cfg.max_size,
        cfg.prune_grace,
        cfg.admin.as_ref(),
        o.admin_address.as_deref(),
    )?;
    let server_tls = match &cfg.server_tls_config {
        None => None,
        Some(t) => {
            let mut tls = ServerTls {
                cert: t.cert.0.clone(),
                key: t.key.0.clone(),
                ca: t.ca.as_ref().map(|f| f.0.clone()),
                client_auth: t.client_auth,
                built: None,
            };
            // Read and check the PEM files now, once: a bad one is a config error with its
            // line; the pull port and the admin API use the acceptor built here.
            match crate::server::tls::acceptor(&tls) {
                Ok(a) => tls.built = Some(crate::server::tls::BuiltAcceptor(a)),
                Err(e) => {
                    return Err(invalid(
                        format!("serverTlsConfig.{}", e.key),
                        line_of_nested_key(&text, "serverTlsConfig", e.key),
                        e.detail(),
                    ));
                }
            }
            Some(tls)
        }
    };
    let shutdown_grace = o
        .shutdown_grace
        .or(cfg.shutdown_grace.map(|d| d.0))
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let max_connections_per_client = match cfg.max_connections_per_client {
        None => DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections),
        Some(0) => {
            return Err(invalid(
                "maxConnectionsPerClient".into(),
                None,
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
    };
    let upstream_policy = match cfg.upstreams {
        None => UpstreamPolicy::default(),
        Some(u) => {
            let allow = u.allow.unwrap_or_else(|| UpstreamPolicy::default().allow);
            if allow.is_empty() {
                return Err(invalid(
                    "upstreams.allow".into(),
                    line_of_nested_key(&text, "upstreams", "allow"),
                    "is empty: no upstream could be contacted (leave it out for the default [\"*\"], or write [configured])".into(),
                ));
            }
            UpstreamPolicy {
                allow,
                deny: u.deny,
            }
        }
    };
    let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(invalid(
            key.into(),
            line_of_top_key(&text, key),
            "must be at least 1".into(),
        )),
        Some(n) => Ok(n),
    };
    let max_fetches = at_least_one(
        "maxUpstreamFetches",
        cfg.max_upstream_fetches,
        DEFAULT_MAX_UPSTREAM_FETCHES,
    )?;
    let fetch_limits = FetchLimits {
        max_blob_size: cfg.max_blob_size.map_or(DEFAULT_MAX_BLOB_SIZE, |b| b.0),
        max_fetches,
        max_fetches_per_registry: at_least_one(
            "maxUpstreamFetchesPerRegistry",
            cfg.max_upstream_fetches_per_registry,
            DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY.min(max_fetches),
        )?,
        wait: cfg
            .upstream_fetch_wait
            .map_or(DEFAULT_UPSTREAM_FETCH_WAIT, |d| d.0),
    };
    let positive = |key: &str, d: Option<ConfigDuration>, default: Duration| match d {
        None => Ok(default),
        Some(d) if d.0.is_zero() => Err(invalid(
            key.into(),
            line_of_key(&text, key),
            "must be more than zero".into(),
        )),
        Some(d) => Ok(d.0),
    };
    let header_timeout = positive("headerTimeout", cfg.header_timeout, DEFAULT_HEADER_TIMEOUT)?;
    let idle_timeout = positive("idleTimeout", cfg.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
    Ok(Settings {
        preload,
        inventory,
        server_tls,
        shutdown_grace,
        tag_ttl: cfg.tag_ttl.map(|d| d.0),
        revalidate_timeout: cfg
            .revalidate_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_REVALIDATE_TIMEOUT)
            .min(pull_timeout),
        max_manifest_size,
        max_connections,
        max_connections_per_client,
        metrics_port: o.metrics.or(cfg.metrics),
        health_port: o.health.or(cfg.health),
        image_path: o
            .image_path
            .or(cfg.image_path)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_PATH)),
        port: o.port.or(cfg.port).unwrap_or(DEFAULT_PORT),
        host: o
            .host
            .or(cfg.host)
            .unwrap_or_else(|| DEFAULT_HOST.to_owned()),
        plugin_dir: o
            .plugin_dir
            .or(cfg.plugin_dir)
            .unwrap_or_else(default_plugin_dir),
        default_ns,
        air_gapped: o.air_gapped || cfg.air_gapped.unwrap_or(false),
        always_pull_latest: o.always_pull_latest || cfg.always_pull_latest.unwrap_or(false),
        pull_timeout,
        registries,
        log_level: cfg.log_level,
        // An empty `logFile` (Ociregistry's default) means stderr.
        log_file: o
            .log_file
            .or(cfg.log_file)
            .filter(|p| !p.as_os_str().is_empty()),
        upstream_policy,
        fetch_limits,
        header_timeout,
        idle_timeout,
    })
}

/// The 1-based line on which top-level `key:` is written, if it is.
fn line_of_top_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

/// Validates one `auth` block; errors carry the sub-key.
fn credential_of(auth: Option<&AuthConfig>) -> Result<CredentialConfig, (String, String)> {
    let Some(a) = auth else {
        return Ok(CredentialConfig::None);
    };
    let err = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
    if let Some(t) = &a.token {
        if a.user.is_some() || a.password.is_some() || a.password_from_env.is_some() {
            return err(".token", "use either token or user/password, not both");
        }
        return match (&t.provider, &t.static_token) {
            (Some(_), Some(_)) => err(".token", "use either provider or static, not both"),
            (None, None) => err(".token", "needs provider or static"),
            (None, Some(s)) => {
                if t.provider_opts.is_some() || t.expiry.is_some() || t.timeout.is_some() {
                    return err(".token", "providerOpts, expiry and timeout need a provider");
                }
                Ok(CredentialConfig::Static(s.to_secret()))
            }
            (Some(p), None) => {
                let every = t.expiry.map(|d| d.0).unwrap_or(DEFAULT_TOKEN_EXPIRY);
                if every < Duration::from_secs(1) {
                    return err(".token.expiry", "must be at least 1s");
                }
                if p.trim().is_empty() {
                    return err(".token.provider", "is empty");
                }
                let timeout = t.timeout.map(|d| d.0).unwrap_or(DEFAULT_PROVIDER_TIMEOUT);
                if timeout.is_zero() {
                    return err(".token.timeout", "must be more than zero");
                }
                Ok(CredentialConfig::Provider {
                    provider: p.trim().to_owned(),
                    opts: t.provider_opts.clone().unwrap_or_default(),
                    every,
                    timeout,
                })
            }
        };
    }
    let password = match (&a.password, &a.password_from_env) {
        (Some(_), Some(_)) => return err("", "use either password or passwordFromEnv, not both"),
        (Some(p), None) => Some(p.to_secret()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                return Err((
                    ".passwordFromEnv".into(),
                    format!("environment variable {var} is not set"),
                ));
            }
        },
        (None, None) => None,
    };
    match (&a.user, password) {
        (Some(user), Some(password)) => Ok(CredentialConfig::Basic {
            user: user.clone(),
            password,
        }),
        (None, None) => Ok(CredentialConfig::None),
        (Some(_), None) => err("", "user needs password or passwordFromEnv"),
        (None, Some(_)) => err("", "password needs user"),
    }
}

/// The 1-based line of `key:` inside the top-level block `parent:` (or of `parent:` itself when
/// the block is written inline), for messages about values checked after parsing.
fn line_of_nested_key(text: &str, parent: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("{parent}:")))?;
    let nested = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.starts_with([' ', '\t']) || l.starts_with('#'))
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| start + 1 + i + 1);
    nested.or(Some(start + 1))
}

/// The 1-based line of the top-level `key:`, for messages about values checked after parsing.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

/// The 1-based line of the `name: <registry>` key of a registries entry, for messages about
/// rules that span several keys.
fn line_of_entry(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('-').trim_start();
            l.strip_prefix("name:")
                .map(|v| {
                    v.trim()
                        .trim_matches(|c| c == '"' || c == '\'')
                        .eq_ignore_ascii_case(name)
                })
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str) -> Result<Settings, String> {
        let cfg = parse_text(text)?;
        resolve(
            Some((cfg, text.to_owned(), PathBuf::from("c.yaml"))),
            Overrides::default(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_policy_keys() {
        let s = resolve_text(
            "upstreams:\n  allow: [configured, \"*.Corp.example\", {host: \"127.0.0.*\", privateAddresses: true}]\n  deny: [\"*.evil.example\"]\nregistries:\n- name: reg.corp.example:8443\n  redirectHosts: [\"blobs.corp.internal\"]\n  auth: {user: u, password: p, realms: [\"login.corp.example\"]}\n",
        )
        .unwrap();
        let p = &s.upstream_policy;
        assert_eq!(p.allow.len(), 3);
        assert_eq!(p.allow[0], AllowRule::Configured);
        assert!(
            matches!(&p.allow[1], AllowRule::Host { pattern, private_addresses: false } if pattern.matches("a.corp.example"))
        );
        assert!(matches!(
            &p.allow[2],
            AllowRule::Host {
                private_addresses: true,
                ..
            }
        ));
        assert!(p.deny[0].matches("x.y.evil.example") && !p.deny[0].matches("evil.example"));
        assert_eq!(
            s.registries[0].redirect_hosts[0].as_str(),
            "blobs.corp.internal"
        );
        assert_eq!(s.registries[0].realms[0].as_str(), "login.corp.example");
        assert_eq!(
            resolve_text("").unwrap().upstream_policy,
            UpstreamPolicy::default()
        );
        for (bad, needle) in [
            ("upstreams:\n  allow: [\"quay.io:443\"]\n", "line 2"),
            (
                "upstreams:\n  allow:\n  - {host: a, private: true}\n",
                "line 3",
            ),
            ("upstreams:\n  deny: [\"a b\"]\n", "line 2"),
            ("upstreams:\n  allow: []\n", "upstreams.allow"),
            ("upstreams:\n  alow: []\n", "alow"),
        ] {
            let e = resolve_text(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn host_patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("*").matches("anything.example"));
        assert!(p("127.0.0.*").matches("127.0.0.1"));
        assert!(!p("127.0.0.*").matches("127.0.1.1.evil"));
        assert!(p("*.corp.example").matches("a.b.corp.example"));
        assert!(!p("*.corp.example").matches("corp.example"));
        assert!(p("a*b*c").matches("axxbyyc") && !p("a*b*c").matches("axxbyy"));
        assert!(p("[::1]").matches("::1"));
        assert!(HostPattern::parse("quay.io:443").is_err());
        assert!(HostPattern::parse("").is_err());
        // Linear enough: a long run of stars against a long miss.
        let long = format!("{}b", "*a".repeat(100));
        assert!(!p(&long).matches(&"a".repeat(200)));
    }

    #[test]
    fn seed_page_config_loads() {
        let s = resolve_text(
            "registries:\n- name: 111122223333.dkr.ecr.us-south-1.amazonaws.com\n  auth:\n    token:\n      provider: ecr\n      providerOpts: profile=default,region=us-south-1\n      expiry: 6h\n",
        )
        .unwrap();
        match &s.registries[0].credential {
            CredentialConfig::Provider {
                provider,
                opts,
                every,
                ..
            } => {
                assert_eq!(provider, "ecr");
                assert_eq!(opts, "profile=default,region=us-south-1");
                assert_eq!(*every, Duration::from_secs(6 * 3600));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn typo_names_key_and_line() {
        let e = resolve_text("port: 8080\nregistries:\n- name: quay.io\n  auth:\n    usr: x\n")
            .unwrap_err();
        assert!(e.contains("usr") && e.contains("line 5"), "{e}");
        let e = resolve_text("imagePth: /x\n").unwrap_err();
        assert!(e.contains("imagePth") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let e = resolve_text("registries:\n- name: a.io\n  auth:\n    token:\n      provider: ecr\n      expiry: 6x\n").unwrap_err();
        assert!(
            e.contains("key `expiry`") && e.contains("line 6") && e.contains("unknown unit"),
            "{e}"
        );
    }

    #[test]
    fn missing_ca_file_names_key_and_line() {
        let e = resolve_text("registries:\n- name: a.io\n  tls:\n    ca: /nonexistent/ca.crt\n")
            .unwrap_err();
        assert!(
            e.contains("key `ca`") && e.contains("line 4") && e.contains("/nonexistent/ca.crt"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_on_a_later_key_names_that_key_and_line() {
        let e = resolve_text(
            "registries:\n- name: a.io\n  tls:\n    insecureSkipVerify: false\n    cert: /nonexistent/c.crt\n    key: /nonexistent/c.key\n",
        )
        .unwrap_err();
        assert!(
            e.contains("key `cert`") && e.contains("line 5") && e.contains("/nonexistent/c.crt"),
            "{e}"
        );
    }

    #[test]
    fn cross_key_rules() {
        let e = resolve_text("registries:\n- name: a.io\n  auth:\n    user: u\n").unwrap_err();
        assert!(
            e.contains("registries[0].auth") && e.contains("line 2"),
            "{e}"
        );
        let e = resolve_text("registries:\n- name: a.io\n- name: A.io\n").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = resolve_text("registries:\n- name: a.io\n  auth:\n    passwordFromEnv: OCIREG_TEST_UNSET_VAR\n    user: u\n").unwrap_err();
        assert!(
            e.contains("OCIREG_TEST_UNSET_VAR") && e.contains("passwordFromEnv"),
            "{e}"
        );
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let cfg = parse_text("port: 9000\nhost: 127.0.0.1\npullTimeout: 5000\n").unwrap();
        let s = resolve(
            Some((cfg, String::new(), PathBuf::from("c"))),
            Overrides {
                port: Some(7000),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.port, 7000);
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.pull_timeout, Duration::from_secs(5));
        assert_eq!(s.default_ns, "docker.io");
        assert_eq!(s.image_path, PathBuf::from(DEFAULT_IMAGE_PATH));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = resolve_text("registries:\n- name: a.io\n  auth: {user: u, password: hunter2}\n")
            .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn preload_keys() {
        let s = resolve_text("preloadImages: /etc/p.txt\nimageFile: /etc/i.txt\narch: arm64\n")
            .unwrap();
        assert_eq!(s.preload.preload_images, Some(PathBuf::from("/etc/p.txt")));
        assert_eq!(s.preload.image_file, Some(PathBuf::from("/etc/i.txt")));
        let platforms: Vec<String> = s.preload.platforms.iter().map(|p| p.to_string()).collect();
        assert_eq!(platforms, vec!["linux/arm64"]);
        assert!(
            resolve_text("port: 1\n")
                .unwrap()
                .preload
                .platforms
                .is_empty()
        );
        let e = resolve_text("os: \"lin ux\"\n").unwrap_err();
        assert!(e.contains("os") && e.contains("lin ux"), "{e}");
    }

    #[test]
    fn metrics_and_health_ports() {
        let s = resolve_text("metrics: 9090\nhealth:\n").unwrap();
        assert_eq!((s.metrics_port, s.health_port), (Some(9090), None));
        let cfg = parse_text("health: 8081\n").unwrap();
        let s = resolve(
            Some((cfg, String::new(), PathBuf::from("c"))),
            Overrides {
                health: Some(7001),
                metrics: Some(0),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!((s.metrics_port, s.health_port), (Some(0), Some(7001)));
        assert!(resolve_text("metrics: lots\n").is_err());
    }

    #[test]
    fn prune_and_admin_keys() {
        let s = resolve_text("pruneConfig:\n  enabled: false\nlogLevel: info\n").unwrap();
        assert!(s.inventory.prune.is_none());
        let s = resolve_text(
            "pruneConfig:\n  enabled: true\n  type: accessed\n  duration: 30d\nmaxSize: 50GiB\n",
        )
        .unwrap();
        assert!(s.inventory.prune.is_some());
        assert_eq!(s.inventory.max_size, Some(50 << 30));
        let e = resolve_text("admin:\n  address: 0.0.0.0:9000\n").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        let s = resolve_text("registries:\n- name: index.docker.io\n  tagTtl: 5m\n").unwrap();
        assert_eq!(s.registries[0].name, "docker.io");
        assert_eq!(s.tag_ttl("docker.io"), Some(Duration::from_secs(300)));
        let e = resolve_text("registries:\n- name: docker.io\n- name: registry-1.docker.io\n")
            .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn log_file_from_the_file_or_the_flag() {
        let s = resolve_text("logFile: /var/log/ociregistry.log\n").unwrap();
        assert_eq!(s.log_file, Some(PathBuf::from("/var/log/ociregistry.log")));
        // Ociregistry's default, an empty string, means stderr.
        assert_eq!(resolve_text("logFile: \"\"\n").unwrap().log_file, None);
        assert_eq!(resolve_text("port: 1\n").unwrap().log_file, None);
        let cfg = parse_text("logFile: /from/file.log\n").unwrap();
        let s = resolve(
            Some((cfg, String::new(), PathBuf::from("c"))),
            Overrides {
                log_file: Some(PathBuf::from("/from/flag.log")),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.log_file, Some(PathBuf::from("/from/flag.log")));
        let e = resolve_text("logFile: [a, b]\n").unwrap_err();
        assert!(e.contains("logFile"), "{e}");
    }

    #[test]
    fn server_tls_config_missing_or_bad_files_name_key_and_line() {
        let e = resolve_text(
            "port: 8443\nserverTlsConfig:\n  cert: /nonexistent/server.crt\n  key: /nonexistent/server.key\n",
        )
        .unwrap_err();
        assert!(
            e.contains("key `cert`")
                && e.contains("line 3")
                && e.contains("/nonexistent/server.crt"),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let cert = d.path().join("server.crt");
        let key = d.path().join("server.key");
        std::fs::write(&cert, "not pem\n").unwrap();
        std::fs::write(&key, "not pem\n").unwrap();
        let text = format!(
            "serverTlsConfig:\n  # comment\n  key: {}\n  cert: {}\n",
            key.display(),
            cert.display()
        );
        let e = resolve_text(&text).unwrap_err();
        assert!(
            e.contains("serverTlsConfig.cert")
                && e.contains("(line 4)")
                && e.contains("server.crt")
                && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = resolve_text(&format!(
            "serverTlsConfig: {{cert: {}, key: {}, clientAuth: verify}}\n",
            cert.display(),
            key.display()
        ))
        .unwrap_err();
        assert!(
            e.contains("serverTlsConfig.clientAuth")
                && e.contains("(line 1)")
                && e.contains("needs serverTlsConfig.ca"),
            "{e}"
        );
        let e = resolve_text(&format!(
            "serverTlsConfig:\n  cert: {}\n  key: {}\n  clientAuth: require\n",
            cert.display(),
            key.display()
        ))
        .unwrap_err();
        assert!(
            e.contains("line 4") && e.contains("clientAuth") && e.contains("verify"),
            "{e}"
        );
        let e = resolve_text(&format!(
            "serverTlsConfig:\n  cert: {}\n  keyFile: {}\n",
            cert.display(),
            key.display()
        ))
        .unwrap_err();
        assert!(e.contains("keyFile"), "{e}");
    }

    #[test]
    fn fetch_limits_from_file_and_defaults() {
        assert_eq!(
            resolve_text("").unwrap().fetch_limits,
            FetchLimits::default()
        );
        let s = resolve_text(
            "maxBlobSize: 1MiB\nmaxUpstreamFetches: 3\nmaxUpstreamFetchesPerRegistry: 2\nupstreamFetchWait: 2s\n",
        )
        .unwrap();
        assert_eq!(
            s.fetch_limits,
            FetchLimits {
                max_blob_size: 1024 * 1024,
                max_fetches: 3,
                max_fetches_per_registry: 2,
                wait: Duration::from_secs(2),
            }
        );
        // The per-registry default never exceeds the global limit.
        let s = resolve_text("maxUpstreamFetches: 4\n").unwrap();
        assert_eq!(s.fetch_limits.max_fetches_per_registry, 4);
        let e = resolve_text("port: 1\nmaxUpstreamFetches: 0\n").unwrap_err();
        assert!(
            e.contains("maxUpstreamFetches (line 2): must be at least 1"),
            "{e}"
        );
        let e = resolve_text("maxBlobSize: lots\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("maxBlobSize"), "{e}");
    }

    #[test]
    fn shutdown_grace_from_file_flag_and_default() {
        assert_eq!(
            resolve_text("").unwrap().shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE
        );
        assert_eq!(
            resolve_text("shutdownGrace: 2s\n").unwrap().shutdown_grace,
            Duration::from_secs(2)
        );
        let cfg = parse_text("shutdownGrace: 2m\n").unwrap();
        let s = resolve(
            Some((cfg, String::new(), PathBuf::from("c"))),
            Overrides {
                shutdown_grace: Some(Duration::from_secs(5)),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
        let e = resolve_text("shutdownGrace: soon\n").unwrap_err();
        assert!(
            e.contains("key `shutdownGrace`") && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn header_and_idle_timeouts() {
        let s = resolve_text("").unwrap();
        assert_eq!(
            (s.header_timeout, s.idle_timeout),
            (DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT)
        );
        let s = resolve_text(
            "headerTimeout: 2s
idleTimeout: 1m
",
        )
        .unwrap();
        assert_eq!(
            (s.header_timeout, s.idle_timeout),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
        let e = resolve_text(
            "port: 1
idleTimeout: 0s
",
        )
        .unwrap_err();
        assert!(e.contains("idleTimeout") && e.contains("line 2"), "{e}");
        let e = resolve_text(
            "headerTimeout: later
",
        )
        .unwrap_err();
        assert!(
            e.contains("key `headerTimeout`") && e.contains("line 1"),
            "{e}"
        );
    }
}
