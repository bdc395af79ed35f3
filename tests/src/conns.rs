//! Raw connections for the connection-limit tests: sockets that say nothing (or half of
//! something), waiting for the server to close them, a minimal HTTP/2 client (prior
//! knowledge, cleartext) that speaks frames, and HTTP/1.1 requests with a chosen `Host`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first line of it, as a client that stops half-way sends.
pub const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A TCP connection to `addr` (`127.0.0.1:PORT`).
pub fn connect(addr: &str) -> TcpStream {
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    let s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    s
}

/// A connection to `addr` that has sent `bytes` and then says nothing.
pub fn sending(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(bytes).expect("write");
    s
}

/// Waits up to `timeout` for the server to close `s` (EOF or reset), reading (and returning)
/// whatever it sends before; `Err` if the connection is still open at the deadline.
pub fn await_close(s: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open after {timeout:?} ({} byte(s) received)",
                got.len()
            ));
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(got);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// One HTTP/2 frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Frame types.
pub mod frame {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;
    pub const ACK: u8 = 1;
}

/// A cleartext HTTP/2 client with prior knowledge that answers SETTINGS and PING itself.
#[derive(Debug)]
pub struct H2 {
    s: TcpStream,
}

impl H2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub fn connect(addr: &str) -> H2 {
        let mut s = connect(addr);
        s.write_all(H2_PREFACE).expect("preface");
        let mut h2 = H2 { s };
        h2.send(frame::SETTINGS, 0, 0, &[]);
        h2
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).expect("write frame");
    }

    /// `GET path` on `stream` (odd), with `:authority` `authority`; the request ends there.
    pub fn get(&mut self, stream: u32, authority: &str, path: &str) {
        // HPACK: :method GET (static 2), :scheme http (static 6), then :path and :authority
        // as literals without indexing with an indexed name (4 and 1), no Huffman.
        let mut block = vec![0x82, 0x86];
        for (name_index, value) in [(4u8, path), (1u8, authority)] {
            assert!(value.len() < 127, "short values only");
            block.push(name_index);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        // END_STREAM | END_HEADERS
        self.send(frame::HEADERS, 0x5, stream, &block);
    }

    /// The next frame the server sends, answering SETTINGS and PING on the way; `None` when
    /// the server closes the connection. Panics if nothing comes before `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Option<Frame> {
        let mut head = [0u8; 9];
        if !self.read_exact(&mut head, deadline) {
            return None;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if !self.read_exact(&mut payload, deadline) {
            return None;
        }
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        match (f.kind, f.flags & frame::ACK) {
            (frame::SETTINGS, 0) => self.send(frame::SETTINGS, frame::ACK, 0, &[]),
            (frame::PING, 0) => {
                let p = f.payload.clone();
                self.send(frame::PING, frame::ACK, 0, &p);
            }
            _ => {}
        }
        Some(f)
    }

    /// Reads exactly `buf.len()` bytes; false on EOF or reset.
    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> bool {
        let mut n = 0;
        while n < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no HTTP/2 frame before the deadline");
            self.s.set_read_timeout(Some(left)).expect("read timeout");
            match self.s.read(&mut buf[n..]) {
                Ok(0) => return false,
                Ok(k) => n += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return false;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        true
    }
}

/// An HTTP/1.1 answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends one HTTP/1.1 request to `addr` with exactly the header lines given (no `Host` unless
/// given; `Connection: close` and `Content-Length` are added) and reads the answer.
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = connect(addr);
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let got = await_close(&mut s, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Answer { status, body }
}
