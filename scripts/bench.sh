#!/usr/bin/env bash
# The benchmark of issue 4, in one command:
#   scripts/bench.sh            full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --quick    smaller sizes, fewer runs: a fast sanity check
# Installs what it needs the way scripts/install-test-deps.sh does (Debian packages
# docker-registry, nginx, wrk; idempotent), builds the release binaries, runs
# `ociregistry-bench`, prints one markdown table and writes it to
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
