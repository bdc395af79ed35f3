//! Runs `wrk -t2 -c64 -dNs --latency` and reads its report.

use crate::R;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Non-2xx/3xx answers plus socket errors.
    pub errors: u64,
}

/// One wrk run against `url`, bounded by `secs` + 30 s.
pub fn run(url: &str, accept: Option<&str>, secs: u64) -> R<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        "-c64",
        &format!("-d{secs}s"),
        "--latency",
        "--timeout",
        "5s",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run wrk: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wrk {url} did not finish within {}s", secs + 30));
            }
            Err(e) => return Err(format!("wrk: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wrk output: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).map_err(|e| format!("wrk {url}: {e}:\n{text}"))
}

fn duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * mult)
}

pub fn parse(text: &str) -> R<WrkResult> {
    let mut r = WrkResult {
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().map_err(|_| "bad Requests/sec")?;
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = duration_ms(v).ok_or("bad 50% latency")?;
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = duration_ms(v).ok_or("bad 99% latency")?;
        } else if l.contains(" requests in ") {
            r.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or("bad request count")?;
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.rps.is_nan() || r.p50_ms.is_nan() || r.p99_ms.is_nan() {
        return Err("no Requests/sec or latency distribution in the output".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report() {
        let out = "Running 10s test @ http://127.0.0.1:1/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us  200.00us   9.00ms   90.00%
    Req/Sec    50.00k     2.00k   55.00k    70.00%
  Latency Distribution
     50%  601.00us
     75%  700.00us
     90%  800.00us
     99%    1.20ms
  1000000 requests in 10.00s, 1.00GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec: 100000.50
Transfer/sec:    100.00MB
";
        let r = parse(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.requests, 1_000_000);
        assert_eq!(r.errors, 8);
        assert!((r.rps - 100_000.5).abs() < 1e-6);
        assert!((r.p50_ms - 0.601).abs() < 1e-9);
        assert!((r.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(duration_ms("1.50s"), Some(1500.0));
    }
}
