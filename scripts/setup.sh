#!/usr/bin/env bash
# Prepare a machine for hello-birthday.
#   setup.sh dev   everything the full test suite and the local stack need
#   setup.sh host  provision a Linux server to run the service under systemd
# Idempotent: every step checks before it changes anything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'USAGE'
Usage: scripts/setup.sh dev|host [options]

  dev    Install on Debian/Ubuntu what the test suite and the local stack need:
         PostgreSQL server binaries, HAProxy, Prometheus (promtool),
         Alertmanager (amtool), shellcheck, wrk, podman, graphviz, sqlite3,
         and a Python virtualenv (.venv) with cfn-lint, checkov, actionlint,
         moto, awscli, matplotlib, schemathesis; cargo-deny from crates.io.
         Then prints tool versions.
  host   Provision a server (Amazon Linux 2023, Debian, Ubuntu) to run the
         service: system user, directories, env file, hardened systemd unit.
         Options: --binary PATH (install this release binary)

Environment:
  SETUP_SKIP_APT=1   do not call the package manager (tools already present)
USAGE
}

step() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the suite needs, keyed by the command that proves them.
DEV_PACKAGES=(
  "haproxy:haproxy"
  "promtool:prometheus"
  "amtool:prometheus-alertmanager"
  "shellcheck:shellcheck"
  "wrk:wrk"
  "podman:podman"
  "dot:graphviz"
  "sqlite3:sqlite3"
  "jq:jq"
  "curl:curl"
  "ip:iproute2"
  "taskset:util-linux"
  "pgrep:procps"
  "psql:postgresql-client"
  "openssl:openssl"
  "file:file"
  "readelf:binutils"
  "update-ca-certificates:ca-certificates"
  "socat:socat"
  "strace:strace"
  "systemd-analyze:systemd"
  "prometheus-blackbox-exporter:prometheus-blackbox-exporter"
)

CARGO_DENY_VERSION=0.20.2

setup_dev() {
  local missing=() entry cmd pkg
  for entry in "${DEV_PACKAGES[@]}"; do
    cmd=${entry%%:*}; pkg=${entry#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # The server binaries: the machine image ships them on PATH; elsewhere the
  # Debian package provides them under /usr/lib/postgresql/*/bin.
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    [ "${SETUP_SKIP_APT:-0}" = 1 ] && die "missing packages: ${missing[*]}"
    step "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    # Services that packages try to start (haproxy, prometheus) are not wanted
    # on a dev machine: the tests start their own throwaway instances.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    step "Debian packages already present"
  fi

  step "Python virtualenv .venv (requirements-dev.txt)"
  local py=${PYTHON:-python3}
  [ -x "$ROOT/.venv/bin/python" ] || "$py" -m venv "$ROOT/.venv"
  local stamp="$ROOT/.venv/.requirements.sha256"
  local want
  want=$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
    echo "$want" > "$stamp"
  else
    step "Python packages already installed"
  fi

  step "Rust components"
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

  # cargo-deny (supply-chain checks) from crates.io; compiling it takes a few
  # minutes once, so an installed one is kept.
  step "cargo-deny"
  if cargo deny --version >/dev/null 2>&1; then
    echo "  already installed: $(cargo deny --version)"
  else
    cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
  fi

  step "Versions"
  local pgbin
  pgbin=$(command -v initdb || find /usr/lib/postgresql -path "*/bin/initdb" | sort | tail -n1)
  printf '  %-12s %s\n' \
    cargo "$(cargo --version)" \
    postgres "$("$pgbin" --version)" \
    haproxy "$(haproxy -v | head -n1)" \
    promtool "$(promtool --version 2>&1 | head -n1)" \
    amtool "$(amtool --version 2>&1 | head -n1)" \
    shellcheck "$(shellcheck --version | sed -n 2p)" \
    wrk "$(wrk -v 2>&1 | head -n1)" \
    podman "$(podman --version)" \
    cargo-deny "$(cargo deny --version)" \
    cfn-lint "$("$ROOT/.venv/bin/cfn-lint" --version)" \
    checkov "$("$ROOT/.venv/bin/checkov" --version)"
}

setup_host() {
  local host_script="$ROOT/deploy/systemd/install-host.sh"
  [ -x "$host_script" ] || die "host provisioning lives in deploy/systemd/install-host.sh, which is missing"
  "$host_script" "$@"
}

main() {
  [ $# -ge 1 ] || { usage; exit 2; }
  case "$1" in
    -h|--help) usage ;;
    dev) shift; setup_dev "$@" ;;
    host) shift; setup_host "$@" ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
