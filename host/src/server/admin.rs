//! The admin API: its own listener (never the pull port), JSON in and out, a bearer token
//! when configured (compared in constant time). When the pull port speaks TLS
//! (`serverTlsConfig`) so does the admin API, with the same certificate and the same
//! client-certificate rule, so that its token never crosses the network in clear. Without a
//! token (loopback only) it refuses what a web page in a browser could send
//! ([`crate::server::local_only`]): a `Host` that is not loopback (403), a request other than
//! GET/HEAD without `Content-Type: application/json` (415). Its connections go through the
//! server's one listener ([`crate::server::listener`]), with the pull port's limits.
//!
//! ```text
//! GET  /admin/v1/images?pattern=REGEX   the images, as `list --output json`
//! POST /admin/v1/prune                  {"pattern", "accessedBefore", "createdBefore",
//!                                        "count", "grace", "dryRun"} -> the plan
//! POST /admin/v1/invalidate             {"reference": "registry/repo:tag"}
//! POST /admin/v1/stop                   graceful stop, as SIGTERM
//! ```
//!
//! Errors use the OCI error body: `{"errors":[{"code":"UNAUTHORIZED","message":...}]}`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ociregistry_plugin_api::Secret;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inventory::criteria::{CriteriaSpec, Cutoff};
use crate::inventory::images::{self, ListError};
use crate::inventory::invalidate::tag_reference;
use crate::inventory::prune::{self, PruneError};
use crate::mirror::Mirror;
use crate::server::response::{self, Body};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Largest request head accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin address could not be bound.
    #[error("cannot listen for the admin API on {address}: {source}")]
    Listen {
        /// `admin.address`.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the admin API in the background when it is configured (a bind failure is an
/// error: the operator asked for it). It speaks TLS whenever the pull port does: `tls` is
/// the pull port's acceptor.
pub async fn start(app: &Arc<Mirror>, tls: Option<TlsAcceptor>) -> Result<(), StartError> {
    let Some(a) = &app.settings.inventory.admin else {
        return Ok(());
    };
    let listener = TcpListener::bind(a.address)
        .await
        .map_err(|source| StartError::Listen {
            address: a.address,
            source,
        })?;
    tokio::spawn(serve(listener, app.clone(), a.token.clone(), tls));
    Ok(())
}

/// Serves the admin API on `listener` until the process ends; over TLS with `tls`. The
/// connections get the pull port's limits (`headerTimeout`, `idleTimeout`, `maxConnections`,
/// `maxConnectionsPerClient`) through the server's one listener.
pub async fn serve(
    listener: TcpListener,
    app: Arc<Mirror>,
    token: Option<Secret>,
    tls: Option<TlsAcceptor>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            "admin API ready at {}://{addr}{}",
            if tls.is_some() { "https" } else { "http" },
            if token.is_some() {
                " (bearer token required)"
            } else {
                ""
            }
        );
    }
    let limits = crate::server::listener::Limits::from_settings(&app.settings, MAX_HEADER_BYTES);
    let handler = Arc::new(AdminApi { app, token });
    // It ends with the process: during the pull port's drain it still answers.
    crate::server::listener::serve(
        listener,
        "admin",
        tls,
        limits,
        handler,
        std::future::pending(),
    )
    .await;
}

/// The admin API as a listener handler.
#[derive(Debug)]
struct AdminApi {
    app: Arc<Mirror>,
    token: Option<Secret>,
}

impl crate::server::listener::Handler for AdminApi {
    type Body = Body;

    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let resp = handle(&self.app, self.token.as_ref(), req).await;
        tracing::info!(%peer, %method, path, status = resp.status().as_u16(), "admin request");
        resp
    }
}

/// Equal in time whatever the contents (lengths may differ in time: they are not secret);
/// `subtle`'s comparison.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn authorized(token: Option<&Secret>, headers: &http::HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
    else {
        return false;
    };
    constant_time_eq(given.as_bytes(), token.expose().as_bytes())
}

/// The token-less admin API's refusal of a request a web page could have sent
/// ([`crate::server::local_only`]), as an admin error answer.
fn not_from_a_browser(
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Option<Response<Body>> {
    crate::server::local_only::check(method, uri, headers, "the admin API")
        .err()
        .map(|r| error(r.status, r.code, r.message))
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    let len = body.len();
    let mut resp = Response::new(response::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    let v = serde_json::json!({"errors": [{"code": code, "message": message.into()}]});
    let mut resp = json(status, &v);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ociregistry-admin\""),
        );
    }
    resp
}

fn bad_request(message: impl Into<String>) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

async fn body_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, Response<Body>> {
    let bytes: Bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /admin/v1/prune` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PruneRequest {
    pattern: Option<String>,
    accessed_before: Option<String>,
    created_before: Option<String>,
    count: Option<usize>,
    grace: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/v1/invalidate` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    reference: String,
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find_map(|(k, v)| (k == key).then(|| v.into_owned()))
}

