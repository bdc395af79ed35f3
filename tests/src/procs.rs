//! Child processes that are always killed: spawned with stdout/stderr going to files so that
//! tests can read them (the server's log, the upstream's access log).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running child process; killed and reaped on drop. Its stdout and stderr are files.
#[derive(Debug)]
pub struct ChildProc {
    name: String,
    child: Option<Child>,
    pid: u32,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl ChildProc {
    /// Spawns `cmd` with stdout -> `<log_dir>/<name>.stdout`, stderr -> `<log_dir>/<name>.stderr`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> ChildProc {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout_path).expect("create stdout log");
        let err = std::fs::File::create(&stderr_path).expect("create stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let pid = child.id();
        ChildProc {
            name: name.to_owned(),
            child: Some(child),
            pid,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the process has exited.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exited().is_none()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Kills (SIGKILL) and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM, waits up to `grace` for exit, then SIGKILL. Returns the exit status if
    /// it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Last `n` lines of stdout and stderr, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            tail(self.stdout()),
            self.name,
            tail(self.stderr())
        )
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("{}", self.log_tail(40));
        }
        self.kill();
    }
}

/// Runs a command to completion with a timeout, returning (status ok, stdout, stderr).
/// Panics if it does not finish in time (the process is killed first).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out_p).expect("out")))
        .stderr(Stdio::from(std::fs::File::create(&err_p).expect("err")));
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "command timed out after {timeout:?}: {desc}\nstderr: {}",
                std::fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&out_p).unwrap_or_default(),
        std::fs::read_to_string(&err_p).unwrap_or_default(),
    )
}
