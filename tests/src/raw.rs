//! A tiny blocking HTTP/1.1 client that sends the request target and headers exactly as given:
//! no path normalisation (`..`, `%2e%2e` reach the server verbatim), repeated header lines
//! stay separate lines. One request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` (`127.0.0.1:PORT`) with `target` verbatim on the request line.
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<RawResponse> {
    request_timeout(addr, method, target, headers, body, Duration::from_secs(60))
}

pub fn request_timeout(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<RawResponse> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    s.flush()?;
    let mut buf = Vec::new();
    // Read to EOF (the server closes after one response). A reset after a complete
    // response still counts.
    let mut chunk = vec![0u8; 256 * 1024];
    let mut head: Option<(usize, Head)> = None;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
        if head.is_none() {
            if let Some(end) = head_end(&buf) {
                head = parse_head(&buf[..end]).ok().map(|h| (end, h));
            }
        }
        if let Some((end, h)) = &head {
            if response_complete(&buf, *end, h, method) {
                break;
            }
        }
    }
    parse_response(&buf, method)
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Whether `buf` already holds a whole response (so a server that keeps the connection open
/// despite `Connection: close` does not make us wait for the timeout).
fn response_complete(buf: &[u8], end: usize, r: &Head, method: &str) -> bool {
    if method == "HEAD" || r.0 == 204 || r.0 == 304 || (100..200).contains(&r.0) {
        return true;
    }
    let hdr = |n: &str| {
        r.1.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if hdr("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return buf.ends_with(b"0\r\n\r\n") && dechunk(&buf[end..]).is_some();
    }
    if let Some(cl) = hdr("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        return buf.len() - end >= cl;
    }
    false
}

type Head = (u16, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> std::io::Result<Head> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// Decodes a complete chunked body; None if incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_s = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn parse_response(buf: &[u8], method: &str) -> std::io::Result<RawResponse> {
    let end = head_end(buf).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ),
        )
    })?;
    let (status, headers) = parse_head(&buf[..end])?;
    let rest = &buf[end..];
    let resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete chunked body")
        })?
    } else if let Some(cl) = resp
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if rest.len() < cl {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("body truncated: {} of {cl} bytes", rest.len()),
            ));
        }
        rest[..cl].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse { body, ..resp })
}

/// `GET path` on `127.0.0.1:port` (a metrics, health or admin port), bounded by 20 s;
/// panics when nothing answers.
pub fn get_local(port: u16, path: &str) -> RawResponse {
    request_timeout(
        &format!("127.0.0.1:{port}"),
        "GET",
        path,
        &[],
        None,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path}: {e}"))
}
