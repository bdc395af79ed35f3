//! Async HTTP (reqwest) for streaming large bodies.

use futures_util::StreamExt;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1800))
        .build()
        .expect("reqwest client")
}

/// GETs `url`, streaming the body into `sha256sum` (never held in memory).
/// Returns (status, bytes received, `sha256:<hex>`).
pub async fn get_streaming_sha256(url: &str) -> (u16, u64, String) {
    let resp = client().get(url).send().await.expect("send GET");
    let status = resp.status().as_u16();
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stream = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body chunk");
        n += chunk.len() as u64;
        stdin.write_all(&chunk).expect("pipe to sha256sum");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("sha256sum");
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (status, n, format!("sha256:{hex}"))
}
