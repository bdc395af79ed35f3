//! Watching the mirror: `serve --metrics PORT` (Prometheus/OpenMetrics text at `/metrics`)
//! and `serve --health PORT` (`/healthz` liveness, `/readyz` readiness), each on its own
//! listener at the server's `host`, never on the pull port. Given the same port, both are
//! served by one listener.
//!
//! This module owns the listeners, the series read at scrape time ([`ScrapeCollector`]:
//! in-flight fetches, tag revalidations, stale serves, per-provider token state and
//! failures by kind) and the
//! disk counting ([`disk`]); the counters updated on the serving paths live in
//! [`crate::metrics`]; readiness in [`health`].

pub mod disk;
pub mod health;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::mirror::Mirror;
use crate::providers::ProviderErrorKind;
use crate::providers::scheduler::CredentialStatus;
use health::RegistryCredential;

/// Content type of the exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest request head accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What the metrics and health endpoints look at.
#[derive(Debug)]
pub struct Observed {
    /// The serving state.
    pub app: Arc<Mirror>,
    /// Each configured registry's credential source.
    pub registries: Vec<RegistryCredential>,
    /// Whether the pull listener is accepting connections.
    pub serving: AtomicBool,
}

impl Observed {
    /// Marks the pull listener as accepting (or not).
    pub fn set_serving(&self, on: bool) {
        self.serving.store(on, Ordering::SeqCst);
    }
}

/// Series computed at each scrape from the running state.
#[derive(Debug)]
pub struct ScrapeCollector {
    observed: Arc<Observed>,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let app = &self.observed.app;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut enc,
            "inflight_fetches",
            "Blob downloads from upstreams running now.",
            i64::try_from(app.downloads.len()).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut enc,
            "tag_revalidations",
            "Cached tags checked again upstream.",
            load(&app.stats.revalidations),
        )?;
        counter(
            &mut enc,
            "stale_serves",
            "Cached manifests served because the upstream could not be asked.",
            load(&app.stats.stale_served),
        )?;
        let providers: Vec<_> = self
            .observed
            .registries
            .iter()
            .filter_map(|r| {
                let provider = r.provider.as_deref().unwrap_or_default();
                r.managed
                    .as_ref()
                    .map(|m| (r.name.as_str(), provider, m.status()))
            })
            .collect();
        if providers.is_empty() {
            return Ok(());
        }
        type Value = fn(&CredentialStatus) -> Option<f64>;
        let series: [(&str, &str, MetricType, Value); 4] = [
            (
                "token_refreshes",
                "Successful credential fetches from the registry's provider.",
                MetricType::Counter,
                |s| Some(s.refreshes as f64),
            ),
            (
                "token_failures",
                "Failed credential fetches from the registry's provider.",
                MetricType::Counter,
                |s| Some(s.failures as f64),
            ),
            (
                "token_valid",
                "1 when the registry's provider credential is usable now.",
                MetricType::Gauge,
                |s| Some(if s.usable { 1.0 } else { 0.0 }),
            ),
            (
                "token_expiry_seconds",
                "Seconds until the registry's provider credential expires (when the provider says).",
                MetricType::Gauge,
                |s| {
                    s.expires_at
                        .filter(|_| !s.expiry_ignored && s.usable)
                        .map(|at| health::seconds_until(at) as f64)
                },
            ),
        ];
        for (name, help, kind, value) in series {
            let values: Vec<(&str, f64)> = providers
                .iter()
                .filter_map(|(r, _, s)| value(s).map(|v| (*r, v)))
                .collect();
            if values.is_empty() {
                continue;
            }
            let mut me = enc.encode_descriptor(name, help, None, kind)?;
            for (registry, v) in values {
                let labels = [("registry", registry)];
                let fe = me.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(v as u64).encode(fe)?,
                    _ => ConstGauge::new(v as i64).encode(fe)?,
                }
            }
        }
        provider_errors(&mut enc, &providers)
    }
}

