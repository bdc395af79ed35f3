//! Rig for bounded downloads (issue 10): an in-process upstream that serves blobs the way no
//! installable registry does, a small tmpfs, and the one place where proxy starts that rely
//! on an ad hoc loopback upstream are set up.
//!
//! [`FakeBlobs`] speaks real HTTP/1.1 (optionally over TLS with a [`TestPki`] certificate,
//! no ALPN, so HTTP/1.1 only): a blob GET is answered 200 with `Transfer-Encoding: chunked`
//! (no `Content-Length`), its bytes or an endless stream, at an optional rate. It counts
//! connections opened, still open, and closed by the peer, so a test can see the proxy drop
//! an upstream connection.

use crate::pki::TestPki;
use crate::proxy::ProxyBuilder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Proxy settings under which requests may name an ad hoc upstream on loopback (an
/// unconfigured `?ns=127.0.0.1:PORT`) served over TLS by `pki`: its CA is trusted through
/// `SSL_CERT_FILE`. Every test that relies on an ad hoc loopback upstream starts its proxy
/// through here, so that an upstream policy line has one place to go.
pub fn allow_adhoc_loopback(b: ProxyBuilder, pki: &TestPki) -> ProxyBuilder {
    b.env("SSL_CERT_FILE", crate::path_str(&pki.ca_crt))
        .config_line(r#"upstreams: {allow: ["*", {host: "127.0.0.1", privateAddresses: true}]}"#)
}

/// What a [`FakeBlobs`] serves for a digest.
#[derive(Debug, Clone)]
pub enum FakeBody {
    /// Bytes without end.
    Endless,
    /// These bytes, then the last chunk.
    Bytes(Arc<Vec<u8>>),
}

/// Counters, readable by the test.
#[derive(Debug, Clone, Default)]
pub struct FakeStats {
    /// Connections accepted.
    pub connections: usize,
    /// Connections open now.
    pub open: usize,
    /// Blob GETs answered 200.
    pub blob_gets: usize,
    /// Body bytes written, all connections.
    pub bytes_sent: u64,
    /// Connections that ended because the peer closed them mid-body (a write failed).
    pub closed_by_peer: usize,
    /// Blob bodies sent to the end.
    pub completed: usize,
}

#[derive(Debug)]
struct Shared {
    blobs: Mutex<HashMap<String, FakeBody>>,
    stats: Mutex<FakeStats>,
    changed: Condvar,
    rate: Option<u64>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut FakeStats)) {
        let mut s = self.stats.lock().expect("stats lock");
        f(&mut s);
        self.changed.notify_all();
    }
}

/// A running fake upstream; stopped (every connection closed) on drop.
#[derive(Debug)]
pub struct FakeBlobs {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeBlobs {
    /// Listens on `127.0.0.1:<ephemeral>`, over TLS with `pki`'s server certificate when
    /// given; bodies go out at `rate` bytes/s at most (`None`: as fast as they are taken).
    pub fn start(tls: Option<&TestPki>, rate: Option<u64>) -> FakeBlobs {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("e2e-fake-blobs")
            .enable_all()
            .build()
            .expect("fake upstream runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tls.map(tls_acceptor);
        let shared = Arc::new(Shared {
            blobs: Mutex::default(),
            stats: Mutex::default(),
            changed: Condvar::new(),
            rate,
        });
        let sh = shared.clone();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let sh = sh.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    sh.update(|s| {
                        s.connections += 1;
                        s.open += 1;
                    });
                    match acceptor {
                        None => serve(sock, &sh).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(sock).await {
                                serve(tls, &sh).await;
                            }
                        }
                    }
                    sh.update(|s| s.open -= 1);
                });
            }
        });
        FakeBlobs {
            addr,
            shared,
            rt: Some(rt),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Serves `body` for blob `digest` (`sha256:<hex>`).
    pub fn add(&self, digest: &str, body: FakeBody) {
        self.shared
            .blobs
            .lock()
            .expect("blobs lock")
            .insert(digest.to_owned(), body);
    }

    pub fn stats(&self) -> FakeStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }

    /// Waits until `pred(stats)` holds; panics with `what` and the stats after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&FakeStats) -> bool,
    ) -> FakeStats {
        crate::wait_for_stats(
            "fake upstream",
            &self.shared.stats,
            &self.shared.changed,
            what,
            timeout,
            pred,
        )
    }
}

impl Drop for FakeBlobs {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn tls_acceptor(pki: &TestPki) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_crt)
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert PEM");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("server key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// One request per connection: reads its head, answers, closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, sh: &Shared) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > 64 * 1024 {
            return;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let target = text.split(' ').nth(1).unwrap_or("").to_owned();
    let path = target.split('?').next().unwrap_or("");
    let body = path
        .rsplit_once("/blobs/")
        .and_then(|(_, d)| sh.blobs.lock().expect("blobs lock").get(d).cloned());
    let Some(body) = body else {
        let msg: &[u8] = if path == "/v2/" || path == "/v2" {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        };
        let _ = s.write_all(msg).await;
        let _ = s.shutdown().await;
        return;
    };
    sh.update(|st| st.blob_gets += 1);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        sh.update(|st| st.closed_by_peer += 1);
        return;
    }
    const CHUNK: usize = 64 * 1024;
    let filler = vec![0x42u8; CHUNK];
    let mut offset = 0usize;
    loop {
        let piece: &[u8] = match &body {
            FakeBody::Endless => &filler,
            FakeBody::Bytes(b) => {
                if offset >= b.len() {
                    break;
                }
                &b[offset..(offset + CHUNK).min(b.len())]
            }
        };
        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
        frame.extend_from_slice(piece);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).await.is_err() || s.flush().await.is_err() {
            sh.update(|st| st.closed_by_peer += 1);
            return;
        }
        offset += piece.len();
        let n = piece.len() as u64;
        sh.update(|st| st.bytes_sent += n);
        if let Some(r) = sh.rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r.max(1) as f64)).await;
        }
    }
    if s.write_all(b"0\r\n\r\n").await.is_err() {
        sh.update(|st| st.closed_by_peer += 1);
        return;
    }
    let _ = s.shutdown().await;
    sh.update(|st| st.completed += 1);
}

/// Copies `repo:tag` from one upstream to another with skopeo (same bytes, same digests).
pub fn copy_image(from: &crate::Upstream, to: &crate::Upstream, repo: &str, tag: &str) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{}/{repo}:{tag}", from.host()))
    .arg(format!("docker://{}/{repo}:{tag}", to.host()));
    let (ok, _, err) = crate::procs::run_with_timeout(cmd, Duration::from_secs(120));
    assert!(ok, "skopeo copy {repo}:{tag}: {err}");
}

/// Random bytes (not compressible, so nothing in between can shrink them).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    (0..len).map(|_| rng.u8(..)).collect()
}
