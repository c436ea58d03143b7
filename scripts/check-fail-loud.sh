#!/usr/bin/env bash
# Checks that would pass by checking nothing fail instead: the entry points
# that take stage or drill names refuse an unknown one (exit 2) rather than
# run nothing and report success, and the alert coverage check refuses empty
# rule and test folders. Run by the `shellcheck` stage of scripts/ci.sh;
# runs nothing heavy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() {
  echo "Usage: scripts/check-fail-loud.sh"
  echo "Checks that scripts/ci.sh and drills/run.sh exit 2 on an unknown name,"
  echo "and that monitoring/tests/check_rules_coverage.py fails on zero alerts."
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

failed=0
# expect CODE COMMAND...: runs the command, compares its exit status.
expect() {
  local want=$1 rc=0 err
  shift
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  err=${err//$'\n'/; }  # one line per check, so an expected "FAIL:" stays inside it
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

PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
mkdir "$empty/rules" "$empty/tests"
expect 1 "$PY" monitoring/tests/check_rules_coverage.py "$empty/rules" "$empty/tests" "$ROOT"
printf 'groups: []\n' >"$empty/rules/none.yml"
printf 'tests: []\n' >"$empty/tests/none.test.yml"
expect 1 "$PY" monitoring/tests/check_rules_coverage.py "$empty/rules" "$empty/tests" "$ROOT"
exit "$failed"