/// `provider_errors_total{registry,provider,kind}`: `token_failures` split by provider and
/// kind; every kind is listed for every provider registry (0 until seen).
fn provider_errors(
    enc: &mut DescriptorEncoder,
    providers: &[(&str, &str, CredentialStatus)],
) -> std::fmt::Result {
    let mut me = enc.encode_descriptor(
        "provider_errors",
        "Failed credential fetches from the registry's provider, by provider and kind.",
        None,
        MetricType::Counter,
    )?;
    for (registry, provider, s) in providers {
        for kind in ProviderErrorKind::ALL {
            let labels = [
                ("registry", *registry),
                ("provider", *provider),
                ("kind", kind.as_str()),
            ];
            let n = s.failures_by_kind.get(&kind).copied().unwrap_or(0);
            ConstCounter::new(n).encode(me.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The full exposition registry: the process's counters plus the scrape-time series.
pub fn registry(observed: Arc<Observed>) -> Registry {
    let mut r = Registry::with_prefix("ociregistry");
    crate::metrics::global().register(&mut r);
    r.register_collector(Box::new(ScrapeCollector { observed }));
    r
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    metrics: bool,
    health: bool,
}

struct Shared {
    observed: Arc<Observed>,
    registry: Registry,
}

/// Why a metrics or health listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The port could not be bound.
    #[error("cannot listen on {host}:{port} for {what}: {source}")]
    Bind {
        /// The configured host.
        host: String,
        /// The configured port.
        port: u16,
        /// `metrics`, `health` or `metrics and health`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The bound listener has no local address.
    #[error("metrics/health listener: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Binds the metrics and health listeners that are configured and serves them in the
/// background. Binding errors stop the start-up (a port that is taken should be noticed).
pub async fn start(
    observed: Arc<Observed>,
    host: &str,
    metrics: Option<u16>,
    health: Option<u16>,
) -> Result<(), StartError> {
    if metrics.is_none() && health.is_none() {
        return Ok(());
    }
    let shared = Arc::new(Shared {
        registry: registry(observed.clone()),
        observed: observed.clone(),
    });
    let mut plan: Vec<(u16, Endpoints)> = Vec::new();
    match (metrics, health) {
        (Some(m), Some(h)) if m == h && m != 0 => plan.push((
            m,
            Endpoints {
                metrics: true,
                health: true,
            },
        )),
        _ => {
            if let Some(m) = metrics {
                plan.push((
                    m,
                    Endpoints {
                        metrics: true,
                        health: false,
                    },
                ));
            }
            if let Some(h) = health {
                plan.push((
                    h,
                    Endpoints {
                        metrics: false,
                        health: true,
                    },
                ));
            }
        }
    }
    for (port, endpoints) in plan {
        let listener =
            crate::server::bind(host, port)
                .await
                .map_err(|source| StartError::Bind {
                    host: host.to_owned(),
                    port,
                    what: what(endpoints),
                    source,
                })?;
        let local = listener.local_addr().map_err(StartError::LocalAddr)?;
        if endpoints.metrics {
            tracing::info!("metrics endpoint at http://{local}/metrics");
        }
        if endpoints.health {
            tracing::info!("health endpoints at http://{local}/healthz and http://{local}/readyz");
        }
        let limits = crate::server::listener::Limits::from_settings(
            &observed.app.settings,
            MAX_HEADER_BYTES,
        );
        let handler = Arc::new(Endpoint {
            shared: shared.clone(),
            endpoints,
        });
        // They end with the process: during the pull port's drain `/readyz` answers 503.
        tokio::spawn(crate::server::listener::serve(
            listener,
            what(endpoints),
            None,
            limits,
            handler,
            std::future::pending(),
        ));
    }
    if metrics.is_some() {
        let root = observed.app.store.local_root().to_owned();
        tokio::spawn(disk::track(root, crate::metrics::global()));
    }
    Ok(())
}

fn what(e: Endpoints) -> &'static str {
    match (e.metrics, e.health) {
        (true, true) => "metrics and health",
        (true, false) => "metrics",
        _ => "health",
    }
}

/// One metrics/health listener as a listener handler.
struct Endpoint {
    shared: Arc<Shared>,
    endpoints: Endpoints,
}

impl crate::server::listener::Handler for Endpoint {
    type Body = Full<Bytes>;

    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> Response<Full<Bytes>> {
        answer(&self.shared, self.endpoints, req.method(), req.uri().path()).await
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    head: bool,
) -> Response<Full<Bytes>> {
    let body: Bytes = body.into();
    let len = body.len();
    let mut r = Response::new(Full::new(if head { Bytes::new() } else { body }));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn answer(
    shared: &Shared,
    endpoints: Endpoints,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let head = method == Method::HEAD;
    if !(head || method == Method::GET) {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n",
            head,
        );
    }
    match path {
        "/metrics" if endpoints.metrics => {
            let mut text = String::with_capacity(8 * 1024);
            match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, text, head),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "encoding failed\n",
                    head,
                ),
            }
        }
        // `/health` is Ociregistry's liveness path.
        "/healthz" | "/livez" | "/health" if endpoints.health => {
            reply(StatusCode::OK, TEXT, "ok\n", head)
        }
        "/readyz" if endpoints.health => {
            let observed = &shared.observed;
            let cache = health::cache_writable(observed.app.store.local_root()).await;
            let storage = health::storage_state(&*observed.app.store).await;
            let (code, body) = health::readiness(
                observed.serving.load(Ordering::SeqCst),
                &cache,
                &storage,
                &observed.registries,
                &observed.app.upstreams.endpoint_status(),
            );
            let mut text = body.to_string();
            text.push('\n');
            reply(
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "application/json",
                text,
                head,
            )
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n", head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::scheduler::CredentialState;

    #[derive(Debug)]
    struct Providers(Vec<(&'static str, &'static str, CredentialStatus)>);

    impl Collector for Providers {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            provider_errors(&mut enc, &self.0)
        }
    }

    #[test]
    fn provider_errors_are_counted_by_provider_and_kind() {
        let status = CredentialStatus {
            registry: "reg.example".into(),
            state: CredentialState::Failing,
            usable: false,
            expires_at: None,
            expiry_ignored: false,
            last_error: Some("denied".into()),
            last_error_kind: Some(ProviderErrorKind::TimedOut),
            next_refresh: None,
            next_refresh_in: None,
            refreshes: 0,
            failures: 3,
            failures_by_kind: [
                (ProviderErrorKind::Failed, 2),
                (ProviderErrorKind::TimedOut, 1),
            ]
            .into_iter()
            .collect(),
            consecutive_failures: 3,
            fetch_in_progress: false,
            hung_fetches: 0,
        };
        let mut r = Registry::with_prefix("ociregistry");
        r.register_collector(Box::new(Providers(vec![("reg.example", "ecr", status)])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let series = |kind: &str, n: u64| {
            format!(
                "ociregistry_provider_errors_total{{registry=\"reg.example\",provider=\"ecr\",kind=\"{kind}\"}} {n}\n"
            )
        };
        for (kind, n) in [
            ("failed", 2),
            ("timed_out", 1),
            ("invalid_options", 0),
            ("panicked", 0),
            ("hung", 0),
        ] {
            assert!(text.contains(&series(kind, n)), "{kind} {n} in:\n{text}");
        }
        assert!(!text.contains("denied"), "no message in the metrics");
    }
}
