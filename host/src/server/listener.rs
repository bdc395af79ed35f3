//! The one listener behind every port the server opens (pull port, admin API, metrics,
//! health): accepting within the connection caps (`maxConnections` per listener,
//! `maxConnectionsPerClient`, an IPv6 /64 counting as one client), TLS where the listener has
//! it, HTTP/1.1 or HTTP/2 by the connection preface, the timers, and the graceful stop.
//!
//! Timers, per connection:
//! - `headerTimeout` runs from the accept to the first request: TLS handshake, version
//!   detection (a silent connection, or half an HTTP/2 preface, is closed when it ends) and
//!   the first HTTP/1 request head or HTTP/2 HEADERS frame. Later HTTP/1 request heads get
//!   the same time from hyper's `header_read_timeout`, which also runs while the connection
//!   waits idle for the next request.
//! - `idleTimeout`: a connection with no request in flight (no open stream, no response body
//!   still being sent) for that long is shut down gracefully (HTTP/2: GOAWAY).
//! - HTTP/2 keep-alive: a PING after [`KEEP_ALIVE_INTERVAL`] of silence; no answer within
//!   [`KEEP_ALIVE_TIMEOUT`] closes the connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;

/// HTTP/2 keep-alive: a PING after this long without a frame from the client.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// HTTP/2 keep-alive: how long the client has to answer a PING.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bounds a listener applies to its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to the first request (and for each later HTTP/1 request head).
    pub header_timeout: Duration,
    /// A connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once by this listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client (IPv4 address, IPv6 /64) may hold on this listener.
    pub max_connections_per_client: usize,
    /// Largest HTTP/1 read buffer (request head) and HTTP/2 header list.
    pub max_header_bytes: usize,
    /// HTTP/2 PING interval.
    pub keep_alive_interval: Duration,
    /// HTTP/2 PING answer timeout.
    pub keep_alive_timeout: Duration,
}

impl Limits {
    /// The limits `settings` give, with `max_header_bytes` for this listener.
    pub fn from_settings(settings: &Settings, max_header_bytes: usize) -> Limits {
        Limits {
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections,
            max_connections_per_client: settings.max_connections_per_client,
            max_header_bytes,
            keep_alive_interval: KEEP_ALIVE_INTERVAL,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
        }
    }
}

/// What a listener does with each request.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static;

    /// Answers one request from `peer`.
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A listener that has stopped accepting; its open connections were told to finish.
#[derive(Debug)]
pub struct Draining {
    open: Arc<OpenCount>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Draining {
    /// Connections still open.
    pub fn open(&self) -> usize {
        self.open.n.load(Ordering::SeqCst)
    }

    /// Resolves once every connection is closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.open.zero.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Serves `tcp` with `handler` until `shutdown` resolves; then stops accepting (the socket is
/// closed), tells every open connection to finish its requests and close, and returns.
/// `name` labels this listener's log lines.
pub async fn serve<H: Handler>(
    tcp: TcpListener,
    name: &'static str,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> Draining {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        name,
        tls,
        h1,
        h2,
        handler,
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
    });
    let open = Arc::new(OpenCount::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_client = PerClient::new(limits.max_connections_per_client);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At most `max_connections` at once: beyond that, new connections wait in the
        // kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving, don't spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let accepted_at = Instant::now();
        // One client may hold only so many connections: a flood from one place is turned
        // away at once instead of filling every slot.
        let Some(client_slot) = per_client.admit(peer.ip()) else {
            tracing::debug!(listener = name, %peer, "too many connections from this client; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counted = open.enter();
        let shared = shared.clone();
        // Subscribed now, before any stop signal can be sent.
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, accepted_at, shared, stop).await;
            drop(client_slot);
            drop(counted);
            drop(permit);
        });
    }
    // Closing the listener makes new connections fail at once instead of waiting in the
    // kernel's backlog for an accept that never comes.
    drop(tcp);
    let _ = stop_tx.send(true);
    Draining {
        open,
        _stop: stop_tx,
    }
}

struct Shared<H> {
    name: &'static str,
    tls: Option<TlsAcceptor>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    handler: Arc<H>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// One connection, from accept to close.
async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    shared: Arc<Shared<H>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = accepted_at + shared.header_timeout;
    let name = shared.name;
    match &shared.tls {
        None => http(stream, peer, deadline, shared, stop).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => http(tls, peer, deadline, shared, stop).await,
            // One client's problem (no certificate, wrong CA, plain HTTP, a scanner).
            Ok(Err(e)) => {
                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            }
            Err(_) => tracing::debug!(
                listener = name,
                %peer,
                "closed: no complete TLS handshake within the header timeout"
            ),
        },
    }
}

