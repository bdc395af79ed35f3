//! The real `ociregistry` binary, started with a generated config on `127.0.0.1:<ephemeral>`.
//!
//! Contract (notes/CONTRACTS.md): `ociregistry --config-file F --image-path P --log-level L
//! serve --port 0 --host 127.0.0.1` logs `listening on http://127.0.0.1:PORT` to stderr once
//! it accepts connections.

use crate::images::PushedImage;
use crate::procs::ChildProc;
use crate::raw::{self, RawResponse};
use crate::upstream::Upstream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the binary is: `$OCIREGISTRY_BIN`, else `target/<profile>/ociregistry` next to the
/// test executable (`target/<profile>/deps/<test>`), else `<workspace>/target/debug/ociregistry`.
pub fn ociregistry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OCIREGISTRY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "OCIREGISTRY_BIN={} does not exist; build it with `cargo build -p ociregistry`",
            p.display()
        );
        return p;
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test-exe>
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            tried.push(profile_dir.join("ociregistry"));
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    tried.push(ws.join("target/debug/ociregistry"));
    tried.push(ws.join("target/release/ociregistry"));
    for p in &tried {
        if p.is_file() {
            warn_if_stale(p);
            return p.clone();
        }
    }
    panic!(
        "the ociregistry binary was not found (tried {tried:?}); run `cargo build --workspace` \
         (scripts/test.sh does) or set OCIREGISTRY_BIN"
    );
}

/// Warns (loudly, once per test process) when a source file of `host/` is newer than the
/// binary found by path: `cargo test` alone does not rebuild another package's binary.
fn warn_if_stale(bin: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(bin_mtime) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
        let newer = crate::cache::list_files(&src).into_iter().find(|f| {
            std::fs::metadata(src.join(f))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > bin_mtime)
        });
        if let Some(f) = newer {
            eprintln!(
                "\n!!!!!!!!!! WARNING: host/src/{} is newer than {}: testing a STALE binary; \
                 run `cargo build --workspace` (scripts/test.sh does) !!!!!!!!!!\n",
                f.display(),
                bin.display()
            );
        }
    });
}

/// Upstream credentials in a registries entry.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// `auth: {user, password}`
    Basic { user: String, password: String },
    /// `auth: {user, passwordFromEnv: VAR}`; the proxy is started with `VAR=password`.
    BasicFromEnv {
        user: String,
        env_var: String,
        password: String,
    },
}

/// One `registries[]` entry.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    pub name: String,
    pub scheme: String,
    pub auth: Option<RegistryAuth>,
    /// Extra YAML lines appended to the entry, indented by the rig (e.g. `"tls: {...}"`).
    pub extra: Vec<String>,
}

impl RegistryEntry {
    /// `name: 127.0.0.1:PORT`, `scheme: http`, and the upstream's credentials if it has any.
    pub fn for_upstream(up: &Upstream) -> RegistryEntry {
        RegistryEntry {
            name: up.host(),
            scheme: "http".into(),
            auth: up
                .credentials()
                .map(|(user, password)| RegistryAuth::Basic { user, password }),
            extra: Vec::new(),
        }
    }

    /// An http entry for a name with no auth.
    pub fn plain(name: &str) -> RegistryEntry {
        RegistryEntry {
            name: name.into(),
            scheme: "http".into(),
            auth: None,
            extra: Vec::new(),
        }
    }

    /// An http entry whose auth is `auth: {token: {<token_yaml>}}` (a token provider, or a
    /// static token), e.g. `with_token_auth(name, "provider: counter")`.
    pub fn with_token_auth(name: &str, token_yaml: &str) -> RegistryEntry {
        RegistryEntry {
            extra: vec![format!("auth: {{token: {{{token_yaml}}}}}")],
            ..RegistryEntry::plain(name)
        }
    }

