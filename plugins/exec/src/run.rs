//! Running a credential program: an explicit environment, the request on stdin, stdout
//! read up to a limit, a deadline after which the program is killed, and one-line,
//! length-capped, control-character-escaped text for errors. Shared by the `exec` and
//! `kubelet` plugins (the `kubelet` crate includes this file).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a program wrote and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output (at most the limit).
    pub stdout: Vec<u8>,
    /// The start of its standard error.
    pub stderr: Vec<u8>,
}

/// Why a program gave no output.
#[derive(Debug)]
pub enum RunError {
    /// The program file does not exist (or is not on the search path).
    NotFound,
    /// It could not be started.
    Spawn(std::io::Error),
    /// It did not finish within the time allowed; it was killed.
    TimedOut(Duration),
    /// It wrote more than the limit to its standard output; it was killed.
    TooMuchOutput(usize),
    /// Reading or waiting failed.
    Io(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::NotFound => f.write_str("not found"),
            RunError::Spawn(e) => write!(f, "cannot be started: {e}"),
            RunError::TimedOut(d) => {
                write!(f, "did not finish within {:.1}s (killed)", d.as_secs_f64())
            }
            RunError::TooMuchOutput(limit) => {
                write!(f, "wrote more than {limit} bytes (killed)")
            }
            RunError::Io(e) => write!(f, "failed: {e}"),
        }
    }
}

/// The most read from a program's standard error (for error messages).
const STDERR_LIMIT: usize = 4096;

/// A program and how to run it.
#[derive(Debug, Clone)]
pub struct Program {
    /// The file to run: a path, or a bare name looked up in `path_var`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The whole environment it gets (nothing else of this process's is passed).
    pub env: Vec<(OsString, OsString)>,
    /// The `PATH` used to find a bare `program` (and passed to it).
    pub path_var: Option<OsString>,
}

impl Program {
    /// The file that would run: `program` itself when it has a `/`, else the first match in
    /// `path_var`.
    pub fn resolve(&self) -> Option<PathBuf> {
        if self.program.components().count() > 1 || self.program.is_absolute() {
            return self.program.is_file().then(|| self.program.clone());
        }
        let path_var = self.path_var.as_ref()?;
        std::env::split_paths(path_var)
            .map(|dir| dir.join(&self.program))
            .find(|candidate| is_executable(candidate))
    }

    /// Runs it with `stdin` as its standard input, killing it at `deadline` or once it has
    /// written more than `limit` bytes to its standard output.
    pub fn run(&self, stdin: &[u8], deadline: Instant, limit: usize) -> Result<Output, RunError> {
        let file = self.resolve().ok_or(RunError::NotFound)?;
        let mut command = Command::new(&file);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = &self.path_var {
            command.env("PATH", path);
        }
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RunError::NotFound,
            _ => RunError::Spawn(e),
        })?;
        let started = Instant::now();
        // Each pipe on its own thread, so that none can fill up and block the program.
        if let Some(mut input) = child.stdin.take() {
            let data = stdin.to_vec();
            std::thread::spawn(move || {
                let _ = input.write_all(&data);
            });
        }
        let (out_tx, out_rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let result = out
                    .take(limit as u64 + 1)
                    .read_to_end(&mut buf)
                    .map(|_| buf);
                let _ = out_tx.send(result);
            });
        }
        let (err_tx, err_rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.take(STDERR_LIMIT as u64).read_to_end(&mut buf);
                let _ = err_tx.send(buf);
            });
        }
        let kill = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        let allowed = deadline.saturating_duration_since(started);
        let stdout = match out_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(buf)) if buf.len() > limit => {
                kill(&mut child);
                return Err(RunError::TooMuchOutput(limit));
            }
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => {
                kill(&mut child);
                return Err(RunError::Io(e));
            }
            Err(_) => {
                kill(&mut child);
                return Err(RunError::TimedOut(allowed));
            }
        };
        // Standard output is closed: the program has (almost always) exited. Wait for it,
        // still bounded by the deadline (it may have closed stdout and kept running).
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill(&mut child);
                    return Err(RunError::TimedOut(allowed));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(RunError::Io(e)),
            }
        };
        let stderr = err_rx
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// `text` as one line of at most `max` characters: whitespace runs become one space,
/// other control characters are escaped (`\u{1b}`), and a longer text ends with `...`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= max {
                out.push_str("...");
                return out;
            }
            if c.is_control() {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
            count += 1;
        }
    }
    out
}

/// The environment passed to a program: `PATH` is handled by [`Program`]; each name in
/// `names` is copied from this process's environment when set.
pub fn env_from_names(names: &[String]) -> Vec<(OsString, OsString)> {
    names
        .iter()
        .filter_map(|n| std::env::var_os(n).map(|v| (OsString::from(n), v)))
        .collect()
}

/// Splits the `env=` option: names separated by `:` (commas separate options).
pub fn parse_env_names(value: Option<&str>) -> Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in value.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "option \"env\": \"{}\" is not an environment variable name",
                one_line(name, 64)
            ));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_and_caps() {
        assert_eq!(one_line("a\n b\t\tc", 100), "a b c");
        assert_eq!(one_line("x\u{1b}[31my", 100), "x\\u{1b}[31my");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }

    #[test]
    fn env_names() {
        assert_eq!(
            parse_env_names(Some("HOME:AWS_PROFILE")).unwrap(),
            ["HOME", "AWS_PROFILE"]
        );
        assert!(parse_env_names(Some("A=B")).is_err());
        assert!(parse_env_names(None).unwrap().is_empty());
    }
}
