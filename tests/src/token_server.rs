//! A bearer-token endpoint (the `realm` of distribution's `auth: token`), in process.
//!
//! Tokens are real JWTs signed RS256 with an `openssl`-generated key; the header carries the
//! self-signed certificate as `x5c`, and that certificate is distribution's `rootcertbundle`, so
//! distribution 2.8 verifies them exactly as it verifies tokens from a production token service.
//! The server runs on its own thread and tokio runtime so that it keeps answering while a test
//! blocks (e.g. on a `skopeo` child process).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the token endpoint demands and grants.
#[derive(Debug, Clone)]
pub struct TokenServerOptions {
    /// When set, a token is issued only for these Basic credentials (else 401).
    pub require_basic: Option<(String, String)>,
    /// When set, a token is issued only for an OAuth2 `POST` with `grant_type=refresh_token`
    /// and this `refresh_token` (docker's identity-token flow), or, when `require_basic` is
    /// set too, for those Basic credentials.
    pub require_refresh_token: Option<String>,
    /// Token lifetime in seconds (`expires_in`).
    pub expires_in: u64,
    /// `service` (JWT `aud`) — must match distribution's `auth.token.service`.
    pub service: String,
    /// `issuer` (JWT `iss`) — must match distribution's `auth.token.issuer`.
    pub issuer: String,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        TokenServerOptions {
            require_basic: None,
            require_refresh_token: None,
            expires_in: 300,
            service: "ociregistry-e2e-registry".into(),
            issuer: "ociregistry-e2e-issuer".into(),
        }
    }
}

/// One request the endpoint saw.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// The Basic user, if credentials were sent.
    pub user: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
    /// The OAuth2 `grant_type` of a POST.
    pub grant_type: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    requests: Vec<TokenRequest>,
    issued: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    opts: TokenServerOptions,
    key_path: PathBuf,
    cert_der_b64: String,
    state: Mutex<State>,
}

/// The running token server; shut down on drop.
#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TokenServer {
    pub fn start(opts: TokenServerOptions) -> TokenServer {
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "30",
                "-subj",
                "/CN=ociregistry-e2e-token-issuer",
            ],
            dir.path(),
        );
        openssl(
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
            dir.path(),
        );
        let der = std::fs::read(dir.path().join("cert.der")).expect("read cert.der");
        let shared = Arc::new(Shared {
            opts,
            key_path: dir.path().join("key.pem"),
            cert_der_b64: STANDARD.encode(der),
            state: Mutex::new(State::default()),
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            acc = listener.accept() => {
                                let Ok((stream, _)) = acc else { continue };
                                let sh = sh.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let sh = sh.clone();
                                        async move { Ok::<_, std::convert::Infallible>(handle(&sh, req).await) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("spawn token server thread");
        TokenServer {
            addr,
            shared,
            dir,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn options(&self) -> &TokenServerOptions {
        &self.shared.opts
    }

    /// The PEM certificate distribution must trust (`rootcertbundle`).
    pub fn cert_pem_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.state.lock().expect("lock").requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.state.lock().expect("lock").requests.len()
    }

    /// Every token issued so far (to check that none leaks into a log).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.state.lock().expect("lock").issued.clone()
    }

    /// Issues a token directly (the rig uses this to read the upstream itself).
    pub fn issue(&self, scopes: &[String]) -> String {
        let t = sign_token(&self.shared, scopes);
        self.shared
            .state
            .lock()
            .expect("lock")
            .issued
            .push(t.clone());
        t
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `repository:name:pull,push` -> access entry. Names never contain ':' ; types may be
/// `repository(plugin)`.
fn access_entry(scope: &str) -> Option<serde_json::Value> {
    let (typ, rest) = scope.split_once(':')?;
    let idx = rest.rfind(':')?;
    let (name, actions) = (&rest[..idx], &rest[idx + 1..]);
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({"type": typ, "name": name, "actions": actions}))
}

fn sign_token(sh: &Shared, scopes: &[String]) -> String {
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [sh.cert_der_b64],
    });
    let t = now();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(access_entry)
        .collect();
    let claims = serde_json::json!({
        "iss": sh.opts.issuer,
        "sub": "ociregistry-e2e",
        "aud": sh.opts.service,
        "exp": t + sh.opts.expires_in,
        "nbf": t.saturating_sub(10),
        "iat": t,
        "jti": format!("{:016x}", fastrand::u64(..)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&sh.key_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(signing_input.as_bytes())
            .expect("write signing input");
    }
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn basic_creds(req: &Request<Incoming>) -> Option<(String, String)> {
    let v = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let dec = STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(dec).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(sh: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let mut pairs = query_pairs(req.uri().query().unwrap_or(""));
    let mut creds = basic_creds(&req);
    if method == "POST" {
        // OAuth2 password / refresh_token grant (docker's alternative flow).
        if let Ok(body) = req.into_body().collect().await {
            let form = query_pairs(&String::from_utf8_lossy(&body.to_bytes()));
            let get = |k: &str| form.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.clone());
            if let (Some(u), Some(p)) = (get("username"), get("password")) {
                creds = Some((u, p));
            }
            pairs.extend(form);
        }
    }
    if path != "/token" {
        return json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        );
    }
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let form_value = |k: &str| pairs.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.clone());
    let grant_type = if method == "POST" {
        form_value("grant_type")
    } else {
        None
    };
    let refresh_ok = match &sh.opts.require_refresh_token {
        None => true,
        Some(expected) => {
            grant_type.as_deref() == Some("refresh_token")
                && form_value("refresh_token").as_ref() == Some(expected)
        }
    };
    let basic_ok = match &sh.opts.require_basic {
        None => true,
        Some(expected) => creds.as_ref() == Some(expected),
    };
    // With both set, either authorizes (the rig seeds images with the Basic pair).
    let authorized = match (&sh.opts.require_refresh_token, &sh.opts.require_basic) {
        (Some(_), Some(_)) => refresh_ok || basic_ok,
        _ => refresh_ok && basic_ok,
    };
    let mut rec = TokenRequest {
        method,
        service,
        scopes: scopes.clone(),
        user: creds.map(|(u, _)| u),
        granted: false,
        grant_type,
    };
    if !authorized {
        sh.state.lock().expect("lock").requests.push(rec);
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}),
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"ociregistry-e2e-token\""),
        );
        return r;
    }
    let token = sign_token(sh, &scopes);
    rec.granted = true;
    {
        let mut st = sh.state.lock().expect("lock");
        st.requests.push(rec);
        st.issued.push(token.clone());
    }
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": sh.opts.expires_in,
        }),
    )
}