    fn yaml(&self) -> String {
        let mut s = format!("- name: \"{}\"\n  scheme: {}\n", self.name, self.scheme);
        match &self.auth {
            None => {}
            Some(RegistryAuth::Basic { user, password }) => {
                s.push_str(&format!(
                    "  auth:\n    user: \"{user}\"\n    password: \"{password}\"\n"
                ));
            }
            Some(RegistryAuth::BasicFromEnv { user, env_var, .. }) => {
                s.push_str(&format!(
                    "  auth:\n    user: \"{user}\"\n    passwordFromEnv: {env_var}\n"
                ));
            }
        }
        for l in &self.extra {
            s.push_str(&format!("  {l}\n"));
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    registries: Vec<RegistryEntry>,
    default_ns: Option<String>,
    air_gapped: bool,
    always_pull_latest: bool,
    image_path: Option<PathBuf>,
    log_level: String,
    env: Vec<(String, String)>,
    extra_config: Vec<String>,
    serve_args: Vec<String>,
    log_file: Option<PathBuf>,
    port: u16,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        ProxyBuilder {
            registries: Vec::new(),
            default_ns: None,
            air_gapped: false,
            always_pull_latest: false,
            image_path: None,
            log_level: "debug".into(),
            env: Vec::new(),
            extra_config: Vec::new(),
            serve_args: Vec::new(),
            log_file: None,
            port: 0,
        }
    }
}

impl ProxyBuilder {
    pub fn new() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// Adds a registries entry for `up` (http, its credentials).
    pub fn upstream(mut self, up: &Upstream) -> Self {
        self.registries.push(RegistryEntry::for_upstream(up));
        self
    }

    /// `--port`: a fixed pull port (e.g. from [`crate::free_port`], for a config that must
    /// name it before the start); 0 (the default) takes any free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn registry(mut self, e: RegistryEntry) -> Self {
        self.registries.push(e);
        self
    }

    /// `defaultNs:` in the config.
    pub fn default_ns(mut self, ns: &str) -> Self {
        self.default_ns = Some(ns.into());
        self
    }

    /// `airGapped: true` in the config.
    pub fn air_gapped(mut self, on: bool) -> Self {
        self.air_gapped = on;
        self
    }

    pub fn always_pull_latest(mut self, on: bool) -> Self {
        self.always_pull_latest = on;
        self
    }

    /// Use this cache directory (shared between proxies) instead of a fresh temp dir.
    pub fn image_path(mut self, p: &Path) -> Self {
        self.image_path = Some(p.to_owned());
        self
    }

    /// `--log-level` (default `debug`, so that secret-leak checks see the most output).
    pub fn log_level(mut self, l: &str) -> Self {
        self.log_level = l.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// A raw top-level config line, e.g. `pullTimeout: 5s`.
    pub fn config_line(mut self, l: &str) -> Self {
        self.extra_config.push(l.into());
        self
    }

    /// Extra arguments after `serve`.
    pub fn serve_arg(mut self, a: &str) -> Self {
        self.serve_args.push(a.into());
        self
    }

    /// `serve --plugin-dir DIR`: where the server loads provider plugins from.
    pub fn plugin_dir(self, dir: &Path) -> Self {
        self.serve_arg("--plugin-dir")
            .serve_arg(crate::path_str(dir))
    }

    /// Sends the log to `path` (config key `logFile`); [`Proxy::log`] then reads that file
    /// and the start waits for the `listening` line there.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.extra_config
            .push(format!("logFile: \"{}\"", path.display()));
        self.log_file = Some(path.to_owned());
        self
    }

    fn config_yaml(&self, image_path: &Path) -> String {
        let mut s = format!("imagePath: \"{}\"\n", image_path.display());
        if let Some(ns) = &self.default_ns {
            s.push_str(&format!("defaultNs: \"{ns}\"\n"));
        }
        if self.air_gapped {
            s.push_str("airGapped: true\n");
        }
        if self.always_pull_latest {
            s.push_str("alwaysPullLatest: true\n");
        }
        for l in &self.extra_config {
            s.push_str(l);
            s.push('\n');
        }
        if !self.registries.is_empty() {
            s.push_str("registries:\n");
            for r in &self.registries {
                s.push_str(&r.yaml());
            }
        }
        s
    }

    /// Writes the config into a fresh temp dir and builds the command that serves it (no
    /// HTTP(S)_PROXY from the environment; `passwordFromEnv` passwords set).
    fn prepare(&self) -> Prepared {
        let dir = tempfile::tempdir().expect("tempdir");
        let (image_path, image_dir) = match &self.image_path {
            Some(p) => (p.clone(), None),
            None => {
                let d = tempfile::tempdir().expect("image tempdir");
                (d.path().join("cache"), Some(d))
            }
        };
        let config_path = dir.path().join("config.yaml");
        let config = self.config_yaml(&image_path);
        std::fs::write(&config_path, &config).expect("write config");
        let mut cmd = Command::new(ociregistry_bin());
        cmd.arg("--config-file")
            .arg(&config_path)
            .arg("--image-path")
            .arg(&image_path)
            .arg("--log-level")
            .arg(&self.log_level)
            .args([
                "serve",
                "--port",
                &self.port.to_string(),
                "--host",
                "127.0.0.1",
            ])
            .args(&self.serve_args)
            .env("NO_COLOR", "1")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for r in &self.registries {
            if let Some(RegistryAuth::BasicFromEnv {
                env_var, password, ..
            }) = &r.auth
            {
                cmd.env(env_var, password);
            }
        }
        Prepared {
            dir,
            image_path,
            image_dir,
            config_path,
            config,
            cmd,
        }
    }

