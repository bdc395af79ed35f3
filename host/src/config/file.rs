//! The config file as written: the serde structs of `config.yaml` (strict: unknown keys are
//! errors) and the value types its keys are read into; not the merged settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ociregistry_plugin_api::Secret;
use serde::Deserialize;

use super::error::UnreadableFile;
use super::host_pattern::{AllowRule, HostPattern};
use crate::duration;
use crate::oci::reference;

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
        checked_str(d, "a file path", |s| {
            let path = PathBuf::from(s);
            match std::fs::File::open(&path) {
                Ok(_) => Ok(ReadableFile(path)),
                Err(error) => Err(UnreadableFile { path, error }),
            }
        })
    }
}

/// Reads a string and checks it inside the visitor, so that a refusal carries the parser's
/// mark of the value itself (its line), not that of the enclosing mapping.
pub(crate) fn checked_str<'de, D, T, E>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: fmt::Display,
{
    struct Checked<F>(&'static str, F);
    impl<T, E: fmt::Display, F: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'_> for Checked<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<Er: serde::de::Error>(self, s: &str) -> Result<T, Er> {
            (self.1)(s).map_err(Er::custom)
        }
    }
    d.deserialize_str(Checked(expecting, check))
}

/// An upstream host name (`quay.io`, `127.0.0.1:5000`), validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(pub String);

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a registry host name", |s| {
            reference::parse_host(s).map(HostName)
        })
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
    /// Serve the built-in hello-world image on the default registry (default true).
    pub hello_world: Option<bool>,
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
    pub prune_config: Option<super::inventory::PruneConfig>,
    /// Evict least-recently-pulled images while the cache is larger (`50GiB`, `500MB`).
    pub max_size: Option<super::inventory::ByteSize>,
    /// How long fresh blobs are kept from pruning (default 5m).
    pub prune_grace: Option<ConfigDuration>,
    /// The admin API (off unless `address` is set).
    pub admin: Option<super::inventory::AdminConfig>,
    /// TLS on the pull port (Ociregistry's key).
    pub server_tls_config: Option<ServerTlsFileConfig>,
    /// How long in-flight pulls and upstream fetches get after SIGTERM (default 30s).
    pub shutdown_grace: Option<ConfigDuration>,
    /// Which upstream hosts may be contacted (`allow`, `deny`).
    pub upstreams: Option<UpstreamsConfig>,
    /// Largest blob downloaded from an upstream (default 16GiB).
    pub max_blob_size: Option<super::inventory::ByteSize>,
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
    /// Where the cache lives: the filesystem at `imagePath` (absent) or an S3 bucket.
    pub storage: Option<super::storage::StorageConfig>,
    /// Replicas sharing the bucket: one upstream fetch per blob among them (written empty,
    /// it is refused, not read as absent).
    #[serde(default, deserialize_with = "super::storage::present")]
    pub cluster: Option<super::cluster::ClusterConfig>,
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
    /// Where the registry's content is fetched from, in order (default: the name itself).
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Other names clients may write as the first path segment for this registry.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `rateLimit: {revalidateFloor: N}`: living within the upstream's pull budget.
    pub rate_limit: Option<RateLimitConfig>,
    /// `breaker: {coolDown, maxCoolDown}`: how long a failing endpoint is skipped.
    pub breaker: Option<BreakerConfig>,
}

/// `registries[].endpoints[]`: a URL (`https://mirror.gcr.io`), or a mapping with the URL
/// and the endpoint's own `auth` and `tls` (else the entry's).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// `scheme://host[:port]`.
    pub url: String,
    /// Credentials for this endpoint only.
    pub auth: Option<AuthConfig>,
    /// TLS towards this endpoint only.
    pub tls: Option<TlsConfig>,
}

/// The mapping form of an endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointMapping {
    url: String,
    auth: Option<AuthConfig>,
    tls: Option<TlsConfig>,
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint URL, or a mapping with url and optional auth and tls")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(EndpointConfig {
                    url: s.to_owned(),
                    auth: None,
                    tls: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let m = EndpointMapping::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(EndpointConfig {
                    url: m.url,
                    auth: m.auth,
                    tls: m.tls,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `registries[].rateLimit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// While the upstream's `ratelimit-remaining` is below this, cached tags are served
    /// without revalidation.
    pub revalidate_floor: Option<u64>,
}

/// `registries[].breaker`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerConfig {
    /// First cool-down of a failing endpoint (default 5s); doubles while it keeps failing.
    pub cool_down: Option<ConfigDuration>,
    /// Longest cool-down (default 5m).
    pub max_cool_down: Option<ConfigDuration>,
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
