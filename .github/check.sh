#!/usr/bin/env bash
# The pipeline's own checks: the "pipeline" stage of scripts/ci.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1

ALL_STEPS=(actionlint workflows deny release image)

usage() {
  cat <<'USAGE'
Usage: .github/check.sh [STEP...]

Checks the CI/CD pipeline, the release artifact and the container image.
Without arguments runs, in order:
  actionlint   lint .github/workflows (actionlint, with shellcheck on run: blocks)
  workflows    structural tests of the workflows (.github/tests): gate order,
               deploy/tests/rollback one job per environment, plan before
               approval, roles for main and v* only, OIDC only, one artifact,
               timeouts, no drift from scripts/ci.sh; and the pipeline's
               scripts (.github/scripts: staging load, plan summary)
  deny         cargo deny check licenses bans sources (deny.toml); advisories
               too, offline, when a RustSec database is already on this machine
  release      scripts/release.sh: static binary, SHA-256, SBOM, empty-chroot run
  image        deploy/container/build.sh: FROM scratch image, size and content
Also:
  advisories   cargo deny check advisories, fetching the RustSec database
               (needs github.com: the hosted pipeline runs it)
USAGE
}

step_actionlint() {
  command -v actionlint >/dev/null || { echo "actionlint missing (scripts/setup.sh dev: requirements-dev.txt)" >&2; return 1; }
  command -v shellcheck >/dev/null || { echo "shellcheck missing (scripts/setup.sh dev)" >&2; return 1; }
  echo "$(actionlint --version | head -n1), on: $(echo .github/workflows/*.yml)"
  actionlint -no-color
  echo "actionlint: no findings"
}

step_workflows() {
  "$ROOT/.venv/bin/python" -m unittest discover -s .github/tests -v
}

cargo_deny_present() {
  cargo deny --version >/dev/null 2>&1 || { echo "cargo-deny missing (scripts/setup.sh dev installs it)" >&2; return 1; }
}

step_deny() {
  cargo_deny_present
  cargo deny --version
  # Duplicate versions are warnings (deny.toml says why); their inclusion
  # trees would drown the output.
  cargo deny --locked check --hide-inclusion-graph --show-stats licenses bans sources
  # The advisory database is a git clone of github.com/RustSec/advisory-db,
  # which this machine cannot reach. An existing clone is used as it is;
  # without one, the check is named as not done here, never passed silently.
  local db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  if compgen -G "$db/advisory-db-*/.git" >/dev/null; then
    echo "advisories: using the local database in $db as it is (--offline: not updated)"
    cargo deny --locked --offline check --show-stats advisories
  else
    echo "advisories: NOT checked here (no RustSec database in $db, github.com unreachable);"
    echo "            the hosted ci.yml job 'cargo deny advisories' checks them on every push"
  fi
}

step_advisories() {
  cargo_deny_present
  cargo deny --locked check --show-stats advisories
}

step_release() {
  scripts/release.sh
}

step_image() {
  deploy/container/build.sh
}

main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
  esac
  local steps=("$@") s start rc failed=() passed=0
  [ ${#steps[@]} -gt 0 ] || steps=("${ALL_STEPS[@]}")
  for s in "${steps[@]}"; do
    declare -F "step_$s" >/dev/null || { echo "unknown step: $s" >&2; usage >&2; exit 2; }
  done
  for s in "${steps[@]}"; do
    printf '\n--> pipeline: %s\n' "$s"
    start=$(date +%s)
    # Not as an `if` condition: that would switch off set -e inside the step.
    set +e
    ( set -e; "step_$s" )
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
      passed=$((passed + 1))
      printf '<-- pipeline: %s ok in %ds\n' "$s" "$(( $(date +%s) - start ))"
    else
      failed+=("$s")
      printf '<-- pipeline: %s FAILED in %ds\n' "$s" "$(( $(date +%s) - start ))"
      # The image is built from the release binary: no point without it.
      if [ "$s" = release ]; then break; fi
    fi
  done
  echo
  echo "pipeline: ${passed} passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}"
  [ ${#failed[@]} -eq 0 ]
}

main "$@"
