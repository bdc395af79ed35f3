//! Issue 2, item 4: upstream redirects to blob storage are followed, and the configured
//! credential never goes to another origin.
//!
//! An htpasswd (Basic) `docker-registry` sits behind a [`FaultProxy`]; the proxy is configured
//! with the fault proxy's address as the registry name and the Basic credentials. The fault
//! proxy answers the layer's blob GET with a `307` and a `Location`:
//!
//! - on another origin (`127.0.0.1:<other port>/storage/<digest>`), a tiny HTTP server run by
//!   this test that serves the real blob bytes and records every request head: the client gets
//!   verified bytes, the storage server sees exactly one GET and no `Authorization` (nor the
//!   password in any form), and the upstream saw only authorized requests (no 401);
//! - on the same origin (the fault proxy's own `host:port`, a path it forwards to the real
//!   registry): the credential is kept, so the htpasswd registry answers 200 to the redirected
//!   request and the client gets verified bytes;
//! - with `301`, `302`, `303` and `308` instead of `307`, to another origin: followed the same
//!   way, without the credential.

use base64::Engine as _;
use ociregistry_e2e::cache::{blob_file, verify_cache};
use ociregistry_e2e::fault_proxy::{Fault, FaultProxy};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::{RegistryAuth, RegistryEntry, Route};
use ociregistry_e2e::upstream::{AccessLine, Upstream};
use ociregistry_e2e::{BlobInfo, Proxy, require_upstream_tools, sha256_digest};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const USER: &str = "e2e-redirect-user";
const PASS: &str = "redirect-s3cret-pw-7f3a";

/// One request the storage server received.
#[derive(Debug, Clone)]
struct StorageRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The whole request head as received (to search for the secret in any form).
    raw_head: String,
}

impl StorageRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny "blob storage" HTTP server on `127.0.0.1:<ephemeral>`: serves fixed bodies by
/// path (`Connection: close`, one request per connection) and records every request head.
struct StorageServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<StorageRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StorageServer {
    fn start(objects: Vec<(String, Vec<u8>)>) -> StorageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind storage server");
        let addr = listener.local_addr().expect("storage server addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let objects = Arc::new(objects);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (seen, objects) = (seen.clone(), objects.clone());
                    std::thread::spawn(move || {
                        let _ = serve_one(conn, &seen, &objects);
                    });
                }
            })
        };
        StorageServer {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> Vec<StorageRequest> {
        self.seen.lock().expect("storage lock").clone()
    }
}

