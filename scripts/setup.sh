#!/usr/bin/env bash
# Prepare a machine for hello-birthday.
#   setup.sh dev   everything the full test suite and the local stack need
#   setup.sh dev --for STAGE   only what one stage of scripts/ci.sh needs
#   setup.sh host  provision a Linux server to run the service under systemd
# Idempotent: every step checks before it changes anything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'USAGE'
Usage: scripts/setup.sh dev [--for STAGE] | host [options]

  dev    Install on Debian/Ubuntu what the test suite and the local stack need:
         PostgreSQL server binaries, HAProxy, Prometheus (promtool),
         Alertmanager (amtool), shellcheck, wrk, podman, graphviz, sqlite3,
         and a Python virtualenv (.venv) with cfn-lint, checkov, actionlint,
         moto, awscli, matplotlib, schemathesis; cargo-deny from crates.io.
         Then prints tool versions.
         --for STAGE: only what that stage of scripts/ci.sh needs (the hosted
         CI jobs, one per stage); an unknown stage is an error.
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
  "pgbackrest:pgbackrest"
)

# What each stage of scripts/ci.sh needs besides Rust: commands of
# DEV_PACKAGES, "postgres" (the server binaries), "venv" (.venv from
# requirements-dev.txt), "cargo-deny", "cargo-machete". Every stage has a line, so a new stage
# without one fails its hosted job instead of running without its tools.
STAGE_NEEDS=(
  "fmt|"
  "clippy|cargo-machete"
  "shellcheck|shellcheck"
  "test|postgres openssl strace"
  "hardening|postgres psql curl venv"
  "bench-smoke|postgres psql wrk taskset sqlite3 pgrep venv"
  "monitoring|postgres psql promtool amtool prometheus-blackbox-exporter haproxy socat jq curl openssl venv"
  "deploy|postgres psql haproxy socat jq curl promtool venv"
  "systemd|systemd-analyze"
  "aws|jq dot curl postgres psql openssl venv"
  "drills|postgres psql jq sqlite3 curl pgbackrest venv"
  "pipeline|shellcheck jq curl file readelf podman update-ca-certificates venv cargo-deny"
)

CARGO_DENY_VERSION=0.20.2
CARGO_MACHETE_VERSION=0.9.2

# needs STAGE: the words of its STAGE_NEEDS line; fails for an unknown stage.
needs() {
  local s
  for s in "${STAGE_NEEDS[@]}"; do
    if [ "${s%%|*}" = "$1" ]; then printf '%s\n' "${s#*|}"; return 0; fi
  done
  return 1
}

setup_dev() {
  local missing=() entry cmd pkg stage="" want="all"
  while [ $# -gt 0 ]; do
    case $1 in
      --for) stage=${2:?--for STAGE}; shift 2 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  if [ -n "$stage" ]; then
    want=$(needs "$stage") || { printf 'setup.sh: no stage %s (scripts/ci.sh --list)\n' "$stage" >&2; exit 2; }
    step "installing what the $stage stage needs: ${want:-Rust only}"
  fi
  # wanted WORD: is it needed (everything without --for)?
  wanted() { [ "$want" = all ] || [[ " $want " == *" $1 "* ]]; }
  for entry in "${DEV_PACKAGES[@]}"; do
    cmd=${entry%%:*}; pkg=${entry#*:}
    wanted "$cmd" || continue
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # The server binaries: the machine image ships them on PATH; elsewhere the
  # Debian package provides them under /usr/lib/postgresql/*/bin.
  if wanted postgres && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
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

  if wanted venv; then
    step "Python virtualenv .venv (requirements-dev.txt)"
    local py=${PYTHON:-python3}
    [ -x "$ROOT/.venv/bin/python" ] || "$py" -m venv "$ROOT/.venv"
    local stamp="$ROOT/.venv/.requirements.sha256"
    local sum
    sum=$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
      "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
      echo "$sum" > "$stamp"
    else
      step "Python packages already installed"
    fi
  fi

  step "Rust components"
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

  # cargo-deny (supply-chain checks) from crates.io; compiling it takes a few
  # minutes once, so an installed one is kept.
  if wanted cargo-deny; then
    step "cargo-deny"
    if cargo deny --version >/dev/null 2>&1; then
      echo "  already installed: $(cargo deny --version)"
    else
      cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
    fi
  fi
  # cargo-machete: declared dependencies the code does not use (clippy stage).
  if wanted cargo-machete; then
    step "cargo-machete"
    if cargo machete --version >/dev/null 2>&1; then
      echo "  already installed: $(cargo machete --version)"
    else
      cargo install --locked cargo-machete --version "$CARGO_MACHETE_VERSION"
    fi
  fi

  [ "$want" = all ] || { step "ready for the $stage stage"; return 0; }
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
    pgbackrest "$(pgbackrest version)" \
    cargo-deny "$(cargo deny --version)" \
    cargo-machete "$(cargo machete --version)" \
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