/// HTTP/1.1 or HTTP/2 on one (possibly TLS) connection.
async fn http<I, H>(
    io: I,
    peer: SocketAddr,
    deadline: Instant,
    shared: Arc<Shared<H>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let name = shared.name;
    let (h2, io) = match tokio::time::timeout_at(deadline, detect(io)).await {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "connection failed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(
                listener = name,
                %peer,
                "closed: no request within the header timeout"
            );
            return;
        }
    };
    let state = Arc::new(ConnState::new());
    let service = {
        let handler = shared.handler.clone();
        let state = state.clone();
        service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::begin(&state);
            let handler = handler.clone();
            async move {
                let resp = handler.handle(req, peer).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let timers = Timers {
        state: &state,
        started: Instant::from_std(state.started),
        deadline,
        header_timeout: shared.header_timeout,
        idle: shared.idle_timeout,
    };
    let io = TokioIo::new(io);
    let result = if h2 {
        let conn = shared.h2.serve_connection(io, service);
        drive(
            conn,
            http2::Connection::graceful_shutdown,
            timers,
            &mut stop,
        )
        .await
    } else {
        let conn = shared.h1.serve_connection(io, service);
        drive(
            conn,
            http1::Connection::graceful_shutdown,
            timers,
            &mut stop,
        )
        .await
    };
    match result {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
        }
        Ended::HeaderTimeout => tracing::debug!(
            listener = name,
            %peer,
            "closed: no request within the header timeout"
        ),
        Ended::IdleCut => tracing::debug!(
            listener = name,
            %peer,
            "closed: idle, and the client did not finish the graceful close in time"
        ),
    }
}

/// Reads until the bytes read either cannot start the HTTP/2 preface (HTTP/1) or are the
/// whole preface (HTTP/2); `None` when the client closes first. The bytes read are handed on.
async fn detect<I: AsyncRead + Unpin>(mut io: I) -> std::io::Result<Option<(bool, Rewind<I>)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    loop {
        let got = io.read(&mut buf[n..]).await?;
        if got == 0 {
            return Ok(None);
        }
        n += got;
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((false, Rewind::new(&buf[..n], io))));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some((true, Rewind::new(&buf, io))));
        }
    }
}

/// What the per-connection timers look at.
struct Timers<'a> {
    state: &'a ConnState,
    started: Instant,
    deadline: Instant,
    header_timeout: Duration,
    idle: Duration,
}

/// Why a timer fired.
enum Expired {
    HeaderTimeout,
    Idle,
}

/// How a connection ended.
enum Ended {
    Served(Result<(), hyper::Error>),
    HeaderTimeout,
    IdleCut,
}

/// Resolves when the connection must go: no first request by the header deadline, or
/// nothing in flight for the idle timeout.
async fn expiry(t: &Timers<'_>) -> Expired {
    loop {
        let now = Instant::now();
        if !t.state.seen.load(Ordering::Acquire) {
            if now >= t.deadline {
                return Expired::HeaderTimeout;
            }
            // Again at the deadline, or sooner for the idle timer once a request came.
            tokio::time::sleep_until(t.deadline.min(now + t.idle)).await;
        } else if t.state.active.load(Ordering::Acquire) == 0 {
            let last = Duration::from_millis(t.state.last_done_ms.load(Ordering::Acquire));
            let due = t.started + last + t.idle;
            if now >= due {
                return Expired::Idle;
            }
            tokio::time::sleep_until(due).await;
        } else {
            tokio::time::sleep(t.idle).await;
        }
    }
}

