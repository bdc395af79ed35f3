//! A TCP forwarder to put between the proxy and its upstream, to control how the upstream's
//! bytes reach the proxy: throttled to N bytes/s, HELD after the first K bytes of each
//! connection until the test releases them, or cut off mid-transfer.
//!
//! It listens on `127.0.0.1:<ephemeral>` and forwards every connection to a target
//! (`127.0.0.1:UPSTREAM`). Configure the proxy with the throttle's address as the registry
//! name: distribution does not care about the `Host` header. Only the upstream -> client
//! direction is shaped; requests pass through untouched.
//!
//! [`StreamingGet`] is the matching client: a blocking GET on its own thread that publishes
//! how many body bytes have arrived, so that a test can observe a transfer in flight.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the forwarder does now; changes apply to running connections at once.
#[derive(Debug, Clone, Default)]
struct Ctl {
    /// Stop forwarding upstream -> client after this many bytes per connection.
    hold_after: Option<u64>,
    /// Upstream -> client bytes per second.
    rate: Option<u64>,
    /// Connections opened before the latest kill are closed.
    kill_epoch: u64,
}

/// Counters, readable by the test.
#[derive(Debug, Clone, Default)]
pub struct ThrottleStats {
    /// Connections accepted (and forwarded) so far.
    pub connections: usize,
    /// Connections that are currently holding (reached `hold_after`).
    pub held: usize,
    /// Bytes forwarded upstream -> client, all connections.
    pub bytes_down: u64,
    /// Connections closed by [`Throttle::kill_all`].
    pub killed: usize,
}

#[derive(Debug)]
struct Shared {
    ctl: watch::Sender<Ctl>,
    stats: Mutex<ThrottleStats>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ThrottleStats)) {
        let mut s = self.stats.lock().expect("stats lock");
        f(&mut s);
        self.changed.notify_all();
    }
}

/// A running forwarder; stopped (every connection closed) on drop.
#[derive(Debug)]
pub struct Throttle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Throttle {
    /// Forwards `127.0.0.1:<ephemeral>` to `target` (`IP:PORT`), unshaped until told.
    pub fn start(target: &str) -> Throttle {
        let target: SocketAddr = target.parse().expect("throttle target IP:PORT");
        assert!(target.ip().is_loopback(), "loopback targets only");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-throttle")
            .enable_all()
            .build()
            .expect("throttle runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind throttle on 127.0.0.1:0");
        let addr = listener.local_addr().expect("throttle addr");
        let (ctl, _) = watch::channel(Ctl::default());
        let shared = Arc::new(Shared {
            ctl,
            stats: Mutex::new(ThrottleStats::default()),
            changed: Condvar::new(),
        });
        let sh = shared.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let sh = sh.clone();
                tokio::spawn(async move {
                    if let Ok(up) = TcpStream::connect(target).await {
                        forward(client, up, sh).await;
                    }
                });
            }
        });
        Throttle {
            addr,
            shared,
            rt: Some(rt),
        }
    }

    /// `127.0.0.1:PORT`: the registry name to configure in the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Holds every connection's upstream -> client bytes after the first `k` (`None`:
    /// release every held connection and hold no more).
    pub fn hold_after(&self, k: Option<u64>) {
        self.shared.ctl.send_modify(|c| c.hold_after = k);
    }

    /// Releases every held connection (same as `hold_after(None)`).
    pub fn release(&self) {
        self.hold_after(None);
    }

    /// Limits upstream -> client to `bytes_per_sec` per connection (`None`: unlimited).
    pub fn rate(&self, bytes_per_sec: Option<u64>) {
        self.shared.ctl.send_modify(|c| c.rate = bytes_per_sec);
    }

    /// Closes both sides of every connection open now (the upstream connection "dies"
    /// mid-transfer); later connections are forwarded normally.
    pub fn kill_all(&self) {
        self.shared.ctl.send_modify(|c| c.kill_epoch += 1);
    }

    pub fn stats(&self) -> ThrottleStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }

    /// Waits until `pred(stats)` holds; panics with `what` and the stats after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ThrottleStats) -> bool,
    ) -> ThrottleStats {
        crate::wait_for_stats(
            "throttle",
            &self.shared.stats,
            &self.shared.changed,
            what,
            timeout,
            pred,
        )
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn forward(client: TcpStream, up: TcpStream, sh: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let mut rx = sh.ctl.subscribe();
    let epoch = rx.borrow().kill_epoch;
    sh.update(|s| s.connections += 1);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    // Requests: straight through.
    let upward = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0u64;
    let mut killed = false;
    loop {
        let ctl = rx.borrow_and_update().clone();
        if ctl.kill_epoch != epoch {
            killed = true;
            break;
        }
        let mut limit = buf.len() as u64;
        if let Some(k) = ctl.hold_after {
            if forwarded >= k {
                sh.update(|s| s.held += 1);
                let alive = rx.changed().await.is_ok();
                sh.update(|s| s.held -= 1);
                if !alive {
                    break;
                }
                continue;
            }
            limit = limit.min(k - forwarded);
        }
        if let Some(r) = ctl.rate {
            // About 20 slices a second.
            limit = limit.min((r / 20).max(1));
        }
        let n = tokio::select! {
            r = ur.read(&mut buf[..limit as usize]) => r.unwrap_or_default(),
            c = rx.changed() => {
                if c.is_err() {
                    break;
                }
                // Re-read the settings (a kill, a new hold) and go on.
                continue;
            }
        };
        if n == 0 {
            let _ = cw.shutdown().await;
            break;
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        forwarded += n as u64;
        sh.update(|s| s.bytes_down += n as u64);
        if let Some(r) = ctl.rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r.max(1) as f64)).await;
        }
    }
    upward.abort();
    if killed {
        sh.update(|s| s.killed += 1);
    }
    // Dropping the halves closes both sockets.
}

