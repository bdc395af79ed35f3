//! Issue 14: the `gcp` and `acr` auth provider plugins through the real binary.
//!
//! Each test runs fakes of the cloud's credential endpoints on 127.0.0.1, speaking the real
//! wire formats (GCE metadata server, OAuth token endpoint; Azure IMDS, Entra token
//! endpoint and ACR's `/oauth2/exchange`), and a real htpasswd `docker-registry` upstream
//! that accepts only the credential the plugin must produce (its one user, with the token
//! the fakes hand out as the password). The proxy pulls (plain HTTP and skopeo); the
//! upstream refuses none of its requests; no token appears in the proxy's log. The
//! metadata-server and IMDS tests also see the credential refreshed before the expiry the
//! cloud gave (40 to 60 s lifetimes, on the real clock); the key-file test verifies the
//! JWT's RS256 signature with openssl.
//!
//! No test contacts a cloud: every endpoint is overridden through the environment or
//! `providerOpts`, and the variables that could point elsewhere are set empty.
//!
//! The plugins are taken from this test's own target directory (`cargo build -p
//! ociregistry-provider-gcp -p ociregistry-provider-acr`), else from next to the binary.

#[path = "../../plugin-common/fake_server.rs"]
mod fake_server;

use base64::Engine as _;
use fake_server::{FakeServer, Request};
use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::{RegistryEntry, Route, ociregistry_bin};
use ociregistry_e2e::skopeo::{self, PullOptions};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, path_str, require_upstream_tools, wait_for};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lifetime the fakes give their tokens: long enough for the pulls, short enough to
/// see the refresh (the host refreshes 10% before, and never sooner than 30 s after).
const LIFETIME: Duration = Duration::from_secs(40);

fn plugin_file(name: &str) -> PathBuf {
    let file = format!(
        "{}ociregistry_provider_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let own = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(|d| d.join(&file)));
    let next_to_bin = ociregistry_bin().parent().map(|d| d.join(&file));
    [own, next_to_bin]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("plugin {file} not built; run `cargo build -p ociregistry-provider-{name}`")
        })
}

/// A temp plugin directory holding a copy of the named plugin.
fn plugin_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = plugin_file(name);
    std::fs::copy(&src, dir.path().join(src.file_name().expect("name"))).expect("copy plugin");
    dir
}

fn log_lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn assert_no_secret(text: &str, what: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(s.len() >= 12, "secret too short to search for");
        assert!(
            !text.contains(s),
            "{what} contains a secret ({}...)",
            &s[..6]
        );
    }
}

/// The upstream (whose htpasswd file holds one user, `user`, with the one password the
/// plugin must produce) accepted the proxy's requests and refused none after `before`
/// (the access log's length before the pulls).
fn assert_upstream_accepted(up: &mut Upstream, before: usize, user: &str) {
    let access = up.access_log();
    let from_proxy = &access[before..];
    assert!(!from_proxy.is_empty(), "no request reached the upstream");
    let refused: Vec<_> = from_proxy.iter().filter(|l| l.status >= 400).collect();
    assert!(
        refused.is_empty(),
        "the upstream refused requests from the proxy: {refused:?}"
    );
    // distribution logs `authorized request` only after its htpasswd check accepted the
    // Basic credential; lines that name the user (when it does) must name `user`.
    let server_log = up.server_log();
    let authorized = log_lines_with(
        &server_log,
        &["msg=\"authorized request\"", "useragent=ociregistry"],
    );
    assert!(
        !authorized.is_empty(),
        "no authorized (Basic) request from ociregistry in the upstream's log"
    );
    for l in log_lines_with(&server_log, &["useragent=ociregistry", "auth.user.name="]) {
        assert!(
            l.contains(&format!("auth.user.name={user} ")),
            "upstream request authenticated as someone else than {user}: {l}"
        );
    }
}

