#!/usr/bin/env bash
# The one command that installs what the tests need and runs them all:
#   scripts/test.sh [extra cargo test args...]
# Under CI=true a missing tool fails the tests instead of skipping them.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

"$repo/scripts/install-test-deps.sh"

export PATH="$repo/.tools/bin:$repo/.venv/bin:$PATH"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

# Build everything first: the end-to-end tests run the real `ociregistry` binary and the
# bundled plugins, which `cargo test` alone does not build.
cargo build --workspace --all-targets

export OCIREGISTRY_BIN="${OCIREGISTRY_BIN:-$target_dir/debug/ociregistry}"

cargo test --workspace "$@"
