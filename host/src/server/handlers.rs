//! The pull API: what each route does with the cache and the upstream.
//!
//! - manifests by digest: cache, else one upstream fetch (verified), then cache;
//! - manifests by tag: the tag record, else (or for `:latest` under `alwaysPullLatest`)
//!   the upstream; when the upstream fails and a record exists, the cached manifest;
//! - blobs: cache with ranges, else join or start the single download and stream along;
//! - `tags/list` and `referrers`: passed through to the upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tokio::sync::OnceCell;

use crate::cache::inflight::{self, Downloads, Progress};
use crate::cache::{BlobStore, Manifest, tags};
use crate::config::Settings;
use crate::oci::error::{ErrorCode, RegistryError};
use crate::oci::media::{self, Accept};
use crate::oci::reference::{Digest, Reference, RepoName};
use crate::server::range::{self, RangeAnswer};
use crate::server::response::{self, Body};
use crate::server::router::{self, Route, Target, Via};
use crate::upstream::{Upstream, Upstreams, canonical_name};

/// The largest manifest accepted from an upstream.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

type ManifestFlight = Arc<OnceCell<Result<Manifest, RegistryError>>>;

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
    manifest_flights: Mutex<HashMap<String, ManifestFlight>>,
}

impl App {
    /// Assembles the app.
    pub fn new(settings: Settings, store: BlobStore, upstreams: Upstreams) -> Self {
        App {
            settings,
            store,
            upstreams,
            downloads: Downloads::default(),
            manifest_flights: Mutex::new(HashMap::new()),
        }
    }
}

