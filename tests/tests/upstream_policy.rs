//! Issue 10, items 1-3 (+ the token body cap and host validation of items 4 and 7): the
//! mirror is not an open proxy into the network it sits in.
//!
//! Every "nothing was contacted" claim is a count of TCP connections accepted by a
//! [`ScriptedServer`] on the address in question, taken after the proxy answered.
//!
//! - a redirect from an https registry to `http://127.0.0.1:P/secret` is refused (no
//!   downgrade): the secret server sees no connection, the client no secret;
//! - `?ns=127.0.0.1:P`, in-path `127.0.0.1:P`, `[::ffff:127.0.0.1]:P` and `localhost:P`
//!   named ad hoc: 403 `DENIED` naming the policy, no connection to P (a registries entry
//!   on the same IP but another port does not change that);
//! - a token realm on another host never gets the Basic credential (anonymous token fetch),
//!   unless listed under `auth.realms`;
//! - `upstreams.deny`, `allow: [configured]`, `{host, privateAddresses: true}`;
//! - redirect chains: 5 hops followed, 6 refused (502 naming the cause); a hop to a private
//!   IP literal the registry has no consent for is refused (403), allowed with
//!   `redirectHosts`;
//! - ports with leading zeros or above 65535: 400 `NAME_INVALID`, nothing contacted;
//! - `load` refuses such an image with the policy named, per image;
//! - a 401 from a redirect target is passed on; no credential goes anywhere on its say-so;
//! - an endless token endpoint answer is cut at the cap (item 4), not read whole.

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::pki::TestPki;
use ociregistry_e2e::policy::{Reply, ScriptedServer};
use ociregistry_e2e::proxy::{RegistryEntry, Route};
use ociregistry_e2e::raw::RawResponse;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, require_upstream_tools};

const SECRET: &str = "SECRET-metadata-7f3a9c";
const USER: &str = "policy-user";
const PASS: &str = "policy-s3cret-pw-41d7";

/// `/v2/app/<kind>/<reference>?ns=<host>` for `what` = `<kind>/<reference>`.
fn ns(what: &str, host: &str) -> String {
    let (kind, reference) = what.split_once('/').expect("kind/reference");
    Route::Ns(host).target("app", kind, reference)
}

/// The OCI error code and message of an error body.
fn error_of(r: &RawResponse) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", r.body_str()));
    let e = &v["errors"][0];
    (
        e["code"].as_str().unwrap_or("").to_owned(),
        e["message"].as_str().unwrap_or("").to_owned(),
    )
}

fn assert_denied(r: &RawResponse, ctx: &str, needle: &str) {
    assert_eq!(r.status, 403, "{ctx}: status; body {}", r.body_str());
    let (code, message) = error_of(r);
    assert_eq!(code, "DENIED", "{ctx}: code");
    assert!(
        message.contains("upstream policy") && message.contains(needle),
        "{ctx}: message {message:?} should name the policy and {needle:?}"
    );
}

/// A plain server that answers everything with the secret, as an internal service would.
fn secret_server(ip: &str) -> ScriptedServer {
    ScriptedServer::http(ip, |_| {
        Reply::json(&format!(r#"{{"name":"app","tags":["{SECRET}"]}}"#))
    })
}

#[test]
fn https_redirect_to_plain_http_secret_is_refused() {
    let pki = TestPki::generate("127.0.0.1");
    let secret = secret_server("127.0.0.1");
    let secret_url = format!("http://{}/secret", secret.host());
    let fake = ScriptedServer::https("127.0.0.1", &pki.server_crt, &pki.server_key, move |req| {
        if req.target.contains("/tags/list") {
            Reply::redirect(307, &secret_url)
        } else {
            Reply::status(404)
        }
    });
    let entry = RegistryEntry {
        scheme: "https".into(),
        extra: vec![format!("tls: {{ca: \"{}\"}}", pki.ca_crt.display())],
        ..RegistryEntry::plain(&fake.host())
    };
    let proxy = Proxy::builder().registry(entry).start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", fake.host()), &[]);
    assert!(
        !r.body_str().contains(SECRET),
        "the secret reached the client: {}",
        r.body_str()
    );
    assert_eq!(
        secret.accepts(),
        0,
        "the plain-http secret server was contacted after an https redirect"
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|s| s.target.contains("/tags/list"))
            .count(),
        1,
        "the https registry was asked (and redirected) once"
    );
    assert_eq!(r.status, 502, "{}", r.body_str());
    let (_, message) = error_of(&r);
    assert!(
        message.contains("https to plain http"),
        "message names the downgrade: {message}"
    );
}

#[test]
fn adhoc_loopback_literals_are_refused_without_connecting() {
    let target = secret_server("127.0.0.1");
    // A registries entry on the same IP, another port: consent is per exact ip:port.
    let other = secret_server("127.0.0.1");
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&other.host()))
        .start();
    let host = target.host();
    let mapped = format!("[::ffff:127.0.0.1]:{}", target.port());
    let mapped_other = format!("[::ffff:127.0.0.1]:{}", other.port());
    for (what, t) in [
        ("?ns=", ns("manifests/v1", &host)),
        ("in-path", format!("/v2/{host}/app/manifests/v1")),
        (
            "blob ?ns=",
            ns(&format!("blobs/sha256:{}", "a".repeat(64)), &host),
        ),
        ("tags ?ns=", format!("/v2/app/tags/list?ns={host}")),
        ("IPv4-mapped ?ns=", ns("manifests/v1", &mapped)),
        (
            "IPv4-mapped in-path",
            format!("/v2/{mapped}/app/manifests/v1"),
        ),
        // The mapped form of the configured entry's own address is another authority.
        ("IPv4-mapped configured", ns("manifests/v1", &mapped_other)),
    ] {
        let r = proxy.get(&t, &[]);
        assert_denied(&r, what, "(loopback)");
    }
    assert_eq!(
        target.accepts(),
        0,
        "connections to the named loopback port"
    );
    assert_eq!(other.accepts(), 0, "connections to the configured registry");
}

