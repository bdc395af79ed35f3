//! The HTTP side: accepting connections (plain or through [`tls`]), handing each request to
//! [`handlers`], and stopping cleanly on SIGTERM/SIGINT: no new connections, then in-flight
//! requests and running upstream fetches get `shutdownGrace` to finish before the rest is cut.
//!
//! [`router`] maps paths to routes; [`handlers`] dispatches them to [`manifests`], [`blobs`]
//! and [`passthrough`]; [`range`] reads `Range` headers; [`response`] builds bodies and OCI
//! error answers.

pub mod blobs;
pub mod handlers;
pub mod manifests;
pub mod passthrough;
pub mod range;
pub mod response;
pub mod router;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpListener;

pub use handlers::App;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the shutdown checks whether upstream fetches are done.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Binds the pull port.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr).await
}

/// Serves until `shutdown` resolves, then stops accepting and lets open connections and
/// running upstream fetches finish within `settings.shutdown_grace`; whatever is left then is
/// cut (and logged). With `settings.server_tls` every connection is a TLS connection.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    let acceptor = match &app.settings.server_tls {
        Some(t) => Some(tls::acceptor_of(t).map_err(|e| std::io::Error::other(e.to_string()))?),
        None => None,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder.http2().max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    match &app.settings.server_tls {
        Some(t) => tracing::info!(
            client_auth = ?t.client_auth,
            "listening on https://{local}"
        ),
        None => tracing::info!("listening on http://{local}"),
    }
    let mut shutdown = std::pin::pin!(shutdown);
    // At most `maxConnections` at once: beyond that, new connections wait in the kernel's
    // backlog instead of costing memory here.
    let max_connections = app.settings.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let per_client = PerClient::new(app.settings.max_connections_per_client);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One client address may hold only so many connections: a flood from one place
        // is turned away at once instead of filling every slot.
        let Some(client_slot) = per_client.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Subscribed now, before any stop signal can be sent: a connection still in its TLS
        // handshake when the signal comes is told to stop as soon as it is served.
        let watcher = graceful.watcher();
        let app = app.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(&builder, stream, peer, app, watcher).await,
                Some(acceptor) => match tls::handshake(&acceptor, stream).await {
                    Ok(tls) => serve_connection(&builder, tls, peer, app, watcher).await,
                    // One client's problem (no certificate, wrong CA, plain HTTP, a scanner).
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
            drop(client_slot);
            drop(permit);
        });
    }
    // Closing the listener makes new connections fail at once instead of waiting in the
    // kernel's backlog for an accept that never comes.
    drop(listener);
    let grace = app.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        connections = graceful.count(),
        upstream_fetches = app.downloads.len(),
        grace_secs = grace.as_secs_f64(),
        "stopping: no new connections; letting open requests and upstream fetches finish"
    );
    let connections_done = tokio::time::timeout_at(deadline, graceful.shutdown())
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
        let open = max_connections.saturating_sub(slots.available_permits());
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

/// Serves HTTP/1.1 or HTTP/2 (by ALPN or preface) on one connection until it closes or the
/// stop signal reaches `watcher`.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    app: Arc<App>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let started = Instant::now();
            let (parts, _body) = req.into_parts();
            let resp = handlers::handle(app, &parts.method, &parts.uri, &parts.headers).await;
            tracing::debug!(%peer, method = %parts.method, path = parts.uri.path(),
                status = resp.status().as_u16(),
                ms = started.elapsed().as_millis() as u64, "request");
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts open connections per client address.
#[derive(Debug, Clone)]
struct PerClient {
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    limit: usize,
}

/// One admitted connection; releases its count when dropped.
#[derive(Debug)]
struct ClientSlot {
    owner: PerClient,
    ip: std::net::IpAddr,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        PerClient {
            open: Arc::default(),
            limit,
        }
    }

    /// A slot for one more connection from `ip`, unless it already holds `limit`.
    fn admit(&self, ip: std::net::IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
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
