//! Unit tests of the `gcp` provider against a fake metadata server and token endpoint on
//! 127.0.0.1 speaking Google's wire formats.

use super::*;
use crate::fake_server::{FakeServer, Request, closed_port};
use ociregistry_plugin_api::{CredentialKind, PluginErrorKind};

const TOKEN: &str = "ya29.c.fake-access-token-0123456789";

fn provider(opts: &str, env: &Env) -> Result<GcpProvider, PluginError> {
    let opts = ProviderOpts::parse(Factory::NAME, opts, Factory::OPTIONS)?;
    GcpProvider::new(&opts, env)
}

/// An environment where nothing is set (no ADC file can be found).
fn empty_env() -> Env {
    Env::default()
}

fn metadata_env(fake: &FakeServer) -> Env {
    Env {
        metadata_host: Some(fake.addr.clone()),
        ..Env::default()
    }
}

fn basic(c: &Credential) -> (&str, &str) {
    match &c.kind {
        CredentialKind::Basic { user, secret } => (user, secret.expose()),
        other => panic!("not basic: {other:?}"),
    }
}

fn token_answer(token: &str, expires_in: u64) -> (u16, String) {
    (
        200,
        serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
            .to_string(),
    )
}

fn assert_expires_in(c: &Credential, secs: u64, before: SystemTime) {
    let at = c.expires_at.expect("an expiry");
    let after = SystemTime::now();
    assert!(
        at >= before + Duration::from_secs(secs) && at <= after + Duration::from_secs(secs),
        "expiry {at:?} is not {secs}s after the request"
    );
}

/// Asserts a one-line error without any of `secrets`, starting with `prefix`.
fn assert_clean_error(e: &PluginError, prefix: &str, secrets: &[&str]) {
    let m = e.to_string();
    assert!(
        m.starts_with(prefix),
        "error {m:?} does not start with {prefix:?}"
    );
    assert!(
        !m.contains('\n') && !m.contains('\r'),
        "not one line: {m:?}"
    );
    for s in secrets {
        assert!(!m.contains(s), "error shows a secret: {m}");
    }
}

#[test]
fn metadata_server_token() {
    let fake = FakeServer::start(|_| token_answer(TOKEN, 3599));
    let p = provider("", &metadata_env(&fake)).unwrap();
    let before = SystemTime::now();
    let c = p.fetch().unwrap();
    assert_eq!(basic(&c), (USER, TOKEN));
    assert_expires_in(&c, 3599, before);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(
        r.target,
        "/computeMetadata/v1/instance/service-accounts/default/token"
    );
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    // The Debug output shows no token.
    assert!(!format!("{c:?}").contains(TOKEN));
}

#[test]
fn metadata_options_override_the_environment() {
    let fake = FakeServer::start(|_| token_answer(TOKEN, 60));
    let env = Env {
        metadata_host: Some(closed_port()),
        ..Env::default()
    };
    let p = provider(
        &format!(
            "source=metadata,metadataHost={},serviceAccount=pull@proj.iam.gserviceaccount.com",
            fake.addr
        ),
        &env,
    )
    .unwrap();
    p.fetch().unwrap();
    assert_eq!(
        fake.requests()[0].path(),
        "/computeMetadata/v1/instance/service-accounts/pull@proj.iam.gserviceaccount.com/token"
    );
}

#[test]
fn metadata_server_unreachable() {
    let addr = closed_port();
    let env = Env {
        metadata_host: Some(addr.clone()),
        ..Env::default()
    };
    let e = provider("", &env).unwrap().fetch().unwrap_err();
    assert_clean_error(
        &e,
        "GCE metadata server token request (no credentials file found): ",
        &[],
    );
    assert!(e.to_string().contains(&addr), "{e}");
    assert_eq!(e.kind(), PluginErrorKind::Failed);
}

