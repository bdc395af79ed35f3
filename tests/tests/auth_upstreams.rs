//! Issue 2: the same pulls from authenticated upstreams: htpasswd (HTTP Basic, as ECR
//! answers) and distribution's bearer-token flow with a token endpoint run by the test.
//! The proxy's log never shows the password or any token.

use base64::Engine as _;
use ociregistry_e2e::images::{self, ImageKind, PushedImage};
use ociregistry_e2e::proxy::{RegistryAuth, RegistryEntry, Route};
use ociregistry_e2e::skopeo;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, require_upstream_tools};

const USER: &str = "e2e-user";

/// Pulls every image with skopeo (defaultNs), then over HTTP with `?ns=` and in-path.
fn pull_everything(proxy: &Proxy, up: &Upstream, imgs: &[PushedImage]) {
    let host = up.host();
    for img in imgs {
        let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
        skopeo::pull_and_verify(&reference, img, "");
        proxy.pull_and_verify(Route::Ns(&host), img);
        proxy.pull_and_verify(Route::InPath(&host), img);
    }
}

fn assert_log_has_no_secret(proxy: &Proxy, secrets: &[String]) {
    let log = proxy.log();
    assert!(!log.is_empty(), "the proxy logged nothing at all");
    for s in secrets {
        assert!(s.len() >= 8, "secret too short to search for: {s:?}");
        assert!(
            !log.contains(s.as_str()),
            "the proxy's log contains a secret ({}...)",
            &s[..6]
        );
    }
}

fn basic_b64(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

#[test]
fn htpasswd_upstream_pulls_with_basic_auth() {
    if !require_upstream_tools() {
        return;
    }
    let pass = format!("htpw-{:012x}", fastrand::u64(..));
    let up = Upstream::htpasswd(USER, &pass);
    let repo = images::unique_repo("basic");
    let imgs = images::seed_all(&up, &repo);
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .log_level("trace")
        .start();
    pull_everything(&proxy, &up, &imgs);
    assert_log_has_no_secret(&proxy, &[pass.clone(), basic_b64(USER, &pass)]);
}

#[test]
fn htpasswd_upstream_password_from_env() {
    if !require_upstream_tools() {
        return;
    }
    let pass = format!("envpw-{:012x}", fastrand::u64(..));
    let up = Upstream::htpasswd(USER, &pass);
    let img = images::seed_in(&up, "basicenv", "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .registry(RegistryEntry {
            auth: Some(RegistryAuth::BasicFromEnv {
                user: USER.into(),
                env_var: "E2E_UPSTREAM_PASSWORD".into(),
                password: pass.clone(),
            }),
            ..RegistryEntry::plain(&up.host())
        })
        .start();
    proxy.pull_and_verify(Route::Ns(&up.host()), &img);
    assert_log_has_no_secret(&proxy, &[pass.clone(), basic_b64(USER, &pass)]);
}

/// Wrong credentials: the upstream's 401 is passed on with its meaning (401/403 and an OCI
/// error body), and the wrong password is not logged either.
#[test]
fn htpasswd_upstream_wrong_password_is_unauthorized() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::htpasswd(USER, "right-password-123");
    let repo = images::unique_repo("basicbad");
    images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let wrong = format!("wrongpw-{:012x}", fastrand::u64(..));
    let proxy = Proxy::builder()
        .registry(RegistryEntry {
            auth: Some(RegistryAuth::Basic {
                user: USER.into(),
                password: wrong.clone(),
            }),
            ..RegistryEntry::plain(&up.host())
        })
        .start();
    let r = proxy.get_manifest(Route::Ns(&up.host()), &repo, "v1");
    assert!(
        r.status == 401 || r.status == 403,
        "expected 401/403, got {}: {}",
        r.status,
        r.body_str()
    );
    let codes = ociregistry_e2e::oci_error_codes(&r.body);
    assert!(
        codes.iter().any(|c| c == "UNAUTHORIZED" || c == "DENIED"),
        "OCI error code for a refused upstream login: {codes:?} ({})",
        r.body_str()
    );
    assert_log_has_no_secret(&proxy, &[wrong.clone(), basic_b64(USER, &wrong)]);
}

