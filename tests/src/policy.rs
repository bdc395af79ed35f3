//! Fakes for the upstream-policy tests: a [`ScriptedServer`], an HTTP/1.1 server (hyper,
//! optionally TLS with the test PKI's server certificate) on a chosen loopback address that
//! answers each request from a closure and counts every TCP connection it accepts, so tests
//! can tell "refused before connecting" from "connected". It speaks what no installable
//! server does here: redirect chains, foreign token realms, a secret behind plain http.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Instead of `body`: this chunk over and over, chunked, without end.
    pub endless: Option<Vec<u8>>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            endless: None,
        }
    }

    /// 200 JSON-looking, chunked, never ending: `chunk` repeated.
    pub fn endless_json(chunk: &str) -> Reply {
        Reply {
            endless: Some(chunk.as_bytes().to_vec()),
            ..Reply::json("")
        }
    }

    /// A redirect (`status` 301/302/303/307/308) to `location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
            endless: None,
        }
    }

    /// A status with an OCI error body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(r#"{{"errors":[{{"code":"X","message":"scripted {status}"}}]}}"#)
                .into_bytes(),
            endless: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    accepts: AtomicUsize,
}

/// A scripted HTTP(S) server on its own thread and runtime.
pub struct ScriptedServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ScriptedServer {
    /// Plain HTTP on `ip:<ephemeral>` (`ip` any loopback address, e.g. `127.0.0.2`).
    pub fn http(ip: &str, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(ip, None, Arc::new(handler))
    }

    /// HTTPS with this certificate chain and key (PEM).
    pub fn https(
        ip: &str,
        cert: &Path,
        key: &Path,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start(ip, Some(acceptor), Arc::new(handler))
    }

    fn start(ip: &str, tls: Option<tokio_rustls::TlsAcceptor>, handler: Arc<Handler>) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind scripted server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("scripted-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            acc = listener.accept() => {
                                let Ok((stream, _)) = acc else { continue };
                                st.accepts.fetch_add(1, Ordering::SeqCst);
                                let (st, handler, tls) = (st.clone(), handler.clone(), tls.clone());
                                tokio::spawn(async move {
                                    match tls {
                                        None => serve(stream, st, handler).await,
                                        Some(acceptor) => {
                                            let Ok(Ok(s)) = tokio::time::timeout(
                                                Duration::from_secs(10),
                                                acceptor.accept(stream),
                                            )
                                            .await
                                            else {
                                                return;
                                            };
                                            serve(s, st, handler).await
                                        }
                                    }
                                });
                            }
                        }
                    }
                });
            })
            .expect("spawn scripted server");
        ScriptedServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `ip:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted so far (a TLS handshake need not have followed).
    pub fn accepts(&self) -> usize {
        self.state.accepts.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
}

async fn serve<S>(stream: S, st: Arc<State>, handler: Arc<Handler>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (st, handler) = (st.clone(), handler.clone());
        async move {
            let seen = Seen {
                method: req.method().to_string(),
                target: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
            };
            st.seen.lock().expect("lock").push(seen.clone());
            let reply = handler(&seen);
            let mut resp = hyper::Response::builder().status(reply.status);
            for (k, v) in &reply.headers {
                resp = resp.header(k, v);
            }
            let body: BoxBody<Bytes, std::convert::Infallible> = match reply.endless {
                _ if seen.method == "HEAD" => Full::new(Bytes::new()).boxed(),
                Some(chunk) => {
                    let chunk = Bytes::from(chunk);
                    let frames = futures_util::stream::repeat_with(move || {
                        Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))
                    });
                    StreamBody::new(frames).boxed()
                }
                None => Full::new(Bytes::from(reply.body)).boxed(),
            };
            Ok::<_, std::convert::Infallible>(resp.body(body).expect("scripted response"))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
