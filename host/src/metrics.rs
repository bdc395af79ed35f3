//! The process's metrics: counters and gauges that the serving, cache and upstream code
//! update on their paths, cheaply (atomics, pre-created handles), and that
//! [`crate::observability`] exposes in the Prometheus/OpenMetrics text format.
//!
//! Use [`global()`]; every series is named `ociregistry_*`:
//!
//! | series | labels | meaning |
//! |---|---|---|
//! | `requests_total` | `route`, `status` | pull-port requests by route kind and answer status |
//! | `cache_hits_total` / `cache_misses_total` | `registry`, `kind` | manifests and blobs answered from the cache / needing the upstream |
//! | `upstream_requests_total` | `registry` | HTTP requests sent to the registry's API (each retry counts) |
//! | `upstream_received_bytes_total` | `registry` | manifest, listing and blob body bytes received |
//! | `upstream_errors_total` | `registry` | requests that failed: no answer, transport error, or a 5xx/429 answer |
//! | `upstream_retries_total` | `registry` | requests retried after a transient failure |
//! | `disk_bytes` / `disk_items` | `kind` | what the cache holds (blobs, manifests) |
//! | `evictions_total` | | images removed by pruning or size-bounded eviction |
//! | `store_errors_total` | `backend`, `op` | calls to the storage backend (the bucket) that failed |
//! | `peer_fetches_total` | `result` | blob downloads shared among replicas (`cluster`): `served_to_peer` (this replica streamed a blob to a peer), `from_peer` (fetched from the lease owner instead of the upstream), `peer_failed` (the owner could not be reached: fetched from the upstream) |
//! | `upstream_fetches` | | upstream blob downloads holding a slot now (`maxUpstreamFetches`) |
//! | `upstream_fetch_refusals_total` | | blob requests answered 503 because no download slot came free in time |
//! | `upstream_endpoint_state` | `registry`, `endpoint` | circuit breaker of each configured endpoint: 0 closed, 1 open (skipped), 2 half-open (one probe) |
//! | `upstream_ratelimit_limit` / `upstream_ratelimit_remaining` | `registry` | the last `ratelimit-limit` / `ratelimit-remaining` the registry sent (Docker Hub), once it sent one |
//! | `tag_revalidations_deferred_total` | `registry` | stale tags served without revalidation because the remaining rate-limit budget was under `rateLimit.revalidateFloor` |
//!
//! [`crate::observability`] adds the series read at scrape time (in-flight fetches, tag
//! revalidations, stale serves, provider tokens).
//!
//! Label values are bounded: `route` and `kind` are fixed sets; `registry` is a configured
//! registry's name or a validated request host, at most [`MAX_REGISTRY_LABELS`] of the
//! latter, the rest folded into `other`. Secrets never appear here.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// At most this many registries not named in the config get a label value of their own.
pub const MAX_REGISTRY_LABELS: usize = 100;
/// The label value the rest share.
pub const OTHER_REGISTRY: &str = "other";

/// What a pull-port request asked for, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `/v2/`.
    Base,
    /// Manifests.
    Manifest,
    /// Blobs.
    Blob,
    /// `tags/list`.
    Tags,
    /// `referrers`.
    Referrers,
    /// Upload endpoints (refused).
    Upload,
    /// Not a valid registry API path.
    Invalid,
}

impl RouteKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Base => "base",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::Tags => "tags",
            RouteKind::Referrers => "referrers",
            RouteKind::Upload => "upload",
            RouteKind::Invalid => "invalid",
        }
    }
}

impl EncodeLabelValue for RouteKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Cached content kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// Manifests (and indexes).
    Manifest,
    /// Blobs (layers, configs).
    Blob,
}

impl ContentKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Manifest => "manifest",
            ContentKind::Blob => "blob",
        }
    }
}

impl EncodeLabelValue for ContentKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: RouteKind,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    registry: Arc<str>,
    kind: ContentKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistryLabels {
    registry: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    registry: Arc<str>,
    endpoint: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    backend: &'static str,
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    result: &'static str,
}

/// What happened to a blob download shared among replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFetch {
    /// This replica streamed a blob to a peer.
    ServedToPeer,
    /// This replica fetched a blob from the lease owner instead of the upstream.
    FromPeer,
    /// The lease owner could not be reached: fetched from the upstream.
    PeerFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: ContentKind,
}

/// The counters of one registry label value, created once and then updated without any
/// lookup.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    /// The label value (`other` for the registries past the cap).
    pub label: Arc<str>,
    manifest_hits: Counter,
    manifest_misses: Counter,
    blob_hits: Counter,
    blob_misses: Counter,
    /// Requests sent to the registry's API.
    pub upstream_requests: Counter,
    /// Body bytes received from it.
    pub upstream_bytes: Counter,
    /// Requests to it that failed (no answer, transport error, 5xx or 429).
    pub upstream_errors: Counter,
    /// Requests to it retried after a transient failure.
    pub upstream_retries: Counter,
    /// Stale tags served unrevalidated to save the rate-limit budget.
    pub revalidations_deferred: Counter,
}