async fn handle(
    app: &Arc<Mirror>,
    token: Option<&Secret>,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    if !authorized(token, req.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the admin API needs `Authorization: Bearer <admin token>`",
        );
    }
    if token.is_none() {
        if let Some(refused) = not_from_a_browser(req.method(), req.uri(), req.headers()) {
            return refused;
        }
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/');
    let known = [
        "/admin/v1/images",
        "/admin/v1/prune",
        "/admin/v1/invalidate",
        "/admin/v1/stop",
    ];
    match (&parts.method, path) {
        (&Method::GET, "/admin/v1/images") => {
            let pattern = query_param(parts.uri.query(), "pattern").filter(|p| !p.is_empty());
            crate::inventory::access::flush(&app.inventory.access, &*app.store).await;
            match images::list_images(&*app.store, pattern.as_deref()).await {
                Ok(images) => {
                    let total: u64 = images.iter().map(|i| i.size).sum();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"images": images, "totalBytes": total}),
                    )
                }
                Err(ListError::Pattern(e)) => bad_request(e.to_string()),
                Err(e @ ListError::Scan(_)) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    e.to_string(),
                ),
            }
        }
        (&Method::POST, "/admin/v1/prune") => {
            let r: PruneRequest = match body_json(body).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let cutoff = |s: &Option<String>| s.as_deref().map(Cutoff::parse).transpose();
            let spec = match (cutoff(&r.accessed_before), cutoff(&r.created_before)) {
                (Ok(accessed_before), Ok(created_before)) => CriteriaSpec {
                    pattern: r.pattern,
                    accessed_before,
                    created_before,
                },
                (Err(e), _) | (_, Err(e)) => return bad_request(e.to_string()),
            };
            let grace = match r.grace.as_deref().map(crate::duration::parse).transpose() {
                Ok(g) => g.unwrap_or(app.settings.inventory.grace),
                Err(e) => return bad_request(e.to_string()),
            };
            match prune::run_in_server(app, spec, r.count, grace, r.dry_run, true).await {
                Ok(plan) => json(StatusCode::OK, &plan),
                Err(e @ PruneError::Busy { .. }) => {
                    error(StatusCode::CONFLICT, "BUSY", e.to_string())
                }
                Err(e @ (PruneError::Scan(_) | PruneError::Lock { .. })) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    e.to_string(),
                ),
                Err(e) => bad_request(e.to_string()),
            }
        }
        (&Method::POST, "/admin/v1/invalidate") => {
            let r: InvalidateRequest = match body_json(body).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let refs = match tag_reference(&r.reference) {
                Ok(x) => x,
                Err(e) => return bad_request(e.to_string()),
            };
            let _lock = match crate::store::lock::InventoryLock::acquire_async(
                app.store.local_root().to_owned(),
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "UNAVAILABLE",
                        format!("cache error: cannot take the inventory lock: {e}"),
                    );
                }
            };
            let removed =
                match crate::inventory::invalidate::remove_in_store(&*app.store, refs).await {
                    Ok(removed) => removed,
                    Err(e) => {
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "UNAVAILABLE",
                            format!("cache error: {e}"),
                        );
                    }
                };
            if removed.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("{} is not cached", r.reference),
                );
            }
            tracing::info!(?removed, "invalidated through the admin API");
            json(StatusCode::OK, &serde_json::json!({"invalidated": removed}))
        }
        (&Method::POST, "/admin/v1/stop") => {
            app.inventory.stop.notify_one();
            json(StatusCode::ACCEPTED, &serde_json::json!({"stopping": true}))
        }
        (_, p) if known.contains(&p) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{} is not allowed on {p}", parts.method),
        ),
        (_, p) => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no admin endpoint {p}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cr3t", b"s3cr3t"));
        assert!(!constant_time_eq(b"s3cr3t", b"s3cr3T"));
        assert!(!constant_time_eq(b"s3cr3t", b"s3cr3"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn browser_requests_are_refused_without_a_token() {
        let req = |method: Method, host: Option<&str>, ct: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(v) = host {
                h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            }
            if let Some(v) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            let uri: http::Uri = "/admin/v1/stop".parse().unwrap();
            not_from_a_browser(&method, &uri, &h).map(|r| r.status())
        };
        let json = Some("application/json; charset=utf-8");
        assert_eq!(req(Method::POST, Some("127.0.0.1:1"), json), None);
        assert_eq!(req(Method::GET, Some("localhost:1"), None), None);
        assert_eq!(
            req(Method::POST, Some("127.0.0.1:1"), Some("text/plain")),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            req(Method::DELETE, Some("127.0.0.1:1"), None),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            req(Method::POST, Some("evil.example"), json),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            req(Method::GET, Some("evil.example:1"), None),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(req(Method::POST, None, json), Some(StatusCode::FORBIDDEN));
        // HTTP/2 carries the authority in the URI.
        let uri: http::Uri = "http://evil.example/admin/v1/stop".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(not_from_a_browser(&Method::POST, &uri, &h).is_some());
        let uri: http::Uri = "http://[::1]:9/admin/v1/stop".parse().unwrap();
        assert!(not_from_a_browser(&Method::POST, &uri, &h).is_none());
    }

    #[test]
    fn bearer_tokens() {
        let t = Secret::new("0123456789abcdef");
        let mut h = http::HeaderMap::new();
        assert!(!authorized(Some(&t), &h));
        assert!(authorized(None, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert!(authorized(Some(&t), &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdeX"),
        );
        assert!(!authorized(Some(&t), &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic 0123456789abcdef"),
        );
        assert!(!authorized(Some(&t), &h));
        assert_eq!(
            query_param(Some("a=1&pattern=%5Eq%2Bx+y"), "pattern").as_deref(),
            Some("^q+x y")
        );
    }
}
