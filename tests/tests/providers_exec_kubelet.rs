//! Issue 14: the bundled `exec` (docker credential helpers) and `kubelet` (kubelet
//! credential provider binaries) plugins through the real binary, each against a real
//! docker-registry upstream that accepts only the credential the helper produced, pulled
//! with skopeo; and docker's identity-token flow (a `<token>` user exchanged at the token
//! endpoint with an OAuth2 refresh-token POST).
//!
//! The helpers and provider binaries are small shell scripts written by the tests: they
//! speak the protocols' real wire formats (server URL on stdin and `{ServerURL, Username,
//! Secret}` out; `CredentialProviderRequest` in and `CredentialProviderResponse` out).

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::proxy::{RegistryEntry, Route, ociregistry_bin};
use ociregistry_e2e::skopeo;
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, require_upstream_tools, wait_for};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A bundled plugin next to the binary (`cargo build --workspace` puts it there).
fn bundled_plugin(name: &str) -> PathBuf {
    let bin = ociregistry_bin();
    let p = bin.parent().expect("binary dir").join(format!(
        "{}ociregistry_provider_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        p.is_file(),
        "bundled plugin {} missing; run `cargo build --workspace`",
        p.display()
    );
    p
}

fn plugin_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = bundled_plugin(name);
    std::os::unix::fs::symlink(&src, dir.path().join(src.file_name().expect("file name")))
        .expect("symlink bundled plugin");
    dir
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_no_secret(text: &str, what: &str, secret: &str) {
    assert!(secret.len() >= 8);
    assert!(
        !text.contains(secret),
        "{what} contains the secret ({}...)",
        &secret[..4]
    );
}

#[test]
fn exec_runs_a_docker_credential_helper_for_an_htpasswd_upstream() {
    if !require_upstream_tools() {
        return;
    }
    let password = format!("helper-pw-{:012x}", fastrand::u64(..));
    let up = Upstream::htpasswd("helper-user", &password);
    let repo = images::unique_repo("exec");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let scripts = tempfile::tempdir().expect("tempdir");
    let calls = scripts.path().join("calls");
    // A docker-credential-* helper: `get`, the server URL on stdin, the JSON out. It
    // answers only for the upstream's name, as a real helper would, and records each call
    // (its argument, the URL and whether it saw a variable it was not given).
    let helper = write_script(
        scripts.path(),
        "docker-credential-e2e",
        &format!(
            r#"read -r url || true
echo "$1 $url secret_env=${{E2E_NOT_PASSED:-unset}} passed=${{E2E_PASSED:-unset}}" >> '{calls}'
if [ "$url" != '{host}' ]; then echo "credentials not found in native keychain"; exit 1; fi
printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"{password}"}}\n' "$url""#,
            calls = calls.display(),
            host = up.host(),
        ),
    );
    let plugins = plugin_dir("exec");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: exec, providerOpts: \"helperPath={},env=E2E_PASSED\", expiry: 6h",
                helper.display()
            ),
        ))
        .default_ns(&up.host())
        .env("E2E_NOT_PASSED", "leaked")
        .env("E2E_PASSED", "given")
        .log_level("trace")
        .start();
    proxy.wait_log(
        "the first fetch",
        "credential refreshed",
        Duration::from_secs(20),
    );
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    skopeo::pull_and_verify(&reference, &img, "");
    proxy.pull_and_verify(Route::InPath(&up.host()), &img);
    let seen = lines(&calls);
    assert_eq!(
        seen,
        [format!("get {} secret_env=unset passed=given", up.host())],
        "one helper call, with the server URL on stdin and only the listed environment"
    );
    assert_no_secret(&proxy.log(), "the proxy's log", &password);
}