impl Drop for StorageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(
    mut conn: TcpStream,
    seen: &Mutex<Vec<StorageRequest>>,
    objects: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(()); // e.g. the wake-up connection of Drop
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let raw_head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = raw_head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    seen.lock().expect("storage lock").push(StorageRequest {
        method: method.clone(),
        target: target.clone(),
        headers,
        raw_head,
    });
    let path = target.split('?').next().unwrap_or("");
    match objects.iter().find(|(p, _)| p == path) {
        Some((_, body)) if method == "GET" || method == "HEAD" => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method == "GET" {
                conn.write_all(body)?;
            }
        }
        _ => {
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    conn.flush()
}

struct Rig {
    up: Upstream,
    fp: FaultProxy,
    fhost: String,
    img: PushedImage,
    /// The layer whose GET is redirected.
    layer: BlobInfo,
}

fn rig(prefix: &str) -> Rig {
    let up = Upstream::htpasswd(USER, PASS);
    let img = images::seed_in(&up, prefix, "v1", ImageKind::oci(1, 1 << 20));
    let layer = img.largest_blob();
    let fp = FaultProxy::start(&up.host());
    Rig {
        up,
        fhost: fp.host(),
        fp,
        img,
        layer,
    }
}

impl Rig {
    fn route(&self) -> Route<'_> {
        Route::Ns(&self.fhost)
    }

    /// The proxy, configured with the fault proxy as the registry and the Basic credentials.
    fn proxy(&self) -> Proxy {
        let mut entry = RegistryEntry::plain(&self.fhost);
        entry.auth = Some(RegistryAuth::Basic {
            user: USER.into(),
            password: PASS.into(),
        });
        Proxy::builder().registry(entry).start()
    }

    fn layer_path(&self) -> String {
        format!("/blobs/{}", self.layer.digest)
    }

    /// A 307 to `location` for the layer's GET (every time).
    fn redirect_layer(&self, location: &str) -> ociregistry_e2e::fault_proxy::RuleId {
        self.redirect_layer_with(307, location)
    }

    /// A redirect with `status` to `location` for the layer's GET (every time).
    fn redirect_layer_with(
        &self,
        status: u16,
        location: &str,
    ) -> ociregistry_e2e::fault_proxy::RuleId {
        self.fp.add_rule(
            "GET",
            &self.layer_path(),
            Fault::Respond {
                status,
                headers: vec![
                    ("Location".into(), location.into()),
                    ("Content-Type".into(), "text/html; charset=utf-8".into()),
                ],
                body: Vec::new(),
            },
            None,
        )
    }

    /// The client's GET of the layer through the proxy: 200 and the exact bytes.
    fn get_layer_verified(&self, proxy: &Proxy, ctx: &str) {
        let r = proxy.get_blob(self.route(), &self.img.repo, &self.layer.digest, &[]);
        assert_eq!(r.status, 200, "{ctx}: GET layer: {}", r.body_str());
        assert_eq!(r.body.len() as u64, self.layer.size, "{ctx}: layer length");
        assert_eq!(
            sha256_digest(&r.body),
            self.layer.digest,
            "{ctx}: layer sha256"
        );
    }

    /// The stored layer file exists and every cached file verifies.
    fn assert_cached(&self, proxy: &Proxy, ctx: &str) {
        let stored = blob_file(proxy.image_path(), &self.layer.digest);
        assert!(stored.is_file(), "{ctx}: layer not cached at {stored:?}");
        verify_cache(proxy.image_path());
    }
}

fn basic_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
}

fn assert_log_has_no_secret(proxy: &Proxy, ctx: &str) {
    let log = proxy.log();
    for s in [PASS.to_owned(), basic_b64()] {
        assert!(
            !log.contains(&s),
            "{ctx}: the proxy's log contains the credential ({}...)",
            &s[..6]
        );
    }
}

/// The upstream access-log lines from index `from` on.
fn lines_since(up: &mut Upstream, from: usize) -> Vec<AccessLine> {
    up.access_log().into_iter().skip(from).collect()
}

/// Every request the proxy made to the htpasswd upstream was authorized: no 401 at all, and
/// the tag's manifest was fetched with a 200.
fn assert_all_authorized(lines: &[AccessLine], img: &PushedImage, ctx: &str) {
    let unauthorized: Vec<&AccessLine> = lines.iter().filter(|l| l.status == 401).collect();
    assert!(
        unauthorized.is_empty(),
        "{ctx}: the upstream answered 401 (request without a valid credential): {unauthorized:?}\nall: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.method == "GET"
            && l.uri.contains(&format!("/manifests/{}", img.tag))
            && l.status == 200),
        "{ctx}: no authorized GET of the manifest in the upstream's log: {lines:?}"
    );
}

