//! Issue 14: `plugin-api/template` (the `cargo generate` template) instantiated as an author
//! would (placeholders substituted into a fresh directory), built against the local
//! plugin-api, and loaded by the real binary.

use ociregistry_e2e::fixture_plugins::{plugin_file, repo_root};
use ociregistry_e2e::proxy::ociregistry_bin;
use std::path::Path;
use std::process::Command;

/// Copies `from` into `to`, replacing the template's placeholders.
fn instantiate(from: &Path, to: &Path, vars: &[(&str, &str)]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read template") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            instantiate(&src, &dst, vars);
        } else if entry.file_name() != "cargo-generate.toml" {
            let mut text = std::fs::read_to_string(&src).expect("read template file");
            for (k, v) in vars {
                text = text.replace(&format!("{{{{{k}}}}}"), v);
            }
            assert!(
                !text.contains("{{"),
                "placeholder left in {}",
                src.display()
            );
            std::fs::write(&dst, text).expect("write");
        }
    }
}

#[test]
fn the_template_builds_into_a_plugin_the_binary_loads() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("ociregistry-provider-tmpl");
    instantiate(
        &root.join("plugin-api/template"),
        &project,
        &[
            ("project-name", "ociregistry-provider-tmpl"),
            ("crate_name", "ociregistry_provider_tmpl"),
            ("provider_name", "tmpl"),
        ],
    );
    // Against this checkout's plugin-api instead of crates.io, in a workspace of its own.
    let manifest = project.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    let dep = "ociregistry-plugin-api = \"0.1.1\"";
    assert!(text.contains(dep), "the template depends on {dep}");
    let text = text.replace(
        dep,
        &format!(
            "ociregistry-plugin-api = {{ path = \"{}\" }}",
            root.join("plugin-api").display()
        ),
    ) + "\n[workspace]\n";
    std::fs::write(&manifest, text).expect("write manifest");
    // The fixture workspace's lock file pins the same dependency versions, so the build
    // reuses what the fixture build compiled in the same target directory.
    std::fs::copy(
        root.join("tests/fixtures/Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .expect("copy lock file");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = root.join("target/fixtures");
    let out = Command::new(&cargo)
        .args(["build", "--offline", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the instantiated template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = plugin_file(&target.join("debug"), "ociregistry_provider_tmpl");
    let plugins = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        &built,
        plugins.path().join(built.file_name().expect("name")),
    )
    .expect("copy");
    let out = Command::new(ociregistry_bin())
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("providers")
        .output()
        .expect("run ociregistry providers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "providers: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("tmpl "))
        .unwrap_or_else(|| panic!("no row for the template's provider:\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..4], ["0.1.0", "1.1", "token*,ttl"], "{row:?}");
}
