//! Issue 6, items 7 and 8: TLS on the pull port (`serverTlsConfig`) and a clean stop.
//!
//! - Real `skopeo` pulls through the proxy over TLS, trusting a CA generated with the `openssl`
//!   CLI, and every byte is checked against a real `docker-registry` upstream; with
//!   `clientAuth: verify` a client without a certificate is refused and one with it is served;
//!   HTTP/2 and HTTP/1.1 are offered by ALPN; a failed handshake does not stop the server; a
//!   bad certificate or key stops it at start with the key, line and file named; the admin
//!   API speaks TLS with the pull port (same CA, same client-certificate rule).
//! - SIGTERM with a pull in flight (the upstream transfer held by a [`Throttle`]): new
//!   connections are refused at once, the in-flight pull and an upstream fetch whose client
//!   left both finish, and the process exits 0 within the grace period (over TLS too); when
//!   the grace period runs out, the process still exits 0 and logs what it cut.

use ociregistry_e2e::cache::{assert_image_cached, blob_file, verify_cache};
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::pki::TestPki;
use ociregistry_e2e::procs::run_with_timeout;
use ociregistry_e2e::proxy::Route;
use ociregistry_e2e::skopeo::verify_dir_pull;
use ociregistry_e2e::throttle::{StreamingGet, Throttle};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{
    BlobInfo, Proxy, RegistryEntry, free_port, require_tools, require_upstream_tools, wait_for,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ociregistry_e2e::SECS;

fn tls_config(pki: &TestPki, client_auth: &str) -> String {
    format!(
        "serverTlsConfig:\n  cert: \"{}\"\n  key: \"{}\"\n  ca: \"{}\"\n  clientAuth: {client_auth}",
        pki.server_crt.display(),
        pki.server_key.display(),
        pki.ca_crt.display()
    )
}

fn tls_proxy(up: &Upstream, pki: &TestPki, client_auth: &str) -> Proxy {
    Proxy::builder()
        .upstream(up)
        .default_ns(&up.host())
        .config_line(&tls_config(pki, client_auth))
        .start()
}

/// A skopeo cert dir: the CA as `ca.crt` and, with `with_client`, the client pair as
/// `client.cert` / `client.key`.
fn cert_dir(pki: &TestPki, with_client: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("cert dir");
    std::fs::copy(&pki.ca_crt, d.path().join("ca.crt")).expect("copy ca");
    if with_client {
        std::fs::copy(&pki.client_cert, d.path().join("client.cert")).expect("copy cert");
        std::fs::copy(&pki.client_key, d.path().join("client.key")).expect("copy key");
    }
    d
}

/// `skopeo copy --src-tls-verify=true --src-cert-dir D docker://REF dir:DEST`.
fn skopeo_tls_pull(reference: &str, certs: &Path, dest: &Path) -> Result<(), String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--src-tls-verify=true", "--src-cert-dir"])
        .arg(certs)
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()));
    let (ok, _out, err) = run_with_timeout(cmd, SECS(120));
    if ok { Ok(()) } else { Err(err) }
}

/// The HTTP version curl negotiated for `GET /v2/` (`2` or `1.1`), or Err(stderr).
fn curl_version(proxy: &Proxy, pki: &TestPki, http_flag: &str) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", http_flag, "--cacert"])
        .arg(&pki.ca_crt)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg(format!("https://{}/v2/", proxy.host()));
    let (ok, out, err) = run_with_timeout(cmd, SECS(30));
    if !ok {
        return Err(err);
    }
    let (code, version) = out.trim().split_once(' ').unwrap_or(("", ""));
    assert_eq!(code, "200", "GET /v2/ over TLS: {out}");
    Ok(version.to_owned())
}

fn assert_pull_verified(proxy: &Proxy, img: &PushedImage, certs: &Path) {
    let dest = tempfile::tempdir().expect("dest");
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    skopeo_tls_pull(&reference, certs, dest.path())
        .unwrap_or_else(|e| panic!("skopeo pull of {reference} over TLS failed: {e}"));
    verify_dir_pull(dest.path(), img, false);
}

