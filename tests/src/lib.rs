//! The end-to-end test rig for `ociregistry`.
//!
//! Everything here drives real components: Debian's `docker-registry` (CNCF distribution 2.8)
//! as the upstream ([`upstream`]), an in-process bearer-token endpoint that distribution
//! trusts ([`token_server`]), generated images pushed with real `skopeo` ([`images`]), the real
//! `ociregistry` binary ([`proxy`]) and plain HTTP clients ([`http`], [`raw`]).
//!
//! Rules every helper follows: loopback only (`127.0.0.1`), a free port and a temp dir per
//! instance, every wait bounded by a deadline, every child process killed on drop.

pub mod cache;
pub mod conns;
pub mod endless;
pub mod fault_proxy;
pub mod fixture_plugins;
pub mod http;
pub mod images;
pub mod moto;
pub mod pki;
pub mod policy;
pub mod procs;
pub mod proxy;
pub mod raw;
pub mod s3;
pub mod skopeo;
pub mod throttle;
pub mod tmpfs;
pub mod token_server;
pub mod upstream;

pub use images::{BlobInfo, ImageKind, ManifestInfo, PushedImage};
pub use proxy::{Proxy, ProxyBuilder, RegistryAuth, RegistryEntry};
pub use token_server::{TokenServer, TokenServerOptions};
pub use upstream::{Upstream, UpstreamAuth};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// OCI and Docker media types used throughout.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Every manifest type a modern client accepts.
    pub const ALL_MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
}

/// True when running under CI (`CI=true` or `CI=1`): a missing tool is then a failure.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .ok()
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("true" | "1" | "yes")
    )
}

/// Whether an executable is on `PATH` (or is an existing path).
pub fn tool_available(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Checks that every tool is installed. Under CI a missing tool panics (the test FAILS);
/// otherwise it prints a loud message and returns false so that the caller can skip.
///
/// ```ignore
/// if !require_tools(&["docker-registry", "skopeo"]) { return; }
/// ```
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !tool_available(n))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "required tool(s) missing: {}; run scripts/install-test-deps.sh (or scripts/test.sh)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("{msg} (CI=true: missing tools fail the test)");
    }
    eprintln!("\n!!!!!!!!!! SKIPPING TEST: {msg} !!!!!!!!!!\n");
    false
}

/// `SECS(5)`: a duration in seconds, short to read in test timeouts.
pub const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The tools an upstream + skopeo test needs.
pub const UPSTREAM_TOOLS: [&str; 4] = ["docker-registry", "skopeo", "htpasswd", "openssl"];

/// `require_tools(&UPSTREAM_TOOLS)`.
pub fn require_upstream_tools() -> bool {
    require_tools(&UPSTREAM_TOOLS)
}

/// `sha256:<hex>` of some bytes.
/// Where a tool the tests run is: `$<env>`, else `<repo>/<in_repo>`, else `name` on `PATH`.
pub fn locate_tool(env: &str, in_repo: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let local = fixture_plugins::repo_root().join(in_repo);
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether the tool `name` was found. Under CI a missing one FAILS the test (panics);
/// otherwise a loud message (`looked`: where) is printed and the caller skips.
pub fn require_located(name: &str, found: bool, looked: &str) -> bool {
    if found {
        return true;
    }
    let msg = format!(
        "required tool missing: {name} (looked at {looked}); run scripts/install-test-deps.sh (or scripts/test.sh)"
    );
    if in_ci() {
        panic!("{msg} (CI=true: missing tools fail the test)");
    }
    eprintln!("\n!!!!!!!!!! SKIPPING TEST: {msg} !!!!!!!!!!\n");
    false
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file. Large files go through `sha256sum` (debug-built sha2 is slow).
pub fn sha256_file(path: &Path) -> String {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len();
    if len > 32 << 20 && tool_available("sha256sum") {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("run sha256sum");
        assert!(out.status.success(), "sha256sum {} failed", path.display());
        let s = String::from_utf8_lossy(&out.stdout);
        let hex = s.split_whitespace().next().expect("sha256sum output");
        return format!("sha256:{hex}");
    }
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("hash file");
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// A path as `&str` (test paths are UTF-8), for command-line arguments and log checks.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A free TCP port on 127.0.0.1 (bound and released; callers retry on a lost race).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}
/// Waits on `changed` until `pred` holds for the value behind `stats`, and returns a copy of
/// it; panics naming `who`, `what` and the last value after `timeout`. The shared wait of the
/// rig's in-process servers (throttle, fake upstreams), whose counters notify `changed`.
pub fn wait_for_stats<T: Clone + std::fmt::Debug>(
    who: &str,
    stats: &std::sync::Mutex<T>,
    changed: &std::sync::Condvar,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut s = stats.lock().expect("stats lock");
    loop {
        if pred(&s) {
            return s.clone();
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("{who}: timed out after {timeout:?} waiting for {what}; stats {s:?}");
        }
        s = changed
            .wait_timeout(s, deadline - now)
            .expect("stats lock")
            .0;
    }
}

/// Polls `f` every `every` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Parses an OCI error body and returns the codes, e.g. `["MANIFEST_UNKNOWN"]`.
pub fn oci_error_codes(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|errs| {
            errs.iter()
                .filter_map(|e| e.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `body` is an OCI error body (`{"errors":[{"code":..,"message":..}]}`) whose
/// first error has `code`.
pub fn assert_oci_error(body: &[u8], code: &str, context: &str) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{context}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let errs = v
        .get("errors")
        .and_then(|e| e.as_array())
        .unwrap_or_else(|| panic!("{context}: no `errors` array in {v}"));
    assert!(!errs.is_empty(), "{context}: empty `errors` array");
    for e in errs {
        assert!(
            e.get("code").and_then(|c| c.as_str()).is_some(),
            "{context}: error without a string `code`: {e}"
        );
        assert!(
            e.get("message").is_some_and(|m| m.is_string()),
            "{context}: error without a string `message`: {e}"
        );
    }
    let first = errs[0]["code"].as_str().unwrap_or_default();
    assert_eq!(first, code, "{context}: OCI error code (body {v})");
}
