//! The configs the container image and the Helm chart ship start the real server, and the
//! chart's probes get what they expect: `/healthz` 200, `/readyz` 200 "ready", `/metrics`
//! and the pull port answering. Only what differs on a test machine is overridden by flags
//! (the cache directory and the listeners: loopback, free ports); the config text itself
//! is what the image (`deploy/config.container.yaml`) and the chart's ConfigMap (the
//! `config` block of `deploy/helm/ociregistry/values.yaml`) hold.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ociregistry_e2e::fixture_plugins::repo_root;
use ociregistry_e2e::procs::ChildProc;
use ociregistry_e2e::proxy::ociregistry_bin;
use ociregistry_e2e::raw::get_local as get;
use ociregistry_e2e::{free_port, wait_for};

/// The `config:` block of the chart's values.yaml as the ConfigMap renders it (the keys,
/// without the commented examples).
fn chart_config() -> String {
    let values = std::fs::read_to_string(repo_root().join("deploy/helm/ociregistry/values.yaml"))
        .expect("read values.yaml");
    let block: String = values
        .lines()
        .skip_while(|l| *l != "config:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    assert!(block.contains("health:"), "{block}");
    block
}

fn serves_and_answers_probes(what: &str, config: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).expect("write config");
    let cache = dir.path().join("cache");
    let (pull, health, metrics) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(ociregistry_bin());
    cmd.arg("--config-file")
        .arg(&file)
        .arg("--image-path")
        .arg(&cache)
        .args(["serve", "--host", "127.0.0.1"])
        .args(["--port", &pull.to_string()])
        .args(["--health", &health.to_string()])
        .args(["--metrics", &metrics.to_string()]);
    let mut server = ChildProc::spawn(what, cmd, dir.path());
    let listening = format!("listening on http://127.0.0.1:{pull}");
    wait_for(
        &format!("{what}: the server to listen"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            assert!(
                server.is_running(),
                "{what}: exited\n{}",
                server.log_tail(30)
            );
            let log = server.stderr();
            (log.contains(&listening) && log.contains("health endpoints at")).then_some(())
        },
    );
    // The liveness and readiness probes of the chart's pod template.
    assert_eq!(get(health, "/healthz").status, 200, "{what}: /healthz");
    let r = get(health, "/readyz");
    assert_eq!(r.status, 200, "{what}: /readyz {}", r.body_str());
    let ready: serde_json::Value = serde_json::from_slice(&r.body).expect("readyz JSON");
    assert_eq!(ready["status"], "ready", "{what}: {ready}");
    let m = get(metrics, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body_str().contains("# TYPE ociregistry_disk_bytes gauge"),
        "{what}"
    );
    assert_eq!(get(pull, "/v2/").status, 200, "{what}: the pull port");
    assert!(
        Path::new(&cache).is_dir(),
        "{what}: the cache directory is used"
    );
    let status = server.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{what}: a clean stop on SIGTERM ({status:?})\n{}",
        server.log_tail(20)
    );
}

#[test]
fn the_image_config_serves_and_answers_probes() {
    let text = std::fs::read_to_string(repo_root().join("deploy/config.container.yaml"))
        .expect("read config.container.yaml");
    serves_and_answers_probes("image-config", &text);
}

#[test]
fn the_chart_config_serves_and_answers_probes() {
    serves_and_answers_probes("chart-config", &chart_config());
}