/// Pulls `img_http` in-path with plain HTTP (every byte checked) and `img_skopeo` with
/// skopeo through the default namespace.
fn pull_both(
    proxy: &Proxy,
    up: &Upstream,
    repo: &str,
    img_http: &images::PushedImage,
    img_skopeo: &images::PushedImage,
) {
    proxy.pull_and_verify(Route::InPath(&up.host()), img_http);
    let dest = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/{}:{}", proxy.host(), repo, img_skopeo.tag);
    skopeo::pull_to_dir(&reference, dest.path(), &PullOptions::default())
        .unwrap_or_else(|e| panic!("skopeo pull {reference} through the proxy: {e}"));
    skopeo::verify_dir_pull(dest.path(), img_skopeo, false);
}

/// Waits for the second token request (times as recorded by the fake) and checks that it
/// came before `expires_at` (when the first credential expires), and not as a storm.
fn assert_refreshed_before_expiry(
    times: &Mutex<Vec<SystemTime>>,
    expires_at: impl Fn(SystemTime) -> SystemTime,
    what: &str,
) {
    let (first, second) = wait_for(
        &format!("a second {what}"),
        LIFETIME + Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let t = times.lock().expect("lock");
            (t.len() >= 2).then(|| (t[0], t[1]))
        },
    );
    let gap = second.duration_since(first).unwrap_or_default();
    assert!(
        second < expires_at(first),
        "{what}: refreshed {gap:?} after the first, not before the first credential expired"
    );
    assert!(
        gap >= Duration::from_secs(25),
        "{what}: refreshed only {gap:?} after the first (expected near the expiry)"
    );
}

// ---------------------------------------------------------------------------------------

#[test]
fn gcp_plugin_with_the_metadata_server() {
    if !require_upstream_tools() {
        return;
    }
    let token = format!("ya29.e2e-gcp-{:016x}", fastrand::u64(..));
    let mut up = Upstream::htpasswd("oauth2accesstoken", &token);
    let repo = images::unique_repo("gcp");
    let img_http = images::seed(&up, &repo, "inpath", ImageKind::DockerV2s2 { layers: 2 });
    let img_skopeo = images::seed(&up, &repo, "skopeo", ImageKind::small_oci());

    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let answer = token.clone();
    let metadata = FakeServer::start(move |r: &Request| {
        if r.method != "GET"
            || r.path() != "/computeMetadata/v1/instance/service-accounts/default/token"
        {
            return (404, r#"{"error":"not_found"}"#.to_owned());
        }
        if r.header("metadata-flavor") != Some("Google") {
            return (
                403,
                r#"{"error":"missing Metadata-Flavor: Google"}"#.to_owned(),
            );
        }
        seen.lock().expect("lock").push(SystemTime::now());
        (
            200,
            serde_json::json!({"access_token": answer, "expires_in": LIFETIME.as_secs(), "token_type": "Bearer"})
                .to_string(),
        )
    });
    let plugins = plugin_dir("gcp");
    let gcloud = tempfile::tempdir().expect("tempdir"); // no application_default_credentials.json
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            "provider: gcp, expiry: 1h",
        ))
        .default_ns(&up.host())
        .env("GCE_METADATA_HOST", &metadata.addr)
        .env("GOOGLE_APPLICATION_CREDENTIALS", "")
        .env("CLOUDSDK_CONFIG", path_str(gcloud.path()))
        .log_level("debug")
        .start();

    let before = up.access_log().len();
    pull_both(&proxy, &up, &repo, &img_http, &img_skopeo);
    assert_upstream_accepted(&mut up, before, "oauth2accesstoken");
    assert_refreshed_before_expiry(
        &times,
        |first| first + LIFETIME,
        "metadata server token request",
    );
    assert_eq!(
        metadata.requests().len(),
        times.lock().expect("lock").len(),
        "every request to the fake metadata server was a well-formed token request"
    );

    let log = proxy.log();
    assert!(
        log.contains("plugin=\"gcp\""),
        "no log line from the gcp plugin tagged with its name"
    );
    assert_no_secret(
        &log,
        "the proxy's log",
        &[&token, &b64(&format!("oauth2accesstoken:{token}"))],
    );
}

