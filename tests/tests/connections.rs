//! Issue 10, item 5 (connections) and the token-less admin API (item 7): every listener the
//! server opens (pull port, admin API, metrics, health) closes a connection that sends
//! nothing, or half an HTTP/2 preface, after the header timeout; idle connections close after
//! the idle timeout (HTTP/2 with GOAWAY); the per-client cap applies on every listener; the
//! admin API without a token refuses what a web page in a browser could send.
//!
//! HTTP/2 keep-alive PINGs are shown in-process (`server::listener::tests::
//! an_idle_http2_connection_gets_keep_alive_pings`: waiting 30s for one here would add
//! nothing), the IPv6 /64 grouping by a unit test (loopback has one IPv6 address).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ociregistry_e2e::conns::{self, H2, HALF_PREFACE, frame};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::pki::TestPki;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    Proxy, ProxyBuilder, SECS, free_port, require_tools, require_upstream_tools, skopeo, wait_for,
};

/// The log line of each connection closed by the header timeout.
const HEADER_TIMEOUT_LINE: &str = "closed: no request within the header timeout";

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// 256 connections that send nothing are all closed by the server after `headerTimeout`
/// (2s here), while a real skopeo pull through the same port works.
#[test]
fn silent_connections_are_closed_after_the_header_timeout_while_a_pull_works() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "conn-silent", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .config_line("headerTimeout: 2s")
        // High enough that the cap does not refuse them first: this shows the timeout.
        .config_line("maxConnectionsPerClient: 1000")
        .start();
    let mut silent: Vec<_> = (0..256).map(|_| conns::connect(&proxy.host())).collect();
    // A pull while they are open.
    skopeo::pull_and_verify(
        &format!("{}/{}:{}", proxy.host(), img.repo, img.tag),
        &img,
        " with 256 silent connections open",
    );
    for (i, s) in silent.iter_mut().enumerate() {
        let got = conns::await_close(s, SECS(20))
            .unwrap_or_else(|e| panic!("silent connection {i} of 256: {e}"));
        assert!(got.is_empty(), "the server answered nothing: {got:?}");
    }
    wait_for(
        "256 header-timeout log lines",
        SECS(10),
        Duration::from_millis(50),
        || (count(&proxy.log(), HEADER_TIMEOUT_LINE) >= 256).then_some(()),
    );
    // And it serves on.
    assert_eq!(proxy.get("/v2/", &[]).status, 200);
}

/// Before the first request one deadline covers everything: half an HTTP/2 preface, the
/// whole preface but no request, half an HTTP/1 request head, a TCP connection to a TLS port
/// that never starts the handshake, and a TLS connection that completes its handshake and
/// then says nothing are all closed after the header timeout. No new key: the default (30s)
/// applies, so that the code before this change fails on the behaviour.
#[test]
fn half_a_preface_or_a_silent_tls_connection_is_closed_after_the_header_timeout() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let pki = TestPki::generate("127.0.0.1");
    let plain = Proxy::builder().upstream(&up).start();
    let tls = Proxy::builder()
        .upstream(&up)
        .config_line(&format!(
            "serverTlsConfig:\n  cert: \"{}\"\n  key: \"{}\"",
            pki.server_crt.display(),
            pki.server_key.display()
        ))
        .start();
    let mut held = vec![
        (
            "half a preface",
            conns::sending(&plain.host(), HALF_PREFACE),
        ),
        (
            "a preface and no request",
            conns::sending(&plain.host(), conns::H2_PREFACE),
        ),
        (
            "half a request head",
            conns::sending(&plain.host(), b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"),
        ),
        ("no TLS ClientHello", conns::connect(&tls.host())),
    ];
    // `openssl s_client` completes the handshake, then waits on its stdin (kept open and
    // empty); it exits when the server closes the connection.
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &tls.host(), "-CAfile"])
        .arg(&pki.ca_crt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    // 30s plus a margin for a loaded machine.
    let deadline = Instant::now() + SECS(50);
    for (what, s) in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        conns::await_close(s, left).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let status = loop {
        if let Some(st) = client.try_wait().expect("wait for openssl") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = client.kill();
            let _ = client.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut o) = client.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    assert!(
        status.is_some(),
        "a TLS connection silent after its handshake was still open after 50s"
    );
    assert!(
        out.contains("BEGIN CERTIFICATE") || out.contains("Verify return code: 0"),
        "the handshake completed first: {out}"
    );
    drop(client.stdin.take());
    assert_eq!(plain.get("/v2/", &[]).status, 200);
}

