//! Issue 5: hostile input. Slow-loris clients, huge request headers and floods of idle
//! connections do not stop the server from serving everyone else; a malformed
//! `WWW-Authenticate` or an over-large manifest from the upstream gives the client a clear
//! error with an OCI body and stores nothing. (Names and references built to escape the
//! image path are covered in bad_requests.rs.)

use ociregistry_e2e::cache::verify_cache;
use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, RegistryEntry, media, raw, require_upstream_tools};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ociregistry_e2e::SECS;

fn served_quickly(proxy: &Proxy, route: Route<'_>, img: &PushedImage, ctx: &str) {
    let t = Instant::now();
    let r = raw::request_timeout(
        &proxy.host(),
        "GET",
        &route.target(&img.repo, "blobs", &img.largest_blob().digest),
        &[],
        None,
        SECS(5),
    )
    .unwrap_or_else(|e| panic!("{ctx}: not served: {e}"));
    assert_eq!(r.status, 200, "{ctx}");
    assert_eq!(
        ociregistry_e2e::sha256_digest(&r.body),
        img.largest_blob().digest
    );
    assert!(t.elapsed() < SECS(3), "{ctx}: took {:?}", t.elapsed());
}

/// 50 slow-loris connections (headers trickling a byte at a time, never finished), a 200 KiB
/// request header, then a flood of 500 idle connections: others are served throughout, the
/// huge header gets 431 (or a close), and connections held are bounded by `maxConnections`.
#[test]
fn slow_loris_huge_headers_and_connection_floods_do_not_stop_service() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "hostile", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .upstream(&up)
        .config_line("maxConnections: 64")
        .log_level("info")
        .start();
    let host = up.host();
    let route = Route::Ns(&host);
    proxy.pull_and_verify(route, &img);

    // Slow loris: 50 connections each sending a partial request head, one byte per 50 ms.
    let addr: std::net::SocketAddr = proxy.host().parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loris: Vec<_> = (0..50)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, SECS(5)) else {
                    return 0usize;
                };
                let head = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ");
                let mut sent = 0;
                for b in head.bytes().chain(std::iter::repeat(b'a')) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[b]).is_err()
                    {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // let them connect (not a sync point)
    for i in 0..5 {
        served_quickly(&proxy, route, &img, &format!("during slow loris #{i}"));
        proxy.pull_and_verify(route, &img);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in loris {
        let _ = t.join();
    }

    eprintln!("slow loris done");
    // A 200 KiB header: 431 or the connection closed; never served, never a crash.
    let big = "a".repeat(200 * 1024);
    match raw::request_timeout(
        &proxy.host(),
        "GET",
        "/v2/",
        &[("X-Huge", &big)],
        None,
        SECS(10),
    ) {
        Ok(r) => assert_eq!(r.status, 431, "200 KiB header: {}", r.status),
        Err(e) => eprintln!("200 KiB header: connection closed ({e}), acceptable"),
    }
    served_quickly(&proxy, route, &img, "after a huge header");

    // A flood of 500 idle connections, held open.
    eprintln!("flood: opening 500 connections");
    let flood_deadline = Instant::now() + SECS(4);
    let flood: Vec<TcpStream> = (0..500)
        .take_while(|_| Instant::now() < flood_deadline)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
        .collect();
    eprintln!("flood: {} connections open", flood.len());
    // Beyond maxConnections + the listen backlog, SYNs go unanswered: that is the cap.
    assert!(flood.len() >= 64, "only {} connections opened", flood.len());
    let during = raw::request_timeout(&proxy.host(), "GET", "/v2/", &[], None, SECS(2));
    eprintln!(
        "flood: a new request while {} idle connections are held: {:?}",
        flood.len(),
        during.as_ref().map(|r| r.status)
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        fds < 64 + 100,
        "{fds} open descriptors with maxConnections 64 and 500 idle connections"
    );
    drop(flood);
    // After they close, others are served again (bounded wait: the server notices the closed
    // connections at once).
    let deadline = Instant::now() + SECS(10);
    loop {
        let ok = raw::request_timeout(&proxy.host(), "GET", "/v2/", &[], None, SECS(2))
            .is_ok_and(|r| r.status == 200);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served 10 s after the flood closed"
        );
    }
    served_quickly(&proxy, route, &img, "after the flood");
    let mut probe = TcpStream::connect_timeout(&addr, SECS(5)).unwrap();
    probe
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    probe.set_read_timeout(Some(SECS(5))).unwrap();
    let _ = probe.read_to_string(&mut s);
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    assert!(proxy.log().contains("listening"), "log readable");
}

