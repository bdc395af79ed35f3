//! The example configs in `deploy/` stay valid and complete: each one parses with the server's
//! own parser, and `config.example.yaml` shows every key the parser accepts (a new key without
//! an example line fails here).

// Test code: a failed precondition is clearest as a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use ociregistry::config::{self, Overrides};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn example_configs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("read deploy/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    v
}

/// The config text with every `/etc/ociregistry/...` file it names created (empty) under
/// `root` and the paths pointed there: the parser checks that such files are readable.
fn with_files_under(text: &str, root: &Path) -> String {
    const PREFIX: &str = "/etc/ociregistry/";
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let tail = &rest[i + PREFIX.len()..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | '"' | '\''))
            .unwrap_or(tail.len());
        let file = root.join(&tail[..end]);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, "").expect("create file");
        rest = &tail[end..];
    }
    text.replace(PREFIX, &format!("{}/", root.display()))
}

#[test]
fn every_example_config_parses() {
    let configs = example_configs();
    let names: Vec<String> = configs
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        names.contains(&"config.example.yaml".to_owned())
            && names.contains(&"config.minimal.yaml".to_owned()),
        "deploy/ holds {names:?}"
    );
    for path in configs {
        let text = std::fs::read_to_string(&path).expect("read example config");
        let root = tempfile::tempdir().expect("tempdir");
        let text = with_files_under(&text, root.path());
        let cfg = config::parse_text(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        assert!(
            cfg.image_path.is_some() && cfg.plugin_dir.is_some(),
            "{}: the install layout's imagePath and pluginDir are set",
            path.display()
        );
    }
}

#[test]
fn minimal_config_resolves_to_the_install_layout() {
    let path = deploy_dir().join("config.minimal.yaml");
    let (cfg, text) = config::load_file(&path).expect("load config.minimal.yaml");
    let s = config::resolve(Some((cfg, text, path)), Overrides::default()).expect("resolve");
    assert_eq!(s.image_path, PathBuf::from("/var/lib/ociregistry"));
    assert_eq!(s.plugin_dir, PathBuf::from("/usr/lib/ociregistry/plugins"));
}

/// The keys the parser accepts where `probe` puts the unknown key `zzzNoSuchKey`, read off
/// its "unknown field ..., expected one of ..." message.
fn accepted_keys(probe: &str) -> Vec<String> {
    let e = match config::parse_text(probe) {
        Ok(_) => panic!("probe {probe:?} parsed"),
        Err(e) => e,
    };
    let expected = e
        .split_once("expected")
        .unwrap_or_else(|| panic!("no key list in {e:?}"))
        .1;
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!keys.is_empty(), "no keys in {e:?}");
    keys
}

#[test]
fn full_example_shows_every_accepted_key() {
    let text = std::fs::read_to_string(deploy_dir().join("config.example.yaml"))
        .expect("read config.example.yaml");
    let shown = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix('#').unwrap_or(l).trim_start();
            let l = l.strip_prefix("- ").unwrap_or(l);
            l.starts_with(&format!("{key}:"))
        })
    };
    let probes = [
        ("top level", "zzzNoSuchKey: 1\n"),
        (
            "registries[]",
            "registries:\n- name: a.io\n  zzzNoSuchKey: 1\n",
        ),
        (
            "registries[].auth",
            "registries:\n- name: a.io\n  auth:\n    zzzNoSuchKey: 1\n",
        ),
        (
            "registries[].auth.token",
            "registries:\n- name: a.io\n  auth:\n    token:\n      zzzNoSuchKey: 1\n",
        ),
        (
            "registries[].tls",
            "registries:\n- name: a.io\n  tls:\n    zzzNoSuchKey: 1\n",
        ),
        ("serverTlsConfig", "serverTlsConfig:\n  zzzNoSuchKey: 1\n"),
        ("storage", "storage:\n  zzzNoSuchKey: 1\n"),
        ("storage.s3", "storage:\n  s3:\n    zzzNoSuchKey: 1\n"),
        (
            "storage.localCache",
            "storage:\n  localCache:\n    zzzNoSuchKey: 1\n",
        ),
        ("cluster", "cluster:\n  zzzNoSuchKey: 1\n"),
    ];
    let mut missing = Vec::new();
    for (place, probe) in probes {
        for key in accepted_keys(probe) {
            if !shown(&key) {
                missing.push(format!("{place}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/config.example.yaml does not show these accepted keys: {missing:?}"
    );
}

#[test]
fn commented_storage_example_parses() {
    let text = std::fs::read_to_string(deploy_dir().join("config.example.yaml"))
        .expect("read config.example.yaml");
    let block: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# storage:"))
        .take_while(|l| l.starts_with("# "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    assert!(
        block.contains("s3:"),
        "no `# storage:` block in config.example.yaml"
    );
    let cfg = config::parse_text(&block)
        .unwrap_or_else(|e| panic!("the storage example does not parse: {e}\n{block}"));
    let storage = cfg.storage.expect("storage");
    assert_eq!(storage.s3.expect("storage.s3").bucket, "mirror-cache");
}

/// The Kubernetes example's ConfigMap holds a config the server accepts, and the Deployment
/// mounts it where its arguments say and probes the health port the config opens.
#[test]
fn kubernetes_example_config_parses_and_matches_the_deployment() {
    let dir = deploy_dir().join("kubernetes");
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("configmap.yaml")).expect("read configmap.yaml"),
    )
    .expect("configmap.yaml is YAML");
    let text = cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml in the ConfigMap");
    let cfg = config::parse_text(text)
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not parse: {e}\n{text}"));
    let storage = cfg.storage.expect("the example uses storage");
    assert_eq!(storage.s3.expect("storage.s3").bucket, "mirror-cache");
    assert_eq!(cfg.health, Some(8081));
    let cluster = cfg.cluster.expect("the example runs a cluster");
    assert_eq!(
        cluster.advertise_from_env.as_deref(),
        Some("OCIREGISTRY_ADVERTISE")
    );
    assert_eq!(
        cluster.token_from_env.as_deref(),
        Some("OCIREGISTRY_CLUSTER_TOKEN")
    );

    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("read");
    let d: serde_yaml_ng::Value = serde_yaml_ng::from_str(&deployment).expect("YAML");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][1], "/etc/ociregistry/config.yaml");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let env_names: Vec<&str> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env_names.contains(&"AWS_EC2_METADATA_DISABLED"));
    // Each pod advertises its own address: POD_IP from the downward API, before the
    // variable that uses it.
    let env = c["env"].as_sequence().expect("env");
    let pod_ip = env
        .iter()
        .position(|e| e["name"] == "POD_IP")
        .expect("POD_IP in env");
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let advertise = env
        .iter()
        .position(|e| e["name"] == "OCIREGISTRY_ADVERTISE")
        .expect("OCIREGISTRY_ADVERTISE in env");
    assert!(pod_ip < advertise);
    assert_eq!(env[advertise]["value"], "http://$(POD_IP):8080");
    let secret: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("secret.yaml")).expect("read secret.yaml"),
    )
    .expect("YAML");
    for key in [
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "OCIREGISTRY_CLUSTER_TOKEN",
    ] {
        assert!(
            text.contains(key) && !secret["stringData"][key].is_null(),
            "{key}: named in the config and given by the Secret"
        );
    }
}
