#!/usr/bin/env bash
# Hardening tests: overload, slow clients, database faults, crash consistency,
# security properties and schemathesis against the real binary on both
# backends. Every server they need (the service, PostgreSQL) is a throwaway
# instance on 127.0.0.1 with free ports and a temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/hardening"
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"

usage() {
  cat <<'USAGE'
Usage: tests/hardening/run.sh [--no-build] [TEST ...]

Builds target/debug/hello-birthday (unless --no-build), then runs the
hardening tests in order and ends with `hardening: N passed, N failed, N skipped`.
TEST is a module or test id, e.g. test_crash or test_overload.Shedding.

Needs root (a tmpfs for the disk-full test; PostgreSQL runs as `postgres`),
PostgreSQL server binaries, psql, runuser and the .venv
(schemathesis). With CI=true a missing prerequisite fails; otherwise the
affected test is skipped with a message.

Environment:
  HELLO_BIN                 binary to test (default target/debug/hello-birthday)
  HELLO_FAULT_BIN           the fault build (stale reads, a wedgeable accept
                            loop; default target/debug/hello-birthday-faults)
  HARDENING_STALE_SECONDS   length of each stale-read history (3)
  HARDENING_CRASH_CYCLES    kill -9 cycles (20)
  HARDENING_ST_EXAMPLES     schemathesis examples per operation and phase (40)
USAGE
}

build=1
args=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --no-build) build=0 ;;
    -*) usage_error "unknown option $a" ;;
    *) args+=("$a") ;;
  esac
done

if [ "${CI:-}" = true ]; then
  # A missing tool is a failure in CI, never a silent skip.
  missing=()
  for tool in python3 psql runuser mount; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  pg_bin initdb >/dev/null 2>&1 || missing+=(initdb)
  [ -x "$ROOT/.venv/bin/schemathesis" ] || missing+=(".venv/bin/schemathesis")
  [ "$(id -u)" -eq 0 ] || missing+=("root")
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing prerequisites: ${missing[*]} (run scripts/setup.sh dev)"
  fi
fi

if [ "$build" = 1 ] && [ -z "${HELLO_FAULT_BIN:-}" ]; then
  # The proofs that tests can fail: a build that caches reads (the
  # stale-read test) and one whose accept loop can be wedged (the watchdog
  # test); one build with both, each fault off unless a test asks for it.
  # Built first and copied aside, since both builds write the same path.
  step "cargo build --bin hello-birthday --features fault-stale-reads,fault-wedge-accept (debug, for test_stale_reads, test_conventions)"
  (cd "$ROOT" && cargo build --locked --quiet --bin hello-birthday --features fault-stale-reads,fault-wedge-accept \
    && cp target/debug/hello-birthday target/debug/hello-birthday-faults)
fi
if [ "$build" = 1 ] && [ -z "${HELLO_BIN:-}" ]; then
  step "cargo build --bin hello-birthday (debug)"
  (cd "$ROOT" && cargo build --locked --quiet --bin hello-birthday)
fi

step "hardening tests (${args[*]:-all})"
cd "$HERE"
# -u: unbuffered, so progress lines interleave correctly with child output.
exec python3 -u runner.py "${args[@]}"
