//! An HTTP/1.1 fault-injecting forwarder to put between the proxy and a real upstream.
//!
//! It listens on `127.0.0.1:<ephemeral>` and forwards each request to a target
//! (`127.0.0.1:UPSTREAM`), one request per connection (`Connection: close` both ways, so the
//! body of every answer ends with the connection). Configure the proxy with the fault proxy's
//! address as the registry name (`scheme: http`): distribution ignores the `Host` header.
//!
//! Rules ([`FaultProxy::add_rule`]) match a request by method (empty: any) and a substring of
//! its target, and apply a [`Fault`]: break the body off (reset or clean close) after N bytes,
//! flip a byte, stall, answer a status of our own instead of forwarding, send an oversized
//! manifest, or rewrite a response header. Each rule fires a bounded or unbounded number of
//! times and counts its hits.
//! [`FaultProxy::refuse`] stops listening altogether (connection refused). Every request seen
//! is logged ([`FaultProxy::requests`]) so tests can count what reached "the upstream".

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// What a matching rule does to a request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward the head and the first N body bytes, then reset the connection (RST).
    ResetAfter(u64),
    /// Forward the head and the first N body bytes, then close cleanly (FIN): a short body.
    TruncateAfter(u64),
    /// Forward everything, with the body byte at this offset inverted (sha256 mismatch).
    FlipByteAt(u64),
    /// Forward N body bytes, then send nothing for `pause`, then the rest.
    StallAfter { bytes: u64, pause: Duration },
    /// Do not forward: answer this status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Wait this long before doing anything (answering or forwarding), then apply the inner
    /// fault (`None`: forward normally). Lets concurrent clients join one download.
    Delayed(Duration, Option<Box<Fault>>),
    /// Do not forward: answer 200 with `size` bytes of a JSON-looking manifest of
    /// `media_type`; with `content_length` false the body is close-delimited (no length).
    Oversized {
        size: usize,
        media_type: String,
        content_length: bool,
    },
    /// Forward normally, but set this response header (replacing the upstream's value):
    /// e.g. a `Content-Type` that lies about the body.
    SetResponseHeader { name: String, value: String },
}

impl Fault {
    /// `Respond` with a status and an OCI-ish error body.
    pub fn status(status: u16) -> Fault {
        Fault::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(
                r#"{{"errors":[{{"code":"INJECTED","message":"fault proxy answered {status}"}}]}}"#
            )
            .into_bytes(),
        }
    }

    /// Adds a header to a `Respond` fault.
    pub fn with_header(mut self, name: &str, value: &str) -> Fault {
        if let Fault::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// One request the fault proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    /// Its `Range` header, if any.
    pub range: Option<String>,
    /// Its `Accept` header, if any.
    pub accept: Option<String>,
    /// The rule that handled it, if one did.
    pub rule: Option<usize>,
}

#[derive(Debug, Clone)]
struct Rule {
    method: String,
    path: String,
    fault: Fault,
    /// Fires this many more times (`None`: always).
    remaining: Option<usize>,
    hits: usize,
    active: bool,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<SeenRequest>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: std::sync::Condvar,
}

impl Shared {
    fn take_fault(
        &self,
        method: &str,
        target: &str,
        range: Option<String>,
        accept: Option<String>,
    ) -> Option<Fault> {
        let mut st = self.state.lock().expect("fault proxy lock");
        let mut picked = None;
        for (i, r) in st.rules.iter_mut().enumerate() {
            if !r.active
                || !(r.method.is_empty() || r.method.eq_ignore_ascii_case(method))
                || !target.contains(&r.path)
                || r.remaining == Some(0)
            {
                continue;
            }
            if let Some(n) = &mut r.remaining {
                *n -= 1;
            }
            r.hits += 1;
            picked = Some((i, r.fault.clone()));
            break;
        }
        st.seen.push(SeenRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            range,
            accept,
            rule: picked.as_ref().map(|(i, _)| *i),
        });
        self.changed.notify_all();
        picked.map(|(_, f)| f)
    }
}

/// A running fault proxy; stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    listening: watch::Sender<bool>,
    rt: Option<tokio::runtime::Runtime>,
}

