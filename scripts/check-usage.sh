#!/usr/bin/env bash
# The entry points that take stage or drill names refuse an unknown one with
# a usage error (exit 2) instead of running nothing and reporting success.
# Run by the `shellcheck` stage of scripts/ci.sh; runs nothing heavy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() {
  echo "Usage: scripts/check-usage.sh"
  echo "Checks that scripts/ci.sh and drills/run.sh exit 2 on an unknown name."
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

failed=0
# expect CODE COMMAND...: runs the command, compares its exit status.
expect() {
  local want=$1 rc=0 err
  shift
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  if [ "$rc" -eq "$want" ]; then
    echo "ok: $* -> exit $rc${err:+ ($err)}"
  else
    echo "FAIL: $* -> exit $rc, want $want${err:+ ($err)}" >&2
    failed=1
  fi
}

expect 2 scripts/ci.sh no-such-stage
expect 2 scripts/ci.sh fmt no-such-stage
expect 0 scripts/ci.sh --list
expect 2 drills/run.sh no-such-drill
expect 2 drills/run.sh units no-such-drill
expect 0 drills/run.sh --list
exit "$failed"