#[test]
fn hostname_resolving_to_loopback_is_refused_by_the_resolver() {
    let target = secret_server("127.0.0.1");
    let proxy = Proxy::builder().start();
    let host = format!("localhost:{}", target.port());
    let r = proxy.get(&ns("manifests/v1", &host), &[]);
    assert_denied(&r, "localhost ?ns=", "for host localhost");
    let (_, message) = error_of(&r);
    assert!(
        message.contains("(loopback)"),
        "names the resolved address class: {message}"
    );
    let r = proxy.get(&format!("/v2/{host}/app/tags/list"), &[]);
    assert_denied(&r, "localhost in-path", "(loopback)");
    assert_eq!(
        target.accepts(),
        0,
        "connections to localhost:{}",
        target.port()
    );
}

/// A registry that wants a Bearer token from `realm` (the realm answers `{"token": ...}`).
fn bearer_registry(realm: String) -> ScriptedServer {
    ScriptedServer::http("127.0.0.1", move |req| {
        if req.header("authorization") == Some("Bearer policy-token") {
            Reply::json(r#"{"name":"app","tags":["v1"]}"#)
        } else {
            Reply::status(401).with_header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="policy",scope="repository:app:pull""#),
            )
        }
    })
}

fn token_server(ip: &str) -> ScriptedServer {
    ScriptedServer::http(ip, |_| {
        Reply::json(r#"{"token":"policy-token","expires_in":300}"#)
    })
}

fn basic_entry(name: &str, realms: &str) -> RegistryEntry {
    RegistryEntry {
        extra: vec![format!(
            "auth: {{user: \"{USER}\", password: \"{PASS}\"{realms}}}"
        )],
        ..RegistryEntry::plain(name)
    }
}

#[test]
fn a_foreign_token_realm_never_gets_the_credential() {
    let tokens = token_server("127.0.0.2");
    let reg = bearer_registry(format!("http://{}/token", tokens.host()));
    // 127.0.0.2:T may be contacted (listed under registries: consent for that address):
    // what is refused here is the credential, not the connection.
    let proxy = Proxy::builder()
        .registry(basic_entry(&reg.host(), ""))
        .registry(RegistryEntry::plain(&tokens.host()))
        .start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", reg.host()), &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = tokens.requests();
    assert!(!seen.is_empty(), "the token realm was asked");
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            None,
            "the credential went to a realm on another host: {s:?}"
        );
    }
    proxy.wait_log(
        "warning naming the realm",
        &format!("http://{}", tokens.host()),
        std::time::Duration::from_secs(5),
    );
    assert!(!proxy.log().contains(PASS), "the password is in the log");
}