impl RegistryMetrics {
    /// Counts a request answered from the cache (`hit`) or needing the upstream.
    pub fn cache(&self, kind: ContentKind, hit: bool) {
        match (kind, hit) {
            (ContentKind::Manifest, true) => self.manifest_hits.inc(),
            (ContentKind::Manifest, false) => self.manifest_misses.inc(),
            (ContentKind::Blob, true) => self.blob_hits.inc(),
            (ContentKind::Blob, false) => self.blob_misses.inc(),
        };
    }
}

/// Gauges of what the cache holds, by kind.
#[derive(Debug, Clone)]
struct DiskGauges {
    bytes: Gauge,
    items: Gauge,
}

/// All metrics of the process.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    cache_hits: Family<CacheLabels, Counter>,
    cache_misses: Family<CacheLabels, Counter>,
    upstream_requests: Family<RegistryLabels, Counter>,
    upstream_bytes: Family<RegistryLabels, Counter>,
    upstream_errors: Family<RegistryLabels, Counter>,
    upstream_retries: Family<RegistryLabels, Counter>,
    disk_bytes: Family<KindLabels, Gauge>,
    disk_items: Family<KindLabels, Gauge>,
    disk_blobs: DiskGauges,
    disk_manifests: DiskGauges,
    store_errors: Family<StoreLabels, Counter>,
    peer_fetches: Family<PeerLabels, Counter>,
    endpoint_states: Family<EndpointLabels, Gauge>,
    ratelimit_limit: Family<RegistryLabels, Gauge>,
    ratelimit_remaining: Family<RegistryLabels, Gauge>,
    revalidations_deferred: Family<RegistryLabels, Counter>,
    /// Images removed from the cache by pruning or size-bounded eviction: call
    /// `metrics::global().evictions.inc_by(n)` after removing `n`.
    pub evictions: Counter,
    /// Shared manifest fetches that clients are waiting for (the in-flight manifest map's
    /// size; 0 when idle).
    pub inflight_manifest_fetches: Gauge,
    registries: RwLock<RegistryTable>,
    /// Upstream blob downloads holding a slot now.
    pub upstream_fetches: Gauge,
    /// Blob requests refused because no download slot came free in time.
    pub upstream_fetch_refusals: Counter,
}

#[derive(Debug, Default)]
struct RegistryTable {
    by_name: HashMap<Arc<str>, Arc<RegistryMetrics>>,
    /// Label values given to names not in the config.
    adhoc: usize,
    other: Option<Arc<RegistryMetrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set (tests); the server uses [`global()`].
    pub fn new() -> Self {
        let disk_bytes = Family::<KindLabels, Gauge>::default();
        let disk_items = Family::<KindLabels, Gauge>::default();
        let gauges = |kind| DiskGauges {
            bytes: disk_bytes.get_or_create_owned(&KindLabels { kind }),
            items: disk_items.get_or_create_owned(&KindLabels { kind }),
        };
        let disk_blobs = gauges(ContentKind::Blob);
        let disk_manifests = gauges(ContentKind::Manifest);
        Metrics {
            requests: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            upstream_requests: Family::default(),
            upstream_bytes: Family::default(),
            upstream_errors: Family::default(),
            upstream_retries: Family::default(),
            disk_bytes,
            disk_items,
            disk_blobs,
            disk_manifests,
            store_errors: Family::default(),
            peer_fetches: Family::default(),
            endpoint_states: Family::default(),
            ratelimit_limit: Family::default(),
            ratelimit_remaining: Family::default(),
            revalidations_deferred: Family::default(),
            evictions: Counter::default(),
            inflight_manifest_fetches: Gauge::default(),
            registries: RwLock::new(RegistryTable::default()),
            upstream_fetches: Gauge::default(),
            upstream_fetch_refusals: Counter::default(),
        }
    }

    /// Counts one answered pull-port request.
    pub fn request(&self, route: RouteKind, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Gives each configured registry its own label value, whatever the cap.
    pub fn preregister<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut t = self.registries.write().unwrap_or_else(|p| p.into_inner());
        for name in names {
            if !t.by_name.contains_key(name) {
                let m = Arc::new(self.create(name));
                t.by_name.insert(m.label.clone(), m);
            }
        }
    }

