//! The HTTP side: accepting connections through the one [`listener`] (plain or through
//! [`tls`]), handing each request to [`handlers`], and stopping cleanly on SIGTERM/SIGINT: no
//! new connections, then in-flight requests and running upstream fetches get `shutdownGrace`
//! to finish before the rest is cut.
//!
//! [`router`] maps paths to routes; [`handlers`] dispatches them to [`manifests`], [`blobs`]
//! and [`passthrough`], or to [`hello`] for the built-in hello-world image; [`range`] reads `Range` headers; [`response`] builds bodies and OCI
//! error answers; [`peer`] is the endpoint the other replicas (`cluster`) stream blobs
//! from; [`error`] maps the lower layers' typed errors to statuses and OCI error
//! codes, the only place that does. No pull-through logic lives here (that is
//! [`crate::mirror`]), and no file of the cache is touched but through it.

pub mod admin;
pub mod blobs;
pub mod error;
pub mod handlers;
pub mod hello;
pub mod listener;
pub mod local_only;
pub mod manifests;
pub mod passthrough;
pub mod peer;
pub mod range;
pub mod response;
pub mod router;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::mirror::Mirror;

/// How often the shutdown checks whether upstream fetches are done.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Largest request head on the pull port.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Binds the pull port.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr).await
}

/// The pull API as a [`listener::Handler`].
#[derive(Debug)]
struct PullPort(Arc<Mirror>);

impl listener::Handler for PullPort {
    type Body = response::Body;

    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<response::Body> {
        let started = Instant::now();
        let (parts, _body) = req.into_parts();
        let resp =
            handlers::handle(self.0.clone(), &parts.method, &parts.uri, &parts.headers).await;
        tracing::debug!(%peer, method = %parts.method, path = parts.uri.path(),
            status = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64, "request");
        resp
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets open connections and
/// running upstream fetches finish within `settings.shutdown_grace`; whatever is left then is
/// cut (and logged). With `acceptor` (built from `settings.server_tls` by
/// [`tls::acceptor_of`]) every connection is a TLS connection.
pub async fn serve(
    tcp: TcpListener,
    app: Arc<Mirror>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let local: SocketAddr = tcp.local_addr()?;
    match &app.settings.server_tls {
        Some(t) => tracing::info!(
            client_auth = ?t.client_auth,
            "listening on https://{local}"
        ),
        None => tracing::info!("listening on http://{local}"),
    }
    let limits = listener::Limits::from_settings(&app.settings, MAX_HEADER_BYTES);
    let draining = listener::serve(
        tcp,
        "pull",
        acceptor,
        limits,
        Arc::new(PullPort(app.clone())),
        shutdown,
    )
    .await;
    let grace = app.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        connections = draining.open(),
        upstream_fetches = app.downloads.len(),
        grace_secs = grace.as_secs_f64(),
        "stopping: no new connections; letting open requests and upstream fetches finish"
    );
    let connections_done = tokio::time::timeout_at(deadline, draining.closed())
        .await
        .is_ok();
    let fetches_done = tokio::time::timeout_at(deadline, async {
        while !app.downloads.is_empty() {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    })
    .await
    .is_ok();
    if connections_done && fetches_done {
        tracing::info!("all connections closed and upstream fetches finished; exiting");
    } else {
        let open = draining.open();
        tracing::warn!(
            connections = open,
            upstream_fetches = app.downloads.len(),
            grace_secs = grace.as_secs_f64(),
            "grace period over; cutting {open} open connection(s) and {} unfinished upstream fetch(es)",
            app.downloads.len()
        );
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
