//! What the server runs with: the plain [`Settings`] that file and flags resolve to, and the
//! command-line [`Overrides`]; no parsing, no sockets, no TLS objects.

use std::path::PathBuf;
use std::time::Duration;

use ociregistry_plugin_api::Secret;

use super::host_pattern::{HostPattern, UpstreamPolicy};
use super::server_tls::ServerTls;
use super::{
    DEFAULT_MAX_BLOB_SIZE, DEFAULT_MAX_UPSTREAM_FETCHES, DEFAULT_MAX_UPSTREAM_FETCHES_PER_REGISTRY,
    DEFAULT_UPSTREAM_FETCH_WAIT, Scheme, TlsConfig,
};

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
    /// `endpoints`: where its content is fetched from, in order; empty: the name itself.
    pub endpoints: Vec<Endpoint>,
    /// `aliases`: names clients may use for it (validated, lower-case).
    pub aliases: Vec<String>,
    /// `rateLimit.revalidateFloor`: below this remaining budget tags are not revalidated.
    pub revalidate_floor: Option<u64>,
    /// `breaker`: cool-downs of failing endpoints.
    pub breaker: BreakerSettings,
}

/// One `endpoints[]` entry after validation.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]` (no path, no user info, no query).
    pub url: String,
    /// http or https (from the URL).
    pub scheme: Scheme,
    /// Its credential (the entry's unless it has its own `auth`).
    pub credential: CredentialConfig,
    /// Its TLS settings (the entry's unless it has its own `tls`).
    pub tls: TlsConfig,
}

/// How long a failing endpoint is skipped: `cool_down`, doubling while it keeps failing, up
/// to `max_cool_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// First cool-down.
    pub cool_down: Duration,
    /// Longest cool-down.
    pub max_cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            cool_down: super::DEFAULT_BREAKER_COOL_DOWN,
            max_cool_down: super::DEFAULT_BREAKER_MAX_COOL_DOWN,
        }
    }
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
    /// `helloWorld`: `hello-world` on the default registry is the built-in image.
    pub hello_world: bool,
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
    pub inventory: super::inventory::InventorySettings,
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
    /// Where the cache lives (`storage`): the filesystem at `image_path`, or a bucket with a
    /// local copy.
    pub storage: super::storage::StorageSettings,
    /// `cluster`: replicas sharing the bucket fetch each blob upstream once (a lease in the
    /// bucket, peers streaming from its owner); `None`: each replica fetches on its own.
    pub cluster: Option<super::cluster::ClusterSettings>,
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
    pub platforms: Vec<crate::oci::platform::Platform>,
}

impl Settings {
    /// The registry (its name) `alias` stands for, if it is one of `registries[].aliases`.
    pub fn alias_target(&self, alias: &str) -> Option<&str> {
        self.registries
            .iter()
            .find(|r| r.aliases.iter().any(|a| a == alias))
            .map(|r| r.name.as_str())
    }

    /// How long a cached tag of `registry` is trusted; `None` means until forced.
    pub fn tag_ttl(&self, registry: &str) -> Option<Duration> {
        self.registries
            .iter()
            .find(|r| r.name == registry)
            .and_then(|r| r.tag_ttl)
            .or(self.tag_ttl)
    }
}