/// A 307 to another origin (same IP, another port): the blob is fetched from there without
/// the credential; the registry itself got the credential on everything else.
#[test]
fn cross_origin_redirect_follows_without_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let mut rig = rig("redircross");
    let ctx = "cross-origin 307";

    // Self-check of the recorder: a credential sent to a storage server is seen.
    {
        let probe = StorageServer::start(vec![("/probe".into(), b"ok".to_vec())]);
        let auth = format!("Basic {}", basic_b64());
        let r = ociregistry_e2e::raw::request(
            &probe.host(),
            "GET",
            "/probe",
            &[("Authorization", &auth)],
            None,
        )
        .expect("GET the probe storage server");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let seen = probe.requests();
        assert_eq!(seen.len(), 1, "probe: {seen:?}");
        assert_eq!(seen[0].header("authorization"), Some(auth.as_str()));
        assert!(seen[0].raw_head.contains(&basic_b64()));
    }

    // The real bytes, fetched from the upstream with the credential.
    let direct = rig.up.request(
        "GET",
        &rig.img.repo,
        &format!("/v2/{}/blobs/{}", rig.img.repo, rig.layer.digest),
        &[],
    );
    assert_eq!(
        direct.status, 200,
        "direct GET of the layer with Basic auth"
    );
    assert_eq!(
        sha256_digest(&direct.body),
        rig.layer.digest,
        "direct bytes"
    );

    let storage_path = format!("/storage/{}", rig.layer.digest);
    let storage = StorageServer::start(vec![(storage_path.clone(), direct.body)]);
    assert_ne!(storage.host(), rig.fhost, "storage must be another origin");
    let location = format!("http://{}{storage_path}", storage.host());
    let redirect = rig.redirect_layer(&location);

    let proxy = rig.proxy();
    let before = rig.up.access_log().len();

    // Manifest, config and layer, every byte checked; the layer comes via the 307.
    proxy.pull_and_verify(rig.route(), &rig.img);
    assert_eq!(
        rig.fp.hits(redirect),
        1,
        "{ctx}: the fault proxy should have redirected exactly one layer GET; saw {:?}",
        rig.fp.requests()
    );

    // The storage server: exactly one GET of the blob, with no credential of any kind.
    let seen = storage.requests();
    assert_eq!(
        seen.len(),
        1,
        "{ctx}: the storage server should see exactly one request: {seen:?}"
    );
    let req = &seen[0];
    assert_eq!(req.method, "GET", "{ctx}: storage request method: {req:?}");
    assert_eq!(req.target, storage_path, "{ctx}: storage request target");
    assert!(
        req.header("Authorization").is_none(),
        "{ctx}: the credential was sent to another host: Authorization: {:?}",
        req.header("Authorization")
    );
    assert!(
        req.header("Proxy-Authorization").is_none(),
        "{ctx}: Proxy-Authorization sent to the storage host"
    );
    for secret in [PASS.to_owned(), basic_b64()] {
        assert!(
            !req.raw_head.contains(&secret),
            "{ctx}: the storage request carries the credential somewhere in its head:\n{}",
            req.raw_head
        );
    }

    // The registry itself got Basic auth on everything that reached it, and never saw the
    // redirected layer GET (the storage server served it).
    let lines = lines_since(&mut rig.up, before);
    assert_all_authorized(&lines, &rig.img, ctx);
    let config = rig
        .img
        .blobs()
        .into_iter()
        .find(|b| b.digest != rig.layer.digest)
        .expect("the image has a config blob besides the layer");
    assert!(
        lines.iter().any(|l| l.method == "GET"
            && l.uri.contains(&format!("/blobs/{}", config.digest))
            && l.status == 200),
        "{ctx}: no authorized GET of the config blob in the upstream's log: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.method == "GET" && l.uri.contains(&rig.layer_path())),
        "{ctx}: the layer GET reached the registry instead of the storage: {lines:?}"
    );

    // Stored verified; a second pull is served from the cache (storage not asked again).
    rig.assert_cached(&proxy, ctx);
    rig.get_layer_verified(&proxy, &format!("{ctx}, second pull"));
    assert_eq!(
        storage.requests().len(),
        1,
        "{ctx}: a cached blob went to the storage again: {:?}",
        storage.requests()
    );
    assert_log_has_no_secret(&proxy, ctx);
}