/// A JWT-shaped ACR refresh token expiring at `exp`, short enough for bcrypt (72 bytes)
/// so that the upstream's htpasswd check compares all of it.
fn acr_refresh_token(exp: u64) -> String {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let t = format!(
        "{}.{}.c2ln",
        b64url.encode(r#"{"alg":"none"}"#),
        b64url.encode(format!(
            r#"{{"exp":{exp},"jti":"{:06x}"}}"#,
            fastrand::u32(..0xff_ffff)
        ))
    );
    assert!(t.len() <= 72, "refresh token of {} bytes", t.len());
    t
}

#[test]
fn acr_plugin_with_imds_and_the_token_exchange() {
    if !require_upstream_tools() {
        return;
    }
    const NULL_GUID: &str = "00000000-0000-0000-0000-000000000000";
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + LIFETIME.as_secs()
        + 20; // seeding the upstream and starting the proxy take a while
    let refresh = acr_refresh_token(exp);
    let mut up = Upstream::htpasswd(NULL_GUID, &refresh);
    let registry = up.host();
    let repo = images::unique_repo("acr");
    let img_http = images::seed(&up, &repo, "inpath", ImageKind::DockerV2s2 { layers: 2 });
    let img_skopeo = images::seed(&up, &repo, "skopeo", ImageKind::small_oci());

    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let aad = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64url.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64url.encode(
            serde_json::json!({"aud": "https://management.azure.com/", "tid": "tenant-e2e", "oid": format!("{:016x}", fastrand::u64(..))})
                .to_string()
        )
    );
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let (aad_answer, refresh_answer, service) = (aad.clone(), refresh.clone(), registry.clone());
    let azure = FakeServer::start(move |r: &Request| match (r.method.as_str(), r.path()) {
        ("GET", "/metadata/identity/oauth2/token") => {
            if r.header("metadata") != Some("true")
                || r.query("api-version").as_deref() != Some("2018-02-01")
                || r.query("resource").as_deref() != Some("https://management.azure.com/")
            {
                return (
                    400,
                    r#"{"error":"invalid_request","error_description":"bad IMDS request"}"#
                        .to_owned(),
                );
            }
            (
                200,
                serde_json::json!({"access_token": aad_answer, "expires_in": "86399",
                    "resource": "https://management.azure.com/", "token_type": "Bearer"})
                .to_string(),
            )
        }
        ("POST", "/oauth2/exchange") => {
            let ok = r.form("grant_type").as_deref() == Some("access_token")
                && r.form("service").as_deref() == Some(service.as_str())
                && r.form("tenant").as_deref() == Some("tenant-e2e")
                && r.form("access_token").as_deref() == Some(aad_answer.as_str());
            if !ok {
                return (
                    401,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad exchange"}]}"#.to_owned(),
                );
            }
            seen.lock().expect("lock").push(SystemTime::now());
            (
                200,
                serde_json::json!({"refresh_token": refresh_answer}).to_string(),
            )
        }
        _ => (404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_owned()),
    });
    let plugins = plugin_dir("acr");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &registry,
            &format!(
                "provider: acr, providerOpts: \"registry={registry},exchangeUrl={}\", expiry: 1h",
                azure.url("/oauth2/exchange")
            ),
        ))
        .default_ns(&registry)
        // Managed identity through IMDS, at the fake.
        .env("IMDS_ENDPOINT", &format!("http://{}", azure.addr))
        .env("IDENTITY_ENDPOINT", "")
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "")
        .env("AZURE_CLIENT_SECRET", "")
        .env("AZURE_FEDERATED_TOKEN_FILE", "")
        .env("AZURE_CLIENT_ID", "")
        .env("AZURE_TENANT_ID", "")
        .env("AZURE_AUTHORITY_HOST", "")
        .log_level("debug")
        .start();

    let before = up.access_log().len();
    pull_both(&proxy, &up, &repo, &img_http, &img_skopeo);
    assert_upstream_accepted(&mut up, before, NULL_GUID);
    assert_refreshed_before_expiry(
        &times,
        |_| UNIX_EPOCH + Duration::from_secs(exp),
        "ACR token exchange",
    );
    let reqs = azure.requests();
    assert!(
        reqs.iter().all(|r| matches!(
            r.path(),
            "/metadata/identity/oauth2/token" | "/oauth2/exchange"
        )),
        "only IMDS and the exchange were asked: {:?}",
        reqs.iter().map(|r| r.target.clone()).collect::<Vec<_>>()
    );

    let log = proxy.log();
    assert!(
        log.contains("plugin=\"acr\""),
        "no log line from the acr plugin tagged with its name"
    );
    assert_no_secret(
        &log,
        "the proxy's log",
        &[&refresh, &aad, &b64(&format!("{NULL_GUID}:{refresh}"))],
    );
}

