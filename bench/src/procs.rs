//! The processes under test: the upstream `docker-registry`, the peer (`docker-registry` in
//! proxy mode), our `ociregistry` (on its own directory or as a replica on a bucket), nginx,
//! and `s3s-fs` (the S3-compatible server the replicas share). Each runs on `127.0.0.1:<free port>` with its
//! own directory, logs to files there, and is killed when dropped (and by the watchdog).

use crate::R;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every child still running, so that the watchdog can end them by pid.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Ends every registered child, by pid: SIGTERM (nginx's master then stops its workers),
/// and SIGKILL a second later.
pub fn kill_all() {
    let pids: Vec<u32> = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for &pid in &pids {
        signal(pid, "-TERM");
    }
    std::thread::sleep(Duration::from_secs(1));
    for &pid in &pids {
        signal(pid, "-KILL");
    }
}

/// A free port on 127.0.0.1 (probed; the caller binds it right after).
pub fn free_port() -> R<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A temp directory anyone can traverse (nginx workers may run as another user).
pub fn open_tempdir(parent: &Path, prefix: &str) -> R<tempfile::TempDir> {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|e| format!("tempdir in {}: {e}", parent.display()))?;
    set_mode_755(d.path())?;
    Ok(d)
}

pub fn set_mode_755(p: &Path) -> R<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> R<Proc> {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let out = File::create(&stdout).map_err(|e| format!("{}: {e}", stdout.display()))?;
        let err = File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        if let Ok(mut p) = PIDS.lock() {
            p.push(child.id());
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last 15 lines of the process's stderr.
    pub fn tail(&self) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `Err` with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> R<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited ({st}):\n{}", self.name, self.tail())),
            Err(e) => Err(format!("{}: wait: {e}", self.name)),
        }
    }

    /// Waits (bounded) until 127.0.0.1:`port` accepts connections.
    pub fn wait_port(&mut self, port: u16) -> R<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {port} within {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of /proc/PID/status in KiB (VmHWM, VmRSS).
    pub fn status_kib(&self, field: &str) -> R<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid()))?;
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .ok_or_else(|| format!("{field} not in /proc/{}/status", self.pid()))
    }

    /// Peak RSS in MiB.
    pub fn peak_rss_mib(&self) -> R<f64> {
        Ok(self.status_kib("VmHWM")? as f64 / 1024.0)
    }

    /// CPU seconds used so far (user + system), from /proc/PID/stat.
    pub fn cpu_secs(&self) -> R<f64> {
        cpu_secs_of(&self.pid().to_string())
    }
}

/// CPU seconds (user + system) the bench process itself has used so far: its client threads.
pub fn own_cpu_secs() -> R<f64> {
    cpu_secs_of("self")
}

/// CPU seconds (user + system) of process `pid` (or `self`), from /proc/PID/stat.
fn cpu_secs_of(pid: &str) -> R<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc/PID/stat")?;
    // After the command name: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> R<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "bad /proc/PID/stat".to_owned())
    };
    Ok((ticks(11)? + ticks(12)?) / clk_tck())
}

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Drop for Proc {
    /// SIGTERM, then SIGKILL after at most 3 s: a SIGKILLed nginx master would leave its
    /// workers running.
    fn drop(&mut self) {
        signal(self.child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut p) = PIDS.lock() {
            p.retain(|x| *x != pid);
        }
    }
}

/// One line of distribution's access log.
#[derive(Debug, Clone)]
pub struct AccessLine {
    pub method: String,
    pub uri: String,
}

impl AccessLine {
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.uri.contains("/blobs/sha256:")
    }
}

/// `127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 2 "" "ua"`
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let mut req = rest[..end].split(' ');
    let method = req.next()?.to_owned();
    let uri = req.next()?.to_owned();
    if !uri.starts_with('/') {
        return None;
    }
    Some(AccessLine { method, uri })
}