#[test]
fn skopeo_pulls_over_tls_trusting_the_generated_ca() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "tls", "v1", ImageKind::small_oci());
    let pki = TestPki::generate("127.0.0.1");
    let mut proxy = tls_proxy(&up, &pki, "none");
    assert!(
        proxy.log().contains("listening on https://127.0.0.1:"),
        "{}",
        proxy.log()
    );

    // Without the CA the server's certificate is not trusted: TLS really is checked.
    let no_ca = tempfile::tempdir().expect("empty cert dir");
    let dest = tempfile::tempdir().expect("dest");
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    let e = skopeo_tls_pull(&reference, no_ca.path(), dest.path())
        .expect_err("a pull that does not trust the CA succeeded");
    assert!(
        e.contains("certificate") || e.contains("x509"),
        "unexpected error without the CA: {e}"
    );

    // With the CA (and no client certificate, clientAuth: none) the pull works, byte for byte.
    let certs = cert_dir(&pki, false);
    assert_pull_verified(&proxy, &img, certs.path());
    assert_image_cached(proxy.image_path(), &img);
    verify_cache(proxy.image_path());

    // Plain HTTP to the TLS port fails that client only.
    let r =
        ociregistry_e2e::raw::request_timeout(&proxy.host(), "GET", "/v2/", &[], None, SECS(10));
    assert!(
        r.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP on the TLS port answered 200"
    );
    assert!(proxy.is_running(), "a failed handshake stopped the server");
    wait_for(
        "the handshake failure in the debug log",
        SECS(10),
        Duration::from_millis(50),
        || proxy.log().contains("TLS handshake failed").then_some(()),
    );
    // And the next TLS client is served (from the cache now).
    assert_pull_verified(&proxy, &img, certs.path());
}

#[test]
fn client_auth_verify_refuses_clients_without_a_certificate() {
    if !require_upstream_tools() || !require_tools(&["curl"]) {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "mtls", "v1", ImageKind::small_oci());
    let pki = TestPki::generate("127.0.0.1");
    let mut proxy = tls_proxy(&up, &pki, "verify");

    // No client certificate: refused in the handshake; nothing reached the upstream.
    let ca_only = cert_dir(&pki, false);
    let dest = tempfile::tempdir().expect("dest");
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    let e = skopeo_tls_pull(&reference, ca_only.path(), dest.path())
        .expect_err("a client without a certificate was served");
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("tls"),
        "unexpected error without a client certificate: {e}"
    );
    assert!(proxy.is_running(), "a refused client stopped the server");
    wait_for(
        "the refused handshake in the log",
        SECS(10),
        Duration::from_millis(50),
        || proxy.log().contains("TLS handshake failed").then_some(()),
    );
    assert_eq!(
        verify_cache(proxy.image_path()),
        (0, 0),
        "a refused client caused a fetch"
    );

    // A certificate signed by a CA other than `ca` is refused too.
    let other = TestPki::generate("127.0.0.1");
    let wrong = tempfile::tempdir().expect("wrong cert dir");
    std::fs::copy(&pki.ca_crt, wrong.path().join("ca.crt")).expect("copy ca");
    std::fs::copy(&other.client_cert, wrong.path().join("client.cert")).expect("copy cert");
    std::fs::copy(&other.client_key, wrong.path().join("client.key")).expect("copy key");
    let dest = tempfile::tempdir().expect("dest");
    skopeo_tls_pull(&reference, wrong.path(), dest.path())
        .expect_err("a client certificate from another CA was accepted");

    // With the client certificate: served, byte for byte.
    let with_client = cert_dir(&pki, true);
    assert_pull_verified(&proxy, &img, with_client.path());

    // ALPN offers both protocols.
    assert_eq!(curl_version(&proxy, &pki, "--http2").as_deref(), Ok("2"));
    assert_eq!(
        curl_version(&proxy, &pki, "--http1.1").as_deref(),
        Ok("1.1")
    );
    assert!(proxy.is_running());
}

/// `curl -sS URL` with `args` (certificates): the status code, or Err(curl's stderr).
fn curl_status(url: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(args)
    .arg(url);
    let (ok, out, err) = run_with_timeout(cmd, SECS(30));
    if ok {
        Ok(out.trim().to_owned())
    } else {
        Err(err)
    }
}