    /// The counters of a registry (canonical name, validated). Past
    /// [`MAX_REGISTRY_LABELS`] unconfigured names, new ones share `other`.
    pub fn registry(&self, name: &str) -> Arc<RegistryMetrics> {
        {
            let t = self.registries.read().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = t.by_name.get(name) {
                return m.clone();
            }
            if t.adhoc >= MAX_REGISTRY_LABELS
                && let Some(o) = &t.other
            {
                return o.clone();
            }
        }
        let mut t = self.registries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = t.by_name.get(name) {
            return m.clone();
        }
        if t.adhoc >= MAX_REGISTRY_LABELS {
            let other = t
                .other
                .get_or_insert_with(|| Arc::new(self.create(OTHER_REGISTRY)));
            return other.clone();
        }
        t.adhoc += 1;
        let m = Arc::new(self.create(name));
        t.by_name.insert(m.label.clone(), m.clone());
        m
    }

    fn create(&self, name: &str) -> RegistryMetrics {
        let label: Arc<str> = Arc::from(name);
        let cache = |family: &Family<CacheLabels, Counter>, kind| {
            family.get_or_create_owned(&CacheLabels {
                registry: label.clone(),
                kind,
            })
        };
        let by_registry = RegistryLabels {
            registry: label.clone(),
        };
        RegistryMetrics {
            manifest_hits: cache(&self.cache_hits, ContentKind::Manifest),
            manifest_misses: cache(&self.cache_misses, ContentKind::Manifest),
            blob_hits: cache(&self.cache_hits, ContentKind::Blob),
            blob_misses: cache(&self.cache_misses, ContentKind::Blob),
            upstream_requests: self.upstream_requests.get_or_create_owned(&by_registry),
            upstream_bytes: self.upstream_bytes.get_or_create_owned(&by_registry),
            upstream_errors: self.upstream_errors.get_or_create_owned(&by_registry),
            upstream_retries: self.upstream_retries.get_or_create_owned(&by_registry),
            revalidations_deferred: self
                .revalidations_deferred
                .get_or_create_owned(&by_registry),
            label,
        }
    }

    fn disk(&self, kind: ContentKind) -> &DiskGauges {
        match kind {
            ContentKind::Blob => &self.disk_blobs,
            ContentKind::Manifest => &self.disk_manifests,
        }
    }

    /// One item of `bytes` was stored in the cache.
    pub fn disk_added(&self, kind: ContentKind, bytes: u64) {
        let g = self.disk(kind);
        g.bytes.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        g.items.inc();
    }

    /// One item of `bytes` was removed from the cache.
    pub fn disk_removed(&self, kind: ContentKind, bytes: u64) {
        let g = self.disk(kind);
        g.bytes.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        g.items.dec();
    }

    /// A call to the storage backend `backend` (`s3`) failed; `op` names the call (`get`,
    /// `put`, `head`, `delete`, `list`, `upload`).
    pub fn store_error(&self, backend: &'static str, op: &'static str) {
        self.store_errors
            .get_or_create(&StoreLabels { backend, op })
            .inc();
    }

    /// The breaker gauge of a configured endpoint (`endpoint` is its URL, never a secret).
    pub fn endpoint_state(&self, registry: &str, endpoint: &str) -> Gauge {
        self.endpoint_states.get_or_create_owned(&EndpointLabels {
            registry: Arc::from(registry),
            endpoint: Arc::from(endpoint),
        })
    }