fn openssl(args: &[&str], cwd: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `service_account` key file: the plugin signs a JWT (RS256) with the key and exchanges
/// it at the file's `token_uri`; the signature checks out with the public key (openssl).
#[test]
fn gcp_plugin_with_a_service_account_key_file() {
    if !require_upstream_tools() {
        return;
    }
    let token = format!("ya29.e2e-sa-{:016x}", fastrand::u64(..));
    let mut up = Upstream::htpasswd("oauth2accesstoken", &token);
    let repo = images::unique_repo("gcpsa");
    let img = images::seed(&up, &repo, "v1", ImageKind::DockerV2s2 { layers: 2 });

    let keys = tempfile::tempdir().expect("tempdir");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ],
        keys.path(),
    );
    openssl(
        &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
        keys.path(),
    );
    let pem = std::fs::read_to_string(keys.path().join("key.pem")).expect("key");
    let email = "puller@e2e-project.iam.gserviceaccount.com";

    let answer = token.clone();
    let oauth = FakeServer::start(move |r: &Request| {
        if r.method == "POST"
            && r.path() == "/token"
            && r.form("grant_type").as_deref()
                == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            && r.form("assertion")
                .is_some_and(|a| a.split('.').count() == 3)
        {
            (
                200,
                serde_json::json!({"access_token": answer, "expires_in": 3599, "token_type": "Bearer"})
                    .to_string(),
            )
        } else {
            (
                400,
                r#"{"error":"invalid_grant","error_description":"bad request"}"#.to_owned(),
            )
        }
    });
    let token_uri = oauth.url("/token");
    let key_file = keys.path().join("sa.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "project_id": "e2e-project",
            "private_key_id": "e2e0123456789",
            "private_key": pem,
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .expect("write key file");
    let plugins = plugin_dir("gcp");
    let gcloud = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            "provider: gcp, expiry: 1h",
        ))
        .env("GOOGLE_APPLICATION_CREDENTIALS", path_str(&key_file))
        .env("CLOUDSDK_CONFIG", path_str(gcloud.path()))
        // Not asked: a credentials file comes first. Nothing listens there anyway.
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .log_level("debug")
        .start();
    let before = up.access_log().len();
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    assert_upstream_accepted(&mut up, before, "oauth2accesstoken");

    // The JWT the plugin sent: claims as Google requires, signed with the key.
    let reqs = oauth.requests();
    assert_eq!(reqs.len(), 1, "one token request for one fetch");
    let jwt = reqs[0].form("assertion").expect("assertion");
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value =
        serde_json::from_slice(&b64url.decode(parts[0]).expect("b64")).expect("json");
    let claims: serde_json::Value =
        serde_json::from_slice(&b64url.decode(parts[1]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "e2e0123456789");
    assert_eq!(claims["iss"], email);
    assert_eq!(claims["aud"], token_uri);
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    std::fs::write(
        keys.path().join("input"),
        format!("{}.{}", parts[0], parts[1]),
    )
    .expect("w");
    std::fs::write(
        keys.path().join("sig"),
        b64url.decode(parts[2]).expect("b64 signature"),
    )
    .expect("w");
    openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig",
            "input",
        ],
        keys.path(),
    );

    let key_body: String = pem.lines().nth(5).unwrap_or_default().to_owned();
    assert_no_secret(&proxy.log(), "the proxy's log", &[&token, &key_body, &jwt]);
}