#[test]
fn metadata_server_error_answers() {
    for (status, body, want) in [
        (
            404,
            r#"{"error":"not_found","error_description":"no service account\nfor pods"}"#,
            "GCE metadata server token request (no credentials file found): HTTP 404: not_found: no service account for pods",
        ),
        (
            500,
            "internal failure leaking ya29.secret-in-body",
            "GCE metadata server token request (no credentials file found): HTTP 500 (44 bytes, not a JSON error)",
        ),
        (
            200,
            "<html>captive portal ya29.secret-in-body</html>",
            "GCE metadata server token request (no credentials file found): HTTP 200: the answer is not JSON (47 bytes)",
        ),
        (
            200,
            r#"["ya29.secret-in-body"]"#,
            "GCE metadata server token request (no credentials file found): HTTP 200: the answer is JSON but not an object",
        ),
        (
            200,
            r#"{"expires_in":3599,"token_type":"Bearer"}"#,
            "GCE metadata server token request (no credentials file found): no \"access_token\" field",
        ),
        (
            200,
            r#"{"access_token":"","expires_in":3599}"#,
            "GCE metadata server token request (no credentials file found): field \"access_token\" is empty",
        ),
        (
            200,
            r#"{"access_token":"ya29.secret-in-body","expires_in":"soon"}"#,
            "GCE metadata server token request (no credentials file found): field \"expires_in\" is not a number of seconds",
        ),
        (
            200,
            r#"{"access_token":"ya29.secret-in-body","expires_in":0}"#,
            "GCE metadata server token request (no credentials file found): the token is already expired (expires_in 0)",
        ),
        (
            200,
            r#"{"access_token":"ya29.secret-in-body","expires_in":10,"token_type":"MAC"}"#,
            "GCE metadata server token request (no credentials file found): unexpected token_type \"MAC\" (expected Bearer)",
        ),
    ] {
        let fake = FakeServer::start(move |_| (status, body.to_owned()));
        let e = provider("", &metadata_env(&fake))
            .unwrap()
            .fetch()
            .unwrap_err();
        assert_eq!(e.to_string(), want);
        assert_clean_error(&e, "GCE metadata server", &["ya29.secret-in-body"]);
    }
}

