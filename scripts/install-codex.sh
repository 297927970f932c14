#!/usr/bin/env bash
# Install the pinned Codex CLI used by the real-client e2e tests (tests/e2e/test_codex.py).
#
# Idempotent: when the native binary is already in .cache/codex and reports the pinned
# version, it only prints its path. Installs Node.js/npm through apt-get when they are
# missing. Prints the absolute path of the native codex binary on the last line of stdout.
#
# Env overrides: CODEX_VERSION (default 0.169.0), CODEX_PREFIX (default <repo>/.cache/codex).
set -euo pipefail

CODEX_VERSION="${CODEX_VERSION:-0.169.0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${CODEX_PREFIX:-$REPO_ROOT/.cache/codex}"

log() { echo "install-codex: $*" >&2; }

native_binary() {
    # npm ships the native binary in a per-platform optional package; pick the one for this host.
    local arch triple pkg
    arch="$(uname -m)"
    case "$arch" in
        x86_64 | amd64) pkg="codex-linux-x64" triple="x86_64-unknown-linux-musl" ;;
        aarch64 | arm64) pkg="codex-linux-arm64" triple="aarch64-unknown-linux-musl" ;;
        *)
            log "unsupported architecture: $arch"
            return 1
            ;;
    esac
    echo "$PREFIX/node_modules/@openai/$pkg/vendor/$triple/bin/codex"
}

installed_version() {
    # `codex --version` prints "codex-cli X.Y.Z".
    "$1" --version 2>/dev/null | awk '{print $NF}'
}

apt_install() {
    local SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# The tests run Codex in a loopback-only namespace: unshare (util-linux) + ip (iproute2).
if ! command -v ip >/dev/null 2>&1; then
    log "ip not found; installing iproute2 with apt-get"
    apt_install iproute2
fi

BIN="$(native_binary)"
if [ -x "$BIN" ] && [ "$(installed_version "$BIN")" = "$CODEX_VERSION" ]; then
    echo "$BIN"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    log "npm not found; installing nodejs + npm with apt-get"
    apt_install nodejs npm
fi

mkdir -p "$PREFIX"
# A private package.json keeps npm from walking up into the repository.
[ -f "$PREFIX/package.json" ] || echo '{"name":"codex-e2e-cache","private":true}' >"$PREFIX/package.json"

log "installing @openai/codex@$CODEX_VERSION into $PREFIX"
if ! npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "@openai/codex@$CODEX_VERSION" >&2; then
    log "npm could not install @openai/codex@$CODEX_VERSION; versions the registry offers:"
    npm view @openai/codex versions --json >&2 || true
    exit 1
fi

if [ ! -x "$BIN" ]; then
    log "native binary not found at $BIN; files in the install:"
    find "$PREFIX/node_modules/@openai" -maxdepth 6 -name 'codex*' -type f >&2 || true
    exit 1
fi

GOT="$(installed_version "$BIN")"
if [ "$GOT" != "$CODEX_VERSION" ]; then
    log "installed binary reports version '$GOT', expected $CODEX_VERSION"
    exit 1
fi
echo "$BIN"