// ---------------------------------------------------------------------------------------
// A client that shows its progress

/// What a [`StreamingGet`] has seen so far.
#[derive(Debug, Clone, Default)]
pub struct GetProgress {
    pub status: Option<u16>,
    pub content_length: Option<u64>,
    /// Body bytes received so far.
    pub received: u64,
    pub done: bool,
}

/// How a [`StreamingGet`] ended.
#[derive(Debug, Clone)]
pub struct GetOutcome {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
    /// Body bytes received.
    pub received: u64,
    /// sha256 of the received body bytes.
    pub sha256: String,
    /// The connection failed (reset, timeout) or ended before `Content-Length` bytes.
    pub error: Option<String>,
}

impl GetOutcome {
    /// A whole body: no error and, when announced, exactly `Content-Length` bytes.
    pub fn complete(&self) -> bool {
        self.error.is_none() && self.content_length.is_none_or(|l| l == self.received)
    }
}

type ProgressCell = Arc<(Mutex<GetProgress>, Condvar)>;

/// A blocking HTTP/1.1 GET on its own thread (`Connection: close`, body hashed as it
/// arrives, never buffered), whose progress a test can wait on.
#[derive(Debug)]
pub struct StreamingGet {
    progress: ProgressCell,
    handle: Option<std::thread::JoinHandle<GetOutcome>>,
}

impl StreamingGet {
    /// Starts `GET target` on `addr` (`127.0.0.1:PORT`); a read that stalls for `stall`
    /// ends the transfer with an error.
    pub fn start(addr: &str, target: &str, stall: Duration) -> StreamingGet {
        let progress: ProgressCell = Arc::new((Mutex::new(GetProgress::default()), Condvar::new()));
        let p = progress.clone();
        let addr = addr.to_owned();
        let target = target.to_owned();
        let handle = std::thread::spawn(move || {
            let out = run_get(&addr, &target, stall, &p);
            let (m, cv) = &*p;
            m.lock().expect("progress lock").done = true;
            cv.notify_all();
            out
        });
        StreamingGet {
            progress,
            handle: Some(handle),
        }
    }

    pub fn progress(&self) -> GetProgress {
        self.progress.0.lock().expect("progress lock").clone()
    }

    /// Waits until at least `min` body bytes arrived (or the transfer ended: check
    /// `received`); panics after `timeout`.
    pub fn wait_received(&self, min: u64, timeout: Duration) -> GetProgress {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.progress;
        let mut g = m.lock().expect("progress lock");
        loop {
            if g.received >= min || g.done {
                return g.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("GET: timed out after {timeout:?} waiting for {min} body bytes: {g:?}");
            }
            g = cv.wait_timeout(g, deadline - now).expect("progress lock").0;
        }
    }

    /// Waits for the end of the transfer; panics after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> GetOutcome {
        let deadline = Instant::now() + timeout;
        {
            let (m, cv) = &*self.progress;
            let mut g = m.lock().expect("progress lock");
            while !g.done {
                let now = Instant::now();
                if now >= deadline {
                    panic!("GET: not finished after {timeout:?}: {g:?}");
                }
                g = cv.wait_timeout(g, deadline - now).expect("progress lock").0;
            }
        }
        self.handle
            .take()
            .expect("handle")
            .join()
            .expect("GET thread panicked")
    }
}

fn run_get(addr: &str, target: &str, stall: Duration, p: &ProgressCell) -> GetOutcome {
    let mut out = GetOutcome {
        status: 0,
        headers: Vec::new(),
        content_length: None,
        received: 0,
        sha256: String::new(),
        error: None,
    };
    let mut hasher = Sha256::new();
    let r = (|| -> std::io::Result<()> {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        s.set_read_timeout(Some(stall))?;
        s.set_write_timeout(Some(stall))?;
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        s.flush()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        // Head.
        let body_start = loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the response head",
                ));
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
        let mut lines = text.split("\r\n");
        out.status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        out.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        out.content_length = out
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok());
        let chunked = out.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        });
        if chunked {
            return Err(std::io::Error::other(
                "chunked response: this client expects Content-Length",
            ));
        }
        {
            let (m, cv) = &**p;
            let mut g = m.lock().expect("progress lock");
            g.status = Some(out.status);
            g.content_length = out.content_length;
            cv.notify_all();
        }
        let mut account = |bytes: &[u8], out: &mut GetOutcome| {
            hasher.update(bytes);
            out.received += bytes.len() as u64;
            let (m, cv) = &**p;
            m.lock().expect("progress lock").received = out.received;
            cv.notify_all();
        };
        account(&head[body_start..], &mut out);
        loop {
            if out.content_length.is_some_and(|l| out.received >= l) {
                return Ok(());
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return match out.content_length {
                    Some(l) if out.received < l => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("connection closed after {} of {l} body bytes", out.received),
                    )),
                    _ => Ok(()),
                };
            }
            account(&buf[..n], &mut out);
        }
    })();
    if let Err(e) = r {
        out.error = Some(e.to_string());
    }
    out.sha256 = format!("sha256:{}", hex::encode(hasher.finalize()));
    out
}
