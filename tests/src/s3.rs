//! A real S3-compatible server for the shared-storage tests: `s3s-fs` (crates.io, installed
//! into `<repo>/.tools/bin` by `scripts/install-test-deps.sh`) on `127.0.0.1:<free port>`,
//! storing each bucket as a directory of files, so tests can also look at what the bucket
//! holds. It can be stopped and started again on the same port and data (the bucket going
//! away and coming back).

use crate::procs::ChildProc;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "AKIDTESTMIRROR";
/// The secret key the server accepts (tests check it never shows up in logs).
pub const SECRET_KEY: &str = "s3cr3t-TEST-never-logged-9f3a";

/// Where `s3s-fs` is: `$S3S_FS`, else `<repo>/.tools/bin/s3s-fs`, else `PATH`.
pub fn s3s_fs_bin() -> Option<PathBuf> {
    crate::locate_tool("S3S_FS", ".tools/bin/s3s-fs", "s3s-fs")
}

/// Whether `s3s-fs` can be run (under CI a missing one fails the test).
pub fn require_s3s_fs() -> bool {
    crate::require_located(
        "s3s-fs",
        s3s_fs_bin().is_some(),
        "$S3S_FS, <repo>/.tools/bin, PATH",
    )
}

/// A running (or stopped) `s3s-fs` with one bucket.
#[derive(Debug)]
pub struct S3Server {
    proc: Option<ChildProc>,
    port: u16,
    bucket: String,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    starts: u32,
}

impl S3Server {
    /// Starts a server with an empty bucket named `bucket` (another free port is tried when
    /// the first is taken meanwhile).
    pub fn start(bucket: &str) -> S3Server {
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(data.path().join(bucket)).expect("bucket dir");
        let mut s = S3Server {
            proc: None,
            port: crate::free_port(),
            bucket: bucket.to_owned(),
            data,
            logs: tempfile::tempdir().expect("tempdir"),
            starts: 0,
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => {
                    last_err = e;
                    s.port = crate::free_port();
                }
            }
        }
        panic!("s3s-fs did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = s3s_fs_bin().expect("s3s-fs not found (call require_s3s_fs first)");
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        self.starts += 1;
        let mut proc = ChildProc::spawn(&format!("s3s-fs-{}", self.starts), cmd, self.logs.path());
        wait_accepting(&mut proc, self.port, Duration::from_secs(30))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The `storage:` section of a config that uses this bucket under `prefix`, with the keys
    /// read from the environment variables `S3_KEY` / `S3_SECRET` (give them with
    /// [`S3Server::env`]); each replica keeps its local copy at its own `imagePath`.
    pub fn storage_yaml(&self, prefix: &str) -> String {
        format!(
            "storage:\n  s3:\n    bucket: {}\n    prefix: {prefix}\n    region: us-east-1\n    endpoint: {}\n    accessKeyIdFromEnv: S3_KEY\n    secretAccessKeyFromEnv: S3_SECRET",
            self.bucket,
            self.endpoint(),
        )
    }

    /// The environment a replica needs for [`S3Server::storage_yaml`]: the keys, and no
    /// instance-metadata probing by any AWS code.
    pub fn env() -> [(&'static str, &'static str); 3] {
        [
            ("S3_KEY", ACCESS_KEY),
            ("S3_SECRET", SECRET_KEY),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }

    /// Stops the server (the bucket is unreachable until [`S3Server::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("s3s-fs restart: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("s3s-fs did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Object keys in the bucket (files under its directory, relative, `/`-separated),
    /// without s3s-fs's own bookkeeping files; sorted.
    pub fn keys(&self) -> Vec<String> {
        let root = self.data.path().join(&self.bucket);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        let mut budget = 100_000usize;
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                budget = budget.saturating_sub(1);
                assert!(budget > 0, "bucket holds over 100000 entries");
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&root) {
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    if !rel.starts_with(".") && !rel.contains("/.") {
                        out.push(rel);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The bytes of object `key`, if there is one.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data.path().join(&self.bucket).join(key)).ok()
    }

    /// Writes object `key` (as another writer of the bucket would), through the server's
    /// data directory.
    pub fn put_object(&self, key: &str, bytes: &[u8]) {
        let path = self.data.path().join(&self.bucket).join(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("object directory");
        }
        std::fs::write(path, bytes).expect("object written");
    }

    /// Removes object `key` through the server's data directory.
    pub fn delete_object(&self, key: &str) {
        std::fs::remove_file(self.data.path().join(&self.bucket).join(key))
            .expect("object removed");
    }

    /// The server's log.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| format!("{}{}", p.stdout(), p.stderr()))
            .unwrap_or_default()
    }
}

/// Waits until `port` accepts connections (or the process exits), bounded by `timeout`.
fn wait_accepting(proc: &mut ChildProc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .is_ok()
        {
            return Ok(());
        }
        if let Some(st) = proc.try_exited() {
            return Err(format!("s3s-fs exited ({st}):\n{}", proc.log_tail(20)));
        }
        if Instant::now() >= deadline {
            proc.kill();
            return Err(format!(
                "s3s-fs did not accept on port {port} within {timeout:?}:\n{}",
                proc.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