#[test]
fn expiry_absent_is_unknown() {
    let fake = FakeServer::start(|_| (200, format!(r#"{{"access_token":"{TOKEN}"}}"#)));
    let c = provider("", &metadata_env(&fake)).unwrap().fetch().unwrap();
    assert_eq!(c.expires_at, None);
    // Azure-style string seconds are accepted too.
    let fake = FakeServer::start(|_| {
        (
            200,
            format!(r#"{{"access_token":"{TOKEN}","expires_in":"120"}}"#),
        )
    });
    let before = SystemTime::now();
    let c = provider("", &metadata_env(&fake)).unwrap().fetch().unwrap();
    assert_expires_in(&c, 120, before);
}

/// Without an override the metadata server is metadata.google.internal; the test build
/// refuses to contact it (fail closed) instead of reaching the network.
#[test]
fn default_metadata_host_is_never_contacted_in_tests() {
    let p = provider("", &empty_env()).unwrap();
    match &p.source {
        Source::Metadata { url, fallback } => {
            assert_eq!(
                url,
                "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
            );
            assert!(fallback);
        }
        other => panic!("{other:?}"),
    }
    let e = p.fetch().unwrap_err();
    assert!(
        e.to_string()
            .contains("test build refuses to contact non-loopback host metadata.google.internal"),
        "{e}"
    );
}

fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

const CLIENT_SECRET: &str = "d-FL95Q19q7MQmFpd7hHD0Ty";
const REFRESH_TOKEN: &str = "1//0refresh-token-secret-abcdef";

fn authorized_user(token_uri: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "authorized_user",
        "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "token_uri": token_uri,
    })
}

#[test]
fn authorized_user_file() {
    let fake = FakeServer::start(|r: &Request| {
        if r.form("grant_type").as_deref() == Some("refresh_token")
            && r.form("refresh_token").as_deref() == Some(REFRESH_TOKEN)
            && r.form("client_secret").as_deref() == Some(CLIENT_SECRET)
        {
            token_answer(TOKEN, 3599)
        } else {
            (400, r#"{"error":"invalid_request"}"#.to_owned())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = write_json(
        dir.path(),
        "adc.json",
        &authorized_user(&fake.url("/token")),
    );
    // Found through GOOGLE_APPLICATION_CREDENTIALS; the metadata server is not asked.
    let env = Env {
        application_credentials: Some(f.display().to_string()),
        metadata_host: Some(closed_port()),
        ..Env::default()
    };
    let before = SystemTime::now();
    let c = provider("", &env).unwrap().fetch().unwrap();
    assert_eq!(basic(&c), (USER, TOKEN));
    assert_expires_in(&c, 3599, before);
    let r = &fake.requests()[0];
    assert_eq!((r.method.as_str(), r.path()), ("POST", "/token"));
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[test]
fn authorized_user_rejected() {
    let fake = FakeServer::start(|_| {
        (
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
                .to_owned(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let f = write_json(
        dir.path(),
        "adc.json",
        &authorized_user("https://unused.invalid/token"),
    );
    // tokenUrl= overrides the file's token_uri.
    let e = provider(
        &format!(
            "credentialsFile={},tokenUrl={}",
            f.display(),
            fake.url("/oauth2/token")
        ),
        &empty_env(),
    )
    .unwrap()
    .fetch()
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "authorized_user refresh token request: HTTP 400: invalid_grant: Token has been expired or revoked."
    );
    assert_clean_error(&e, "authorized_user", &[REFRESH_TOKEN, CLIENT_SECRET]);
    assert_eq!(fake.requests()[0].path(), "/oauth2/token");
}

#[test]
fn well_known_gcloud_file_is_used() {
    let fake = FakeServer::start(|_| token_answer(TOKEN, 3599));
    let dir = tempfile::tempdir().unwrap();
    write_json(
        dir.path(),
        "application_default_credentials.json",
        &authorized_user(&fake.url("/token")),
    );
    let env = Env {
        cloudsdk_config: Some(dir.path().display().to_string()),
        metadata_host: Some(closed_port()),
        ..Env::default()
    };
    let c = provider("", &env).unwrap().fetch().unwrap();
    assert_eq!(basic(&c), (USER, TOKEN));
    // source=metadata ignores it.
    let e = provider("source=metadata", &env)
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("GCE metadata server token request: "),
        "{e}"
    );
}

/// A fresh RSA key as a service-account key file's `private_key` (PKCS#8 PEM), and the
/// public key to verify signatures with.
fn rsa_key() -> (String, Vec<u8>) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let der: Pkcs8V1Der<'static> = kp.as_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, kp.public_key().as_ref().to_vec())
}

#[test]
fn service_account_key_file() {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    let (pem, public) = rsa_key();
    let fake = FakeServer::start(move |r: &Request| {
        let grant_ok =
            r.form("grant_type").as_deref() == Some("urn:ietf:params:oauth:grant-type:jwt-bearer");
        let jwt = r.form("assertion").unwrap_or_default();
        let parts: Vec<&str> = jwt.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = parts.len() == 3
            && UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(
                    format!("{}.{}", parts[0], parts[1]).as_bytes(),
                    &b64.decode(parts[2]).unwrap_or_default(),
                )
                .is_ok();
        if grant_ok && signed {
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
            let claims = http::jwt_claims(&jwt).unwrap();
            let body = serde_json::json!({
                "access_token": TOKEN,
                "expires_in": 3599,
                "token_type": "Bearer",
                "seen_header": header,
                "seen_claims": claims,
            });
            (200, body.to_string())
        } else {
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
                    .to_owned(),
            )
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token_uri = fake.url("/token");
    let f = write_json(
        dir.path(),
        "key.json",
        &serde_json::json!({
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "0123abcd",
            "private_key": pem,
            "client_email": "puller@proj.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }),
    );
    let p = provider(&format!("credentialsFile={}", f.display()), &empty_env()).unwrap();
    let c = p.fetch().unwrap();
    assert_eq!(basic(&c), (USER, TOKEN));
    // What the fake saw in the JWT.
    let r = &fake.requests()[0];
    let claims = http::jwt_claims(&r.form("assertion").unwrap()).unwrap();
    assert_eq!(claims["iss"], "puller@proj.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri);
    assert_eq!(claims["scope"], CLOUD_PLATFORM_SCOPE);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);

    // A key that is not RSA PEM: one line, no key material.
    let f = write_json(
        dir.path(),
        "bad-key.json",
        &serde_json::json!({
            "type": "service_account",
            "private_key": "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LXNlY3JldA==\n-----END PRIVATE KEY-----\n",
            "client_email": "puller@proj.iam.gserviceaccount.com",
            "token_uri": token_uri,
        }),
    );
    let e = provider(&format!("credentialsFile={}", f.display()), &empty_env())
        .unwrap()
        .fetch()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "GCP credentials file {}: private_key is not an RSA private key",
            f.display()
        )
    );
    assert_clean_error(&e, "GCP credentials file", &["bm90LWEta2V5"]);
}

#[test]
fn bad_credentials_files_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"type": "impersonated_service_account", "source_credentials": {}}),
            "credentials type \"impersonated_service_account\" is not supported (supported: service_account, authorized_user, external_account)",
        ),
        (
            serde_json::json!({"client_secret": CLIENT_SECRET}),
            "no \"type\" (expected service_account, authorized_user or external_account)",
        ),
        (
            serde_json::json!({"type": "authorized_user", "client_id": "x", "client_secret": CLIENT_SECRET}),
            "no \"refresh_token\" field",
        ),
        (
            serde_json::json!({"type": "authorized_user", "client_id": "x", "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN, "token_uri": "http://oauth2.example.com/token"}),
            "must use https (plain http only to a loopback address)",
        ),
    ];
    for (i, (content, want)) in cases.into_iter().enumerate() {
        let f = write_json(dir.path(), &format!("f{i}.json"), &content);
        let e = provider(&format!("credentialsFile={}", f.display()), &empty_env()).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions, "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
        assert_clean_error(&e, "", &[CLIENT_SECRET, REFRESH_TOKEN]);
    }
    // Not JSON: serde's position, never the content.
    let f = dir.path().join("garbage.json");
    std::fs::write(&f, format!("{CLIENT_SECRET} {{")).unwrap();
    let e = provider(&format!("credentialsFile={}", f.display()), &empty_env()).unwrap_err();
    assert!(e.to_string().contains(": not JSON: "), "{e}");
    assert_clean_error(&e, "GCP credentials file", &[CLIENT_SECRET]);
    // Missing.
    let e = provider("credentialsFile=/nonexistent/adc.json", &empty_env()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read GCP credentials file /nonexistent/adc.json: "),
        "{e}"
    );
}

#[test]
fn bad_options() {
    for (opts, want) in [
        (
            "source=vault",
            "option \"source\": invalid value \"vault\"; expected auto, metadata or file",
        ),
        (
            "tokenUrl=http://oauth2.example.com/token",
            "option \"tokenUrl\": \"http://oauth2.example.com/token\" must use https (plain http only to a loopback address)",
        ),
        (
            "tokenUrl=ftp://x/y",
            "option \"tokenUrl\": unsupported URL scheme \"ftp\"",
        ),
        (
            "source=metadata,credentialsFile=/x.json",
            "options \"credentialsFile\" and \"tokenUrl\" do not apply to source=metadata",
        ),
        (
            "metadataHost=evil.example/x?",
            "metadata host: invalid value \"evil.example/x?\"",
        ),
        (
            "serviceAccount=a/b",
            "option \"serviceAccount\": invalid value \"a/b\"",
        ),
    ] {
        let e = provider(opts, &empty_env()).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions, "{opts}");
        assert_eq!(e.to_string(), want, "{opts}");
    }
    let e = provider("tokenUrl=https://oauth2.example.com/token", &empty_env()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("option \"tokenUrl\" applies to credentials files, and none was found"),
        "{e}"
    );
    let e = provider("source=file", &empty_env()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("source=file: no credentials file"),
        "{e}"
    );
    let e = provider("scope=x", &empty_env()).unwrap_err();
    assert!(
        e.to_string()
            .contains("accepted: source, credentialsFile, tokenUrl, metadataHost, serviceAccount"),
        "{e}"
    );
}

#[test]
fn rfc3339_times() {
    let secs = |s: &str| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
    assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(secs("2000-03-01T00:00:00Z"), Some(951_868_800));
    assert_eq!(secs("2024-02-29T23:59:59.999999Z"), Some(1_709_251_199));
    assert_eq!(secs("2026-12-01T08:00:00.5+01:00"), Some(1_796_108_400));
    assert_eq!(secs("2099-01-01T00:00:00Z"), Some(4_070_908_800));
    for bad in [
        "",
        "2026-12-01",
        "2026-12-01T08:00:00",
        "2026-13-01T00:00:00Z",
        "2026-12-01T08:00:00.Z",
        "x026-12-01T08:00:00Z",
        "1969-12-31T23:59:59Z",
    ] {
        assert_eq!(secs(bad), None, "{bad}");
    }
}

const SUBJECT: &str = "eyJhbGciOiJSUzI1NiJ9.subject-token-secret.sig";
const STS_TOKEN: &str = "ya29.sts-federated-token-secret";

/// A fake STS, IAM Credentials and subject-token URL on one port.
fn federation_fake(expire_time: &'static str) -> FakeServer {
    FakeServer::start(move |r: &Request| {
        match (r.method.as_str(), r.path()) {
        ("GET", "/subject") if r.header("metadata") == Some("True") => {
            (200, serde_json::json!({"access_token": SUBJECT}).to_string())
        }
        ("POST", "/v1/token")
            if r.form("subject_token").as_deref() == Some(SUBJECT)
                && r.form("grant_type").as_deref()
                    == Some("urn:ietf:params:oauth:grant-type:token-exchange") =>
        {
            (
                200,
                serde_json::json!({"access_token": STS_TOKEN, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600})
                    .to_string(),
            )
        }
        ("POST", "/v1/token") => (
            400,
            r#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match the expected audience."}"#
                .to_owned(),
        ),
        ("POST", p) if p.ends_with(":generateAccessToken") => {
            if r.header("authorization") == Some(&format!("Bearer {STS_TOKEN}")) {
                (
                    200,
                    serde_json::json!({"accessToken": TOKEN, "expireTime": expire_time}).to_string(),
                )
            } else {
                (
                    403,
                    r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#
                        .to_owned(),
                )
            }
        }
        _ => (404, r#"{"error":"not_found"}"#.to_owned()),
    }
    })
}

fn external_account(
    fake: &FakeServer,
    source: serde_json::Value,
    impersonate: bool,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/aks",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": fake.url("/v1/token"),
        "credential_source": source,
    });
    if impersonate {
        v["service_account_impersonation_url"] = fake
            .url("/v1/projects/-/serviceAccounts/puller@proj.iam.gserviceaccount.com:generateAccessToken")
            .into();
    }
    v
}

#[test]
fn external_account_from_a_file() {
    let fake = federation_fake("2099-01-01T00:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("token");
    std::fs::write(&subject, format!("{SUBJECT}\n")).unwrap();
    let f = write_json(
        dir.path(),
        "wif.json",
        &external_account(&fake, serde_json::json!({"file": subject}), false),
    );
    let c = provider(&format!("credentialsFile={}", f.display()), &empty_env())
        .unwrap()
        .fetch()
        .unwrap();
    // Without impersonation the federated token itself is used.
    assert_eq!(basic(&c), (USER, STS_TOKEN));
    let r = &fake.requests()[0];
    assert_eq!(r.form("scope").as_deref(), Some(CLOUD_PLATFORM_SCOPE));
    assert_eq!(
        r.form("subject_token_type").as_deref(),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    assert!(r.form("audience").unwrap().ends_with("/providers/aks"));

    std::fs::remove_file(&subject).unwrap();
    let e = provider(&format!("credentialsFile={}", f.display()), &empty_env())
        .unwrap()
        .fetch()
        .unwrap_err();
    assert_clean_error(
        &e,
        &format!("cannot read the subject token file {}: ", subject.display()),
        &[],
    );
}

#[test]
fn external_account_from_a_url_with_impersonation() {
    let fake = federation_fake("2099-01-01T00:00:00Z");
    let dir = tempfile::tempdir().unwrap();
    let source = serde_json::json!({
        "url": fake.url("/subject"),
        "headers": {"Metadata": "True"},
        "format": {"type": "json", "subject_token_field_name": "access_token"},
    });
    let f = write_json(
        dir.path(),
        "wif.json",
        &external_account(&fake, source, true),
    );
    let c = provider(&format!("credentialsFile={}", f.display()), &empty_env())
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(basic(&c), (USER, TOKEN));
    let at = c.expires_at.unwrap();
    let want = UNIX_EPOCH + Duration::from_secs(4_070_908_800);
    assert!(at <= want && at + Duration::from_secs(5) > want, "{at:?}");
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter().map(|r| r.path().to_owned()).collect::<Vec<_>>(),
        [
            "/subject",
            "/v1/token",
            "/v1/projects/-/serviceAccounts/puller@proj.iam.gserviceaccount.com:generateAccessToken"
        ]
    );
    let body: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    assert_eq!(body["scope"][0], CLOUD_PLATFORM_SCOPE);
}

#[test]
fn external_account_errors() {
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("token");
    std::fs::write(&subject, SUBJECT).unwrap();
    for (expire, want) in [
        (
            "2001-01-01T00:00:00Z",
            "service account impersonation (generateAccessToken): the token is already expired",
        ),
        (
            "tomorrow",
            "service account impersonation (generateAccessToken): field \"expireTime\" is not an RFC 3339 time",
        ),
    ] {
        let fake = federation_fake(expire);
        let f = write_json(
            dir.path(),
            "wif.json",
            &external_account(&fake, serde_json::json!({"file": subject}), true),
        );
        let e = provider(&format!("credentialsFile={}", f.display()), &empty_env())
            .unwrap()
            .fetch()
            .unwrap_err();
        assert_eq!(e.to_string(), want);
        assert_clean_error(&e, "service account", &[SUBJECT, STS_TOKEN, TOKEN]);
    }
    // STS refuses the subject token; IAM refuses the federated identity.
    let fake = federation_fake("2099-01-01T00:00:00Z");
    std::fs::write(&subject, "another-subject-token-secret").unwrap();
    let f = write_json(
        dir.path(),
        "wif.json",
        &external_account(&fake, serde_json::json!({"file": subject}), true),
    );
    let e = provider(&format!("credentialsFile={}", f.display()), &empty_env())
        .unwrap()
        .fetch()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "STS token exchange: HTTP 400: invalid_grant: The audience in ID Token does not match the expected audience."
    );
    assert_clean_error(&e, "STS", &["another-subject-token-secret"]);
    let e = impersonate(
        &http::client(true).unwrap(),
        &url::Url::parse(&fake.url("/v1/projects/-/serviceAccounts/x:generateAccessToken"))
            .unwrap(),
        "wrong-bearer-token-secret",
    )
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "service account impersonation (generateAccessToken): HTTP 403: PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied"
    );

    // Unsupported sources are refused at create.
    for (source, want) in [
        (
            serde_json::json!({"environment_id": "aws1", "regional_cred_verification_url": "https://sts.{region}.amazonaws.com"}),
            "credential_source of the AWS kind is not supported (supported: file, url)",
        ),
        (
            serde_json::json!({"executable": {"command": "/bin/token"}}),
            "credential_source of the executable kind is not supported (supported: file, url)",
        ),
        (
            serde_json::json!({"file": "/x", "format": {"type": "json"}}),
            "credential_source format json without subject_token_field_name",
        ),
        (
            serde_json::json!({}),
            "credential_source has neither \"file\" nor \"url\"",
        ),
    ] {
        let f = write_json(
            dir.path(),
            "bad.json",
            &external_account(&fake, source, false),
        );
        let e = provider(&format!("credentialsFile={}", f.display()), &empty_env()).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
        assert!(e.to_string().ends_with(want), "{e}");
    }
}
