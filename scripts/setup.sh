#!/usr/bin/env bash
# Prepare a machine for hello-birthday.
#   setup.sh dev   everything the full test suite and the local stack need
#   setup.sh dev --for STAGE   only what one stage of scripts/ci.sh needs
#   setup.sh dev --dry-run     say what it would install and change, change nothing
#   setup.sh host  provision a Linux server to run the service under systemd
# Idempotent: every step checks before it changes anything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/setup.sh dev [--for STAGE] [--dry-run] | host [options]

  dev    Install on Debian/Ubuntu what the test suite and the local stack need:
         PostgreSQL server binaries, HAProxy, Prometheus (promtool),
         Alertmanager (amtool), shellcheck, wrk, podman, graphviz, sqlite3,
         and a Python virtualenv (.venv) with cfn-lint, checkov, actionlint,
         moto, awscli, matplotlib, schemathesis; cargo-deny and cargo-machete
         from crates.io.
         Then prints tool versions. It first prints its plan: the packages
         it will install, the daemons among them it then disables and stops
         (PostgreSQL, HAProxy, Prometheus, Alertmanager, the blackbox
         exporter: the tests start their own throwaway instances; a policy-rc.d
         keeps them from starting during the install), the rustup components
         and whether cargo-deny and cargo-machete get compiled. Already-installed packages and
         their services are left as they are.
         --for STAGE: only what that stage of scripts/ci.sh needs (the hosted
         CI jobs, one per stage; the table is scripts/ci.sh's, read with
         `scripts/ci.sh --needs STAGE`); an unknown stage is an error (2).
         --dry-run: print the plan and the commands, change nothing.
  host   Provision a server (Amazon Linux 2023, Debian, Ubuntu) to run the
         service: system user, directories, env file, hardened systemd unit.
         Options: --binary PATH (install this release binary)

Environment:
  SETUP_SKIP_APT=1   do not call the package manager (tools already present)
USAGE
}

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

# Services that packages of DEV_PACKAGES (and the PostgreSQL server) enable
# and start on install. A dev or CI machine wants none of them running: the
# tests start their own throwaway instances on free ports.
DEV_DAEMONS=(
  "postgresql:postgresql.service"
  "haproxy:haproxy.service"
  "prometheus:prometheus.service"
  "prometheus-alertmanager:prometheus-alertmanager.service"
  "prometheus-blackbox-exporter:prometheus-blackbox-exporter.service"
)

CARGO_DENY_VERSION=0.20.2
CARGO_MACHETE_VERSION=0.9.2

# run CMD...: prints the command, and runs it unless --dry-run.
DRY_RUN=0
run() {
  note "+ $*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

# no_daemon_start CMD...: CMD (a package install) with invoke-rc.d told not
# to start services (policy-rc.d exit 101), so nothing listens before
# disable_daemons runs. An existing policy-rc.d is the host's: kept.
no_daemon_start() {
  local policy=/usr/sbin/policy-rc.d rc=0
  if [ -e "$policy" ]; then "$@"; return; fi
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 0755 $policy"
  "$@" || rc=$?
  as_root rm -f "$policy"
  return "$rc"
}

# disable_daemons UNIT...: not enabled at boot, not running. Without systemd
# as PID 1 (a container, this CI) only the enablement links exist.
disable_daemons() {
  [ $# -gt 0 ] && command -v systemctl >/dev/null 2>&1 || return 0
  if [ -d /run/systemd/system ]; then
    run as_root systemctl disable --now "$@"
  else
    run as_root systemctl --root=/ disable "$@"
  fi
}

setup_dev() {
  local missing=() daemons=() entry cmd pkg stage="" want="all" components=() c
  while [ $# -gt 0 ]; do
    case $1 in
      --for) optarg stage "$@"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) usage_error "unknown option for dev: $1" ;;
    esac
  done
  if [ -n "$stage" ]; then
    want=$("$ROOT/scripts/ci.sh" --needs "$stage") || exit $?
    step "what the $stage stage needs: ${want:-Rust only}"
  fi
  # wanted WORD: is it needed (everything without --for)?
  wanted() { [ "$want" = all ] || [[ " $want " == *" $1 "* ]]; }
  for entry in "${DEV_PACKAGES[@]}"; do
    cmd=${entry%%:*}; pkg=${entry#*:}
    wanted "$cmd" || continue
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # The server programs: on PATH in the machine image; elsewhere the Debian
  # package provides them under /usr/lib/postgresql/*/bin.
  if wanted postgres && ! pg_bin initdb >/dev/null 2>&1; then
    missing+=(postgresql)
  fi
  for entry in "${DEV_DAEMONS[@]}"; do
    [[ " ${missing[*]} " == *" ${entry%%:*} "* ]] && daemons+=("${entry#*:}")
  done
  for c in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || components+=("$c")
  done

  if [ "$DRY_RUN" = 1 ]; then step "plan (--dry-run: nothing is changed)"; else step "plan"; fi
  note "Debian packages to install: ${missing[*]:-none}"
  note "daemons they bring, then disabled and stopped: ${daemons[*]:-none}"
  note "rustup components to add: ${components[*]:-none}"
  if wanted venv; then note "Python virtualenv: $ROOT/.venv from requirements-dev.txt"; fi
  if wanted cargo-deny; then
    if cargo deny --version >/dev/null 2>&1; then note "cargo-deny: present"
    else note "cargo-deny $CARGO_DENY_VERSION: cargo install from crates.io (minutes)"; fi
  fi
  if wanted cargo-machete; then
    if cargo machete --version >/dev/null 2>&1; then note "cargo-machete: present"
    else note "cargo-machete $CARGO_MACHETE_VERSION: cargo install from crates.io"; fi
  fi

  if [ ${#missing[@]} -gt 0 ]; then
    [ "${SETUP_SKIP_APT:-0}" = 1 ] && die "missing packages: ${missing[*]}"
    step "apt-get install ${missing[*]}"
    run as_root apt-get update -qq
    run no_daemon_start as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ ${#daemons[@]} -eq 0 ] || step "disabling the services the packages enabled"
    disable_daemons "${daemons[@]}"
  else
    step "Debian packages already present"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    [ ${#components[@]} -eq 0 ] || run rustup component add "${components[@]}"
    step "dry run: stopping before the virtualenv, Rust components and cargo-deny"
    return 0
  fi

  if wanted venv; then
    step "Python virtualenv .venv (requirements-dev.txt)"
    local py=${PYTHON:-python3}
    [ -x "$ROOT/.venv/bin/python" ] || "$py" -m venv "$ROOT/.venv"
    local stamp="$ROOT/.venv/.requirements.sha256"
    local sum
    sum=$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
      "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$ROOT/requirements-dev.txt"
      echo "$sum" > "$stamp"
    else
      step "Python packages already installed"
    fi
  fi

  step "Rust components"
  [ ${#components[@]} -eq 0 ] || rustup component add "${components[@]}"

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
  pgbin=$(pg_bin initdb)
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
  [ $# -ge 1 ] || usage_error "dev or host?"
  case "$1" in
    -h|--help) usage ;;
    dev) shift; setup_dev "$@" ;;
    host) shift; setup_host "$@" ;;
    *) usage_error "unknown command $1" ;;
  esac
}

main "$@"