#[test]
fn exec_helper_failures_are_one_line_in_the_log() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::htpasswd("u", "never-given-pw");
    let scripts = tempfile::tempdir().expect("tempdir");
    let helper = write_script(
        scripts.path(),
        "docker-credential-none",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let plugins = plugin_dir("exec");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: exec, providerOpts: \"helperPath={}\"",
                helper.display()
            ),
        ))
        .start();
    let expected = format!(
        "credential helper {} has no credentials for {} (credentials not found in native keychain)",
        helper.display(),
        up.host()
    );
    proxy.wait_log("the failed fetch", &expected, Duration::from_secs(20));
}

#[test]
fn a_rejected_provider_credential_is_named_in_the_clients_error() {
    if !require_upstream_tools() {
        return;
    }
    let up = Upstream::htpasswd("u", "the-right-password");
    let repo = images::unique_repo("rejected");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let scripts = tempfile::tempdir().expect("tempdir");
    let helper = write_script(
        scripts.path(),
        "docker-credential-wrong",
        r#"printf '{"Username":"u","Secret":"a-wrong-password"}'"#,
    );
    let plugins = plugin_dir("exec");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: exec, providerOpts: \"helperPath={}\"",
                helper.display()
            ),
        ))
        .start();
    proxy.wait_log(
        "the first fetch",
        "credential refreshed",
        Duration::from_secs(20),
    );
    let r = proxy.get_manifest(Route::InPath(&up.host()), &img.repo, &img.tag);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the credential from provider \"exec\" was rejected"),
        "status {}: {message}",
        r.status
    );
}

#[test]
fn exec_identity_tokens_are_exchanged_at_the_token_endpoint() {
    if !require_upstream_tools() {
        return;
    }
    let refresh = format!("refresh-{:016x}", fastrand::u64(..));
    let up = Upstream::token_with_refresh_token(&refresh);
    let repo = images::unique_repo("idtoken");
    let img = images::seed(&up, &repo, "v1", ImageKind::small_oci());
    let scripts = tempfile::tempdir().expect("tempdir");
    let helper = write_script(
        scripts.path(),
        "docker-credential-idtoken",
        &format!(
            r#"read -r url || true
printf '{{"ServerURL":"%s","Username":"<token>","Secret":"{refresh}"}}' "$url""#
        ),
    );
    let ts = up.token_server().expect("token server");
    let seeding = ts.requests().len();
    let plugins = plugin_dir("exec");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: exec, providerOpts: \"helperPath={}\"",
                helper.display()
            ),
        ))
        .default_ns(&up.host())
        .log_level("trace")
        .start();
    proxy.wait_log(
        "the first fetch",
        "credential refreshed",
        Duration::from_secs(20),
    );
    let reference = format!("{}/{}:{}", proxy.host(), img.repo, img.tag);
    skopeo::pull_and_verify(&reference, &img, "");
    let from_proxy = ts.requests()[seeding..].to_vec();
    let granted: Vec<_> = from_proxy.iter().filter(|r| r.granted).collect();
    assert!(
        !granted.is_empty(),
        "the token endpoint issued tokens: {from_proxy:?}"
    );
    for r in &granted {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(
            r.user, None,
            "no Basic credential with an identity token: {r:?}"
        );
        assert_eq!(r.grant_type.as_deref(), Some("refresh_token"), "{r:?}");
        assert_eq!(r.service.as_deref(), Some(ts.options().service.as_str()));
        assert!(
            r.scopes.iter().any(|s| s.contains(&repo)),
            "scoped to the repository: {r:?}"
        );
    }
    assert_no_secret(&proxy.log(), "the proxy's log", &refresh);
}