/// Debian's `docker-registry` (CNCF distribution): the upstream, or the peer in proxy mode.
#[derive(Debug)]
pub struct Registry {
    pub proc: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// `proxy`: `Some(remote url)` for proxy mode. `access_log`: log requests to stdout.
    pub fn start(work: &Path, name: &str, proxy: Option<&str>, access_log: bool) -> R<Registry> {
        let dir = open_tempdir(work, name)?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
        set_mode_755(&storage)?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let proxy_yaml = proxy
                .map(|u| format!("proxy:\n  remoteurl: {u}\n"))
                .unwrap_or_default();
            // Debian's default config, minus auth, plus the access log switch; log level warn
            // so that neither side pays for per-request info lines.
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: {}\n\
                 storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: ociregistry-bench\n{proxy_yaml}",
                !access_log,
                storage.display(),
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&cfg);
            let mut proc = Proc::spawn(name, cmd, dir.path())?;
            match proc.wait_port(port) {
                Ok(()) => return Ok(Registry { proc, port, dir }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where distribution keeps blob files: `<root>/sha256/<2 hex>/<hex>/data`.
    pub fn blob_root(&self) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2/blobs")
    }

    /// Makes a marker request and waits until the access log shows it, so that every
    /// request finished before this call is in the log. Returns the log's length then.
    pub fn sync_log(&mut self) -> R<u64> {
        let marker = format!("/v2/?bench-sync={:016x}", fastrand::u64(..));
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("upstream marker: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        write!(
            s,
            "GET {marker} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| format!("upstream marker: {e}"))?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read(self.proc.stdout_path()).unwrap_or_default();
            if let Some(i) = find(&log, marker.as_bytes()) {
                let end = log[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(log.len(), |p| i + p + 1);
                return Ok(end as u64);
            }
            if Instant::now() >= deadline {
                return Err("upstream access-log marker did not appear within 10s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Access-log lines between two [`Registry::sync_log`] offsets, markers excluded.
    pub fn log_between(&self, from: u64, to: u64) -> Vec<AccessLine> {
        let log = std::fs::read(self.proc.stdout_path()).unwrap_or_default();
        let to = (to as usize).min(log.len());
        let from = (from as usize).min(to);
        String::from_utf8_lossy(&log[from..to])
            .lines()
            .filter_map(parse_access_line)
            .filter(|l| !l.uri.contains("bench-sync="))
            .collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Our server with a fresh cache, `defaultNs` = the upstream, so paths match the peer's.
#[derive(Debug)]
pub struct Ours {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Ours {
    pub fn start(work: &Path, bin: &Path, upstream_host: &str) -> R<Ours> {
        Ours::start_on(work, bin, upstream_host, None, false)
    }

    /// [`Ours::start`], or with `Some(s3)` a replica on `s3`'s bucket (`storage.s3` with the
    /// keys from the environment), its local copy at its own `--image-path`.
    /// With `cluster` (only with a bucket), the replica takes part in the one-fetch-per-blob
    /// lease: it listens on a port picked here and advertises it to its peers.
    pub fn start_on(
        work: &Path,
        bin: &Path,
        upstream_host: &str,
        s3: Option<&S3Fs>,
        cluster: bool,
    ) -> R<Ours> {
        let dir = open_tempdir(work, "ociregistry")?;
        let cache = dir.path().join("cache");
        let cfg = dir.path().join("config.yaml");
        let storage = s3.map(S3Fs::storage_yaml).unwrap_or_default();
        let mut listen_port = 0u16;
        let mut cluster_yaml = String::new();
        if cluster && s3.is_some() {
            listen_port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            cluster_yaml = format!(
                "cluster:\n  advertise: http://127.0.0.1:{listen_port}\n  token: bench-peer-token-0123456789\n"
            );
        }
        let config = format!(
            "imagePath: \"{}\"\ndefaultNs: \"{upstream_host}\"\nregistries:\n- name: \"{upstream_host}\"\n  scheme: http\n{storage}{cluster_yaml}",
            cache.display()
        );
        std::fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config-file").arg(&cfg);
        if s3.is_some() {
            cmd.arg("--image-path")
                .arg(&cache)
                .envs(S3Fs::env())
                .env("AWS_EC2_METADATA_DISABLED", "true");
        }
        cmd.args([
            "--log-level",
            "info",
            "serve",
            "--port",
            &listen_port.to_string(),
            "--host",
            "127.0.0.1",
        ])
        .env("NO_COLOR", "1");
        let mut proc = Proc::spawn("ociregistry", cmd, dir.path())?;
        let needle = "listening on http://127.0.0.1:";
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = loop {
            let err = proc.stderr();
            if let Some(i) = err.find(needle) {
                let digits: String = err[i + needle.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(p) = digits.parse::<u16>()
                    && p != 0
                {
                    break p;
                }
            }
            proc.check_alive()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "ociregistry did not log `{needle}PORT` within {READY_TIMEOUT:?}:\n{}",
                    proc.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Ours {
            proc,
            port,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// nginx with sendfile serving `root` under `/blobs/`: the ceiling for serving files.
#[derive(Debug)]
pub struct Nginx {
    _proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(work: &Path, root: &Path) -> R<Nginx> {
        let dir = open_tempdir(work, "nginx")?;
        let d = dir.path().display().to_string();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let conf = format!(
                "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n  \
                 keepalive_requests 1000000;\n  keepalive_timeout 75s;\n  default_type application/octet-stream;\n  \
                 client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location /blobs/ {{ alias {}/; }}\n  }}\n}}\n",
                root.display()
            );
            let cfg = dir.path().join("nginx.conf");
            std::fs::write(&cfg, conf).map_err(|e| format!("{}: {e}", cfg.display()))?;
            let mut cmd = Command::new(nginx_bin());
            cmd.arg("-c")
                .arg(&cfg)
                .arg("-p")
                .arg(dir.path())
                .args(["-g", "daemon off;"]);
            let mut proc = Proc::spawn("nginx", cmd, dir.path())?;
            match proc.wait_port(port) {
                Ok(()) => {
                    return Ok(Nginx {
                        _proc: proc,
                        port,
                        _dir: dir,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The URL of a blob file of the upstream's storage.
    pub fn blob_url(&self, digest: &str) -> String {
        let hex = digest.trim_start_matches("sha256:");
        format!(
            "http://127.0.0.1:{}/blobs/sha256/{}/{hex}/data",
            self.port,
            &hex[..2]
        )
    }
}

/// The bucket the replicas share, and the keys `s3s-fs` is started with.
const S3_BUCKET: &str = "mirror-cache";
const S3_ACCESS_KEY: &str = "bench-access-key";
const S3_SECRET_KEY: &str = "bench-secret-key";

/// `s3s-fs` (crates.io; `scripts/bench.sh` installs it) serving one empty bucket from a
/// fresh directory: the S3-compatible server of scenario 7.
#[derive(Debug)]
pub struct S3Fs {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl S3Fs {
    pub fn start(work: &Path) -> R<S3Fs> {
        let bin = s3s_fs_bin().ok_or(
            "`s3s-fs` not found ($S3S_FS, <repo>/.tools/bin, PATH): run scripts/bench.sh, which installs it",
        )?;
        let dir = open_tempdir(work, "s3s-fs")?;
        let data = dir.path().join("data");
        let bucket = data.join(S3_BUCKET);
        std::fs::create_dir_all(&bucket).map_err(|e| format!("{}: {e}", bucket.display()))?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&bin);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(&data);
            let mut proc = Proc::spawn("s3s-fs", cmd, dir.path())?;
            match proc.wait_port(port) {
                Ok(()) => {
                    return Ok(S3Fs {
                        proc,
                        port,
                        _dir: dir,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The `storage:` section of a replica's config; the keys come from [`S3Fs::env`].
    pub fn storage_yaml(&self) -> String {
        format!(
            "storage:\n  s3: {{bucket: {S3_BUCKET}, region: us-east-1, endpoint: \"http://127.0.0.1:{}\",\n       \
             accessKeyIdFromEnv: S3_KEY, secretAccessKeyFromEnv: S3_SECRET}}\n",
            self.port
        )
    }

    /// The keys, for the variables [`S3Fs::storage_yaml`] names.
    pub fn env() -> [(&'static str, &'static str); 2] {
        [("S3_KEY", S3_ACCESS_KEY), ("S3_SECRET", S3_SECRET_KEY)]
    }
}

/// Where `s3s-fs` is: `$S3S_FS`, else `<repo>/.tools/bin/s3s-fs` (where
/// `scripts/install-test-deps.sh` and `scripts/bench.sh` put it), else `PATH`.
pub fn s3s_fs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = manifest_dir
        .parent()
        .unwrap_or(manifest_dir)
        .join(".tools/bin/s3s-fs");
    if tools.is_file() {
        return Some(tools);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    })
}

pub fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nginx")
}

/// `true` if `cmd` can be run (found on PATH or at an absolute path).
pub fn have(cmd: &Path) -> bool {
    Command::new(cmd)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

static WORK_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory the watchdog removes if it has to end the run.
pub fn set_watchdog_dir(p: &Path) {
    if let Ok(mut w) = WORK_DIR.lock() {
        *w = Some(p.to_owned());
    }
}

/// Ends the whole run (children killed by pid, work dir removed) if it exceeds `limit`.
pub fn start_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("[bench] time limit of {limit:?} exceeded: stopping");
        kill_all();
        if let Some(d) = WORK_DIR.lock().ok().and_then(|w| w.clone()) {
            let _ = std::fs::remove_dir_all(d);
        }
        std::process::exit(3);
    });
}
