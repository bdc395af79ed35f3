#!/usr/bin/env bash
# The benchmark of issue 4, in one command:
#   scripts/bench.sh            full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --quick    smaller sizes, fewer runs: a fast sanity check
# Installs what it needs the way scripts/install-test-deps.sh does (Debian packages
# docker-registry, nginx, wrk; s3s-fs into <repo>/.tools; idempotent), builds the release
# binaries, runs `ociregistry-bench`, prints one markdown table and writes it to
# <target>/bench/results.md (results-quick.md for --quick).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

quick=()
case "${1:-}" in
    "") ;;
    --quick) quick=(--quick) ;;
    *) echo "usage: scripts/bench.sh [--quick]" >&2; exit 2 ;;
esac

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]; }
have docker-registry || need_pkgs+=(docker-registry)
have nginx || need_pkgs+=(nginx)
have wrk || need_pkgs+=(wrk)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "bench: installing ${need_pkgs[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${need_pkgs[@]}"
else
    echo "bench: docker-registry, nginx, wrk present"
fi

# s3s-fs (scenario 7: replicas on one bucket), as scripts/install-test-deps.sh installs it:
# $S3S_FS if set, else <repo>/.tools/bin/s3s-fs (built once), else on PATH.
tools="$repo/.tools"
if [ -n "${S3S_FS:-}" ] && [ -x "$S3S_FS" ]; then
    echo "bench: s3s-fs at $S3S_FS"
elif [ -x "$tools/bin/s3s-fs" ]; then
    echo "bench: $tools/bin has s3s-fs"
    export S3S_FS="$tools/bin/s3s-fs"
elif command -v s3s-fs >/dev/null 2>&1; then
    export S3S_FS="$(command -v s3s-fs)"
    echo "bench: s3s-fs at $S3S_FS"
else
    echo "bench: building s3s-fs into $tools (about 3 minutes)"
    cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$tools"
    [ -x "$tools/bin/s3s-fs" ] || { echo "bench: s3s-fs missing after install" >&2; exit 1; }
    export S3S_FS="$tools/bin/s3s-fs"
fi

cargo build --release -p ociregistry -p ociregistry-bench

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
out="$target_dir/bench/results.md"
cmd="scripts/bench.sh"
if [ "${#quick[@]}" -gt 0 ]; then
    out="$target_dir/bench/results-quick.md"
    cmd="scripts/bench.sh --quick"
fi
mkdir -p "$(dirname "$out")"
exec "$target_dir/release/ociregistry-bench" "${quick[@]}" \
    --ociregistry "$target_dir/release/ociregistry" --out "$out" --command "$cmd"