#[test]
fn a_realm_listed_under_auth_realms_gets_the_credential() {
    let tokens = token_server("127.0.0.2");
    let reg = bearer_registry(format!("http://{}/token", tokens.host()));
    let proxy = Proxy::builder()
        .registry(basic_entry(&reg.host(), ", realms: [\"127.0.0.2\"]"))
        .config_line("upstreams: {allow: [\"*\", {host: \"127.0.0.2\", privateAddresses: true}]}")
        .start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", reg.host()), &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = tokens.requests();
    assert!(
        seen.iter().any(|s| s
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic "))),
        "the listed realm got the Basic credential: {seen:?}"
    );
}

#[test]
fn a_token_realm_on_an_unconsented_private_address_is_not_contacted() {
    let tokens = token_server("127.0.0.2");
    let reg = bearer_registry(format!("http://{}/token", tokens.host()));
    let proxy = Proxy::builder()
        .registry(basic_entry(&reg.host(), ""))
        .start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", reg.host()), &[]);
    assert_denied(&r, "realm on 127.0.0.2", "127.0.0.2 (loopback)");
    assert_eq!(tokens.accepts(), 0, "connections to the token realm");
}

#[test]
fn deny_patterns_refuse_and_private_allow_patterns_admit() {
    let denied = secret_server("127.0.0.3");
    let admitted = secret_server("127.0.0.1");
    let proxy = Proxy::builder()
        .config_line(
            "upstreams: {allow: [\"*\", {host: \"127.0.0.*\", privateAddresses: true}], deny: [\"127.0.0.3\"]}",
        )
        .start();
    let r = proxy.get(&ns("manifests/v1", &denied.host()), &[]);
    assert_denied(&r, "denied host", "upstreams.deny");
    let r = proxy.get(&format!("/v2/{}/app/manifests/v1", denied.host()), &[]);
    assert_denied(&r, "denied host in-path", "upstreams.deny");
    assert_eq!(denied.accepts(), 0, "connections to the denied host");
    // The allowed ad-hoc loopback host is contacted (as https: the plain server cannot
    // answer the handshake, so 502; the point is the connection).
    let r = proxy.get(&ns("manifests/v1", &admitted.host()), &[]);
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(admitted.accepts() > 0, "the admitted host was contacted");
}

#[test]
fn allow_configured_admits_only_listed_registries() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::anonymous();
    let img = images::seed_in(&up, "policy", "v1", ImageKind::oci(1, 4096));
    let unlisted = secret_server("127.0.0.1");
    let proxy = Proxy::builder()
        .upstream(&up)
        .config_line(
            "upstreams: {allow: [configured, {host: \"127.0.0.*\", privateAddresses: true}]}",
        )
        .start();
    proxy.pull_and_verify(Route::Ns(&up.host()), &img);
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    let r = proxy.get(&ns("manifests/v1", "registry.example.com"), &[]);
    assert_denied(&r, "unlisted name", "upstreams.allow");
    let r = proxy.get(&ns("manifests/v1", "quay.io:443"), &[]);
    assert_denied(&r, "quay.io, not listed", "upstreams.allow");
    let proxy2 = Proxy::builder()
        .upstream(&up)
        .config_line("upstreams: {allow: [configured]}")
        .start();
    let r = proxy2.get(&ns("manifests/v1", &unlisted.host()), &[]);
    assert_denied(&r, "unlisted loopback", "upstreams.allow");
    assert_eq!(unlisted.accepts(), 0, "connections to the unlisted host");
    proxy2.pull_and_verify(Route::Ns(&up.host()), &img);
}

/// A registry whose `/v2/rN/tags/list` redirects N times (`/hop/N/1` .. `/hop/N/N`).
fn hopping_registry() -> ScriptedServer {
    ScriptedServer::http("127.0.0.1", |req| {
        let path = req.target.split('?').next().unwrap_or("");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["v2", r, "tags", "list"] if r.starts_with('r') => {
                Reply::redirect(302, &format!("/hop/{}/1", &r[1..]))
            }
            ["hop", n, i] => {
                let (n, i): (u32, u32) = (n.parse().unwrap(), i.parse().unwrap());
                if i < n {
                    Reply::redirect(307, &format!("/hop/{n}/{}", i + 1))
                } else {
                    Reply::json(&format!(r#"{{"name":"r{n}","tags":["after-{n}-hops"]}}"#))
                }
            }
            _ => Reply::status(404),
        }
    })
}

#[test]
fn at_most_five_redirect_hops() {
    let reg = hopping_registry();
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&reg.host()))
        .start();
    let r = proxy.get(&format!("/v2/r5/tags/list?ns={}", reg.host()), &[]);
    assert_eq!(r.status, 200, "5 hops: {}", r.body_str());
    assert!(r.body_str().contains("after-5-hops"), "{}", r.body_str());
    let r = proxy.get(&format!("/v2/r6/tags/list?ns={}", reg.host()), &[]);
    assert_eq!(r.status, 502, "6 hops: {}", r.body_str());
    let (_, message) = error_of(&r);
    assert!(
        message.contains("more than 5 times"),
        "names the cause: {message}"
    );
    let sixth = reg
        .requests()
        .iter()
        .filter(|s| s.target == "/hop/6/6")
        .count();
    assert_eq!(sixth, 0, "the sixth redirect was followed");
}