#[test]
fn the_admin_api_speaks_tls_with_the_pull_port() {
    if !require_upstream_tools() || !require_tools(&["curl"]) {
        return;
    }
    let up = Upstream::anonymous();
    let pki = TestPki::generate("127.0.0.1");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut proxy = Proxy::builder()
        .upstream(&up)
        .config_line(&tls_config(&pki, "verify"))
        .serve_arg("--admin-address")
        .serve_arg(&admin)
        .start();
    proxy.wait_log(
        "the admin listener",
        "admin API ready at https://",
        SECS(10),
    );
    let url = format!("https://{admin}/admin/v1/images");
    let (ca, cert, key) = (
        pki.ca_crt.as_os_str(),
        pki.client_cert.as_os_str(),
        pki.client_key.as_os_str(),
    );
    let with_cert = [
        "--cacert".as_ref(),
        ca,
        "--cert".as_ref(),
        cert,
        "--key".as_ref(),
        key,
    ];
    assert_eq!(curl_status(&url, &with_cert).as_deref(), Ok("200"));
    // Plain HTTP gets no answer, and neither does a client without a certificate.
    let plain = curl_status(&format!("http://{admin}/admin/v1/images"), &[]);
    assert!(
        !matches!(plain.as_deref(), Ok("200")),
        "plain HTTP was served: {plain:?}"
    );
    let no_cert = curl_status(&url, &["--cacert".as_ref(), ca]);
    assert!(
        !matches!(no_cert.as_deref(), Ok("200")),
        "a client without a certificate was served: {no_cert:?}"
    );
    assert!(proxy.is_running());
}

#[test]
fn bad_server_certificate_or_key_stops_the_start_naming_key_line_and_file() {
    if !require_tools(&["openssl"]) {
        return;
    }
    let pki = TestPki::generate("127.0.0.1");
    // A key that does not belong to the certificate.
    let f = Proxy::builder()
        .config_line(&format!(
            "serverTlsConfig:\n  cert: \"{}\"\n  key: \"{}\"",
            pki.server_crt.display(),
            pki.client_key.display()
        ))
        .start_expect_exit(SECS(20));
    let status = f.status.expect("still running with a mismatched key");
    assert!(!status.success(), "exit status {status}");
    let line = f.config_line_of("  key:").expect("key line");
    assert!(
        f.stderr.contains("serverTlsConfig.key")
            && f.stderr.contains(&format!("(line {line})"))
            && f.stderr.contains(&pki.client_key.display().to_string()),
        "stderr: {}",
        f.stderr
    );

    // A certificate file that is not PEM.
    let not_pem = pki.dir().join("not-pem.crt");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    let f = Proxy::builder()
        .config_line(&format!(
            "serverTlsConfig:\n  cert: \"{}\"\n  key: \"{}\"",
            not_pem.display(),
            pki.server_key.display()
        ))
        .start_expect_exit(SECS(20));
    assert!(!f.status.expect("still running").success());
    let line = f.config_line_of("  cert:").expect("cert line");
    assert!(
        f.stderr.contains("serverTlsConfig.cert")
            && f.stderr.contains(&format!("(line {line})"))
            && f.stderr.contains("not-pem.crt"),
        "stderr: {}",
        f.stderr
    );

    // A missing key file.
    let f = Proxy::builder()
        .config_line(&format!(
            "serverTlsConfig:\n  cert: \"{}\"\n  key: \"/nonexistent/server.key\"",
            pki.server_crt.display()
        ))
        .start_expect_exit(SECS(20));
    assert!(!f.status.expect("still running").success());
    let line = f
        .config_line_of("/nonexistent/server.key")
        .expect("key line");
    assert!(
        f.stderr.contains("key `key`")
            && f.stderr.contains(&format!("line {line}"))
            && f.stderr.contains("/nonexistent/server.key"),
        "stderr: {}",
        f.stderr
    );
}

// ---------------------------------------------------------------------------------------
// SIGTERM

/// Upstream bytes (headers included) let through per connection before the hold.
const HOLD_AFTER: u64 = 1 << 20;

struct StopRig {
    _up: Upstream,
    throttle: Throttle,
    proxy: Proxy,
    repo: String,
    /// Two layers: one pulled by a client that stays, one whose client leaves.
    blobs: Vec<BlobInfo>,
}

