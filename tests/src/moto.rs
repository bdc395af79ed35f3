//! A local AWS endpoint: `moto_server` (PyPI `moto[server]`, installed into `<repo>/.venv` by
//! `scripts/install-test-deps.sh`) on `127.0.0.1:<free port>`.
//!
//! moto's ECR `GetAuthorizationToken` returns base64 `AWS:123456789012-auth-token` with an
//! expiry in 2015 (already past). moto's request recorder (`/moto-api/recorder/...`) is
//! switched on at start, so tests can count which AWS operations reached it and with which
//! signing credentials.

use crate::procs::ChildProc;
use crate::raw;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The password moto's ECR token decodes to (after `AWS:`).
pub const ECR_PASSWORD: &str = "123456789012-auth-token";
/// The token moto's ECR `GetAuthorizationToken` returns: base64 of `AWS:<ECR_PASSWORD>`.
pub const ECR_TOKEN: &str = "QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu";

/// Where `moto_server` is: `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`, else `PATH`.
pub fn moto_server_bin() -> Option<PathBuf> {
    crate::locate_tool("MOTO_SERVER", ".venv/bin/moto_server", "moto_server")
}

/// Whether `moto_server` can be run (under CI a missing one fails the test).
pub fn require_moto() -> bool {
    crate::require_located(
        "moto_server",
        moto_server_bin().is_some(),
        "$MOTO_SERVER, <repo>/.venv/bin, PATH",
    )
}

/// A running `moto_server`; killed on drop.
#[derive(Debug)]
pub struct Moto {
    proc: ChildProc,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` and turns its request recorder on.
    pub fn start() -> Moto {
        let bin = moto_server_bin().expect("moto_server not found (call require_moto first)");
        let mut last_err = String::new();
        for attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = crate::free_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
                .env("NO_COLOR", "1")
                .env_remove("HTTP_PROXY")
                .env_remove("HTTPS_PROXY")
                .env_remove("http_proxy")
                .env_remove("https_proxy");
            let mut proc = ChildProc::spawn(&format!("moto-{attempt}"), cmd, dir.path());
            match wait_running(&mut proc, port, Duration::from_secs(30)) {
                Ok(()) => {
                    let moto = Moto {
                        proc,
                        port,
                        _dir: dir,
                    };
                    let r = moto.api("POST", "/moto-api/recorder/start-recording");
                    assert_eq!(r.status, 200, "moto start-recording: {}", r.body_str());
                    return moto;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("moto_server did not start: {last_err}");
    }

    /// `http://127.0.0.1:PORT` (for `AWS_ENDPOINT_URL_ECR`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn api(&self, method: &str, target: &str) -> raw::RawResponse {
        raw::request_timeout(
            &format!("127.0.0.1:{}", self.port),
            method,
            target,
            &[],
            if method == "POST" { Some(b"") } else { None },
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{method} {}{target}: {e}", self.endpoint()))
    }

    /// Every AWS request moto recorded since start: JSON objects with `headers`, `method`,
    /// `url`, `body` (moto's own `/moto-api/` calls are not recorded).
    pub fn recorded_requests(&self) -> Vec<serde_json::Value> {
        let r = self.api("GET", "/moto-api/recorder/download-recording");
        assert_eq!(r.status, 200, "moto download-recording: {}", r.body_str());
        r.body_str()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("moto recording line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Recorded requests whose `X-Amz-Target` ends with `.{operation}`, e.g.
    /// `GetAuthorizationToken`.
    pub fn operations(&self, operation: &str) -> Vec<serde_json::Value> {
        let suffix = format!(".{operation}");
        self.recorded_requests()
            .into_iter()
            .filter(|r| header(r, "X-Amz-Target").is_some_and(|t| t.ends_with(&suffix)))
            .collect()
    }

    /// moto's own log (stderr: one werkzeug line per request).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }
}

/// A header of a recorded request (case-insensitive name).
pub fn header<'a>(request: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    request
        .get("headers")?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// Waits for werkzeug's `Running on http://127.0.0.1:PORT` and a connectable port.
fn wait_running(proc: &mut ChildProc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let needle = format!("Running on http://127.0.0.1:{port}");
    loop {
        if proc.stderr().contains(&needle)
            && std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(1),
            )
            .is_ok()
        {
            return Ok(());
        }
        if let Some(st) = proc.try_exited() {
            return Err(format!("moto_server exited ({st}):\n{}", proc.log_tail(20)));
        }
        if Instant::now() >= deadline {
            proc.kill();
            return Err(format!(
                "moto_server did not log `{needle}` within {timeout:?}:\n{}",
                proc.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