    /// Notes the rate-limit headers a registry (its label value) sent.
    pub fn ratelimit(&self, label: &Arc<str>, limit: Option<u64>, remaining: Option<u64>) {
        let labels = RegistryLabels {
            registry: label.clone(),
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(l) = limit {
            self.ratelimit_limit.get_or_create(&labels).set(as_i64(l));
        }
        if let Some(r) = remaining {
            self.ratelimit_remaining
                .get_or_create(&labels)
                .set(as_i64(r));
        }
    }

    /// Counts a blob download shared among replicas.
    pub fn peer_fetch(&self, what: PeerFetch) {
        let result = match what {
            PeerFetch::ServedToPeer => "served_to_peer",
            PeerFetch::FromPeer => "from_peer",
            PeerFetch::PeerFailed => "peer_failed",
        };
        self.peer_fetches
            .get_or_create(&PeerLabels { result })
            .inc();
    }

    /// Sets the disk gauges from a full count of the cache.
    pub fn disk_set(&self, kind: ContentKind, bytes: u64, items: u64) {
        let g = self.disk(kind);
        g.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        g.items.set(i64::try_from(items).unwrap_or(i64::MAX));
    }

    /// Registers every series in `registry` (which should carry the `ociregistry` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Pull-port requests by route kind and answer status",
            self.requests.clone(),
        );
        registry.register(
            "cache_hits",
            "Manifest and blob requests answered from the cache",
            self.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Manifest and blob requests that needed the upstream",
            self.cache_misses.clone(),
        );
        registry.register(
            "upstream_requests",
            "HTTP requests sent to upstream registry APIs (each retry counts)",
            self.upstream_requests.clone(),
        );
        registry.register(
            "upstream_received_bytes",
            "Body bytes received from upstream registries",
            self.upstream_bytes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream requests that failed: no answer, transport error, or a 5xx/429 answer",
            self.upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Upstream requests retried after a transient failure",
            self.upstream_retries.clone(),
        );
        registry.register(
            "disk_bytes",
            "Bytes of verified content in the cache",
            self.disk_bytes.clone(),
        );
        registry.register(
            "disk_items",
            "Blobs and manifests in the cache",
            self.disk_items.clone(),
        );
        registry.register(
            "store_errors",
            "Calls to the storage backend (the bucket) that failed, by call",
            self.store_errors.clone(),
        );
        registry.register(
            "peer_fetches",
            "Blob downloads shared among replicas, by result",
            self.peer_fetches.clone(),
        );
        registry.register(
            "evictions",
            "Images removed from the cache by pruning or size-bounded eviction",
            self.evictions.clone(),
        );
        registry.register(
            "upstream_fetches",
            "Upstream blob downloads holding a download slot now",
            self.upstream_fetches.clone(),
        );
        registry.register(
            "upstream_fetch_refusals",
            "Blob requests answered 503 because no upstream download slot came free in time",
            self.upstream_fetch_refusals.clone(),
        );
        registry.register(
            "upstream_endpoint_state",
            "Circuit breaker of each configured upstream endpoint: 0 closed, 1 open, 2 half-open",
            self.endpoint_states.clone(),
        );
        registry.register(
            "upstream_ratelimit_limit",
            "The last ratelimit-limit an upstream registry sent",
            self.ratelimit_limit.clone(),
        );
        registry.register(
            "upstream_ratelimit_remaining",
            "The last ratelimit-remaining an upstream registry sent",
            self.ratelimit_remaining.clone(),
        );
        registry.register(
            "tag_revalidations_deferred",
            "Stale tags served without revalidation: the rate-limit budget was under rateLimit.revalidateFloor",
            self.revalidations_deferred.clone(),
        );
        registry.register(
            "inflight_manifest_fetches",
            "Shared upstream manifest fetches that clients are waiting for",
            self.inflight_manifest_fetches.clone(),
        );
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut r = Registry::with_prefix("ociregistry");
        m.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn series_are_named_and_labelled() {
        let m = Metrics::new();
        m.request(RouteKind::Manifest, 200);
        m.request(RouteKind::Manifest, 200);
        m.request(RouteKind::Invalid, 404);
        let quay = m.registry("quay.io");
        quay.cache(ContentKind::Blob, false);
        quay.cache(ContentKind::Blob, true);
        quay.upstream_bytes.inc_by(10);
        m.disk_added(ContentKind::Blob, 100);
        m.evictions.inc_by(3);
        let t = text(&m);
        for line in [
            r#"ociregistry_requests_total{route="manifest",status="200"} 2"#,
            r#"ociregistry_requests_total{route="invalid",status="404"} 1"#,
            r#"ociregistry_cache_misses_total{registry="quay.io",kind="blob"} 1"#,
            r#"ociregistry_cache_hits_total{registry="quay.io",kind="blob"} 1"#,
            r#"ociregistry_upstream_received_bytes_total{registry="quay.io"} 10"#,
            r#"ociregistry_disk_bytes{kind="blob"} 100"#,
            r#"ociregistry_disk_items{kind="blob"} 1"#,
            r#"ociregistry_disk_items{kind="manifest"} 0"#,
            "ociregistry_evictions_total 3",
            "ociregistry_inflight_manifest_fetches 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line} in\n{t}");
        }
    }

    #[test]
    fn registry_labels_are_capped_but_configured_ones_always_count() {
        let m = Metrics::new();
        m.preregister(["my.registry"]);
        for i in 0..MAX_REGISTRY_LABELS + 20 {
            m.registry(&format!("r{i}.example")).upstream_requests.inc();
        }
        assert_eq!(
            &*m.registry("late.example").label,
            OTHER_REGISTRY,
            "past the cap"
        );
        assert_eq!(&*m.registry("my.registry").label, "my.registry");
        assert_eq!(&*m.registry("r0.example").label, "r0.example");
        let t = text(&m);
        let values: std::collections::HashSet<&str> = t
            .lines()
            .filter(|l| l.starts_with("ociregistry_upstream_requests_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(
            values.len(),
            MAX_REGISTRY_LABELS + 2,
            "100 + my.registry + other"
        );
        assert!(t.contains(r#"ociregistry_upstream_requests_total{registry="other"} 20"#));
    }
}
