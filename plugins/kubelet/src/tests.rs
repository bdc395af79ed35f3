//! The `kubelet` provider against fake provider binaries: shell scripts written by the
//! tests, reading the v1 request and answering the v1 response JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use ociregistry_plugin_api::{
    CreateContext, Credential, FetchReason, FetchRequest, PluginErrorKind, Provider as _,
    ProviderFactory, ProviderOpts,
};

use super::{Factory, KubeletProvider, glob, key_matches, parse_args, parse_go_duration};

fn write_script(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("provider");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn provider(
    opts: &str,
    registry: &str,
) -> Result<KubeletProvider, ociregistry_plugin_api::PluginError> {
    let opts = ProviderOpts::parse("kubelet", opts, Factory::OPTIONS)?;
    KubeletProvider::new(
        &opts,
        &CreateContext::new(registry, format!("https://{registry}")),
        std::env::var_os("PATH"),
    )
}

fn request(repo: Option<&str>) -> FetchRequest {
    let r = FetchRequest::new(
        FetchReason::FirstUse,
        SystemTime::now() + Duration::from_secs(10),
    );
    match repo {
        Some(repo) => r.for_repository(repo),
        None => r,
    }
}

/// A provider that saves its stdin and arguments next to itself and answers `response`.
fn fake(dir: &Path, response: &str) -> std::path::PathBuf {
    let saved = dir.join("request.json");
    let args = dir.join("args");
    write_script(
        dir,
        &format!(
            "cat > '{}'\nprintf '%s\\n' \"$@\" > '{}'\ncat <<'JSON'\n{response}\nJSON",
            saved.display(),
            args.display()
        ),
    )
}

#[test]
fn request_and_response_speak_v1() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake(
        dir.path(),
        r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
"cacheKeyType":"Registry","cacheDuration":"6h0m0s",
"auth":{"*.dkr.ecr.*.amazonaws.com":{"username":"AWS","password":"wide"},
"123.dkr.ecr.eu-west-1.amazonaws.com/team":{"username":"AWS","password":"team"},
"other.example":{"username":"x","password":"y"}}}"#,
    );
    let p = provider(
        &format!(
            "binPath={},args=--flag get-credentials a%20b%2Cc",
            bin.display()
        ),
        "123.dkr.ecr.eu-west-1.amazonaws.com",
    )
    .unwrap();
    let c = p.fetch_with(&request(Some("team/app"))).unwrap();
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("request.json")).unwrap()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": "123.dkr.ecr.eu-west-1.amazonaws.com/team/app",
        })
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args")).unwrap(),
        "--flag\nget-credentials\na b,c\n"
    );
    // The longest matching key wins.
    assert_eq!(c.kind, Credential::basic("AWS", "team").kind);
    assert!(!c.per_repository);
    let left = c
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(6 * 3600 - 60), "{left:?}");
    // Another repository: the glob key.
    let c = p.fetch_with(&request(Some("else/app"))).unwrap();
    assert_eq!(c.kind, Credential::basic("AWS", "wide").kind);
    // A scheduled refresh sends the registry alone.
    p.fetch_with(&request(None)).unwrap();
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("request.json")).unwrap()).unwrap();
    assert_eq!(sent["image"], "123.dkr.ecr.eu-west-1.amazonaws.com");
}

#[test]
fn image_cache_keys_are_per_repository_and_durations_default() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake(
        dir.path(),
        r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
"cacheKeyType":"Image","auth":{"reg.example:5000":{"username":"u","password":"p"}}}"#,
    );
    let p = provider(
        &format!("binPath={},defaultCacheDuration=90s", bin.display()),
        "reg.example:5000",
    )
    .unwrap();
    let c = p.fetch_with(&request(Some("a/b"))).unwrap();
    assert!(c.per_repository);
    let left = c
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(90) && left > Duration::from_secs(80));
    let p = provider(&format!("binPath={}", bin.display()), "reg.example:5000").unwrap();
    assert_eq!(p.fetch_with(&request(None)).unwrap().expires_at, None);
    // A port that differs does not match.
    let p = provider(&format!("binPath={}", bin.display()), "reg.example").unwrap();
    let e = p.fetch_with(&request(Some("a"))).unwrap_err().to_string();
    assert!(
        e.ends_with("no auth entry matches image reg.example/a (keys: reg.example:5000)"),
        "{e}"
    );
}

