#!/usr/bin/env bash
# The whole test suite: the README's test command, run by .ci/run and by the
# hosted pipeline (one job per stage), so local and hosted CI cannot drift.
#   scripts/ci.sh --setup          install what every stage needs
#                                  (scripts/setup.sh dev), then every stage:
#                                  the one command a fresh machine needs
#   scripts/ci.sh                  every stage, in order
#   scripts/ci.sh STAGE...         only those stages (see --list)
#   scripts/ci.sh --setup STAGE... install what those stages need, then run them
#   scripts/ci.sh --list           the stages
#   scripts/ci.sh --needs STAGE    what a stage needs (scripts/setup.sh reads it)
# With CI=true a missing tool fails its stage; nothing is skipped silently.
# Exit status: 0 all passed, 1 a stage failed, 2 usage (an unknown stage).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/runner.sh
. "$ROOT/scripts/lib/runner.sh"

# The one table: name | what it needs besides Rust | command. Each stage owns
# one concern and lives in that concern's folder. The needs are commands of
# setup.sh's DEV_PACKAGES, "postgres" (the server programs), "venv" (.venv
# from requirements-dev.txt), "cargo-deny" and "cargo-machete"; `setup.sh dev --for STAGE`
# installs exactly them, so a hosted job has its tools and no more.
STAGES=(
  "fmt         ||cargo fmt --all -- --check"
  "clippy      |cargo-machete|cargo clippy --workspace --all-targets --locked -- -D warnings && cargo machete"
  "shellcheck  |shellcheck|scripts/lint-shell.sh && scripts/check-fail-loud.sh"
  "python      |venv|scripts/lint-python.sh"
  "test        |postgres openssl strace|cargo test --workspace --locked"
  "hardening   |postgres psql curl venv|tests/hardening/run.sh"
  "bench-smoke |postgres psql wrk taskset sqlite3 pgrep venv|bench/run.sh --quick"
  "monitoring  |postgres psql promtool amtool prometheus-blackbox-exporter haproxy socat jq curl openssl venv|monitoring/check.sh"
  "deploy      |postgres psql haproxy socat jq curl promtool venv|deploy/local/tests/run.sh"
  "systemd     |systemd-analyze|deploy/systemd/check.sh"
  "aws         |jq dot curl postgres psql openssl venv|deploy/aws/check.sh"
  "drills      |postgres psql jq sqlite3 curl pgbackrest venv|drills/run.sh"
  "pipeline    |shellcheck jq curl file readelf podman update-ca-certificates venv cargo-deny|.github/check.sh"
)
RUN_NAMES=() RUN_CMDS=() NEEDS=()
for s in "${STAGES[@]}"; do
  name=${s%%|*} rest=${s#*|}
  RUN_NAMES+=("${name%% *}") NEEDS+=("${rest%%|*}") RUN_CMDS+=("${rest#*|}")
done

main() {
  local setup=0 i
  case "${1:-}" in
    -h|--help) usage_from_header; exit 0 ;;
    --list) run_list; exit 0 ;;
    --needs)
      [ $# -eq 2 ] || usage_error "--needs takes one stage"
      run_check_names stage "$2"
      for i in "${!RUN_NAMES[@]}"; do [ "${RUN_NAMES[$i]}" != "$2" ] || printf '%s\n' "${NEEDS[$i]}"; done
      exit 0 ;;
    --setup) setup=1; shift ;;
  esac
  for i in "$@"; do [[ $i != -* ]] || usage_error "unknown option $i"; done
  run_check_names stage "$@"
  if [ "$setup" = 1 ]; then
    if [ $# -eq 0 ]; then
      scripts/setup.sh dev
    else
      for i in "$@"; do scripts/setup.sh dev --for "$i"; done
    fi
  fi
  if run_table stage "$@"; then
    echo "all stages passed"
  else
    echo "FAILED stages: ${RUN_FAILED[*]}" >&2
    exit 1
  fi
}

main "$@"
