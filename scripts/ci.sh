#!/usr/bin/env bash
# The whole test suite: the README's test command, run by .ci/run and by the
# hosted pipeline, so local and hosted CI cannot drift.
#   scripts/ci.sh            every stage, in order
#   scripts/ci.sh STAGE...   only those stages (see --list)
# With CI=true a missing tool fails its stage; nothing is skipped silently.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

# name|command. Each stage owns one concern and lives in that concern's folder.
STAGES=(
  "fmt|cargo fmt --all -- --check"
  "clippy|cargo clippy --workspace --all-targets --locked -- -D warnings && cargo machete"
  "shellcheck|scripts/lint-shell.sh && scripts/check-fail-loud.sh"
  "test|cargo test --workspace --locked"
  "hardening|tests/hardening/run.sh"
  "bench-smoke|bench/run.sh --quick"
  "monitoring|monitoring/check.sh"
  "deploy|deploy/local/tests/run.sh"
  "systemd|deploy/systemd/check.sh"
  "aws|deploy/aws/check.sh"
  "drills|drills/run.sh"
  "pipeline|.github/check.sh"
)

usage() {
  sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

list() { local s; for s in "${STAGES[@]}"; do echo "${s%%|*}"; done; }

run_stage() {
  local name=$1 cmd=$2 start rc
  printf '\n==> [%s] %s\n' "$name" "$cmd"
  start=$(date +%s)
  set +e
  bash -c "$cmd"
  rc=$?
  set -e
  printf '<== [%s] exit %d in %ds\n' "$name" "$rc" "$(( $(date +%s) - start ))"
  return "$rc"
}

main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --list) list; exit 0 ;;
  esac
  local want=("$@") s name failed=()
  # An unknown name is a usage error: running nothing and reporting
  # "passed" would hide a typo in a CI job.
  for name in "${want[@]}"; do
    if ! list | grep -qxF -- "$name"; then
      echo "scripts/ci.sh: unknown stage '$name' (stages: $(list | tr '\n' ' '))" >&2
      exit 2
    fi
  done
  for s in "${STAGES[@]}"; do
    name=${s%%|*}
    if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
    run_stage "$name" "${s#*|}" || failed+=("$name")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED stages: ${failed[*]}" >&2
    exit 1
  fi
  echo "all stages passed"
}

main "$@"