/// Runs `conn` until it ends; a stop signal or the idle timer shut it down gracefully
/// (requests in flight finish), the header timer closes it at once.
async fn drive<C>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    timers: Timers<'_>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Ended
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let idle_cut = {
        let expiry = expiry(&timers);
        tokio::select! {
            r = conn.as_mut() => return Ended::Served(r),
            why = expiry => match why {
                Expired::HeaderTimeout => return Ended::HeaderTimeout,
                Expired::Idle => true,
            },
            _ = stop.wait_for(|stopping| *stopping) => false,
        }
    };
    graceful(conn.as_mut());
    if !idle_cut {
        // Stopping: the server's grace period bounds what is left.
        return Ended::Served(conn.await);
    }
    // Idle: nothing is in flight, so a client that does not take part in the graceful close
    // (HTTP/2 waits for a PING answer) loses nothing when it is cut.
    match tokio::time::timeout(timers.header_timeout, conn).await {
        Ok(r) => Ended::Served(r),
        Err(_) => Ended::IdleCut,
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct ConnState {
    /// A first request arrived.
    seen: AtomicBool,
    /// Requests whose response is not yet fully sent.
    active: AtomicUsize,
    /// Milliseconds after the connection's start at which a request last ended.
    last_done_ms: AtomicU64,
    /// When the connection started serving (for `last_done_ms`).
    started: std::time::Instant,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            seen: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}

/// One request in flight: from the handler's call until its response body is sent or
/// dropped.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: &Arc<ConnState>) -> InFlight {
        state.seen.store(true, Ordering::Release);
        state.active.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let ms = u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Before the count drops: whoever sees zero sees this time too.
        s.last_done_ms.fetch_max(ms, Ordering::AcqRel);
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An I/O stream with bytes already read put back in front.
#[derive(Debug)]
struct Rewind<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    fn new(pre: &[u8], inner: I) -> Self {
        Rewind {
            pre: Bytes::copy_from_slice(pre),
            inner,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections of a listener.
#[derive(Debug, Default)]
struct OpenCount {
    n: AtomicUsize,
    zero: tokio::sync::Notify,
}

/// One open connection; counted until dropped.
struct Counted(Arc<OpenCount>);

impl OpenCount {
    fn enter(self: &Arc<Self>) -> Counted {
        self.n.fetch_add(1, Ordering::SeqCst);
        Counted(self.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Who counts as one client: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
/// /64, so per-address counting would let it open connections without end). IPv4-mapped IPv6
/// addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix64(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Counts open connections per client.
#[derive(Debug, Clone)]
struct PerClient {
    open: Arc<std::sync::Mutex<std::collections::HashMap<ClientKey, usize>>>,
    limit: usize,
}

/// One admitted connection; releases its count when dropped.
#[derive(Debug)]
struct ClientSlot {
    owner: PerClient,
    key: ClientKey,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        PerClient {
            open: Arc::default(),
            limit,
        }
    }

    /// A slot for one more connection from `ip`'s client, unless it already holds `limit`.
    fn admit(&self, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn an_ipv6_64_is_one_client_and_mapped_ipv4_is_its_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = PerClient::new(2);
        let a = p.admit(ip("2001:db8:1:2::1")).unwrap();
        let b = p.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).unwrap();
        assert!(p.admit(ip("2001:db8:1:2:abcd::7")).is_none(), "same /64");
        assert!(p.admit(ip("2001:db8:1:3::1")).is_some(), "the next /64");
        drop(a);
        let _c = p.admit(ip("2001:db8:1:2::99")).unwrap();
        drop(b);
        // IPv4 per address; the mapped form is the same client.
        let _d = p.admit(ip("192.0.2.1")).unwrap();
        let _e = p.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(p.admit(ip("192.0.2.1")).is_none());
        assert!(p.admit(ip("192.0.2.2")).is_some());
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
        assert_ne!(
            ClientKey::of(ip("::1")),
            ClientKey::of(ip("::2:0:0:0:1")),
            "different /64s"
        );
    }

    #[derive(Debug)]
    struct Hello;

    impl Handler for Hello {
        type Body = http_body_util::Full<Bytes>;
        async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Self::Body> {
            Response::new(http_body_util::Full::new(Bytes::from_static(b"hello")))
        }
    }

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16,
            max_connections_per_client: 16,
            max_header_bytes: 16 * 1024,
            keep_alive_interval: Duration::from_millis(300),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }

    /// Reads one HTTP/2 frame: (type, flags, payload).
    async fn frame(s: &mut TcpStream) -> (u8, u8, Vec<u8>) {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        (head[3], head[4], payload)
    }

    /// An HTTP/2 client that says nothing after its SETTINGS gets keep-alive PINGs (the
    /// builder's interval and timer are set), and the PING it answers keeps it open.
    #[tokio::test]
    async fn an_idle_http2_connection_gets_keep_alive_pings() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(serve(
            tcp,
            "test",
            None,
            limits(),
            Arc::new(Hello),
            std::future::pending(),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut pings = 0;
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while pings < 2 {
                let (kind, flags, payload) = frame(&mut s).await;
                match (kind, flags & 1) {
                    // SETTINGS: acknowledge.
                    (4, 0) => s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
                    // PING: answer with the same payload.
                    (6, 0) => {
                        pings += 1;
                        let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                        pong.extend_from_slice(&payload);
                        s.write_all(&pong).await.unwrap();
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "{pings} keep-alive PING(s) within 10s");
    }

    /// Before the first request, one deadline covers it all: half a preface is closed.
    #[tokio::test]
    async fn half_a_preface_is_closed_at_the_header_deadline() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut l = limits();
        l.header_timeout = Duration::from_millis(300);
        tokio::spawn(serve(
            tcp,
            "test",
            None,
            l,
            Arc::new(Hello),
            std::future::pending(),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&H2_PREFACE[..16]).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "closed, not held: {r:?}"
        );
    }
}
