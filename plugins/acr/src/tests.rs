//! Unit tests of the `acr` provider against fakes of IMDS, the Entra ID token endpoint and
//! ACR's `/oauth2/exchange` on 127.0.0.1, speaking their wire formats.

use super::*;
use crate::fake_server::{Answer, FakeServer, Request, closed_port};
use base64::Engine as _;
use ociregistry_plugin_api::{CredentialKind, PluginErrorKind};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "3c5b2a1e-0000-4000-8000-00000000c11e";
const CLIENT_SECRET: &str = "Zx8Q~client-secret-value-0123";
const REGISTRY: &str = "myregistry.azurecr.io";

fn b64url(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JWT-shaped token (unsigned: nobody verifies it here) with `claims`.
fn jwt(claims: serde_json::Value) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64url(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64url(&claims)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn aad_token() -> String {
    jwt(
        serde_json::json!({"aud": "https://management.azure.com/", "tid": TENANT, "exp": unix_now() + 3600}),
    )
}

fn refresh_token(exp: u64) -> String {
    jwt(serde_json::json!({"jti": "r1", "sub": "x", "exp": exp, "grant_type": "refresh_token"}))
}

/// One fake for IMDS, Entra and ACR, routing by path. `exchange` answers the exchange.
fn cloud(aad: String, exchange: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FakeServer {
    FakeServer::start(move |r: &Request| {
        match (r.method.as_str(), r.path()) {
        ("GET", "/metadata/identity/oauth2/token") | ("GET", "/msi/token") => (
            200,
            // IMDS sends numbers as strings.
            serde_json::json!({"access_token": aad, "expires_in": "86399", "expires_on": (unix_now() + 86399).to_string(),
                "resource": "https://management.azure.com/", "token_type": "Bearer"})
            .to_string(),
        ),
        ("POST", p) if p.ends_with("/oauth2/v2.0/token") => (
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": aad})
                .to_string(),
        ),
        ("POST", "/oauth2/exchange") => exchange(r),
        _ => (404, r#"{"error":"not_found"}"#.to_owned()),
    }
    })
}

fn good_exchange(refresh: String) -> impl Fn(&Request) -> Answer + Send + Sync + 'static {
    move |r: &Request| {
        if r.form("grant_type").as_deref() == Some("access_token")
            && r.form("service").as_deref() == Some(REGISTRY)
            && r.form("access_token").is_some()
        {
            (
                200,
                serde_json::json!({"refresh_token": refresh}).to_string(),
            )
        } else {
            (
                400,
                r#"{"errors":[{"code":"BAD_REQUEST","message":"bad form"}]}"#.to_owned(),
            )
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> Env {
    Env(pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect())
}

fn provider(opts: &str, env: &Env) -> Result<AcrProvider, PluginError> {
    let opts = ProviderOpts::parse(Factory::NAME, opts, Factory::OPTIONS)?;
    AcrProvider::new(&opts, env, "")
}

/// `registry=` and the exchange URL pointing at `fake`.
fn base_opts(fake: &FakeServer) -> String {
    format!(
        "registry={REGISTRY},exchangeUrl={}",
        fake.url("/oauth2/exchange")
    )
}

fn basic(c: &Credential) -> (&str, &str) {
    match &c.kind {
        CredentialKind::Basic { user, secret } => (user, secret.expose()),
        other => panic!("not basic: {other:?}"),
    }
}

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

fn exchange_of(fake: &FakeServer) -> Request {
    fake.requests()
        .into_iter()
        .find(|r| r.path() == "/oauth2/exchange")
        .expect("an exchange request")
}

#[test]
fn managed_identity_through_imds() {
    let aad = aad_token();
    let exp = unix_now() + 3 * 3600;
    let refresh = refresh_token(exp);
    let fake = cloud(aad.clone(), good_exchange(refresh.clone()));
    let p = provider(
        &format!(
            "{},imdsEndpoint={},clientId={CLIENT}",
            base_opts(&fake),
            fake.url("/metadata/identity/oauth2/token")
        ),
        &env(&[]),
    )
    .unwrap();
    let c = p.fetch().unwrap();
    assert_eq!(basic(&c), (USER, refresh.as_str()));
    assert_eq!(c.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    let reqs = fake.requests();
    let imds = &reqs[0];
    assert_eq!(imds.method, "GET");
    assert_eq!(imds.header("metadata"), Some("true"));
    assert_eq!(imds.query("api-version").as_deref(), Some("2018-02-01"));
    assert_eq!(
        imds.query("resource").as_deref(),
        Some("https://management.azure.com/")
    );
    assert_eq!(imds.query("client_id").as_deref(), Some(CLIENT));
    let ex = exchange_of(&fake);
    assert_eq!(ex.form("access_token").as_deref(), Some(aad.as_str()));
    assert_eq!(ex.form("service").as_deref(), Some(REGISTRY));
    // No tenant configured: taken from the Entra token's tid claim.
    assert_eq!(ex.form("tenant").as_deref(), Some(TENANT));
    assert!(!format!("{c:?}").contains(&refresh));
    assert!(!format!("{p:?}").contains(&refresh));
}

#[test]
fn imds_base_from_the_environment_and_app_service() {
    let refresh = refresh_token(unix_now() + 3600);
    let fake = cloud(aad_token(), good_exchange(refresh.clone()));
    let base = format!("http://{}", fake.addr);
    let p = provider(&base_opts(&fake), &env(&[("IMDS_ENDPOINT", &base)])).unwrap();
    assert_eq!(basic(&p.fetch().unwrap()).1, refresh);
    assert_eq!(fake.requests()[0].path(), "/metadata/identity/oauth2/token");

    // App Service / Container Apps: IDENTITY_ENDPOINT + IDENTITY_HEADER.
    let fake = cloud(aad_token(), good_exchange(refresh.clone()));
    let p = provider(
        &base_opts(&fake),
        &env(&[
            ("IDENTITY_ENDPOINT", &fake.url("/msi/token")),
            ("IDENTITY_HEADER", "identity-header-secret-42"),
        ]),
    )
    .unwrap();
    assert!(!format!("{p:?}").contains("identity-header-secret-42"));
    assert_eq!(basic(&p.fetch().unwrap()).1, refresh);
    let r = &fake.requests()[0];
    assert_eq!(r.path(), "/msi/token");
    assert_eq!(
        r.header("x-identity-header"),
        Some("identity-header-secret-42")
    );
    assert_eq!(r.query("api-version").as_deref(), Some("2019-08-01"));
}

#[test]
fn workload_identity() {
    let refresh = refresh_token(unix_now() + 3600);
    let fake = cloud(aad_token(), good_exchange(refresh.clone()));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "federated-sa-token-1\n").unwrap();
    let e = env(&[
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            &token_file.display().to_string(),
        ),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_AUTHORITY_HOST", &format!("http://{}/", fake.addr)),
        // Never asked: workload identity comes before managed identity.
        ("IMDS_ENDPOINT", &format!("http://{}", closed_port())),
    ]);
    let p = provider(&base_opts(&fake), &e).unwrap();
    assert_eq!(basic(&p.fetch().unwrap()).1, refresh);
    // The file is read again at each fetch (kubelet rotates it).
    std::fs::write(&token_file, "federated-sa-token-2").unwrap();
    p.fetch().unwrap();
    let token_reqs: Vec<Request> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path().ends_with("/token"))
        .collect();
    assert_eq!(token_reqs.len(), 2);
    let r = &token_reqs[0];
    assert_eq!(r.path(), format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(r.form("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(r.form("client_id").as_deref(), Some(CLIENT));
    assert_eq!(
        r.form("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(
        r.form("client_assertion").as_deref(),
        Some("federated-sa-token-1")
    );
    assert_eq!(
        r.form("scope").as_deref(),
        Some("https://management.azure.com/.default")
    );
    assert_eq!(
        token_reqs[1].form("client_assertion").as_deref(),
        Some("federated-sa-token-2")
    );
    assert_eq!(exchange_of(&fake).form("tenant").as_deref(), Some(TENANT));

    // A vanished token file: one line naming it.
    std::fs::remove_file(&token_file).unwrap();
    let err = p.fetch().unwrap_err();
    assert_clean_error(
        &err,
        &format!(
            "cannot read the federated token file {}: ",
            token_file.display()
        ),
        &[],
    );
}

#[test]
fn client_secret() {
    let refresh = refresh_token(unix_now() + 3600);
    let fake = cloud(aad_token(), good_exchange(refresh.clone()));
    let e = env(&[
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", TENANT),
        ("MY_ACR_SECRET", CLIENT_SECRET),
    ]);
    let p = provider(
        &format!(
            "{},clientSecretEnv=MY_ACR_SECRET,authorityHost=http://{},resource=https://containerregistry.azure.net",
            base_opts(&fake),
            fake.addr
        ),
        &e,
    )
    .unwrap();
    assert!(!format!("{p:?}").contains(CLIENT_SECRET));
    assert_eq!(basic(&p.fetch().unwrap()).1, refresh);
    let r = &fake.requests()[0];
    assert_eq!(r.form("client_secret").as_deref(), Some(CLIENT_SECRET));
    assert_eq!(
        r.form("scope").as_deref(),
        Some("https://containerregistry.azure.net/.default")
    );
}

#[test]
fn client_secret_rejected() {
    let fake = FakeServer::start(|_| {
        (
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"}"#
                .to_owned(),
        )
    });
    let e = env(&[
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("AZURE_AUTHORITY_HOST", &format!("http://{}", fake.addr)),
    ]);
    let err = provider(&base_opts(&fake), &e)
        .unwrap()
        .fetch()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Entra ID client secret token request: HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided. Trace ID: 1"
    );
    assert_clean_error(&err, "Entra ID", &[CLIENT_SECRET]);
}

#[test]
fn imds_errors() {
    let imds_opts = |fake_or_addr: &str| {
        format!(
            "registry={REGISTRY},exchangeUrl=http://{}/oauth2/exchange,imdsEndpoint=http://{fake_or_addr}/metadata/identity/oauth2/token",
            closed_port()
        )
    };
    // Unreachable.
    let addr = closed_port();
    let err = provider(&imds_opts(&addr), &env(&[]))
        .unwrap()
        .fetch()
        .unwrap_err();
    assert_clean_error(&err, "managed identity (IMDS) token request: ", &[]);
    assert!(err.to_string().contains(&addr), "{err}");
    assert_eq!(err.kind(), PluginErrorKind::Failed);
    for (status, body, want) in [
        (
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#.to_owned(),
            "managed identity (IMDS) token request: HTTP 400: invalid_request: Identity not found"
                .to_owned(),
        ),
        (
            200,
            "{not json".to_owned(),
            "managed identity (IMDS) token request: HTTP 200: the answer is not JSON (9 bytes)"
                .to_owned(),
        ),
        (
            200,
            r#"{"expires_in":"3600"}"#.to_owned(),
            "managed identity (IMDS) token request: no \"access_token\" field".to_owned(),
        ),
        (
            200,
            format!(r#"{{"access_token":"{}","expires_in":"0"}}"#, aad_token()),
            "managed identity (IMDS) token request: the access token is already expired".to_owned(),
        ),
        (
            200,
            format!(
                r#"{{"access_token":"{}","expires_on":"1500000000"}}"#,
                aad_token()
            ),
            "managed identity (IMDS) token request: the access token is already expired".to_owned(),
        ),
    ] {
        let fake = FakeServer::start(move |_| (status, body.clone()));
        let err = provider(&imds_opts(&fake.addr), &env(&[]))
            .unwrap()
            .fetch()
            .unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_clean_error(&err, "managed identity", &[&aad_token()[..40]]);
    }
}

#[test]
fn exchange_errors() {
    let aad = aad_token();
    for (status, body, want) in [
        (
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required, visit https://aka.ms/acr/authorization"}]}"#.to_owned(),
            "HTTP 401: UNAUTHORIZED: authentication required, visit https://aka.ms/acr/authorization",
        ),
        (
            200,
            r#"{"access_token":"x"}"#.to_owned(),
            "no \"refresh_token\" field",
        ),
        (200, "refresh_token=abc".to_owned(), "HTTP 200: the answer is not JSON (17 bytes)"),
        (
            200,
            serde_json::json!({"refresh_token": refresh_token(unix_now() - 10)}).to_string(),
            "the refresh token is already expired",
        ),
    ] {
        let fake = cloud(aad.clone(), move |_| (status, body.clone()));
        let p = provider(
            &format!("{},imdsEndpoint={}", base_opts(&fake), fake.url("/metadata/identity/oauth2/token")),
            &env(&[]),
        )
        .unwrap();
        let err = p.fetch().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("ACR token exchange at {REGISTRY}: {want}")
        );
        assert_clean_error(&err, "ACR token exchange", &[&aad, &aad[..40]]);
    }
}

/// A refresh token that is not a JWT: the Entra token's expiry is used.
#[test]
fn opaque_refresh_token_expires_with_the_entra_token() {
    let fake = cloud(
        aad_token(),
        good_exchange("opaque-refresh-token".to_owned()),
    );
    let p = provider(
        &format!(
            "{},imdsEndpoint={}",
            base_opts(&fake),
            fake.url("/metadata/identity/oauth2/token")
        ),
        &env(&[]),
    )
    .unwrap();
    let before = SystemTime::now();
    let c = p.fetch().unwrap();
    assert_eq!(basic(&c).1, "opaque-refresh-token");
    let at = c.expires_at.expect("expiry");
    assert!(
        at >= before + Duration::from_secs(86399)
            && at <= SystemTime::now() + Duration::from_secs(86399)
    );
}

/// plugin-api 1.1: the registry entry's name is the default of `registry=`; without either
/// the options are refused, naming what to do.
#[test]
fn the_registry_defaults_to_the_registry_entry() {
    let opts = ProviderOpts::parse(Factory::NAME, "", Factory::OPTIONS).unwrap();
    let p = AcrProvider::new(&opts, &env(&[]), "Other.AzureCR.io").unwrap();
    assert_eq!(p.registry, "other.azurecr.io");
    assert_eq!(
        p.exchange_url.as_str(),
        "https://other.azurecr.io/oauth2/exchange"
    );
    let given =
        ProviderOpts::parse(Factory::NAME, "registry=x.azurecr.io", Factory::OPTIONS).unwrap();
    let p = AcrProvider::new(&given, &env(&[]), "other.azurecr.io").unwrap();
    assert_eq!(p.registry, "x.azurecr.io", "the option wins");
    let e = AcrProvider::new(&opts, &env(&[]), "").err().unwrap();
    assert!(e.to_string().contains("no registry host"), "{e}");
}

/// Without overrides the endpoints are Azure's; the test build refuses to contact them
/// (fail closed) instead of reaching the network.
#[test]
fn defaults_are_never_contacted_in_tests() {
    let p = provider(&format!("registry={REGISTRY}"), &env(&[])).unwrap();
    assert_eq!(
        p.exchange_url.as_str(),
        "https://myregistry.azurecr.io/oauth2/exchange"
    );
    match &p.identity {
        Identity::Imds { url, client_id } => {
            assert_eq!(
                url.as_str(),
                "http://169.254.169.254/metadata/identity/oauth2/token"
            );
            assert_eq!(client_id, &None);
        }
        other => panic!("{other:?}"),
    }
    let err = p.fetch().unwrap_err();
    assert!(
        err.to_string()
            .contains("test build refuses to contact non-loopback host 169.254.169.254"),
        "{err}"
    );
    let p = provider(
        &format!("registry={REGISTRY},identity=secret"),
        &env(&[
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ]),
    )
    .unwrap();
    let err = p.fetch().unwrap_err();
    assert!(
        err.to_string()
            .contains("test build refuses to contact non-loopback host login.microsoftonline.com"),
        "{err}"
    );
}

#[test]
fn bad_options() {
    let app = [("AZURE_CLIENT_ID", CLIENT), ("AZURE_TENANT_ID", TENANT)];
    for (opts, vars, want) in [
        (
            "registry=https://x.azurecr.io",
            &[][..],
            "option \"registry\": invalid value \"https://x.azurecr.io\"; expected a host name such as myregistry.azurecr.io",
        ),
        (
            "registry=x.azurecr.io,identity=cert",
            &[],
            "option \"identity\": invalid value \"cert\"; expected auto, secret, workload or managed",
        ),
        (
            "registry=x.azurecr.io,identity=secret",
            &[("AZURE_CLIENT_SECRET", CLIENT_SECRET)],
            "identity=secret needs a tenant (tenant= or AZURE_TENANT_ID) and a client ID (clientId= or AZURE_CLIENT_ID)",
        ),
        (
            "registry=x.azurecr.io,identity=secret",
            &app,
            "identity=secret: no client secret (AZURE_CLIENT_SECRET, or clientSecretEnv=)",
        ),
        (
            "registry=x.azurecr.io,clientSecretEnv=NOPE",
            &app,
            "option \"clientSecretEnv\": environment variable NOPE is not set",
        ),
        (
            "registry=x.azurecr.io,identity=workload",
            &app,
            "identity=workload: AZURE_FEDERATED_TOKEN_FILE is not set",
        ),
        (
            "registry=x.azurecr.io,exchangeUrl=http://x.azurecr.io/oauth2/exchange",
            &[],
            "option \"exchangeUrl\": \"http://x.azurecr.io/oauth2/exchange\" must use https (plain http only to a loopback address)",
        ),
        (
            "registry=x.azurecr.io,identity=secret,authorityHost=http://login.example",
            &[("AZURE_CLIENT_SECRET", CLIENT_SECRET), app[0], app[1]],
            "authority host: \"http://login.example/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token\" must use https (plain http only to a loopback address)",
        ),
        (
            "registry=x.azurecr.io,tenant=a/b",
            &[],
            "tenant: invalid value \"a/b\"",
        ),
        (
            "registry=x.azurecr.io",
            &[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/x")],
            "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc managed identity is not supported; set imdsEndpoint=)",
        ),
    ] {
        let e = provider(opts, &env(vars)).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions, "{opts}");
        assert_eq!(e.to_string(), want, "{opts}");
        assert!(!e.to_string().contains(CLIENT_SECRET));
    }
    let e = provider("identity=managed", &env(&[])).unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
    assert!(e.to_string().starts_with("no registry host"), "{e}");
}