fn stop_rig(prefix: &str, grace: &str) -> StopRig {
    stop_rig_with(prefix, grace, None)
}

/// [`stop_rig`], with `extra` config lines (`serverTlsConfig`).
fn stop_rig_with(prefix: &str, grace: &str, extra: Option<&str>) -> StopRig {
    let up = Upstream::anonymous();
    let repo = images::unique_repo(prefix);
    let img = images::seed(&up, &repo, "v1", ImageKind::oci(2, 8 << 20));
    let mut blobs: Vec<BlobInfo> = img
        .blobs()
        .into_iter()
        .filter(|b| b.size > 3 * HOLD_AFTER)
        .collect();
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(blobs.len(), 2, "two large layers");
    let throttle = Throttle::start(&up.host());
    let mut builder = Proxy::builder()
        .registry(RegistryEntry::plain(&throttle.host()))
        .default_ns(&throttle.host())
        .config_line(&format!("shutdownGrace: {grace}"));
    if let Some(extra) = extra {
        builder = builder.config_line(extra);
    }
    let proxy = builder.start();
    StopRig {
        _up: up,
        throttle,
        proxy,
        repo,
        blobs,
    }
}

impl StopRig {
    fn target(&self, b: &BlobInfo) -> String {
        Route::Default.target(&self.repo, "blobs", &b.digest)
    }

    fn stored(&self, b: &BlobInfo) -> std::path::PathBuf {
        blob_file(self.proxy.image_path(), &b.digest)
    }

    /// Whether a new TCP connection to the pull port is refused.
    fn refuses_connections(&self) -> bool {
        let addr: std::net::SocketAddr = self.proxy.host().parse().expect("addr");
        std::net::TcpStream::connect_timeout(&addr, SECS(2)).is_err()
    }
}

#[test]
fn sigterm_lets_the_pull_in_flight_and_upstream_fetches_finish_then_exits_0() {
    if !require_upstream_tools() {
        return;
    }
    let grace = SECS(30);
    let mut r = stop_rig("sigterm", "30s");
    r.throttle.hold_after(Some(HOLD_AFTER));
    // Client A stays for the whole blob.
    let a = StreamingGet::start(&r.proxy.host(), &r.target(&r.blobs[0]), SECS(40));
    let pa = a.wait_received(64 * 1024, SECS(20));
    assert_eq!(pa.status, Some(200), "client A: {pa:?}");
    assert!(!pa.done, "client A finished while the upstream is held");
    // Client B starts the second layer's fetch and gives up: the fetch runs on.
    let b = ociregistry_e2e::raw::request_timeout(
        &r.proxy.host(),
        "GET",
        &r.target(&r.blobs[1]),
        &[],
        None,
        SECS(2),
    );
    assert!(
        b.is_err(),
        "client B got a whole answer while the upstream is held"
    );
    r.throttle
        .wait_for("both upstream transfers held", SECS(20), |s| s.held >= 2);

    r.proxy.signal_term();
    let signalled = Instant::now();
    wait_for(
        "new connections to be refused after SIGTERM",
        SECS(5),
        Duration::from_millis(20),
        || r.refuses_connections().then_some(()),
    );
    assert!(
        r.proxy.is_running(),
        "the process exited with a pull in flight"
    );
    assert!(
        !a.progress().done,
        "the pull in flight ended at the signal: {:?}",
        a.progress()
    );

    r.throttle.release();
    let out = a.finish(SECS(60));
    assert!(out.complete(), "the in-flight pull was cut: {out:?}");
    assert_eq!(out.status, 200);
    assert_eq!(out.sha256, r.blobs[0].digest, "in-flight pull bytes");
    assert_eq!(out.received, r.blobs[0].size);

    let status = r
        .proxy
        .wait_exit(grace + SECS(5))
        .unwrap_or_else(|| panic!("still running {grace:?} after SIGTERM:\n{}", r.proxy.log()));
    assert!(status.success(), "exit status {status}:\n{}", r.proxy.log());
    assert!(
        signalled.elapsed() < grace,
        "took {:?}, the grace period is {grace:?}",
        signalled.elapsed()
    );
    let log = r.proxy.log();
    assert!(
        log.contains("all connections closed and upstream fetches finished"),
        "{log}"
    );
    assert!(!log.contains("grace period over"), "{log}");
    // Both fetches ran to the end and were stored verified, the abandoned one included.
    for blob in &r.blobs {
        assert!(
            r.stored(blob).is_file(),
            "{} not stored: its fetch was cut",
            blob.digest
        );
    }
    let (blobs, _) = verify_cache(r.proxy.image_path());
    assert!(blobs >= 2);
}