/// AKS workload identity: the federated token file as the client assertion at the Entra
/// token endpoint (AZURE_AUTHORITY_HOST), then the exchange with the configured tenant.
#[test]
fn acr_plugin_with_workload_identity() {
    if !require_upstream_tools() {
        return;
    }
    const NULL_GUID: &str = "00000000-0000-0000-0000-000000000000";
    const TENANT: &str = "e2e00000-0000-4000-8000-00000000aaaa";
    const CLIENT: &str = "e2e00000-0000-4000-8000-00000000cccc";
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let refresh = acr_refresh_token(exp);
    let mut up = Upstream::htpasswd(NULL_GUID, &refresh);
    let registry = up.host();
    let repo = images::unique_repo("acrwi");
    let img = images::seed(&up, &repo, "v1", ImageKind::DockerV2s2 { layers: 2 });

    let dir = tempfile::tempdir().expect("tempdir");
    let federated = format!("federated-sa-token-e2e-{:016x}", fastrand::u64(..));
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, format!("{federated}\n")).expect("write token file");
    let aad = format!("aad-access-token-e2e-{:016x}", fastrand::u64(..));
    let (aad_answer, refresh_answer, service, assertion) = (
        aad.clone(),
        refresh.clone(),
        registry.clone(),
        federated.clone(),
    );
    let azure = FakeServer::start(move |r: &Request| {
        let entra_path = format!("/{TENANT}/oauth2/v2.0/token");
        match (r.method.as_str(), r.path()) {
            ("POST", p) if p == entra_path => {
                let ok = r.form("grant_type").as_deref() == Some("client_credentials")
                    && r.form("client_id").as_deref() == Some(CLIENT)
                    && r.form("client_assertion").as_deref() == Some(assertion.as_str())
                    && r.form("client_assertion_type").as_deref()
                        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    && r.form("scope").as_deref() == Some("https://management.azure.com/.default");
                if ok {
                    (
                        200,
                        serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": aad_answer})
                            .to_string(),
                    )
                } else {
                    (
                        401,
                        r#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found"}"#
                            .to_owned(),
                    )
                }
            }
            ("POST", "/oauth2/exchange")
                if r.form("access_token").as_deref() == Some(aad_answer.as_str())
                    && r.form("service").as_deref() == Some(service.as_str())
                    && r.form("tenant").as_deref() == Some(TENANT) =>
            {
                (
                    200,
                    serde_json::json!({"refresh_token": refresh_answer}).to_string(),
                )
            }
            _ => (
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"unexpected request"}]}"#.to_owned(),
            ),
        }
    });
    let plugins = plugin_dir("acr");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &registry,
            &format!(
                "provider: acr, providerOpts: \"registry={registry},exchangeUrl={}\", expiry: 1h",
                azure.url("/oauth2/exchange")
            ),
        ))
        .env("AZURE_FEDERATED_TOKEN_FILE", path_str(&token_file))
        .env("AZURE_CLIENT_ID", CLIENT)
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_AUTHORITY_HOST", &format!("http://{}", azure.addr))
        .env("AZURE_CLIENT_SECRET", "")
        .env("IDENTITY_ENDPOINT", "")
        // Not asked: workload identity comes first. Nothing listens there anyway.
        .env("IMDS_ENDPOINT", "http://127.0.0.1:9")
        .log_level("debug")
        .start();
    let before = up.access_log().len();
    proxy.pull_and_verify(Route::InPath(&registry), &img);
    assert_upstream_accepted(&mut up, before, NULL_GUID);
    let paths: Vec<String> = azure
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            format!("/{TENANT}/oauth2/v2.0/token"),
            "/oauth2/exchange".to_owned()
        ],
        "one Entra token request, one exchange"
    );
    assert_no_secret(
        &proxy.log(),
        "the proxy's log",
        &[&federated, &aad, &refresh],
    );
}