/// Answers one request.
pub async fn handle(
    app: Arc<App>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let head = method == Method::HEAD;
    let resp = match route(&app, &method, &uri, &headers).await {
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
    response::with_api_version(resp)
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Response<Body>, RegistryError> {
    let target = router::parse(uri.path(), uri.query(), &app.settings.default_ns)?;
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
            manifest(app, &registry, &repo, reference, headers, head).await
        }
        Route::Blob(digest) => blob(app, &registry, &repo, digest, headers, head).await,
        Route::Tags => {
            passthrough(app, &registry, &repo, "tags/list", uri.query(), &via, head).await
        }
        Route::Referrers(d) => {
            passthrough(
                app,
                &registry,
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

fn json_ok(body: &'static [u8], head: bool) -> Response<Body> {
    let mut resp = Response::new(if head {
        response::empty()
    } else {
        response::full(body)
    });
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

// ---------------------------------------------------------------------------------------
// Manifests

async fn manifest(
    app: &Arc<App>,
    registry: &str,
    repo: &RepoName,
    reference: Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let accept = Accept::from_headers(headers);
    let m = match reference {
        Reference::Digest(digest) => manifest_by_digest(app, registry, repo, digest).await?,
        Reference::Tag(tag) => manifest_by_tag(app, registry, repo, &tag, &accept).await?,
    };
    Ok(manifest_response(&m, head))
}

fn manifest_response(m: &Manifest, head: bool) -> Response<Body> {
    let mut resp = Response::new(if head {
        response::empty()
    } else {
        response::full(m.bytes.clone())
    });
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&m.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    if let Ok(v) = HeaderValue::from_str(&m.digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", m.digest)) {
            h.insert(header::ETAG, etag);
        }
    }
    resp
}

async fn manifest_by_digest(
    app: &Arc<App>,
    registry: &str,
    repo: &RepoName,
    digest: Digest,
) -> Result<Manifest, RegistryError> {
    if let Some(m) = app.store.get_manifest(&digest).await.map_err(disk_error)? {
        return Ok(m);
    }
    if app.settings.air_gapped {
        return Err(RegistryError::not_found(
            ErrorCode::ManifestUnknown,
            format!("manifest {digest} is not cached (air-gapped: upstreams are never contacted)"),
        ));
    }
    let key = format!("{registry}/{repo}@{digest}");
    let upstream = app.upstreams.resolve(registry);
    let app2 = app.clone();
    let repo2 = repo.clone();
    single_flight(app, key, async move {
        fetch_manifest(
            &app2,
            &upstream,
            &repo2,
            &Reference::Digest(digest),
            &media::ALL_MANIFESTS.join(", "),
        )
        .await
    })
    .await
}

async fn manifest_by_tag(
    app: &Arc<App>,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    accept: &Accept,
) -> Result<Manifest, RegistryError> {
    let cached = cached_tag(app, registry, repo, tag, accept).await;
    let revalidate = app.settings.always_pull_latest && tag == "latest";
    if let Some(m) = &cached
        && !revalidate
    {
        return Ok(m.clone());
    }
    if app.settings.air_gapped {
        return cached.ok_or_else(|| {
            RegistryError::not_found(
                ErrorCode::ManifestUnknown,
                format!("{registry}/{repo}:{tag} is not cached (air-gapped: upstreams are never contacted)"),
            )
        });
    }
    let accept_header = accept.upstream_header();
    let key = format!("{registry}/{repo}:{tag}|{accept_header}");
    let upstream = app.upstreams.resolve(registry);
    let app2 = app.clone();
    let repo2 = repo.clone();
    let tag2 = tag.to_owned();
    let fetched = single_flight(app, key, async move {
        let m = fetch_manifest(&app2, &upstream, &repo2, &Reference::Tag(tag2.clone()), &accept_header).await?;
        if let Err(e) = tags::put(&app2.store, &upstream.name, &repo2, &tag2, &m.media_type, &m.digest).await {
            tracing::warn!(registry = %upstream.name, repo = %repo2, tag = %tag2, error = %e, "could not record tag");
        }
        Ok(m)
    })
    .await;
    match (fetched, cached) {
        (Ok(m), _) => Ok(m),
        // The upstream could not tell us anything new: serve what we have.
        (Err(e), Some(m))
            if e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS =>
        {
            tracing::warn!(registry, repo = %repo, tag, error = %e.message, "revalidation failed; serving the cached manifest");
            Ok(m)
        }
        (Err(e), _) => Err(e),
    }
}

/// The cached manifest a tag points to, for a media type the client accepts.
async fn cached_tag(
    app: &App,
    registry: &str,
    repo: &RepoName,
    tag: &str,
    accept: &Accept,
) -> Option<Manifest> {
    let record = tags::get(&app.store, registry, repo, tag).await?;
    for entry in record
        .entries
        .iter()
        .filter(|e| accept.allows(&e.media_type))
    {
        if let Some(d) = entry.digest()
            && let Ok(Some(m)) = app.store.get_manifest(&d).await
        {
            return Some(m);
        }
    }
    None
}

/// Runs `fetch` once per key however many requests ask at the same time.
async fn single_flight<F>(app: &App, key: String, fetch: F) -> Result<Manifest, RegistryError>
where
    F: std::future::Future<Output = Result<Manifest, RegistryError>> + Send + 'static,
{
    let cell = {
        let mut flights = app
            .manifest_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        flights.entry(key.clone()).or_default().clone()
    };
    // Run the fetch on its own task: a client that goes away does not cancel it for others.
    let result = cell
        .get_or_init(|| async move {
            tokio::spawn(fetch).await.unwrap_or_else(|e| {
                Err(RegistryError::internal(format!(
                    "manifest fetch failed: {e}"
                )))
            })
        })
        .await
        .clone();
    let mut flights = app
        .manifest_flights
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if flights.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
        flights.remove(&key);
    }
    result
}

async fn fetch_manifest(
    app: &App,
    upstream: &Upstream,
    repo: &RepoName,
    reference: &Reference,
    accept: &str,
) -> Result<Manifest, RegistryError> {
    let resp = upstream
        .request(
            Method::GET,
            repo,
            &format!("manifests/{reference}"),
            Some(accept),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(upstream_status(
            upstream,
            resp,
            ErrorCode::ManifestUnknown,
            &format!("manifest {repo}:{reference}"),
        )
        .await);
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
    let announced = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok());
    let bytes = read_limited(upstream, resp, MAX_MANIFEST_BYTES).await?;
    let digest = Digest::of(&bytes);
    let expected = match reference {
        Reference::Digest(d) => Some(d),
        Reference::Tag(_) => announced.as_ref(),
    };
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(RegistryError::bad_gateway(format!(
            "upstream {} sent a manifest with digest {digest} for {repo}@{expected}; not stored",
            upstream.name
        )));
    }
    let media_type = match content_type {
        Some(t)
            if media::ALL_MANIFESTS.contains(&t.as_str()) || t.starts_with("application/vnd.") =>
        {
            t
        }
        _ => media::sniff(&bytes),
    };
    let m = Manifest {
        digest,
        media_type,
        bytes,
    };
    app.store.put_manifest(&m).await.map_err(disk_error)?;
    tracing::info!(registry = %upstream.name, repo = %repo, reference = %reference, digest = %m.digest, "cached manifest");
    Ok(m)
}

async fn read_limited(
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
        if buf.len() + chunk.len() > limit {
            return Err(too_large(upstream, limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn too_large(upstream: &Upstream, limit: usize) -> RegistryError {
    RegistryError::bad_gateway(format!(
        "upstream {} sent a manifest larger than {} MiB; refused",
        upstream.name,
        limit / (1024 * 1024)
    ))
}

/// Turns an upstream's non-success answer into our error, keeping its meaning.
async fn upstream_status(
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

fn disk_error(e: std::io::Error) -> RegistryError {
    RegistryError::internal(format!("cache error: {e}"))
}

// ---------------------------------------------------------------------------------------
// Blobs

async fn blob(
    app: &Arc<App>,
    registry: &str,
    repo: &RepoName,
    digest: Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if let Some((file, total)) = app.store.open_blob(&digest).await.map_err(disk_error)? {
        return blob_response(&digest, total, range_header, head, |start, end| {
            response::stream(inflight::read_stored(file, start, end))
        });
    }
    if app.settings.air_gapped {
        return Err(RegistryError::not_found(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not cached (air-gapped: upstreams are never contacted)"),
        ));
    }
    let upstream = app.upstreams.resolve(registry);
    if head {
        return head_upstream_blob(&upstream, repo, &digest).await;
    }
    let (download, started) = app.downloads.join_or_register(&app.store, &digest);
    if started {
        tokio::spawn(run_download(
            app.clone(),
            upstream.clone(),
            repo.clone(),
            download.clone(),
        ));
    }
    let mut progress = download.subscribe();
    let state = progress
        .wait_for(|p| !matches!(p, Progress::Starting))
        .await
        .map(|p| p.clone())
        .map_err(|_| RegistryError::internal("download ended unexpectedly"))?;
    let total = match state {
        Progress::Failed(e) => return Err(e),
        Progress::Receiving { total, .. } => total,
        Progress::Complete { total } => Some(total),
        Progress::Starting => None,
    };
    let idle = upstream.timeout();
    match total {
        Some(total) => blob_response(&digest, total, range_header, false, |start, end| {
            response::stream(inflight::read_following(
                download.clone(),
                start,
                Some(end),
                idle,
            ))
        }),
        // Size unknown until the upstream finishes: stream it all, chunked.
        None => {
            let mut resp = Response::new(response::stream(inflight::read_following(
                download.clone(),
                0,
                None,
                idle,
            )));
            blob_headers(resp.headers_mut(), &digest);
            Ok(resp)
        }
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
}

fn blob_response(
    digest: &Digest,
    total: u64,
    range_header: Option<&str>,
    head: bool,
    body: impl FnOnce(u64, u64) -> Body,
) -> Result<Response<Body>, RegistryError> {
    let (status, start, end) = match range::answer(range_header, total) {
        RangeAnswer::Full => (StatusCode::OK, 0, total),
        RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeAnswer::Unsatisfiable => {
            let mut e = response::error(
                &RegistryError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::RangeInvalid,
                    format!("range not satisfiable for a blob of {total} bytes"),
                ),
                head,
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(e);
        }
    };
    let mut resp = Response::new(if head {
        response::empty()
    } else {
        body(start, end)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    blob_headers(h, digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

async fn head_upstream_blob(
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response<Body>, RegistryError> {
    let resp = upstream
        .request(Method::HEAD, repo, &format!("blobs/{digest}"), None)
        .await?;
    if !resp.status().is_success() {
        return Err(upstream_status(
            upstream,
            resp,
            ErrorCode::BlobUnknown,
            &format!("blob {digest}"),
        )
        .await);
    }
    let mut out = Response::new(response::empty());
    blob_headers(out.headers_mut(), digest);
    if let Some(len) = resp.headers().get(header::CONTENT_LENGTH).cloned() {
        out.headers_mut().insert(header::CONTENT_LENGTH, len);
    }
    Ok(out)
}

/// Fetches a blob from the upstream into the cache, feeding every reader of `download`.
async fn run_download(
    app: Arc<App>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    download: Arc<inflight::Download>,
) {
    let digest = download.digest.clone();
    // It may have been stored between the cache lookup and registering this download.
    if let Ok(Some(total)) = app.store.stat_blob(&digest).await {
        app.downloads.complete_stored(&download, total);
        return;
    }
    let resp = match upstream
        .request(Method::GET, &repo, &format!("blobs/{digest}"), None)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e.message, "blob fetch failed");
            app.downloads.fail(&download, e);
            return;
        }
    };
    if !resp.status().is_success() {
        let e = upstream_status(
            &upstream,
            resp,
            ErrorCode::BlobUnknown,
            &format!("blob {digest}"),
        )
        .await;
        tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e.message, "blob fetch refused");
        app.downloads.fail(&download, e);
        return;
    }
    let total = resp.content_length();
    let started = std::time::Instant::now();
    let result = app
        .downloads
        .fill(
            &app.store,
            &download,
            total,
            resp.bytes_stream(),
            upstream.timeout(),
            &upstream.name,
        )
        .await;
    match result {
        Ok(size) => tracing::info!(
            registry = %upstream.name, repo = %repo, %digest, size,
            seconds = started.elapsed().as_secs_f32(), "cached blob"
        ),
        Err(e) => {
            tracing::warn!(registry = %upstream.name, repo = %repo, %digest, error = %e.message, "blob fetch failed; nothing stored")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pass-through

async fn passthrough(
    app: &Arc<App>,
    registry: &str,
    repo: &RepoName,
    path: &str,
    query: Option<&str>,
    via: &Via,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let is_referrers = path.starts_with("referrers/");
    if app.settings.air_gapped {
        if is_referrers {
            return Ok(empty_index(head));
        }
        return Err(RegistryError::not_found(
            ErrorCode::NameUnknown,
            format!("{registry}/{repo}: tag listing needs the upstream (air-gapped)"),
        ));
    }
    let upstream = app.upstreams.resolve(registry);
    let allowed: &[&str] = if is_referrers {
        &["artifactType"]
    } else {
        &["n", "last"]
    };
    let forwarded: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| allowed.iter().any(|k| p.split('=').next() == Some(*k)))
        .collect();
    let full_path = if forwarded.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", forwarded.join("&"))
    };
    let resp = upstream
        .request(Method::GET, repo, &full_path, None)
        .await?;
    let status = resp.status();
    if is_referrers && status == StatusCode::NOT_FOUND {
        // Registries without the referrers API: the spec's answer is an empty index.
        return Ok(empty_index(head));
    }
    if !status.is_success() {
        return Err(upstream_status(
            &upstream,
            resp,
            ErrorCode::NameUnknown,
            &format!("{repo} {path}"),
        )
        .await);
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let link = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(|l| rewrite_link(l, registry, via));
    let bytes = read_limited(&upstream, resp, MAX_MANIFEST_BYTES).await?;
    let mut out = Response::new(if head {
        response::empty()
    } else {
        response::full(bytes.clone())
    });
    let h = out.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LINK, link);
    }
    Ok(out)
}

fn empty_index(head: bool) -> Response<Body> {
    let body: &'static [u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let mut resp = json_ok(body, head);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media::OCI_INDEX),
    );
    resp
}

/// Pagination links point at the upstream's paths; point them back through us.
fn rewrite_link(link: &str, registry: &str, via: &Via) -> String {
    match via {
        Via::Path => link.replacen("</v2/", &format!("</v2/{registry}/"), 1),
        Via::Ns => match link.find('>') {
            Some(i) => {
                let sep = if link[..i].contains('?') { '&' } else { '?' };
                format!(
                    "{}{sep}ns={}{}",
                    &link[..i],
                    registry.replace(':', "%3A"),
                    &link[i..]
                )
            }
            None => link.to_owned(),
        },
        Via::Default => link.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_rewritten() {
        let l = r#"</v2/app/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(
            rewrite_link(l, "127.0.0.1:5000", &Via::Path),
            r#"</v2/127.0.0.1:5000/app/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(
            rewrite_link(l, "127.0.0.1:5000", &Via::Ns),
            r#"</v2/app/tags/list?n=2&last=b&ns=127.0.0.1%3A5000>; rel="next""#
        );
    }
}