#[test]
fn when_the_grace_period_runs_out_the_rest_is_cut_and_the_exit_is_still_0() {
    if !require_upstream_tools() {
        return;
    }
    let grace = SECS(2);
    let mut r = stop_rig("sigterm-cut", "2s");
    r.throttle.hold_after(Some(HOLD_AFTER));
    let a = StreamingGet::start(&r.proxy.host(), &r.target(&r.blobs[0]), SECS(40));
    let pa = a.wait_received(64 * 1024, SECS(20));
    assert_eq!(pa.status, Some(200), "client A: {pa:?}");
    r.throttle
        .wait_for("the upstream transfer held", SECS(20), |s| s.held >= 1);

    r.proxy.signal_term();
    let signalled = Instant::now();
    let status = r
        .proxy
        .wait_exit(grace + SECS(8))
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM:\n{}", r.proxy.log()));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", r.proxy.log());
    assert!(
        took >= grace - Duration::from_millis(200),
        "exited after {took:?}, before the grace period of {grace:?} was over"
    );
    let log = r.proxy.log();
    assert!(
        log.contains(
            "grace period over; cutting 1 open connection(s) and 1 unfinished upstream fetch(es)"
        ),
        "{log}"
    );
    // The cut client saw a short body, never a clean end; nothing half-done is in the cache.
    let out = a.finish(SECS(20));
    assert!(!out.complete(), "the cut pull looks complete: {out:?}");
    assert!(!r.stored(&r.blobs[0]).exists(), "a cut fetch was stored");
    verify_cache(r.proxy.image_path());
}

/// SIGTERM with a pull in flight over TLS: the TLS connection is drained like a plain one (the
/// client, `curl` trusting the test CA, gets every byte and exits 0) and the process exits 0.
#[test]
fn sigterm_drains_a_pull_in_flight_over_tls() {
    if !require_upstream_tools() || !require_tools(&["curl"]) {
        return;
    }
    let pki = TestPki::generate("127.0.0.1");
    let mut r = stop_rig_with("sigterm-tls", "30s", Some(&tls_config(&pki, "none")));
    r.throttle.hold_after(Some(HOLD_AFTER));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("blob");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "60", "--cacert"])
        .arg(&pki.ca_crt)
        .arg("-o")
        .arg(&out)
        .arg(format!(
            "https://{}{}",
            r.proxy.host(),
            r.target(&r.blobs[0])
        ));
    let mut client = ociregistry_e2e::procs::ChildProc::spawn("curl", cmd, dir.path());
    r.throttle
        .wait_for("the upstream transfer held", SECS(20), |s| s.held >= 1);
    wait_for(
        "the first bytes at the client",
        SECS(20),
        Duration::from_millis(20),
        || {
            std::fs::metadata(&out)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ())
        },
    );

    r.proxy.signal_term();
    wait_for(
        "new connections to be refused after SIGTERM",
        SECS(5),
        Duration::from_millis(20),
        || r.refuses_connections().then_some(()),
    );
    assert!(
        client.try_exited().is_none(),
        "the TLS pull in flight ended at the signal: {}",
        client.stderr()
    );

    r.throttle.release();
    let status = wait_for(
        "curl to finish",
        SECS(60),
        Duration::from_millis(20),
        || client.try_exited(),
    );
    assert!(status.success(), "curl: {status}: {}", client.stderr());
    assert_eq!(
        ociregistry_e2e::sha256_file(&out),
        r.blobs[0].digest,
        "bytes of the pull drained over TLS"
    );
    let exit = r
        .proxy
        .wait_exit(SECS(35))
        .unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", r.proxy.log()));
    assert!(exit.success(), "exit status {exit}:\n{}", r.proxy.log());
}
