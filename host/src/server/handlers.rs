//! Dispatching a request to its route ([`super::manifests`], [`super::blobs`],
//! [`super::passthrough`]), the shared [`App`] state, and turning upstream answers into OCI
//! errors with their meaning kept.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tokio::sync::OnceCell;

use crate::mirror::hot::HotCache;
use crate::mirror::downloads::Downloads;
use crate::store::{BlobStore, Manifest};
use crate::config::Settings;
use crate::metrics::RouteKind;
use crate::oci::error::{ErrorCode, RegistryError};
use crate::server::response::{self, Body};
use crate::server::router::{self, Route, Target};
use crate::upstream::{Upstream, Upstreams, canonical_name};

/// Counters of notable events, logged as they happen and exported at each metrics scrape
/// ([`crate::observability`]; retries are counted per registry in [`crate::metrics`]).
#[derive(Debug, Default)]
pub struct Stats {
    /// Tag revalidations attempted.
    pub revalidations: AtomicU64,
    /// Cached manifests served because the upstream could not be asked.
    pub stale_served: AtomicU64,
}

pub(crate) type ManifestFlight = Arc<OnceCell<Result<Manifest, RegistryError>>>;

/// Everything a request needs: settings, the cache, the upstreams, the running fetches.
#[derive(Debug)]
pub struct App {
    /// Effective settings.
    pub settings: Settings,
    /// The cache.
    pub store: BlobStore,
    /// Upstream registries.
    pub upstreams: Upstreams,
    /// Running blob downloads.
    pub downloads: Downloads,
    /// Event counters.
    pub stats: Stats,
    /// In-memory copies of hot tag records and manifests.
    pub hot: HotCache,
    /// Last-pull times, the stop request of the admin API, the `maxSize` trigger.
    pub inventory: crate::inventory::Inventory,
    pub(crate) manifest_flights: Mutex<HashMap<String, ManifestFlight>>,
}

impl App {
    /// Assembles the app.
    pub fn new(settings: Settings, store: BlobStore, upstreams: Upstreams) -> Self {
        let downloads = Downloads::new(&settings.fetch_limits);
        App {
            settings,
            store,
            upstreams,
            downloads,
            stats: Stats::default(),
            hot: HotCache::default(),
            inventory: crate::inventory::Inventory::default(),
            manifest_flights: Mutex::new(HashMap::new()),
        }
    }
}

/// Answers one request.
pub async fn handle(
    app: Arc<App>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let head = method == Method::HEAD;
    let mut kind = RouteKind::Invalid;
    let resp = match route(&app, method, uri, headers, &mut kind).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, path = uri.path(), status = e.status.as_u16(), error = %e.message, "request failed");
            } else {
                tracing::debug!(%method, path = uri.path(), status = e.status.as_u16(), error = %e.message, "request refused");
            }
            response::error(&e, head)
        }
    };
    crate::metrics::global().request(kind, resp.status().as_u16());
    response::with_api_version(resp)
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    kind: &mut RouteKind,
) -> Result<Response<Body>, RegistryError> {
    let target = router::parse(uri.path(), uri.query(), &app.settings.default_ns)?;
    *kind = RouteKind::from(&target.route);
    let head = *method == Method::HEAD;
    if !(head || *method == Method::GET) {
        return Err(RegistryError::unsupported(format!(
            "{method} is not supported: this registry is a pull-only mirror"
        )));
    }
    let Target {
        route,
        registry,
        repo,
        via,
    } = target;
    let Some(repo) = repo else {
        return Ok(json_ok(b"{}", head));
    };
    let registry = canonical_name(&registry);
    match route {
        Route::Base => Ok(json_ok(b"{}", head)),
        Route::Upload => Err(RegistryError::unsupported(
            "uploads are not supported: this registry is a pull-only mirror",
        )),
        Route::Manifest(reference) => {
            crate::mirror::manifests::manifest(app, registry, &repo, reference, headers, head).await
        }
        Route::Blob(digest) => {
            crate::mirror::blobs::blob(app, registry, &repo, digest, headers, head).await
        }
        Route::Tags => {
            super::passthrough::passthrough(
                app,
                registry,
                &repo,
                "tags/list",
                uri.query(),
                &via,
                head,
            )
            .await
        }
        Route::Referrers(d) => {
            super::passthrough::passthrough(
                app,
                registry,
                &repo,
                &format!("referrers/{d}"),
                uri.query(),
                &via,
                head,
            )
            .await
        }
    }
}

pub(crate) fn json_ok(body: &'static [u8], head: bool) -> Response<Body> {
    let mut resp = response::bytes(body, head);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) async fn read_limited(
    upstream: &Upstream,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large(upstream, limit));
    }
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::time::timeout(upstream.timeout(), resp.chunk())
            .await
            .map_err(|_| {
                RegistryError::bad_gateway(format!(
                    "upstream {} stalled sending a manifest",
                    upstream.name
                ))
            })?
            .map_err(|e| {
                RegistryError::bad_gateway(format!(
                    "upstream {} broke off: {}",
                    upstream.name,
                    crate::upstream::describe(&e)
                ))
            })?;
        let Some(chunk) = chunk else { break };
        upstream.metrics.upstream_bytes.inc_by(chunk.len() as u64);
        if buf.len() + chunk.len() > limit {
            return Err(too_large(upstream, limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

pub(crate) fn too_large(upstream: &Upstream, limit: usize) -> RegistryError {
    RegistryError::bad_gateway(format!(
        "upstream {} sent a manifest larger than {} MiB; refused",
        upstream.name,
        limit / (1024 * 1024)
    ))
}

/// Turns an upstream's non-success answer into our error, keeping its meaning.
pub(crate) fn upstream_status(
    upstream: &Upstream,
    resp: reqwest::Response,
    not_found: ErrorCode,
    what: &str,
) -> RegistryError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 64)
        .map(str::to_owned);
    let code = ErrorCode::from_upstream_status(status, not_found);
    let (our_status, message) = match status.as_u16() {
        404 => (
            StatusCode::NOT_FOUND,
            format!("{what} not found at upstream {}", upstream.name),
        ),
        401 => (
            StatusCode::UNAUTHORIZED,
            format!(
                "upstream {} requires credentials for {what}: configure registries[].auth",
                upstream.name
            ),
        ),
        403 => (
            StatusCode::FORBIDDEN,
            format!("upstream {} denied access to {what}", upstream.name),
        ),
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "upstream {} is rate-limiting requests for {what}",
                upstream.name
            ),
        ),
        s => (
            if s == 503 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            },
            format!("upstream {} answered {status} for {what}", upstream.name),
        ),
    };
    RegistryError {
        status: our_status,
        code,
        message,
        retry_after,
    }
}

/// The upstream policy refused the registry a request names: 403 `DENIED`, naming the policy.
impl From<crate::upstream::policy::PolicyError> for RegistryError {
    fn from(e: crate::upstream::policy::PolicyError) -> Self {
        RegistryError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, e.to_string())
    }
}

pub(crate) fn disk_error(e: std::io::Error) -> RegistryError {
    RegistryError::internal(format!("cache error: {e}"))
}