#[test]
fn kubelet_provider_binary_with_per_image_credentials() {
    if !require_upstream_tools() {
        return;
    }
    let password = format!("kubelet-pw-{:012x}", fastrand::u64(..));
    let up = Upstream::htpasswd("kube-user", &password);
    let repo_a = images::unique_repo("kubea");
    let repo_b = images::unique_repo("kubeb");
    let img_a = images::seed(&up, &repo_a, "v1", ImageKind::small_oci());
    let img_b = images::seed(&up, &repo_b, "v1", ImageKind::DockerV2s2 { layers: 2 });
    let scripts = tempfile::tempdir().expect("tempdir");
    let requests = scripts.path().join("requests");
    // A kubelet credential provider: the v1 request on stdin (one line), the response on
    // stdout, per image, for 1 hour.
    let bin = write_script(
        scripts.path(),
        "e2e-credential-provider",
        &format!(
            r#"req="$(cat)"
printf '%s\n' "$req" >> '{requests}'
case "$req" in *'"apiVersion":"credentialprovider.kubelet.k8s.io/v1"'*) ;; *) echo "bad request" >&2; exit 1 ;; esac
cat <<JSON
{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
"cacheKeyType":"Image","cacheDuration":"1h0m0s",
"auth":{{"{host}":{{"username":"kube-user","password":"{password}"}},
"{host}/nothing":{{"username":"kube-user","password":"wrong"}}}}}}
JSON"#,
            requests = requests.display(),
            host = up.host(),
        ),
    );
    let plugins = plugin_dir("kubelet");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            &up.host(),
            &format!(
                "provider: kubelet, providerOpts: \"binPath={}\"",
                bin.display()
            ),
        ))
        .default_ns(&up.host())
        .log_level("trace")
        .start();
    proxy.wait_log(
        "the first fetch",
        "credential refreshed",
        Duration::from_secs(20),
    );
    let reference = format!("{}/{}:{}", proxy.host(), img_a.repo, img_a.tag);
    skopeo::pull_and_verify(&reference, &img_a, "");
    proxy.pull_and_verify(Route::InPath(&up.host()), &img_b);
    proxy.pull_and_verify(Route::InPath(&up.host()), &img_a);
    let images_asked: Vec<String> = lines(&requests)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("request is JSON");
            assert_eq!(v["kind"], "CredentialProviderRequest");
            v["image"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        images_asked,
        [
            up.host(),
            format!("{}/{repo_a}", up.host()),
            format!("{}/{repo_b}", up.host()),
        ],
        "the registry at start, then each repository once (cacheKeyType Image, 1h)"
    );
    wait_for(
        "the per-repository fetch log lines",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            (proxy
                .log()
                .matches("per-repository credential fetched")
                .count()
                >= 2)
                .then_some(())
        },
    );
    assert_no_secret(&proxy.log(), "the proxy's log", &password);
}

/// The kubelet response's `cacheDuration` is the credential's expiry: with `expiry: 1h`
/// configured, a 40 s cacheDuration makes the host fetch again before those 40 s are over
/// (and not before the 30 s minimum interval).
#[test]
fn kubelet_cache_duration_is_honoured() {
    if !require_upstream_tools() {
        return;
    }
    let scripts = tempfile::tempdir().expect("tempdir");
    let requests = scripts.path().join("requests");
    let bin = write_script(
        scripts.path(),
        "e2e-credential-provider",
        &format!(
            r#"cat > /dev/null
date +%s.%N >> '{requests}'
echo '{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"40s","auth":{{"127.0.0.1:9":{{"username":"u","password":"cache-duration-pw"}}}}}}'"#,
            requests = requests.display(),
        ),
    );
    let plugins = plugin_dir("kubelet");
    let proxy = Proxy::builder()
        .plugin_dir(plugins.path())
        .registry(RegistryEntry::with_token_auth(
            "127.0.0.1:9",
            &format!(
                "provider: kubelet, providerOpts: \"binPath={}\", expiry: 1h",
                bin.display()
            ),
        ))
        .start();
    let times = || -> Vec<f64> {
        lines(&requests)
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    wait_for(
        "the refresh before the 40s cacheDuration ends",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (times().len() >= 2).then_some(()),
    );
    let t = times();
    let gap = t[1] - t[0];
    assert!(
        (29.0..40.0).contains(&gap),
        "second fetch {gap:.1}s after the first (cacheDuration 40s, minimum interval 30s)"
    );
    drop(proxy);
}