    pub fn start(self) -> Proxy {
        let Prepared {
            dir,
            image_path,
            image_dir,
            config_path,
            cmd,
            ..
        } = self.prepare();
        let mut proc = ChildProc::spawn("ociregistry", cmd, dir.path());
        let port = wait_listening(&mut proc, self.log_file.as_deref(), Duration::from_secs(30));
        Proxy {
            proc,
            log_file: self.log_file,
            port,
            image_path,
            _image_dir: image_dir,
            config_path,
            _dir: dir,
        }
    }
}

/// What [`ProxyBuilder::prepare`] made: the temp dirs (deleted on drop), the config and the
/// command, not yet spawned.
struct Prepared {
    dir: tempfile::TempDir,
    image_path: PathBuf,
    image_dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    config: String,
    cmd: Command,
}

/// A start that was expected to fail: how the process ended and what it said.
#[derive(Debug)]
pub struct FailedStart {
    /// `None` if it was still running at the deadline (it is killed then).
    pub status: Option<std::process::ExitStatus>,
    pub stderr: String,
    /// The config file it was given, for locating lines.
    pub config: String,
}

impl FailedStart {
    /// The 1-based line of the config on which `needle` first occurs.
    pub fn config_line_of(&self, needle: &str) -> Option<usize> {
        self.config
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
    }
}

