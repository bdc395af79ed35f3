//! A real upstream registry: Debian's `docker-registry` (CNCF distribution 2.8) on
//! `127.0.0.1:<free port>` with its own temp storage, anonymous, htpasswd (Basic) or
//! bearer-token (`auth: token`, realm = the rig's [`TokenServer`]).
//!
//! Its access log (combined log format on stdout, one line per request including 401s)
//! is how tests count what reached the upstream.

use crate::procs::ChildProc;
use crate::raw;
use crate::token_server::{TokenServer, TokenServerOptions};
use base64::Engine as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How the upstream authenticates clients.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    Anonymous,
    /// `auth: htpasswd` with one bcrypt user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// `auth: token`: the rig starts a token server; `require_basic` makes the token
    /// endpoint demand these credentials (else it issues tokens to anyone).
    Token {
        require_basic: Option<(String, String)>,
        /// The token endpoint demands this identity (refresh) token in an OAuth2
        /// `grant_type=refresh_token` POST.
        require_refresh_token: Option<String>,
    },
}

/// One request line from the upstream's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    pub uri: String,
    pub status: u16,
}

/// TLS for the upstream's listener (`http.tls`): a server certificate and key, and
/// optionally client CAs (`clientcas`: distribution then REQUIRES a client certificate
/// signed by one of them).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_cas: Vec<PathBuf>,
    /// CA, client certificate and key the rig itself uses (with `curl`) to reach the
    /// upstream for access-log markers; `None`: markers are skipped.
    pub rig_client: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Where the upstream listens (default `127.0.0.1:<free port>`).
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    /// A loopback address other than `127.0.0.1`, e.g. `127.0.0.42`.
    pub ip: Option<String>,
    /// A fixed port (no retry on another port when it is taken).
    pub port: Option<u16>,
}

#[derive(Debug)]
pub struct Upstream {
    pub auth: UpstreamAuth,
    ip: String,
    port: u16,
    tls: Option<UpstreamTls>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    proc: Option<ChildProc>,
    token_server: Option<TokenServer>,
    restarts: usize,
}

impl Upstream {
    pub fn anonymous() -> Upstream {
        Upstream::start(UpstreamAuth::Anonymous)
    }

    pub fn htpasswd(user: &str, password: &str) -> Upstream {
        Upstream::start(UpstreamAuth::Htpasswd {
            user: user.into(),
            password: password.into(),
        })
    }

    /// Bearer-token upstream; with `creds`, the token endpoint requires them.
    pub fn token(creds: Option<(&str, &str)>) -> Upstream {
        Upstream::start(UpstreamAuth::Token {
            require_basic: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
            require_refresh_token: None,
        })
    }

    /// Bearer-token upstream whose token endpoint issues tokens only for `refresh_token`
    /// in an OAuth2 refresh-token POST (docker's identity-token flow), and for a random
    /// Basic pair the rig seeds images with (`credentials()`).
    pub fn token_with_refresh_token(refresh_token: &str) -> Upstream {
        Upstream::start(UpstreamAuth::Token {
            require_basic: Some((
                "rig-seeder".to_owned(),
                format!("seed-{:016x}", fastrand::u64(..)),
            )),
            require_refresh_token: Some(refresh_token.to_owned()),
        })
    }

    pub fn start(auth: UpstreamAuth) -> Upstream {
        Upstream::start_with(auth, UpstreamOptions::default())
            .unwrap_or_else(|e| panic!("docker-registry did not start: {e}"))
    }