#[test]
fn a_redirect_to_an_unconsented_private_literal_is_refused() {
    let storage = secret_server("127.0.0.2");
    let location = format!("http://{}/storage/x", storage.host());
    let redirecting = move |req: &ociregistry_e2e::policy::Seen| {
        if req.target.contains("/tags/list") {
            Reply::redirect(307, &location)
        } else {
            Reply::status(404)
        }
    };
    let reg = ScriptedServer::http("127.0.0.1", redirecting.clone());
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&reg.host()))
        .start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", reg.host()), &[]);
    assert_denied(&r, "redirect to 127.0.0.2", "127.0.0.2 (loopback)");
    assert!(!r.body_str().contains(SECRET));
    assert_eq!(storage.accepts(), 0, "connections to the redirect target");
    // The operator names the blob host under redirectHosts: followed.
    let reg2 = ScriptedServer::http("127.0.0.1", redirecting);
    let entry = RegistryEntry {
        extra: vec!["redirectHosts: [\"127.0.0.2\"]".into()],
        ..RegistryEntry::plain(&reg2.host())
    };
    let proxy2 = Proxy::builder().registry(entry).start();
    let r = proxy2.get(&format!("/v2/app/tags/list?ns={}", reg2.host()), &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        storage.requests().len(),
        1,
        "the listed redirect host was asked"
    );
}

#[test]
fn ports_with_leading_zeros_or_above_65535_are_invalid_names() {
    let target = secret_server("127.0.0.1");
    let proxy = Proxy::builder().start();
    let p = target.port();
    for host in [
        format!("127.0.0.1:0{p}"),
        format!("127.0.0.1:00{p}"),
        format!("127.0.0.1:{}", u32::from(p) + 65536),
        "127.0.0.1:65536".to_owned(),
        "127.0.0.1:0".to_owned(),
    ] {
        for t in [
            ns("manifests/v1", &host),
            format!("/v2/{host}/app/manifests/v1"),
        ] {
            let r = proxy.get(&t, &[]);
            assert_eq!(r.status, 400, "{t}: {}", r.body_str());
            assert_eq!(error_of(&r).0, "NAME_INVALID", "{t}");
        }
    }
    assert_eq!(target.accepts(), 0, "connections for an invalid port");
}

#[test]
fn preload_gets_the_same_refusal_per_image() {
    use ociregistry_e2e::procs::ChildProc;
    use std::time::{Duration, Instant};
    let target = secret_server("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, format!("{}/app:v1\n", target.host())).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("imagePath: \"{}\"\n", dir.path().join("cache").display()),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(ociregistry_e2e::proxy::ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&config)
        .args(["--log-level", "info", "load", "--image-file"])
        .arg(&list)
        .env("NO_COLOR", "1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let mut proc = ChildProc::spawn("ociregistry-load", cmd, dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = proc.try_exited() {
            break st;
        }
        assert!(Instant::now() < deadline, "load did not finish in 120s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!("{}\n{}", proc.stdout(), proc.stderr());
    assert!(!status.success(), "load succeeded: {output}");
    assert!(
        output.contains("upstream policy") && output.contains("(loopback)"),
        "the image's failure names the policy: {output}"
    );
    assert_eq!(target.accepts(), 0, "connections made by load");
}

#[test]
fn an_endless_token_answer_is_cut_at_the_cap() {
    let tokens = ScriptedServer::http("127.0.0.1", |_| {
        Reply::endless_json(&format!("{{\"token\":\"{}", "x".repeat(16 * 1024)))
    });
    let reg = bearer_registry(format!("http://{}/token", tokens.host()));
    let proxy = Proxy::builder()
        .registry(RegistryEntry::plain(&reg.host()))
        .start();
    let r = ociregistry_e2e::raw::request_timeout(
        &proxy.host(),
        "GET",
        &format!("/v2/app/tags/list?ns={}", reg.host()),
        &[],
        None,
        std::time::Duration::from_secs(30),
    )
    .expect("an answer while the token endpoint is still sending");
    assert_eq!(r.status, 502, "{}", r.body_str());
    let (_, message) = error_of(&r);
    assert!(message.contains("oversized"), "{message}");
}

#[test]
fn a_401_from_a_redirect_target_sends_no_credential_anywhere() {
    let tokens = token_server("127.0.0.1");
    let realm = format!("http://{}/token", tokens.host());
    let storage = ScriptedServer::http("127.0.0.1", move |_| {
        Reply::status(401).with_header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#))
    });
    let location = format!("http://{}/storage/x", storage.host());
    let reg = ScriptedServer::http("127.0.0.1", move |req| {
        if req.target.contains("/tags/list") {
            Reply::redirect(307, &location)
        } else {
            Reply::status(404)
        }
    });
    let proxy = Proxy::builder()
        .registry(basic_entry(&reg.host(), ""))
        .start();
    let r = proxy.get(&format!("/v2/app/tags/list?ns={}", reg.host()), &[]);
    assert_eq!(
        r.status,
        401,
        "the storage's 401 is passed on: {}",
        r.body_str()
    );
    assert_eq!(
        tokens.accepts(),
        0,
        "a token was asked for on the storage's say-so"
    );
    let seen = storage.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "credential sent to storage"
    );
}
