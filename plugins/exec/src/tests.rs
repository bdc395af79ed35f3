//! The `exec` provider against fake credential helpers: small shell scripts written by the
//! tests, speaking the helper protocol's real wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ociregistry_plugin_api::{
    CreateContext, Credential, CredentialKind, FetchReason, FetchRequest, PluginErrorKind,
    ProviderFactory, ProviderOpts,
};

use super::{ExecProvider, Factory};

fn write_script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn provider(
    opts: &str,
    registry: &str,
    path_var: Option<OsString>,
) -> Result<ExecProvider, ociregistry_plugin_api::PluginError> {
    let opts = ProviderOpts::parse("exec", opts, Factory::OPTIONS)?;
    ExecProvider::new(
        &opts,
        &CreateContext::new(registry, format!("https://{registry}")),
        path_var,
    )
}

fn system_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into())
}

fn request() -> FetchRequest {
    FetchRequest::new(
        FetchReason::FirstUse,
        SystemTime::now() + Duration::from_secs(10),
    )
}

use ociregistry_plugin_api::Provider as _;

#[test]
fn a_helper_on_path_gets_the_server_url_and_only_the_listed_environment() {
    let dir = tempfile::tempdir().unwrap();
    // Echoes what it got: the server URL on stdin, `get`, and the environment it sees.
    write_script(
        dir.path(),
        "docker-credential-fake",
        r#"read -r url || true
env_seen="$(env | cut -d= -f1 | sort | tr '\n' ' ')"
printf '{"ServerURL":"%s","Username":"u-%s-%s","Secret":"%s"}' "$url" "$1" "$url" "$env_seen""#,
    );
    let mut path = OsString::from(dir.path());
    path.push(":");
    path.push(system_path());
    let p = provider("helper=fake,env=HOME", "reg.example:5000", Some(path)).unwrap();
    let c = p.fetch_with(&request()).unwrap();
    let CredentialKind::Basic { user, secret } = &c.kind else {
        panic!("{c:?}")
    };
    assert_eq!(user, "u-get-reg.example:5000");
    let seen: Vec<&str> = secret.expose().split_whitespace().collect();
    // PATH and HOME (listed) only; `sh` itself adds PWD (and may add SHLVL, _).
    assert!(seen.contains(&"PATH"), "{seen:?}");
    assert!(
        seen.contains(&"HOME") == std::env::var_os("HOME").is_some(),
        "{seen:?}"
    );
    for name in &seen {
        assert!(
            ["PATH", "HOME", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
            "unexpected variable {name} passed to the helper: {seen:?}"
        );
    }
    assert_eq!(c.expires_at, None);
}

#[test]
fn docker_hub_gets_dockers_server_url_and_token_users_are_identity_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let helper = write_script(
        dir.path(),
        "helper",
        r#"read -r url || true
printf '{"ServerURL":"%s","Username":"<token>","Secret":"refresh-%s"}\n' "$url" "$url""#,
    );
    let p = provider(
        &format!("helperPath={}", helper.display()),
        "docker.io",
        Some(system_path()),
    )
    .unwrap();
    assert_eq!(
        p.fetch_with(&request()).unwrap(),
        Credential::identity_token("refresh-https://index.docker.io/v1/")
    );
    let p = provider(
        &format!("helperPath={},serverURL=https://other", helper.display()),
        "docker.io",
        Some(system_path()),
    )
    .unwrap();
    assert_eq!(
        p.fetch().unwrap(),
        Credential::identity_token("refresh-https://other")
    );
}

fn error_of(body: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let helper = write_script(dir.path(), "helper", body);
    let p = provider(
        &format!("helperPath={}{extra}", helper.display()),
        "reg.example",
        Some(system_path()),
    )
    .unwrap();
    let e = p.fetch_with(&request()).unwrap_err();
    assert_eq!(e.kind(), PluginErrorKind::Failed);
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    text
}

#[test]
fn failures_are_one_line_each() {
    let e = error_of(
        r#"echo "credentials not found in native keychain"; exit 1"#,
        "",
    );
    assert!(
        e.ends_with(
            "has no credentials for reg.example (credentials not found in native keychain)"
        ),
        "{e}"
    );
    let e = error_of("echo 'line one'; echo 'line two' >&2; exit 3", "");
    assert!(e.ends_with("failed (exit status: 3): line one"), "{e}");
    let e = error_of("echo 'only on stderr' >&2; exit 2", "");
    assert!(
        e.ends_with("failed (exit status: 2): only on stderr"),
        "{e}"
    );
    let e = error_of(r#"printf '{"Username": "u", "Secret": "hunter2"'"#, "");
    assert!(e.contains("printed malformed JSON"), "{e}");
    let e = error_of(r#"printf '{"Username": 5, "Secret": "hunter2"}'"#, "");
    assert!(
        e.contains("printed JSON without a string Username and Secret"),
        "{e}"
    );
    let e = error_of("true", "");
    assert!(e.contains("printed nothing"), "{e}");
    let e = error_of(r#"printf '{"Username": "u", "Secret": ""}'"#, "");
    assert!(e.contains("printed an empty Secret"), "{e}");
    let e = error_of("head -c 70000 /dev/zero | tr '\\0' a", "");
    assert!(e.ends_with("wrote more than 65536 bytes (killed)"), "{e}");
    let start = std::time::Instant::now();
    let e = error_of("exec sleep 30", ",timeout=0.3");
    assert!(e.ends_with("did not finish within 0.3s (killed)"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let e = error_of("printf 'bad\\033[31m%0500d' 0; exit 1", "");
    assert!(e.contains("bad\\u{1b}[31m000"), "{e}");
    assert!(e.ends_with("..."), "{e}");
}

#[test]
fn the_deadline_bounds_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let helper = write_script(dir.path(), "helper", "exec sleep 30");
    let p = provider(
        &format!("helperPath={}", helper.display()),
        "reg.example",
        Some(system_path()),
    )
    .unwrap();
    let soon = FetchRequest::new(
        FetchReason::Scheduled,
        SystemTime::now() + Duration::from_millis(300),
    );
    let start = std::time::Instant::now();
    let e = p.fetch_with(&soon).unwrap_err().to_string();
    assert!(e.contains("did not finish within"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn missing_helpers_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider("helper=nothere", "reg.example", Some(dir.path().into())).unwrap();
    assert_eq!(
        p.fetch().unwrap_err().to_string(),
        "credential helper docker-credential-nothere not found on PATH"
    );
    let p = provider("helperPath=/nonexistent/helper", "reg.example", None).unwrap();
    assert_eq!(
        p.fetch().unwrap_err().to_string(),
        "credential helper /nonexistent/helper not found"
    );
    for (opts, expected) in [
        ("", "missing option: helper=NAME"),
        ("helper=a,helperPath=/b", "either helper or helperPath"),
        ("helper=../x", "is not a helper name"),
        ("helperPath=rel/x", "must be an absolute path"),
        ("helper=x,env=A=B", "is not an environment variable name"),
        ("helper=x,timeout=0", "positive number of seconds"),
    ] {
        let e = provider(opts, "reg.example", None).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
        assert!(e.to_string().contains(expected), "{opts}: {e}");
    }
    let opts = ProviderOpts::parse("exec", "helper=x", Factory::OPTIONS).unwrap();
    let e = ExecProvider::new(&opts, &CreateContext::new("", ""), None).unwrap_err();
    assert!(e.to_string().contains("serverURL"), "{e}");
}