/// Bearer-token upstream whose token endpoint requires the configured credentials.
#[test]
fn token_upstream_pulls_with_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let pass = format!("tokpw-{:012x}", fastrand::u64(..));
    let up = Upstream::token(Some((USER, &pass)));
    let repo = images::unique_repo("bearer");
    let imgs = images::seed_all(&up, &repo);
    let ts = up.token_server().unwrap();
    let before = ts.request_count();
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .log_level("trace")
        .start();
    pull_everything(&proxy, &up, &imgs);
    let reqs = ts.requests()[before..].to_vec();
    assert!(!reqs.is_empty(), "the proxy never asked the token endpoint");
    assert!(
        reqs.iter()
            .all(|r| r.granted && r.user.as_deref() == Some(USER)),
        "every token request from the proxy carries the configured credentials: {reqs:?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r.service.as_deref() == Some(ts.options().service.as_str())),
        "service from the challenge: {reqs:?}"
    );
    assert!(
        reqs.iter()
            .flat_map(|r| r.scopes.iter())
            .any(|s| s == &format!("repository:{repo}:pull")),
        "scope from the challenge: {reqs:?}"
    );
    let mut secrets = vec![pass.clone(), basic_b64(USER, &pass)];
    secrets.extend(ts.issued_tokens());
    assert_log_has_no_secret(&proxy, &secrets);
}

/// Bearer-token upstream with anonymous tokens (like docker.io for public images); tokens
/// are cached per scope: a whole pull costs a handful of token requests, not one per request.
#[test]
fn token_upstream_anonymous_and_tokens_cached() {
    if !require_upstream_tools() {
        return;
    }
    let mut up = Upstream::token(None);
    let img = images::seed_in(&up, "bearanon", "v1", ImageKind::oci(5, 8 * 1024));
    let before_tokens = up.token_server().unwrap().request_count();
    let before_up = up.total_requests();
    let proxy = Proxy::builder().upstream(&up).start();
    proxy.pull_and_verify(Route::Ns(&up.host()), &img);
    let ts = up.token_server().unwrap();
    let tokens = ts.request_count() - before_tokens;
    let issued = ts.issued_tokens();
    let upstream_reqs = up.total_requests() - before_up;
    assert!(tokens >= 1, "no token requested");
    assert!(
        upstream_reqs >= 7,
        "manifest + config + 5 layers reach the upstream ({upstream_reqs})"
    );
    assert!(
        tokens <= 2,
        "{tokens} token requests for one repository's pull ({upstream_reqs} upstream requests): \
         tokens must be cached per scope"
    );
    assert_log_has_no_secret(&proxy, &issued);
}

/// A bearer-token endpoint that refuses the configured credentials: the client gets
/// 401/403 with an OCI error, not a hang or a 500.
#[test]
fn token_upstream_refused_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::token(Some((USER, "the-right-one-1")));
    let repo = images::unique_repo("bearbad");
    images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let proxy = Proxy::builder()
        .registry(RegistryEntry {
            auth: Some(RegistryAuth::Basic {
                user: USER.into(),
                password: "not-the-right-one".into(),
            }),
            ..RegistryEntry::plain(&up.host())
        })
        .start();
    let r = proxy.get_manifest(Route::Ns(&up.host()), &repo, "v1");
    assert!(
        r.status == 401 || r.status == 403,
        "expected 401/403, got {}: {}",
        r.status,
        r.body_str()
    );
    assert!(!ociregistry_e2e::oci_error_codes(&r.body).is_empty());
    assert_log_has_no_secret(&proxy, &["not-the-right-one".to_string()]);
}
