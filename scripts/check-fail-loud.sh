#!/usr/bin/env bash
# Checks that would pass by checking nothing fail instead, and the one
# exit-code rule of scripts/lib/common.sh holds: every executable script of
# the repository exits 2 on an unknown option and 0 on --help; the entry
# points that take stage, drill or step names refuse an unknown one (exit 2)
# rather than run nothing and report success; the alert coverage check
# refuses empty rule and test folders. Run by the `shellcheck` stage of
# scripts/ci.sh; runs nothing heavy (each call is bounded by a timeout).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
case "${1:-}" in
  -h|--help) usage_from_header; exit 0 ;;
  "") ;;
  *) usage_error "takes no arguments" ;;
esac

failed=0
# expect CODE COMMAND...: runs the command, compares its exit status.
expect() {
  local want=$1 rc=0 err
  shift
  err=$(timeout 60 "$@" 2>&1 >/dev/null </dev/null) || rc=$?
  err=${err//$'\n'/; }  # one line per check, so an expected "FAIL:" stays inside it
  if [ "$rc" -eq "$want" ]; then
    echo "ok: $* -> exit $rc${err:+ ($err)}"
  else
    echo "FAIL: $* -> exit $rc, want $want${err:+ ($err)}" >&2
    failed=1
  fi
}

# Every executable bash script but .ci/run (it takes no arguments and runs
# the whole suite).
mapfile -t scripts < <(git ls-files -s | awk '$1 == "100755" { print $4 }' | while read -r f; do
  head -n1 "$f" | grep -q '^#!/usr/bin/env bash' && printf '%s\n' "$f"; done)
for f in "${scripts[@]}"; do
  case $f in .ci/run) continue ;; esac
  expect 2 "$f" --no-such-option
  expect 0 "$f" --help
done

# Commands that parse their own options refuse a bad one before they touch
# anything (stack.sh down used to ignore it and delete the state dir).
for cmd in up down start stop install; do
  expect 2 deploy/local/stack.sh "$cmd" --no-such-option --state-dir "$ROOT/target/no-such-stack"
done
expect 2 deploy/local/stack.sh start --release
expect 2 deploy/local/stack.sh no-such-command
expect 2 deploy/aws/db-users.sh --env no-such-env --dry-run
expect 2 deploy/aws/db-users.sh --dry-run
expect 2 scripts/ci.sh no-such-stage
expect 2 scripts/ci.sh fmt no-such-stage
expect 0 scripts/ci.sh --list
expect 2 drills/run.sh no-such-drill
expect 2 drills/run.sh units no-such-drill
expect 0 drills/run.sh --list
expect 2 .github/check.sh no-such-step
expect 2 scripts/ci.sh --needs no-such-stage
expect 2 scripts/setup.sh dev --for no-such-stage
expect 0 scripts/setup.sh dev --dry-run

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