/// A proxy with the admin API, metrics and health listeners on, and their addresses.
fn with_every_listener(b: ProxyBuilder) -> (Proxy, Vec<(&'static str, String)>) {
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = b
        .serve_arg("--admin-address")
        .serve_arg(&admin)
        .serve_arg("--metrics")
        .serve_arg("0")
        .serve_arg("--health")
        .serve_arg("0")
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    let metrics = format!("127.0.0.1:{}", proxy.logged_port("metrics endpoint at "));
    let health = format!("127.0.0.1:{}", proxy.logged_port("health endpoints at "));
    let listeners = vec![
        ("pull", proxy.host()),
        ("admin", admin),
        ("metrics", metrics),
        ("health", health),
    ];
    (proxy, listeners)
}

/// A GET that each listener answers with 200.
fn probe(listener: &str, addr: &str) -> u16 {
    let target = match listener {
        "pull" => "/v2/",
        "admin" => "/admin/v1/images",
        "metrics" => "/metrics",
        _ => "/healthz",
    };
    conns::request(addr, "GET", target, &[("Host", addr)], b"").status
}

/// With the default settings (no new key: `headerTimeout` is 30s), a silent connection and
/// half an HTTP/2 preface are closed on every listener: pull port, admin API, metrics and
/// health, which all answer meanwhile.
#[test]
fn every_listener_closes_silent_and_half_preface_connections_by_default() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let (proxy, listeners) = with_every_listener(Proxy::builder().upstream(&up));
    let mut held = Vec::new();
    for (name, addr) in &listeners {
        held.push((format!("{name}: silent"), conns::connect(addr)));
        held.push((
            format!("{name}: half a preface"),
            conns::sending(addr, HALF_PREFACE),
        ));
    }
    for (name, addr) in &listeners {
        assert_eq!(probe(name, addr), 200, "{name} answers meanwhile");
    }
    // 30s plus a margin for a loaded machine.
    let deadline = Instant::now() + SECS(50);
    for (what, s) in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        conns::await_close(s, left).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    wait_for(
        "a header-timeout log line per connection",
        SECS(10),
        Duration::from_millis(50),
        || (count(&proxy.log(), HEADER_TIMEOUT_LINE) >= held.len()).then_some(()),
    );
}

/// `maxConnectionsPerClient` applies on the admin, metrics and health listeners too: with 3,
/// a 4th connection from 127.0.0.1 is closed at once (long before the 30s header timeout),
/// and once the 3 are gone the listener answers again.
#[test]
fn the_per_client_cap_applies_on_admin_metrics_and_health() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let (proxy, listeners) = with_every_listener(
        Proxy::builder()
            .upstream(&up)
            .config_line("maxConnectionsPerClient: 3"),
    );
    for (name, addr) in listeners.iter().filter(|(n, _)| *n != "pull") {
        let three: Vec<_> = (0..3).map(|_| conns::connect(addr)).collect();
        let mut fourth = conns::connect(addr);
        conns::await_close(&mut fourth, SECS(5))
            .unwrap_or_else(|e| panic!("{name}: a 4th connection from one client: {e}"));
        drop(three);
        // The server sees the 3 close, then takes new connections from this client again.
        let status = wait_for(
            &format!("{name} to answer again"),
            SECS(10),
            Duration::from_millis(50),
            || {
                let mut s = conns::connect(addr);
                std::io::Write::write_all(
                    &mut s,
                    format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .ok()?;
                let got = conns::await_close(&mut s, SECS(5)).ok()?;
                (!got.is_empty()).then_some(got)
            },
        );
        assert!(
            status.starts_with(b"HTTP/1.1 "),
            "{name}: {:?}",
            String::from_utf8_lossy(&status)
        );
    }
    assert!(
        proxy
            .log()
            .contains("too many connections from this client")
    );
}

