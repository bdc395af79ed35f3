//! Building the test-fixture plugins (`tests/fixtures/`): `panic`, `hang`, `flaky`,
//! `counter`, `otherabi`, `v10` (built against a frozen copy of plugin-api ABI 1.0) and
//! `context` (echoes the 1.1 create and fetch context). See each crate's doc comment for its options.
//!
//! They form their own cargo workspace and are built into `<repo>/target/fixtures`, never
//! next to the real binary. The build runs once per test process; concurrent test
//! processes are serialised by cargo's own lock on the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The lib names of the fixture crates (`lib<name>.so` on Linux).
pub const FIXTURES: &[&str] = &[
    "fixture_panic",
    "fixture_hang",
    "fixture_flaky",
    "fixture_counter",
    "fixture_otherabi",
    "fixture_v10",
    "fixture_context",
];

/// The repository root (the parent of the crate that includes this file).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Builds the fixture plugins (once per process) and returns the directory holding their
/// libraries. Fails, with cargo's output, if the build fails; it never skips.
pub fn build_fixture_plugins() -> std::io::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build)
        .clone()
        .map_err(std::io::Error::other)
}

fn build() -> Result<PathBuf, String> {
    let root = repo_root();
    let manifest = root.join("tests/fixtures/Cargo.toml");
    let target_dir = root.join("target/fixtures");
    // Under `cargo test`, CARGO is the cargo that runs the tests.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the outer build (e.g. coverage instrumentation) do not apply here.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("running {cargo:?} to build the fixture plugins: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the fixture plugins ({}) failed with {}:\n{}",
            manifest.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let dir = target_dir.join("debug");
    for name in FIXTURES {
        let file = plugin_file(&dir, name);
        if !file.is_file() {
            return Err(format!(
                "fixture plugin build succeeded but {} is missing",
                file.display()
            ));
        }
    }
    Ok(dir)
}

/// The library file of the crate with lib name `crate_lib_name` in `dir`, e.g.
/// `plugin_file(dir, "fixture_panic")` is `dir/libfixture_panic.so` on Linux.
pub fn plugin_file(dir: &Path, crate_lib_name: &str) -> PathBuf {
    dir.join(format!(
        "{}{crate_lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// Copies the given fixture libraries (by lib name) from `built` into `plugin_dir`, which is
/// created if needed, and returns the copies' paths. Tests use it to make a plugin directory
/// holding exactly the plugins they want.
pub fn install_plugins(
    built: &Path,
    plugin_dir: &Path,
    crate_lib_names: &[&str],
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(plugin_dir)?;
    let mut copies = Vec::new();
    for name in crate_lib_names {
        let from = plugin_file(built, name);
        let to = plugin_file(plugin_dir, name);
        std::fs::copy(&from, &to).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("copying {} to {}: {e}", from.display(), to.display()),
            )
        })?;
        copies.push(to);
    }
    Ok(copies)
}