/// Handle of a rule, for [`FaultProxy::hits`] and [`FaultProxy::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

impl FaultProxy {
    /// Forwards `127.0.0.1:<ephemeral>` to `target` (`IP:PORT`), no faults until told.
    pub fn start(target: &str) -> FaultProxy {
        let target: SocketAddr = target.parse().expect("fault proxy target IP:PORT");
        assert!(target.ip().is_loopback(), "loopback targets only");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: std::sync::Condvar::new(),
        });
        let (listening, _) = watch::channel(true);
        let addr = rt
            .block_on(async { bind("127.0.0.1:0".parse().expect("addr")) })
            .and_then(|l| l.local_addr())
            .expect("bind fault proxy");
        let fp = FaultProxy {
            addr,
            target,
            shared,
            listening,
            rt: Some(rt),
        };
        fp.spawn_accept_loop();
        fp
    }

    fn spawn_accept_loop(&self) {
        let (addr, target, shared) = (self.addr, self.target, self.shared.clone());
        let mut rx = self.listening.subscribe();
        let rt = self.rt.as_ref().expect("runtime");
        // Bind synchronously so that "listening again" is true when `refuse(false)` returns.
        let listener = rt
            .block_on(async {
                let mut last = None;
                for _ in 0..50 {
                    match bind(addr) {
                        Ok(l) => return Ok(l),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(last.expect("an error"))
            })
            .unwrap_or_else(|e| panic!("fault proxy: bind {addr}: {e}"));
        rt.spawn(async move {
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((client, _)) = acc else { continue };
                        let sh = shared.clone();
                        tokio::spawn(async move {
                            let _ = handle(client, target, sh).await;
                        });
                    }
                    ch = rx.changed() => {
                        if ch.is_err() || !*rx.borrow() {
                            return; // drops the listener: connections are refused
                        }
                    }
                }
            }
        });
    }

    /// `127.0.0.1:PORT`: the registry name to configure in the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Adds a rule: requests whose method is `method` (any if empty) and whose target
    /// contains `path` get `fault`, `times` times (`None`: every time). Rules are tried in
    /// the order they were added.
    pub fn add_rule(&self, method: &str, path: &str, fault: Fault, times: Option<usize>) -> RuleId {
        let mut st = self.shared.state.lock().expect("fault proxy lock");
        st.rules.push(Rule {
            method: method.into(),
            path: path.into(),
            fault,
            remaining: times,
            hits: 0,
            active: true,
        });
        RuleId(st.rules.len() - 1)
    }

    /// Deactivates a rule (its hit count stays readable).
    pub fn remove(&self, id: RuleId) {
        self.shared.state.lock().expect("fault proxy lock").rules[id.0].active = false;
    }

    /// Deactivates every rule.
    pub fn clear(&self) {
        for r in &mut self.shared.state.lock().expect("fault proxy lock").rules {
            r.active = false;
        }
    }

    /// How many requests the rule handled.
    pub fn hits(&self, id: RuleId) -> usize {
        self.shared.state.lock().expect("fault proxy lock").rules[id.0].hits
    }

    /// `true`: stop listening (new connections are refused); `false`: listen again on the
    /// same port.
    pub fn refuse(&self, on: bool) {
        let was = *self.listening.borrow();
        if on && was {
            self.listening.send_replace(false);
            // Wait (bounded) until the port really refuses.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
                .is_ok()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "fault proxy still accepting after refuse(true)"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        } else if !on && !was {
            self.listening.send_replace(true);
            self.spawn_accept_loop();
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared
            .state
            .lock()
            .expect("fault proxy lock")
            .seen
            .clone()
    }

    /// Requests with this method (any if empty) whose target contains `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| (method.is_empty() || r.method == method) && r.target.contains(path))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.listening.send_replace(false);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads a message head (up to 1 MiB); returns (head, bytes after it).
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > 1 << 20 {
            return Ok(None);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head's lines with `Connection`/`Keep-Alive` replaced by `Connection: close`.
fn rewrite_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for (i, l) in text.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        if i > 0 {
            let name = l.split(':').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// The head with header `name` set to `value` (replaced if present, else added).
fn set_header(head: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for (i, l) in text.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        let key = l.split(':').next().unwrap_or("").trim();
        if i > 0 && key.eq_ignore_ascii_case(name) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!("{name}: {value}\r\n\r\n"));
    out.into_bytes()
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

async fn handle(mut client: TcpStream, target: SocketAddr, sh: Arc<Shared>) -> std::io::Result<()> {
    let Some((head, _body)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.split("\r\n").next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let req_target = first.next().unwrap_or("").to_owned();
    let fault = sh.take_fault(
        &method,
        &req_target,
        header_of(&text, "range"),
        header_of(&text, "accept"),
    );
    let is_head = method == "HEAD";
    let fault = match fault {
        Some(Fault::Delayed(d, inner)) => {
            tokio::time::sleep(d).await;
            inner.map(|b| *b)
        }
        f => f,
    };
    match &fault {
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut h = format!("HTTP/1.1 {status} Injected\r\n");
            for (k, v) in headers {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
            h.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ));
            client.write_all(h.as_bytes()).await?;
            if !is_head {
                client.write_all(body).await?;
            }
            client.shutdown().await?;
            return Ok(());
        }
        Some(Fault::Oversized {
            size,
            media_type,
            content_length,
        }) => {
            let mut h = format!("HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\n");
            if *content_length {
                h.push_str(&format!("Content-Length: {size}\r\n"));
            }
            h.push_str("Connection: close\r\n\r\n");
            client.write_all(h.as_bytes()).await?;
            if !is_head {
                // {"schemaVersion":2,"annotations":{"x":"aaaa...."}}
                let prefix = br#"{"schemaVersion":2,"annotations":{"x":""#;
                let suffix = br#""}}"#;
                client.write_all(prefix).await?;
                let mut left = size.saturating_sub(prefix.len() + suffix.len());
                let filler = vec![b'a'; 64 * 1024];
                while left > 0 {
                    let n = left.min(filler.len());
                    if client.write_all(&filler[..n]).await.is_err() {
                        return Ok(()); // the proxy gave up reading: fine
                    }
                    left -= n;
                }
                let _ = client.write_all(suffix).await;
            }
            let _ = client.shutdown().await;
            return Ok(());
        }
        _ => {}
    }
    let mut up = TcpStream::connect(target).await?;
    up.write_all(&rewrite_head(&head)).await?;
    let Some((resp_head, first_body)) = read_head(&mut up).await? else {
        return Ok(());
    };
    let resp_head = match &fault {
        Some(Fault::SetResponseHeader { name, value }) => set_header(&resp_head, name, value),
        _ => resp_head,
    };
    client.write_all(&rewrite_head(&resp_head)).await?;
    let mut off = 0u64;
    let mut stalled = false;
    let mut chunk = first_body;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !chunk.is_empty() {
            let len = chunk.len() as u64;
            match &fault {
                Some(Fault::ResetAfter(n)) | Some(Fault::TruncateAfter(n)) if off + len >= *n => {
                    let keep = (n - off) as usize;
                    client.write_all(&chunk[..keep]).await?;
                    client.flush().await?;
                    if matches!(fault, Some(Fault::ResetAfter(_))) {
                        client.set_zero_linger()?;
                        drop(client);
                    } else {
                        client.shutdown().await?;
                    }
                    return Ok(());
                }
                Some(Fault::FlipByteAt(at)) if (off..off + len).contains(at) => {
                    chunk[(at - off) as usize] ^= 0xff;
                }
                Some(Fault::StallAfter { bytes, pause }) if !stalled && off + len >= *bytes => {
                    let keep = (bytes - off) as usize;
                    client.write_all(&chunk[..keep]).await?;
                    client.flush().await?;
                    tokio::time::sleep(*pause).await;
                    stalled = true;
                    client.write_all(&chunk[keep..]).await?;
                    off += len;
                    chunk.clear();
                    continue;
                }
                _ => {}
            }
            client.write_all(&chunk).await?;
            off += len;
        }
        let n = up.read(&mut buf).await?;
        if n == 0 {
            client.shutdown().await?;
            return Ok(());
        }
        chunk = buf[..n].to_vec();
    }
}