/// Registries and their storage use every redirect status, not only 307: 301, 302, 303
/// and 308 to another origin are followed too, the blob verified and stored, and the
/// storage host never sees the credential.
#[test]
fn other_redirect_statuses_are_followed_without_credentials() {
    if !require_upstream_tools() {
        return;
    }
    for status in [301u16, 302, 303, 308] {
        let rig = rig(&format!("redir{status}"));
        let ctx = format!("cross-origin {status}");
        let direct = rig.up.request(
            "GET",
            &rig.img.repo,
            &format!("/v2/{}/blobs/{}", rig.img.repo, rig.layer.digest),
            &[],
        );
        assert_eq!(direct.status, 200, "{ctx}: direct GET of the layer");
        let storage_path = format!("/storage/{}", rig.layer.digest);
        let storage = StorageServer::start(vec![(storage_path.clone(), direct.body)]);
        let redirect =
            rig.redirect_layer_with(status, &format!("http://{}{storage_path}", storage.host()));
        let proxy = rig.proxy();
        proxy.pull_and_verify(rig.route(), &rig.img);
        assert_eq!(
            rig.fp.hits(redirect),
            1,
            "{ctx}: the layer GET was redirected once"
        );
        let seen = storage.requests();
        assert_eq!(seen.len(), 1, "{ctx}: one GET at the storage: {seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("GET", storage_path.as_str()),
            "{ctx}"
        );
        assert!(
            seen[0].header("Authorization").is_none() && !seen[0].raw_head.contains(&basic_b64()),
            "{ctx}: the credential went to the storage host:\n{}",
            seen[0].raw_head
        );
        rig.assert_cached(&proxy, &ctx);
        assert_log_has_no_secret(&proxy, &ctx);
    }
}

/// A 307 to the same origin (the fault proxy's own host:port, another target that it
/// forwards to the real registry): the credential is kept and the htpasswd registry serves it.
#[test]
fn same_origin_redirect_keeps_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let mut rig = rig("redirsame");
    let ctx = "same-origin 307";
    let marker = "e2e-redirected=1";
    let redirected_target = format!("/v2/{}/blobs/{}?{marker}", rig.img.repo, rig.layer.digest);

    // The redirected target is forwarded untouched (rules are tried in order, so this one
    // must come first: it also contains the layer's path).
    let pass = rig
        .fp
        .add_rule("GET", marker, Fault::Delayed(Duration::ZERO, None), None);
    let redirect = rig.redirect_layer(&format!("http://{}{redirected_target}", rig.fhost));

    // Sanity: without a credential the registry refuses that very target, so a 200 for it
    // in the registry's log can only come from a request that carried the credential.
    let anon = ociregistry_e2e::raw::request(&rig.fhost, "GET", &redirected_target, &[], None)
        .expect("anonymous GET through the fault proxy");
    assert_eq!(
        anon.status, 401,
        "the htpasswd registry must refuse the redirected target without credentials"
    );
    assert_eq!(rig.fp.hits(pass), 1);

    let proxy = rig.proxy();
    let before = rig.up.access_log().len();

    rig.get_layer_verified(&proxy, ctx);
    assert_eq!(
        rig.fp.hits(redirect),
        1,
        "{ctx}: the fault proxy should have redirected exactly one layer GET; saw {:?}",
        rig.fp.requests()
    );
    assert_eq!(
        rig.fp.hits(pass),
        2,
        "{ctx}: the redirect was not followed to the same origin exactly once; saw {:?}",
        rig.fp.requests()
    );

    let lines = lines_since(&mut rig.up, before);
    let redirected: Vec<&AccessLine> = lines
        .iter()
        .filter(|l| l.method == "GET" && l.uri.contains(marker))
        .collect();
    assert_eq!(
        redirected.len(),
        1,
        "{ctx}: the registry should see the redirected GET exactly once: {lines:?}"
    );
    assert_eq!(
        redirected[0].status, 200,
        "{ctx}: the redirected GET was not authorized (credential dropped on a same-origin redirect?): {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.status == 401),
        "{ctx}: the upstream answered 401: {lines:?}"
    );

    // The rest of the image (manifest, config) pulls too, all authorized.
    proxy.pull_and_verify(rig.route(), &rig.img);
    let lines = lines_since(&mut rig.up, before);
    assert_all_authorized(&lines, &rig.img, ctx);
    rig.assert_cached(&proxy, ctx);
    assert_log_has_no_secret(&proxy, ctx);
}