    /// An anonymous upstream on `127.0.0.X:80` (X random in 2..250, retried on a bind
    /// failure), so that its registry name is a bare `127.0.0.X`: the only way a docker
    /// reference can carry it inside a path (`proxy:PORT/127.0.0.X/repo:tag`).
    ///
    /// Needs the right to bind port 80 (root, or a low `ip_unprivileged_port_start`). Without
    /// it: outside CI, a loud skip message and `None`; under CI, a panic (the test FAILS).
    pub fn anonymous_on_port_80() -> Option<Upstream> {
        let mut last = String::new();
        for _ in 0..8 {
            let ip = format!("127.0.0.{}", fastrand::u8(2..250));
            match std::net::TcpListener::bind((ip.as_str(), 80)) {
                Ok(l) => drop(l),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    let msg = format!("cannot bind {ip}:80 ({e}): this test needs root");
                    if crate::in_ci() {
                        panic!("{msg} (CI=true: the test fails)");
                    }
                    eprintln!("\n!!!!!!!!!! SKIPPING TEST: {msg} !!!!!!!!!!\n");
                    return None;
                }
                Err(e) => {
                    last = format!("{ip}:80: {e}");
                    continue;
                }
            }
            match Upstream::start_with(
                UpstreamAuth::Anonymous,
                UpstreamOptions {
                    ip: Some(ip.clone()),
                    port: Some(80),
                },
            ) {
                Ok(up) => return Some(up),
                Err(e) => last = format!("{ip}:80: {e}"),
            }
        }
        panic!("no docker-registry on 127.0.0.X:80 after 8 tries; last: {last}");
    }

    /// Starts an upstream with listen options; `Err` with the registry's log if it did not
    /// come up (with no fixed port, free ports are retried first).
    pub fn start_with(auth: UpstreamAuth, opts: UpstreamOptions) -> Result<Upstream, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        let token_server = match &auth {
            UpstreamAuth::Token {
                require_basic,
                require_refresh_token,
            } => Some(TokenServer::start(TokenServerOptions {
                require_basic: require_basic.clone(),
                require_refresh_token: require_refresh_token.clone(),
                ..TokenServerOptions::default()
            })),
            _ => None,
        };
        if let UpstreamAuth::Htpasswd { user, password } = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
        }
        let mut up = Upstream {
            auth,
            ip: opts.ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: 0,
            tls: None,
            config_path: dir.path().join("config.yml"),
            dir,
            proc: None,
            token_server,
            restarts: 0,
        };
        // A free port can be lost to another test between probe and bind: retry a few times.
        if let Some(p) = opts.port {
            up.port = p;
            up.launch()?;
            return Ok(up);
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            up.port = crate::free_port();
            match up.launch() {
                Ok(()) => return Ok(up),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn config_yaml(&self) -> String {
        let storage = self.dir.path().join("storage");
        let auth = match &self.auth {
            UpstreamAuth::Anonymous => String::new(),
            UpstreamAuth::Htpasswd { .. } => format!(
                "auth:\n  htpasswd:\n    realm: ociregistry-e2e-basic\n    path: {}\n",
                self.dir.path().join("htpasswd").display()
            ),
            UpstreamAuth::Token { .. } => {
                let ts = self.token_server.as_ref().expect("token server");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.realm(),
                    ts.options().service,
                    ts.options().issuer,
                    ts.cert_pem_path().display()
                )
            }
        };
        let tls = match &self.tls {
            None => String::new(),
            Some(t) => {
                let mut s = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    t.certificate.display(),
                    t.key.display()
                );
                if !t.client_cas.is_empty() {
                    s.push_str("    clientcas:\n");
                    for c in &t.client_cas {
                        s.push_str(&format!("      - {}\n", c.display()));
                    }
                }
                s
            }
        };
        format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {}:{}\n  secret: ociregistry-e2e-secret\n{tls}{auth}",
            storage.display(),
            self.ip,
            self.port
        )
    }

    fn launch(&mut self) -> Result<(), String> {
        std::fs::write(&self.config_path, self.config_yaml()).expect("write registry config");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&self.config_path);
        let name = format!("docker-registry-{}", self.restarts);
        self.restarts += 1;
        let mut p = ChildProc::spawn(&name, cmd, self.dir.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.try_exited() {
                let err = format!("exited with {st}: {}", p.log_tail(10));
                return Err(err);
            }
            if let Ok(r) = raw::request_timeout(
                &self.host(),
                "GET",
                "/v2/",
                &[],
                None,
                Duration::from_secs(2),
            ) {
                // Over TLS a plain request gets Go's `400 Client sent an HTTP request to an
                // HTTPS server`, which shows that the TLS listener is up.
                if r.status == 200 || r.status == 401 || (self.tls.is_some() && r.status == 400) {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready within 20s: {}", p.log_tail(10)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
        Ok(())
    }

    /// `127.0.0.1:PORT` — the registry name used in proxy config and image references.
    /// (`IP:PORT` for an upstream started on another loopback address.)
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The listen address (`127.0.0.1` unless started with [`UpstreamOptions::ip`]).
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The registry name as a docker reference spells it: `host()`, without the port when
    /// it is the scheme's default (`127.0.0.X` for plain http on port 80).
    pub fn registry_name(&self) -> String {
        match (&self.tls, self.port) {
            (None, 80) | (Some(_), 443) => self.ip.clone(),
            _ => self.host(),
        }
    }

    /// Restarts the registry on the same address and storage with TLS on (`https`), e.g.
    /// after seeding it over plain http. `None` turns TLS off again.
    pub fn set_tls(&mut self, tls: Option<UpstreamTls>) {
        self.stop();
        self.tls = tls;
        self.launch()
            .expect("restart docker-registry with new TLS settings");
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Credentials a client should present (`user`, `password`), if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        match &self.auth {
            UpstreamAuth::Anonymous => None,
            UpstreamAuth::Htpasswd { user, password } => Some((user.clone(), password.clone())),
            UpstreamAuth::Token { require_basic, .. } => require_basic.clone(),
        }
    }

    /// `user:password` for `skopeo --creds`.
    pub fn skopeo_creds(&self) -> Option<String> {
        self.credentials().map(|(u, p)| format!("{u}:{p}"))
    }

    /// An `Authorization` header value for reading `repo` directly (rig use).
    pub fn auth_header(&self, repo: &str) -> Option<String> {
        match &self.auth {
            UpstreamAuth::Anonymous => None,
            UpstreamAuth::Htpasswd { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            UpstreamAuth::Token { .. } => {
                let ts = self.token_server.as_ref().expect("token server");
                Some(format!(
                    "Bearer {}",
                    ts.issue(&[format!("repository:{repo}:pull")])
                ))
            }
        }
    }

    /// GET/HEAD directly against the upstream, authenticated as needed.
    pub fn request(
        &self,
        method: &str,
        repo: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> raw::RawResponse {
        let auth = self.auth_header(repo);
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        raw::request(&self.host(), method, target, &h, None)
            .unwrap_or_else(|e| panic!("{method} {}{target}: {e}", self.url()))
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Stops the registry (its port then refuses connections). Storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.launch().expect("restart docker-registry");
    }

    fn all_stdout(&self) -> String {
        // Access logs of every incarnation (docker-registry-0.stdout, -1, ...).
        let mut s = String::new();
        for i in 0..self.restarts {
            s.push_str(
                &std::fs::read_to_string(
                    self.dir.path().join(format!("docker-registry-{i}.stdout")),
                )
                .unwrap_or_default(),
            );
        }
        s
    }

    /// distribution's own log (stderr: `response completed` lines and errors).
    pub fn server_log(&self) -> String {
        let mut s = String::new();
        for i in 0..self.restarts {
            s.push_str(
                &std::fs::read_to_string(
                    self.dir.path().join(format!("docker-registry-{i}.stderr")),
                )
                .unwrap_or_default(),
            );
        }
        s
    }

    /// Makes a marker request and waits until it shows in the access log, so that every
    /// request completed before this call is in the log too. No-op when stopped.
    pub fn sync_log(&mut self) {
        if !self.is_running() {
            return;
        }
        let marker = format!("/v2/?e2e-sync={:016x}", fastrand::u64(..));
        if let Some(t) = &self.tls {
            // Over TLS the marker goes through curl with the rig's client certificate.
            let Some((ca, cert, key)) = &t.rig_client else {
                return;
            };
            let mut cmd = Command::new("curl");
            cmd.args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "--noproxy",
                "*",
            ])
            .arg("--cacert")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!("https://{}{marker}", self.host()));
            let _ = crate::procs::run_with_timeout(cmd, Duration::from_secs(10));
        } else {
            let _ = raw::request_timeout(
                &self.host(),
                "GET",
                &marker,
                &[],
                None,
                Duration::from_secs(5),
            );
        }
        crate::wait_for(
            "upstream access-log marker",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || self.all_stdout().contains(&marker).then_some(()),
        );
    }

    /// Every request in the access log (rig markers excluded).
    ///
    /// distribution writes a request's line only after its handler returns, which can be a
    /// moment after the client got the whole answer; a marker request can overtake it. So the
    /// log is read after markers until two reads in a row agree (bounded).
    pub fn access_log(&mut self) -> Vec<AccessLine> {
        let read = |s: &Self| -> Vec<AccessLine> {
            s.all_stdout()
                .lines()
                .filter_map(parse_access_line)
                .filter(|l| !l.uri.contains("e2e-sync="))
                .collect()
        };
        self.sync_log();
        let mut last = read(self);
        for _ in 0..5 {
            self.sync_log();
            let now = read(self);
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    /// Requests whose method is `method` (any if empty) and whose URI contains `path_substring`.
    pub fn count_requests(&mut self, method: &str, path_substring: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|l| (method.is_empty() || l.method == method) && l.uri.contains(path_substring))
            .count()
    }

    /// Total number of requests that reached the upstream.
    pub fn total_requests(&mut self) -> usize {
        self.access_log().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.0.0.1 - user [date] "GET /v2/x HTTP/1.1" 200 2 "" "ua"`
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let mut req = rest[..end].split(' ');
    let method = req.next()?.to_owned();
    let uri = req.next()?.to_owned();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(AccessLine {
        method,
        uri,
        status,
    })
}