#[test]
fn failures_are_one_line() {
    let cases = [
        (
            "echo 'no creds\nfor you' >&2; exit 1",
            "failed for image r.example/x (exit status: 1): no creds for you",
        ),
        ("echo '{'", "printed malformed JSON"),
        (
            r#"echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse"}'"#,
            "printed apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\"",
        ),
        (
            r#"echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Pod","auth":{"r.example":{"username":"u","password":"hunter2"}}}'"#,
            "cacheKeyType \"Pod\" is not Image, Registry or Global",
        ),
        (
            r#"echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheDuration":"soon","auth":{"r.example":{"username":"u","password":"hunter2"}}}'"#,
            "cacheDuration \"soon\" is not a duration",
        ),
        (
            r#"echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","auth":{"r.example":{"username":"u","password":""}}}'"#,
            "has an empty password",
        ),
    ];
    for (body, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let bin = write_script(dir.path(), body);
        let p = provider(&format!("binPath={}", bin.display()), "r.example").unwrap();
        let e = p.fetch_with(&request(Some("x"))).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::Failed);
        let text = e.to_string();
        assert!(text.contains(expected), "{body}: {text}");
        assert!(!text.contains('\n') && !text.contains("hunter2"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = write_script(dir.path(), "exec sleep 30");
    let p = provider(
        &format!("binPath={},timeout=0.3", bin.display()),
        "r.example",
    )
    .unwrap();
    let e = p.fetch_with(&request(None)).unwrap_err().to_string();
    assert!(e.ends_with("did not finish within 0.3s (killed)"), "{e}");
    let p = provider("binPath=/nonexistent/bin", "r.example").unwrap();
    assert_eq!(
        p.fetch().unwrap_err().to_string(),
        "credential provider /nonexistent/bin not found"
    );
    for (opts, expected) in [
        ("binPath=rel", "absolute path"),
        ("binPath=/x,args=%zz", "bad %-escape"),
        ("binPath=/x,defaultCacheDuration=1y", "not a duration"),
    ] {
        let e = provider(opts, "r.example").unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
        assert!(e.to_string().contains(expected), "{e}");
    }
    let opts = ProviderOpts::parse("kubelet", "binPath=/x", Factory::OPTIONS).unwrap();
    assert!(KubeletProvider::new(&opts, &CreateContext::new("", ""), None).is_err());
}

#[test]
fn kubelet_matching_rules() {
    assert!(key_matches(
        "*.dkr.ecr.*.amazonaws.com",
        "1.dkr.ecr.us-east-1.amazonaws.com/a"
    ));
    assert!(!key_matches(
        "*.dkr.ecr.*.amazonaws.com",
        "dkr.ecr.us-east-1.amazonaws.com"
    ));
    assert!(!key_matches("*.example.com", "a.b.example.com"));
    assert!(key_matches(
        "https://reg.example/team",
        "reg.example/team/app"
    ));
    assert!(!key_matches("reg.example/team", "reg.example/teams/app"));
    assert!(!key_matches("reg.example:5000", "reg.example/a"));
    assert!(key_matches("REG.example", "reg.example/a"));
    assert!(glob("a*c", "abbbc") && glob("?b", "ab") && !glob("a*d", "abc"));
}

#[test]
fn go_durations_and_args() {
    assert_eq!(
        parse_go_duration("6h0m0s"),
        Some(Duration::from_secs(6 * 3600))
    );
    assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
    assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_go_duration("-1s"), None);
    assert_eq!(parse_go_duration("5"), None);
    assert_eq!(parse_go_duration(""), None);
    assert_eq!(parse_args("a  b%25").unwrap(), ["a", "b%"]);
}