/// A flood of idle connections from one address is capped by `maxConnectionsPerClient`
/// (the excess is closed at once), so a client from another address is served throughout.
#[test]
fn a_flood_from_one_address_does_not_lock_out_others() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "flood", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .upstream(&up)
        .config_line("maxConnections: 100")
        .config_line("maxConnectionsPerClient: 40")
        .log_level("info")
        .start();
    let addr: std::net::SocketAddr = proxy.host().parse().unwrap();
    // 300 idle connections from 127.0.0.1, held open.
    let deadline = Instant::now() + SECS(5);
    let flood: Vec<TcpStream> = (0..300)
        .take_while(|_| Instant::now() < deadline)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
        .collect();
    assert!(flood.len() > 40, "only {} connections opened", flood.len());
    // The server keeps at most 40 of them (plus its own descriptors).
    let fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        fds < 40 + 60,
        "{fds} open descriptors with a per-client cap of 40"
    );
    // A client from 127.0.0.2 is served at once, verified.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = Route::Ns(&up.host()).target(&img.repo, "blobs", &img.largest_blob().digest);
    let started = Instant::now();
    let body = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = tokio::time::timeout(SECS(5), socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(SECS(5), s.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .expect("read");
        out
    });
    assert!(started.elapsed() < SECS(3), "took {:?}", started.elapsed());
    let split = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&body[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        ociregistry_e2e::sha256_digest(&body[split + 4..]),
        img.largest_blob().digest,
        "body from the other address"
    );
    drop(flood);
    proxy.pull_and_verify(Route::Ns(&up.host()), &img);
}

/// Upstream 401s with garbage `WWW-Authenticate` values: the client gets 401 or 502 with an
/// OCI body, and the server keeps serving.
#[test]
fn malformed_www_authenticate_is_a_clear_error() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("hostileauth");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fhost))
        .start();
    let long = format!("Bearer realm=\"http://127.0.0.1:1/{}\"", "x".repeat(8000));
    for garbage in [
        "Bearer",
        "Bearer realm=",
        "Bearer realm=\"unterminated",
        "Bearer realm=\"http://127.0.0.1:1/token\",service=\"s\",scope",
        "Bearer ,,,,=,=\"\",",
        "Basic realm",
        "Negotiate abc==",
        "\u{1}\u{2}\u{3}",
        "Bearer realm=\"ftp://127.0.0.1/x\"",
        "Bearer realm=\"http://[::1\"",
        long.as_str(),
    ] {
        let rule = fp.add_rule(
            "",
            &format!("/{repo}/manifests/"),
            Fault::status(401).with_header("WWW-Authenticate", garbage),
            None,
        );
        let t = Instant::now();
        let m = proxy.get_manifest(Route::Ns(&fhost), &repo, "v1");
        assert!(
            t.elapsed() < SECS(10),
            "{garbage:?}: took {:?}",
            t.elapsed()
        );
        assert!(
            m.status == 401 || m.status == 502,
            "{garbage:?}: status {} {}",
            m.status,
            m.body_str()
        );
        assert!(
            !ociregistry_e2e::oci_error_codes(&m.body).is_empty(),
            "{garbage:?}: not an OCI error body: {}",
            m.body_str()
        );
        fp.remove(rule);
    }
    let (_, manifests) = verify_cache(proxy.image_path());
    assert_eq!(manifests, 0);
    proxy.pull_and_verify(Route::Ns(&fhost), &img);
}

/// Over-large manifests (5 MiB against the default 4 MiB cap; with and without
/// Content-Length) are refused with 502 and an OCI body, and nothing is stored. A smaller
/// configured `maxManifestSize` applies too.
#[test]
fn oversized_manifests_are_refused_and_not_stored() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let repo = images::unique_repo("hostilebig");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let fp = FaultProxy::start(&up.host());
    let fhost = fp.host();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&fhost))
        .start();
    let small_cap = Proxy::builder()
        .registry(RegistryEntry::plain(&fhost))
        .config_line("maxManifestSize: 65536")
        .start();
    for (p, size) in [(&proxy, 5usize << 20), (&small_cap, 100 * 1024)] {
        for content_length in [true, false] {
            let ctx = format!("{size} bytes, Content-Length {content_length}");
            let rule = fp.add_rule(
                "GET",
                &format!("/{repo}/manifests/"),
                Fault::Oversized {
                    size,
                    media_type: media::OCI_MANIFEST.into(),
                    content_length,
                },
                None,
            );
            let t = Instant::now();
            let m = p.get_manifest(Route::Ns(&fhost), &repo, "big");
            assert!(t.elapsed() < SECS(10), "{ctx}: took {:?}", t.elapsed());
            assert_eq!(m.status, 502, "{ctx}: {}", m.body_str());
            assert!(
                !ociregistry_e2e::oci_error_codes(&m.body).is_empty(),
                "{ctx}: not an OCI body: {}",
                m.body_str()
            );
            assert!(
                m.body_str().contains("larger than"),
                "{ctx}: the error says why: {}",
                m.body_str()
            );
            fp.remove(rule);
            let (_, manifests) = verify_cache(p.image_path());
            assert_eq!(manifests, 0, "{ctx}: a manifest was stored");
        }
    }
    // Real manifests are still served.
    proxy.pull_and_verify(Route::Ns(&fhost), &img);
    small_cap.pull_and_verify(Route::Ns(&fhost), &img);
}
