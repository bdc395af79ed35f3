use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn resolve_text(text: &str) -> Result<Settings, String> {
    let cfg = parse_text(text)?;
    resolve(
        Some((cfg, text.to_owned(), PathBuf::from("c.yaml"))),
        Overrides::default(),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn upstream_policy_keys() {
    let s = resolve_text(
        "upstreams:\n  allow: [configured, \"*.Corp.example\", {host: \"127.0.0.*\", privateAddresses: true}]\n  deny: [\"*.evil.example\"]\nregistries:\n- name: reg.corp.example:8443\n  redirectHosts: [\"blobs.corp.internal\"]\n  auth: {user: u, password: p, realms: [\"login.corp.example\"]}\n",
    )
    .unwrap();
    let p = &s.upstream_policy;
    assert_eq!(p.allow.len(), 3);
    assert_eq!(p.allow[0], AllowRule::Configured);
    assert!(
        matches!(&p.allow[1], AllowRule::Host { pattern, private_addresses: false } if pattern.matches("a.corp.example"))
    );
    assert!(matches!(
        &p.allow[2],
        AllowRule::Host {
            private_addresses: true,
            ..
        }
    ));
    assert!(p.deny[0].matches("x.y.evil.example") && !p.deny[0].matches("evil.example"));
    assert_eq!(
        s.registries[0].redirect_hosts[0].as_str(),
        "blobs.corp.internal"
    );
    assert_eq!(s.registries[0].realms[0].as_str(), "login.corp.example");
    assert_eq!(
        resolve_text("").unwrap().upstream_policy,
        UpstreamPolicy::default()
    );
    for (bad, needle) in [
        ("upstreams:\n  allow: [\"quay.io:443\"]\n", "line 2"),
        (
            "upstreams:\n  allow:\n  - {host: a, private: true}\n",
            "line 3",
        ),
        ("upstreams:\n  deny: [\"a b\"]\n", "line 2"),
        ("upstreams:\n  allow: []\n", "upstreams.allow"),
        ("upstreams:\n  alow: []\n", "alow"),
    ] {
        let e = resolve_text(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn host_patterns() {
    let p = |s: &str| HostPattern::parse(s).unwrap();
    assert!(p("*").matches("anything.example"));
    assert!(p("127.0.0.*").matches("127.0.0.1"));
    assert!(!p("127.0.0.*").matches("127.0.1.1.evil"));
    assert!(p("*.corp.example").matches("a.b.corp.example"));
    assert!(!p("*.corp.example").matches("corp.example"));
    assert!(p("a*b*c").matches("axxbyyc") && !p("a*b*c").matches("axxbyy"));
    assert!(p("[::1]").matches("::1"));
    assert!(HostPattern::parse("quay.io:443").is_err());
    assert!(HostPattern::parse("").is_err());
    // Linear enough: a long run of stars against a long miss.
    let long = format!("{}b", "*a".repeat(100));
    assert!(!p(&long).matches(&"a".repeat(200)));
}

#[test]
fn seed_page_config_loads() {
    let s = resolve_text(
        "registries:\n- name: 111122223333.dkr.ecr.us-south-1.amazonaws.com\n  auth:\n    token:\n      provider: ecr\n      providerOpts: profile=default,region=us-south-1\n      expiry: 6h\n",
    )
    .unwrap();
    match &s.registries[0].credential {
        CredentialConfig::Provider {
            provider,
            opts,
            every,
            ..
        } => {
            assert_eq!(provider, "ecr");
            assert_eq!(opts, "profile=default,region=us-south-1");
            assert_eq!(*every, Duration::from_secs(6 * 3600));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn typo_names_key_and_line() {
    let e = resolve_text("port: 8080\nregistries:\n- name: quay.io\n  auth:\n    usr: x\n")
        .unwrap_err();
    assert!(e.contains("usr") && e.contains("line 5"), "{e}");
    let e = resolve_text("imagePth: /x\n").unwrap_err();
    assert!(e.contains("imagePth") && e.contains("line 1"), "{e}");
}

#[test]
fn bad_duration_names_key_and_line() {
    let e = resolve_text(
        "registries:\n- name: a.io\n  auth:\n    token:\n      provider: ecr\n      expiry: 6x\n",
    )
    .unwrap_err();
    assert!(
        e.contains("key `expiry`") && e.contains("line 6") && e.contains("unknown unit"),
        "{e}"
    );
}

#[test]
fn missing_ca_file_names_key_and_line() {
    let e = resolve_text("registries:\n- name: a.io\n  tls:\n    ca: /nonexistent/ca.crt\n")
        .unwrap_err();
    assert!(
        e.contains("key `ca`") && e.contains("line 4") && e.contains("/nonexistent/ca.crt"),
        "{e}"
    );
}

#[test]
fn missing_file_on_a_later_key_names_that_key_and_line() {
    let e = resolve_text(
        "registries:\n- name: a.io\n  tls:\n    insecureSkipVerify: false\n    cert: /nonexistent/c.crt\n    key: /nonexistent/c.key\n",
    )
    .unwrap_err();
    assert!(
        e.contains("key `cert`") && e.contains("line 5") && e.contains("/nonexistent/c.crt"),
        "{e}"
    );
}

#[test]
fn cross_key_rules() {
    let e = resolve_text("registries:\n- name: a.io\n  auth:\n    user: u\n").unwrap_err();
    assert!(
        e.contains("registries[0].auth") && e.contains("line 2"),
        "{e}"
    );
    let e = resolve_text("registries:\n- name: a.io\n- name: A.io\n").unwrap_err();
    assert!(e.contains("twice"), "{e}");
    let e = resolve_text("registries:\n- name: a.io\n  auth:\n    passwordFromEnv: OCIREG_TEST_UNSET_VAR\n    user: u\n").unwrap_err();
    assert!(
        e.contains("OCIREG_TEST_UNSET_VAR") && e.contains("passwordFromEnv"),
        "{e}"
    );
}

#[test]
fn flags_beat_file_beats_defaults() {
    let cfg = parse_text("port: 9000\nhost: 127.0.0.1\npullTimeout: 5000\n").unwrap();
    let s = resolve(
        Some((cfg, String::new(), PathBuf::from("c"))),
        Overrides {
            port: Some(7000),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(s.port, 7000);
    assert_eq!(s.host, "127.0.0.1");
    assert_eq!(s.pull_timeout, Duration::from_secs(5));
    assert_eq!(s.default_ns, "docker.io");
    assert_eq!(s.image_path, PathBuf::from(DEFAULT_IMAGE_PATH));
}

#[test]
fn secrets_do_not_print() {
    let s =
        resolve_text("registries:\n- name: a.io\n  auth: {user: u, password: hunter2}\n").unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn preload_keys() {
    let s =
        resolve_text("preloadImages: /etc/p.txt\nimageFile: /etc/i.txt\narch: arm64\n").unwrap();
    assert_eq!(s.preload.preload_images, Some(PathBuf::from("/etc/p.txt")));
    assert_eq!(s.preload.image_file, Some(PathBuf::from("/etc/i.txt")));
    let platforms: Vec<String> = s.preload.platforms.iter().map(|p| p.to_string()).collect();
    assert_eq!(platforms, vec!["linux/arm64"]);
    assert!(
        resolve_text("port: 1\n")
            .unwrap()
            .preload
            .platforms
            .is_empty()
    );
    let e = resolve_text("os: \"lin ux\"\n").unwrap_err();
    assert!(e.contains("os") && e.contains("lin ux"), "{e}");
}

#[test]
fn metrics_and_health_ports() {
    let s = resolve_text("metrics: 9090\nhealth:\n").unwrap();
    assert_eq!((s.metrics_port, s.health_port), (Some(9090), None));
    let cfg = parse_text("health: 8081\n").unwrap();
    let s = resolve(
        Some((cfg, String::new(), PathBuf::from("c"))),
        Overrides {
            health: Some(7001),
            metrics: Some(0),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!((s.metrics_port, s.health_port), (Some(0), Some(7001)));
    assert!(resolve_text("metrics: lots\n").is_err());
}

#[test]
fn prune_and_admin_keys() {
    let s = resolve_text("pruneConfig:\n  enabled: false\nlogLevel: info\n").unwrap();
    assert!(s.inventory.prune.is_none());
    let s = resolve_text(
        "pruneConfig:\n  enabled: true\n  type: accessed\n  duration: 30d\nmaxSize: 50GiB\n",
    )
    .unwrap();
    assert!(s.inventory.prune.is_some());
    assert_eq!(s.inventory.max_size, Some(50 << 30));
    let e = resolve_text("admin:\n  address: 0.0.0.0:9000\n").unwrap_err();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn docker_hub_aliases_are_one_registry() {
    let s = resolve_text("registries:\n- name: index.docker.io\n  tagTtl: 5m\n").unwrap();
    assert_eq!(s.registries[0].name, "docker.io");
    assert_eq!(s.tag_ttl("docker.io"), Some(Duration::from_secs(300)));
    let e =
        resolve_text("registries:\n- name: docker.io\n- name: registry-1.docker.io\n").unwrap_err();
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn log_file_from_the_file_or_the_flag() {
    let s = resolve_text("logFile: /var/log/ociregistry.log\n").unwrap();
    assert_eq!(s.log_file, Some(PathBuf::from("/var/log/ociregistry.log")));
    // Ociregistry's default, an empty string, means stderr.
    assert_eq!(resolve_text("logFile: \"\"\n").unwrap().log_file, None);
    assert_eq!(resolve_text("port: 1\n").unwrap().log_file, None);
    let cfg = parse_text("logFile: /from/file.log\n").unwrap();
    let s = resolve(
        Some((cfg, String::new(), PathBuf::from("c"))),
        Overrides {
            log_file: Some(PathBuf::from("/from/flag.log")),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(s.log_file, Some(PathBuf::from("/from/flag.log")));
    let e = resolve_text("logFile: [a, b]\n").unwrap_err();
    assert!(e.contains("logFile"), "{e}");
}

#[test]
fn server_tls_config_missing_or_bad_files_name_key_and_line() {
    let e = resolve_text(
        "port: 8443\nserverTlsConfig:\n  cert: /nonexistent/server.crt\n  key: /nonexistent/server.key\n",
    )
    .unwrap_err();
    assert!(
        e.contains("key `cert`") && e.contains("line 3") && e.contains("/nonexistent/server.crt"),
        "{e}"
    );
    let d = tempfile::tempdir().unwrap();
    let cert = d.path().join("server.crt");
    let key = d.path().join("server.key");
    std::fs::write(&cert, "not pem\n").unwrap();
    std::fs::write(&key, "not pem\n").unwrap();
    let text = format!(
        "serverTlsConfig:\n  # comment\n  key: {}\n  cert: {}\n",
        key.display(),
        cert.display()
    );
    let e = resolve_text(&text).unwrap_err();
    assert!(
        e.contains("serverTlsConfig.cert")
            && e.contains("(line 4)")
            && e.contains("server.crt")
            && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = resolve_text(&format!(
        "serverTlsConfig: {{cert: {}, key: {}, clientAuth: verify}}\n",
        cert.display(),
        key.display()
    ))
    .unwrap_err();
    assert!(
        e.contains("serverTlsConfig.clientAuth")
            && e.contains("(line 1)")
            && e.contains("needs serverTlsConfig.ca"),
        "{e}"
    );
    let e = resolve_text(&format!(
        "serverTlsConfig:\n  cert: {}\n  key: {}\n  clientAuth: require\n",
        cert.display(),
        key.display()
    ))
    .unwrap_err();
    assert!(
        e.contains("line 4") && e.contains("clientAuth") && e.contains("verify"),
        "{e}"
    );
    let e = resolve_text(&format!(
        "serverTlsConfig:\n  cert: {}\n  keyFile: {}\n",
        cert.display(),
        key.display()
    ))
    .unwrap_err();
    assert!(e.contains("keyFile"), "{e}");
}

#[test]
fn fetch_limits_from_file_and_defaults() {
    assert_eq!(
        resolve_text("").unwrap().fetch_limits,
        FetchLimits::default()
    );
    let s = resolve_text(
        "maxBlobSize: 1MiB\nmaxUpstreamFetches: 3\nmaxUpstreamFetchesPerRegistry: 2\nupstreamFetchWait: 2s\n",
    )
    .unwrap();
    assert_eq!(
        s.fetch_limits,
        FetchLimits {
            max_blob_size: 1024 * 1024,
            max_fetches: 3,
            max_fetches_per_registry: 2,
            wait: Duration::from_secs(2),
        }
    );
    // The per-registry default never exceeds the global limit.
    let s = resolve_text("maxUpstreamFetches: 4\n").unwrap();
    assert_eq!(s.fetch_limits.max_fetches_per_registry, 4);
    let e = resolve_text("port: 1\nmaxUpstreamFetches: 0\n").unwrap_err();
    assert!(
        e.contains("maxUpstreamFetches (line 2): must be at least 1"),
        "{e}"
    );
    let e = resolve_text("maxBlobSize: lots\n").unwrap_err();
    assert!(e.contains("line 1") && e.contains("maxBlobSize"), "{e}");
}

#[test]
fn shutdown_grace_from_file_flag_and_default() {
    assert_eq!(
        resolve_text("").unwrap().shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE
    );
    assert_eq!(
        resolve_text("shutdownGrace: 2s\n").unwrap().shutdown_grace,
        Duration::from_secs(2)
    );
    let cfg = parse_text("shutdownGrace: 2m\n").unwrap();
    let s = resolve(
        Some((cfg, String::new(), PathBuf::from("c"))),
        Overrides {
            shutdown_grace: Some(Duration::from_secs(5)),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(s.shutdown_grace, Duration::from_secs(5));
    let e = resolve_text("shutdownGrace: soon\n").unwrap_err();
    assert!(
        e.contains("key `shutdownGrace`") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn header_and_idle_timeouts() {
    let s = resolve_text("").unwrap();
    assert_eq!(
        (s.header_timeout, s.idle_timeout),
        (DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT)
    );
    let s = resolve_text(
        "headerTimeout: 2s
idleTimeout: 1m
",
    )
    .unwrap();
    assert_eq!(
        (s.header_timeout, s.idle_timeout),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
    let e = resolve_text(
        "port: 1
idleTimeout: 0s
",
    )
    .unwrap_err();
    assert!(e.contains("idleTimeout") && e.contains("line 2"), "{e}");
    let e = resolve_text(
        "headerTimeout: later
",
    )
    .unwrap_err();
    assert!(
        e.contains("key `headerTimeout`") && e.contains("line 1"),
        "{e}"
    );
}

/// The `storage` section of the README's example, with the paths the other tests use.
const STORAGE_EXAMPLE: &str = "imagePath: /srv/ociregistry
pluginDir: /usr/lib/ociregistry/plugins
storage:
  s3:
    bucket: mirror-cache
    prefix: /ociregistry
    region: eu-west-1
    endpoint: http://127.0.0.1:9000/
  localCache:
    path: /var/cache/ociregistry
    maxSize: 20GiB
  redirect: true
";

fn s3_of(s: &Settings) -> &S3Settings {
    match &s.storage.backend {
        Backend::S3(s3) => s3,
        Backend::Filesystem => panic!("filesystem: {:?}", s.storage),
    }
}

#[test]
fn storage_full_example() {
    let s = resolve_text(STORAGE_EXAMPLE).unwrap();
    assert_eq!(
        s.storage,
        StorageSettings {
            backend: Backend::S3(S3Settings {
                bucket: "mirror-cache".into(),
                prefix: "ociregistry/".into(),
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                credentials: None,
            }),
            local_path: PathBuf::from("/var/cache/ociregistry"),
            local_max_size: Some(20 << 30),
            redirect: true,
        }
    );
    // The cache directory itself is unchanged by it.
    assert_eq!(s.image_path, PathBuf::from("/srv/ociregistry"));
}

#[test]
fn storage_defaults() {
    // No `storage` (every Ociregistry config): the filesystem at imagePath.
    for text in ["", "storage:\n", "storage: {}\n"] {
        let s = resolve_text(text).unwrap();
        assert_eq!(
            s.storage,
            StorageSettings::filesystem(std::path::Path::new(DEFAULT_IMAGE_PATH)),
            "{text:?}"
        );
    }
    let s = resolve_text("imagePath: /srv/c\nstorage:\n  s3:\n    bucket: abc\n").unwrap();
    let s3 = s3_of(&s);
    assert_eq!(s3.region, DEFAULT_S3_REGION);
    assert_eq!((s3.prefix.as_str(), &s3.endpoint), ("", &None));
    assert!(s3.credentials.is_none());
    assert_eq!(s.storage.local_path, PathBuf::from("/srv/c"));
    assert_eq!(s.storage.local_max_size, None);
    assert!(!s.storage.redirect);
    // The local copy defaults to imagePath as the flag sets it, too.
    let text = "imagePath: /srv/c\nstorage:\n  s3: {bucket: abc, prefix: /}\n  localCache: {maxSize: 1GiB}\n";
    let s = resolve(
        Some((
            parse_text(text).unwrap(),
            text.to_owned(),
            PathBuf::from("c"),
        )),
        Overrides {
            image_path: Some(PathBuf::from("/from/flag")),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(s.storage.local_path, PathBuf::from("/from/flag"));
    assert_eq!(s.storage.local_max_size, Some(1 << 30));
    assert_eq!(s3_of(&s).prefix, "");
}

#[test]
fn storage_errors_name_key_and_line() {
    let needs_s3 = "needs storage.s3; the filesystem store keeps everything at imagePath";
    let cases: &[(&str, &[&str])] = &[
        (
            "port: 1\nstorage:\n  localCache:\n    path: /x\n",
            &["storage.localCache (line 3)", needs_s3],
        ),
        (
            "storage:\n  redirect: false\n",
            &["storage.redirect (line 2)", needs_s3],
        ),
        (
            "port: 1\nstorage:\n  s3:\n    bukket: x\n",
            &[
                "line 4",
                "key `bukket`",
                "storage.s3: unknown field `bukket`",
            ],
        ),
        (
            "storage:\n  s3: {bucket: abc}\n  localCache:\n    pth: /x\n",
            &["line 4", "storage.localCache: unknown field `pth`"],
        ),
        ("storage:\n  S3: {}\n", &["line 2", "unknown field `S3`"]),
        ("storage:\n  s3:\n", &["line 2", "missing field `bucket`"]),
        (
            "storage:\n  s3:\n    region: eu-west-1\n",
            &["storage.s3", "missing field `bucket`"],
        ),
        (
            "storage:\n  s3:\n    region: eu-west-1\n    bucket: Mirror_Cache\n",
            &["storage.s3.bucket (line 4)", "not a valid bucket name"],
        ),
        (
            "storage:\n  s3:\n    bucket: ab\n",
            &["storage.s3.bucket (line 3)", "3 to 63"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    prefix: a/../b\n",
            &["storage.s3.prefix (line 4)", "'..'"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    region: eu west\n",
            &["storage.s3.region (line 4)"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    endpoint: ftp://127.0.0.1:9000\n",
            &["storage.s3.endpoint (line 4)", "http or https"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    endpoint: http://127.0.0.1:9000/mirror-cache\n",
            &["storage.s3.endpoint (line 4)", "path"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    endpoint: not a url\n",
            &["storage.s3.endpoint (line 4)", "not a URL"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    accessKeyIdFromEnv: K\n",
            &[
                "storage.s3.accessKeyIdFromEnv (line 4)",
                "needs storage.s3.secretAccessKeyFromEnv",
            ],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    region: r\n    secretAccessKeyFromEnv: S\n",
            &[
                "storage.s3.secretAccessKeyFromEnv (line 5)",
                "needs storage.s3.accessKeyIdFromEnv",
            ],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    sessionTokenFromEnv: T\n",
            &["storage.s3.sessionTokenFromEnv (line 4)", "needs"],
        ),
        (
            "storage:\n  s3:\n    bucket: abc\n    accessKeyIdFromEnv: OCIREG_TEST_UNSET_VAR\n    secretAccessKeyFromEnv: OCIREG_TEST_UNSET_VAR2\n",
            &[
                "storage.s3.accessKeyIdFromEnv (line 4)",
                "environment variable OCIREG_TEST_UNSET_VAR is not set or empty",
            ],
        ),
        (
            "storage:\n  s3: {bucket: abc}\n  localCache:\n    maxSize: 0\n",
            &["line 4", "storage.localCache.maxSize", "more than zero"],
        ),
        (
            "storage:\n  s3: {bucket: abc}\n  localCache:\n    path: \"\"\n",
            &["storage.localCache.path (line 4)", "empty"],
        ),
        (
            "storage:\n  s3: {bucket: abc}\n  redirect: sometimes\n",
            &["line 3", "storage.redirect"],
        ),
    ];
    for (text, needles) in cases {
        let e = resolve_text(text).unwrap_err();
        for needle in *needles {
            assert!(e.contains(needle), "{text:?}: {e:?} lacks {needle:?}");
        }
    }
}

/// Marks the child process of [`storage_credentials_from_env`] that has the variables set.
const CHILD_MARK: &str = "OCIREG_TEST_S3_CHILD";

/// The credential variables are read at resolve time. The process cannot set variables on
/// itself (`set_var` is unsafe), so the test runs itself again with them set.
#[test]
fn storage_credentials_from_env() {
    if std::env::var_os(CHILD_MARK).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::storage_credentials_from_env",
                "--test-threads=1",
            ])
            .env(CHILD_MARK, "1")
            .env("OCIREG_TEST_S3_KEY", "AKIAEXAMPLEKEYID")
            .env(
                "OCIREG_TEST_S3_SECRET",
                "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
            )
            .env("OCIREG_TEST_S3_TOKEN", "FwoGZXIvYXdzEJrTOKENEXAMPLE")
            .env("OCIREG_TEST_S3_EMPTY", "")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let text = "storage:\n  s3:\n    bucket: abc\n    accessKeyIdFromEnv: OCIREG_TEST_S3_KEY\n    secretAccessKeyFromEnv: OCIREG_TEST_S3_SECRET\n";
    let c = s3_of(&resolve_text(text).unwrap()).credentials.clone();
    assert_eq!(
        c,
        Some(S3Credentials {
            access_key_id: "AKIAEXAMPLEKEYID".into(),
            secret_access_key: "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        })
    );
    let text = format!("{text}    sessionTokenFromEnv: OCIREG_TEST_S3_TOKEN\n");
    let s = resolve_text(&text).unwrap();
    let c = s3_of(&s).credentials.clone().unwrap();
    assert_eq!(
        c.session_token.as_deref(),
        Some("FwoGZXIvYXdzEJrTOKENEXAMPLE")
    );
    // Neither the secret nor the token prints; the key id shows its first 4 characters.
    let debug = format!("{s:?}");
    assert!(
        debug.contains("AKIA") && debug.contains("<redacted>"),
        "{debug}"
    );
    for hidden in ["EXAMPLEKEYID", "wJalrXUtnFEMI", "FwoGZXIvYXdzEJr"] {
        assert!(!debug.contains(hidden), "{hidden} in {debug}");
    }
    // A variable that is set but empty is refused like an unset one, naming the key.
    let e =
        resolve_text(&text.replace("OCIREG_TEST_S3_TOKEN", "OCIREG_TEST_S3_EMPTY")).unwrap_err();
    assert!(
        e.contains("storage.s3.sessionTokenFromEnv (line 6)")
            && e.contains("OCIREG_TEST_S3_EMPTY is not set or empty"),
        "{e}"
    );
}

#[test]
fn cluster_keys() {
    let base = "storage:\n  s3: {bucket: abc}\ncluster:\n";
    let s = resolve_text(&format!(
        "{base}  advertise: http://10.0.0.5:8080/\n  token: 0123456789abcdef\n"
    ))
    .unwrap();
    let c = s.cluster.clone().unwrap();
    assert_eq!(c.advertise, "http://10.0.0.5:8080");
    assert_eq!(c.token.expose(), "0123456789abcdef");
    assert_eq!(c.lease_ttl, cluster::DEFAULT_LEASE_TTL);
    assert!(!format!("{s:?}").contains("0123456789abcdef"));
    // host:port reads as http, leaseTtl is taken.
    let s = resolve_text(&format!(
        "{base}  advertise: 10.0.0.5:8080\n  token: 0123456789abcdef\n  leaseTtl: 1m\n"
    ))
    .unwrap();
    let c = s.cluster.unwrap();
    assert_eq!(c.advertise, "http://10.0.0.5:8080");
    assert_eq!(c.lease_ttl, Duration::from_secs(60));
    assert!(resolve_text("").unwrap().cluster.is_none());
    // Written empty: refused, not silently off.
    let e = resolve_text(base).unwrap_err();
    assert!(
        e.contains("cluster (line 3)") && e.contains("needs advertise"),
        "{e}"
    );
}

/// `advertiseFromEnv` and `tokenFromEnv`: the test runs itself again with the variables set
/// (as [`storage_credentials_from_env`]).
#[test]
fn cluster_keys_from_env() {
    if std::env::var_os("OCIREG_TEST_CLUSTER_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::cluster_keys_from_env",
                "--test-threads=1",
            ])
            .env("OCIREG_TEST_CLUSTER_CHILD", "1")
            .env("OCIREG_TEST_CLUSTER_ADV", "https://replica-1:8443")
            .env("OCIREG_TEST_CLUSTER_TOKEN", "from-env-token-0123")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let s = resolve_text("storage:\n  s3: {bucket: abc}\ncluster:\n  advertiseFromEnv: OCIREG_TEST_CLUSTER_ADV\n  tokenFromEnv: OCIREG_TEST_CLUSTER_TOKEN\n").unwrap();
    let c = s.cluster.unwrap();
    assert_eq!(c.advertise, "https://replica-1:8443");
    assert_eq!(c.token.expose(), "from-env-token-0123");
}

#[test]
fn cluster_errors_name_key_and_line() {
    let tok = "  token: 0123456789abcdef\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!("port: 1\ncluster:\n  advertise: http://a:1\n{tok}"),
            &["cluster (line 2)", "needs storage.s3"],
        ),
        (
            format!("storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}"),
            &["line 3", "needs advertise or advertiseFromEnv"],
        ),
        (
            "storage:\n  s3: {bucket: abc}\ncluster:\n  advertise: http://a:1\n".to_owned(),
            &["line 3", "needs token or tokenFromEnv"],
        ),
        (
            "storage:\n  s3: {bucket: abc}\ncluster:\n  advertise: http://a:1\n  token: short\n"
                .to_owned(),
            &["cluster.token", "line 5", "at least 16 characters"],
        ),
        (
            format!("storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertise: http://a:1/x\n"),
            &["cluster.advertise", "line 5", "no path"],
        ),
        (
            format!("storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertise: ftp://a:1\n"),
            &["cluster.advertise", "line 5", "http or https"],
        ),
        (
            format!(
                "storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertise: a:1\n  leaseTtl: 1s\n"
            ),
            &["cluster.leaseTtl", "line 6", "between 5s and 10m"],
        ),
        (
            format!(
                "storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertise: a:1\n  tokenFromEnv: X\n"
            ),
            &["line 3", "either token or tokenFromEnv"],
        ),
        (
            format!(
                "storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertiseFromEnv: OCIREG_TEST_NOT_SET_EVER\n"
            ),
            &[
                "cluster.advertiseFromEnv",
                "line 5",
                "OCIREG_TEST_NOT_SET_EVER is not set",
            ],
        ),
        (
            format!("storage:\n  s3: {{bucket: abc}}\ncluster:\n{tok}  advertize: a:1\n"),
            &["line 5", "unknown field `advertize`"],
        ),
    ];
    for (text, wanted) in cases {
        let e = resolve_text(&text).unwrap_err();
        for w in wanted {
            assert!(e.contains(w), "{text:?}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn hello_world_is_on_unless_switched_off() {
    assert!(resolve_text("").unwrap().hello_world);
    assert!(resolve_text("helloWorld: true\n").unwrap().hello_world);
    assert!(!resolve_text("helloWorld: false\n").unwrap().hello_world);
    for (bad, needle) in [
        ("port: 8080\nhelloWorld: nope\n", "line 2"),
        ("helloWorld: 1\n", "helloWorld"),
        ("hellowWorld: false\n", "hellowWorld"),
    ] {
        let e = resolve_text(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn endpoints_aliases_rate_limit_and_breaker() {
    let yaml = "registries:\n- name: docker.io\n  endpoints:\n  - https://mirror.gcr.io\n  - url: https://registry-1.docker.io:443/\n    auth: {user: u, password: p}\n  rateLimit: {revalidateFloor: 10}\n  breaker: {coolDown: 1s, maxCoolDown: 30s}\n- name: registry.corp.example:8443\n  aliases: [corp, Corp-Two]\n";
    let s = resolve_text(yaml).unwrap();
    let hub = &s.registries[0];
    assert_eq!(hub.endpoints.len(), 2);
    assert_eq!(hub.endpoints[0].url, "https://mirror.gcr.io");
    assert_eq!(hub.endpoints[1].url, "https://registry-1.docker.io");
    assert!(matches!(
        hub.endpoints[0].credential,
        CredentialConfig::None
    ));
    assert!(matches!(
        hub.endpoints[1].credential,
        CredentialConfig::Basic { .. }
    ));
    assert_eq!(hub.revalidate_floor, Some(10));
    assert_eq!(hub.breaker.cool_down, Duration::from_secs(1));
    assert_eq!(hub.breaker.max_cool_down, Duration::from_secs(30));
    assert_eq!(s.registries[1].aliases, ["corp", "corp-two"]);
    assert_eq!(s.alias_target("corp"), Some("registry.corp.example:8443"));
    assert_eq!(s.alias_target("docker.io"), None);
}

#[test]
fn endpoint_and_alias_mistakes_name_key_and_line() {
    for (yaml, key, line) in [
        (
            "registries:\n- name: a.example\n  endpoints:\n  - ftp://x.example\n",
            "registries[0].endpoints[0]",
            4,
        ),
        (
            "registries:\n- name: a.example\n  endpoints:\n  - https://u:p@x.example\n",
            "registries[0].endpoints[0]",
            4,
        ),
        (
            "registries:\n- name: a.example\n  endpoints:\n  - https://x.example/v2/sub\n",
            "registries[0].endpoints[0]",
            4,
        ),
        (
            "registries:\n- name: a.example\n  aliases: [quay.io]\n",
            "registries[0].aliases[0]",
            3,
        ),
        (
            "registries:\n- name: a.example\n- name: b.example\n  aliases:\n  - a.example\n",
            "registries[1].aliases[0]",
            5,
        ),
        (
            "registries:\n- name: a.example\n  aliases: [x]\n- name: b.example\n  aliases: [x]\n",
            "registries[1].aliases[0]",
            5,
        ),
        (
            "registries:\n- name: a.example\n  aliases: [\"a/b\"]\n",
            "registries[0].aliases[0]",
            3,
        ),
    ] {
        let e = resolve_text(yaml).unwrap_err();
        assert!(
            e.contains(key) && e.contains(&format!("line {line}")),
            "{yaml}: {e}"
        );
    }
    let e = parse_text(
        "registries:\n- name: a.example\n  endpoints:\n  - {url: https://x.example, tsl: {}}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tsl"), "{e}");
    let e = parse_text("registries:\n- name: a.example\n  rateLimit: {floor: 3}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("floor"), "{e}");
}