impl ProxyBuilder {
    /// Starts the server expecting it to refuse to start (bad config): waits up to
    /// `timeout` for it to exit. Panics if it starts listening instead.
    pub fn start_expect_exit(self, timeout: Duration) -> FailedStart {
        let Prepared {
            dir,
            image_dir: _image_dir,
            config,
            cmd,
            ..
        } = self.prepare();
        let mut proc = ChildProc::spawn("ociregistry", cmd, dir.path());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = proc.try_exited() {
                return FailedStart {
                    status: Some(st),
                    stderr: proc.stderr(),
                    config,
                };
            }
            assert!(
                !proc.stderr().contains("listening on http://"),
                "ociregistry started although it should have refused the config:\n{config}"
            );
            if Instant::now() >= deadline {
                proc.kill();
                return FailedStart {
                    status: None,
                    stderr: proc.stderr(),
                    config,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits for `listening on http://127.0.0.1:PORT` (or `https://` with `serverTlsConfig`) on
/// stderr, or in `log_file` when the log goes there; returns PORT.
fn wait_listening(proc: &mut ChildProc, log_file: Option<&Path>, timeout: Duration) -> u16 {
    let deadline = Instant::now() + timeout;
    let needle = "listening on http://127.0.0.1:";
    let tls_needle = "listening on https://127.0.0.1:";
    loop {
        let err = match log_file {
            Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
            None => proc.stderr(),
        };
        let found = err
            .find(needle)
            .map(|i| (i, needle))
            .or_else(|| err.find(tls_needle).map(|i| (i, tls_needle)));
        if let Some((i, needle)) = found {
            let digits: String = err[i + needle.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(p) = digits.parse::<u16>() {
                if p != 0 {
                    return p;
                }
            }
        }
        if let Some(st) = proc.try_exited() {
            panic!(
                "ociregistry exited ({st}) before listening:\n{}",
                proc.log_tail(60)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "ociregistry did not log `{needle}PORT` within {timeout:?}:\n{}",
                proc.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a request names the upstream.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// `?ns=127.0.0.1%3APORT` (containerd mirror).
    Ns(&'a str),
    /// `/v2/127.0.0.1:PORT/repo/...`
    InPath(&'a str),
    /// Neither: the proxy's `defaultNs`.
    Default,
}

impl Route<'_> {
    /// The request target for `/v2/<repo>/<kind>/<reference>`.
    pub fn target(&self, repo: &str, kind: &str, reference: &str) -> String {
        match self {
            Route::Ns(ns) => format!(
                "/v2/{repo}/{kind}/{reference}?ns={}",
                percent_encoding::utf8_percent_encode(ns, percent_encoding::NON_ALPHANUMERIC)
            ),
            Route::InPath(host) => format!("/v2/{host}/{repo}/{kind}/{reference}"),
            Route::Default => format!("/v2/{repo}/{kind}/{reference}"),
        }
    }
}

#[derive(Debug)]
pub struct Proxy {
    proc: ChildProc,
    /// Where the log goes instead of stderr, if set.
    log_file: Option<PathBuf>,
    port: u16,
    image_path: PathBuf,
    _image_dir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn image_path(&self) -> &Path {
        &self.image_path
    }

    /// Everything the server logged (stderr, then stdout).
    /// Everything the server logged (stderr and stdout, and the log file if it has one).
    pub fn log(&self) -> String {
        let file = self
            .log_file
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default();
        format!("{file}{}{}", self.proc.stderr(), self.proc.stdout())
    }

    /// Waits (polling every 20 ms, up to `timeout`) until the log contains `needle`; panics
    /// with `what` otherwise.
    pub fn wait_log(&self, what: &str, needle: &str, timeout: Duration) {
        crate::wait_for(what, timeout, Duration::from_millis(20), || {
            self.log().contains(needle).then_some(())
        });
    }

    /// The port in the log line `<needle>http://127.0.0.1:PORT` (the metrics and health
    /// listeners log where they are: `metrics endpoint at `, `health endpoints at `).
    pub fn logged_port(&self, needle: &str) -> u16 {
        let log = self.log();
        let needle = format!("{needle}http://127.0.0.1:");
        let i = log
            .find(&needle)
            .unwrap_or_else(|| panic!("`{needle}` not in the log:\n{log}"));
        log[i + needle.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("port")
    }

    /// What the server wrote to stderr alone.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// How the process ended, once it has (e.g. after a stop asked over the admin API).
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.try_exited()
    }

    /// A field of `/proc/PID/status` in KiB (e.g. `VmHWM`, `VmRSS`).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{field} not in /proc/PID/status"))
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM")
    }

    /// SIGKILL at once, no grace (crash tests). Idempotent.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Sends SIGTERM and returns at once; see [`Proxy::wait_exit`].
    pub fn signal_term(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.proc.try_exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
    }

    /// A raw request (target sent verbatim).
    pub fn raw(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        raw::request(&self.host(), method, target, headers, None)
            .unwrap_or_else(|e| panic!("{method} {}{target}: {e}", self.url()))
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.raw("GET", target, headers)
    }

    pub fn head(&self, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.raw("HEAD", target, headers)
    }

    /// GET a manifest with every manifest media type accepted (one `Accept` line).
    pub fn get_manifest(&self, route: Route<'_>, repo: &str, reference: &str) -> RawResponse {
        let accept = crate::media::ALL_MANIFESTS.join(", ");
        self.get(
            &route.target(repo, "manifests", reference),
            &[("Accept", &accept)],
        )
    }

    pub fn get_blob(
        &self,
        route: Route<'_>,
        repo: &str,
        digest: &str,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        self.get(&route.target(repo, "blobs", digest), headers)
    }

    /// Pulls `img` over plain HTTP through `route` and checks every byte: the tag's manifest
    /// (bytes, Content-Type, Docker-Content-Digest), every child manifest by digest, every blob
    /// (sha256 and length).
    pub fn pull_and_verify(&self, route: Route<'_>, img: &PushedImage) {
        let r = self.get_manifest(route, &img.repo, &img.tag);
        check_manifest_response(
            &r,
            &img.manifest,
            &format!("{} via {route:?}", img.reference()),
        );
        for c in &img.children {
            let r = self.get_manifest(route, &img.repo, &c.digest);
            check_manifest_response(&r, c, &format!("child {} via {route:?}", c.digest));
        }
        for b in img.blobs() {
            let r = self.get_blob(route, &img.repo, &b.digest, &[]);
            assert_eq!(
                r.status,
                200,
                "GET blob {} via {route:?}: {}",
                b.digest,
                r.body_str()
            );
            assert_eq!(r.body.len() as u64, b.size, "blob {} length", b.digest);
            assert_eq!(crate::sha256_digest(&r.body), b.digest, "blob sha256");
        }
    }
}

/// Asserts a 200 manifest response equals the upstream's manifest exactly.
pub fn check_manifest_response(r: &RawResponse, m: &crate::ManifestInfo, ctx: &str) {
    assert_eq!(r.status, 200, "{ctx}: status; body {}", r.body_str());
    assert_eq!(
        crate::sha256_digest(&r.body),
        m.digest,
        "{ctx}: manifest digest"
    );
    assert!(r.body == m.bytes, "{ctx}: manifest bytes differ");
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(m.digest.as_str()),
        "{ctx}: Docker-Content-Digest"
    );
    assert_eq!(
        r.header("Content-Type")
            .map(|c| c.split(';').next().unwrap_or("").trim()),
        Some(m.media_type.as_str()),
        "{ctx}: Content-Type"
    );
}