/// A connection with no request in flight for `idleTimeout` (2s here; the header timeout is
/// a minute, so it is not what closes them) is closed: HTTP/2 after a GOAWAY, HTTP/1.1
/// keep-alive too.
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let proxy = Proxy::builder()
        .upstream(&up)
        .config_line("idleTimeout: 2s")
        .config_line("headerTimeout: 60s")
        .start();
    let mut h2 = H2::connect(&proxy.host());
    h2.get(1, &proxy.host(), "/v2/");
    let deadline = Instant::now() + SECS(30);
    let mut frames = Vec::new();
    while let Some(f) = h2.next(deadline) {
        frames.push(f);
    }
    let answered = frames
        .iter()
        .any(|f| f.stream == 1 && f.kind == frame::HEADERS);
    let ended = frames
        .iter()
        .any(|f| f.stream == 1 && f.flags & frame::END_STREAM != 0);
    let goaway = frames.iter().position(|f| f.kind == frame::GOAWAY);
    assert!(answered && ended, "stream 1 answered: {frames:?}");
    assert!(goaway.is_some(), "a GOAWAY before the close: {frames:?}");

    let mut h1 = conns::sending(
        &proxy.host(),
        format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.host()).as_bytes(),
    );
    let got = conns::await_close(&mut h1, SECS(30)).expect("an idle HTTP/1.1 keep-alive");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

fn admin_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> conns::Answer {
    conns::request(addr, "POST", path, headers, body.as_bytes())
}

/// The admin API without a token (loopback): what a web page could send from a browser on
/// this machine is refused and changes nothing: a POST without `Content-Type:
/// application/json` (415), any request whose `Host` is not loopback (403, as a DNS-rebound
/// page sends). With both right, it works (here: the stop).
#[test]
fn token_less_admin_api_refuses_what_a_browser_page_could_send() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut proxy = Proxy::builder()
        .upstream(&up)
        .serve_arg("--admin-address")
        .serve_arg(&admin)
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    let stop = "/admin/v1/stop";
    for (ct, what) in [
        (
            Some("text/plain"),
            "a text/plain POST (an HTML form can send it)",
        ),
        (Some("application/x-www-form-urlencoded"), "a form POST"),
        (None, "a POST without Content-Type"),
    ] {
        let mut h = vec![("Host", admin.as_str())];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        let r = admin_post(&admin, stop, &h, "{}");
        assert_eq!(r.status, 415, "{what}: {}", r.body);
        assert!(r.body.contains("application/json"), "{what}: {}", r.body);
    }
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"] {
        let r = admin_post(
            &admin,
            stop,
            &[("Host", host), ("Content-Type", "application/json")],
            "{}",
        );
        assert_eq!(r.status, 403, "Host: {host}: {}", r.body);
        assert!(r.body.contains("loopback"), "{}", r.body);
        let r = conns::request(&admin, "GET", "/admin/v1/images", &[("Host", host)], b"");
        assert_eq!(r.status, 403, "GET with Host: {host}: {}", r.body);
    }
    let r = conns::request(
        &admin,
        "GET",
        "/admin/v1/images",
        &[(
            "Host",
            &format!("localhost:{}", admin.rsplit(':').next().unwrap_or("")),
        )],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Nothing was done: still serving.
    assert_eq!(proxy.get("/v2/", &[]).status, 200);
    assert!(proxy.is_running());
    assert!(!proxy.log().contains("stop requested through the admin API"));
    // Both right: the stop is done.
    let r = admin_post(
        &admin,
        stop,
        &[
            ("Host", &admin),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        "{}",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(proxy.wait_exit(SECS(30)).is_some(), "stopped");
}

/// With a token the admin API keeps its rules: the token is what counts, not `Host` or
/// `Content-Type`.
#[test]
fn admin_api_with_a_token_is_unchanged() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let up = Upstream::anonymous();
    let admin = format!("127.0.0.1:{}", free_port());
    let token = "conn-admin-token-0123456789";
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("E2E_ADMIN_TOKEN", token)
        .config_line(&format!(
            "admin:\n  address: \"{admin}\"\n  tokenFromEnv: E2E_ADMIN_TOKEN"
        ))
        .start();
    proxy.wait_log("the admin listener", "admin API ready", SECS(10));
    let bearer = format!("Bearer {token}");
    let r = admin_post(
        &admin,
        "/admin/v1/prune",
        &[("Host", "mirror.example"), ("Authorization", &bearer)],
        r#"{"pattern":".","dryRun":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin_post(
        &admin,
        "/admin/v1/prune",
        &[
            ("Host", "mirror.example"),
            ("Content-Type", "application/json"),
        ],
        r#"{"pattern":".","dryRun":true}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
}
