#!/usr/bin/env bash
# The pipeline's own checks: the "pipeline" stage of scripts/ci.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/runner.sh
. "$ROOT/scripts/lib/runner.sh"

# The steps table, run by the one runner (scripts/lib/runner.sh): each name
# runs the function step_NAME below. advisories runs only when named.
RUN_NAMES=(actionlint workflows deny release image advisories)
RUN_CMDS=()
for s in "${RUN_NAMES[@]}"; do RUN_CMDS+=("step_$s"); done
ALL_STEPS=(actionlint workflows deny release image)
# The image is built from the release binary: no point without it.
RUN_STOP_AFTER=(release)

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
  require actionlint shellcheck
  echo "$(actionlint --version | head -n1), on: $(echo .github/workflows/*.yml)"
  actionlint -no-color
  echo "actionlint: no findings"
}

step_workflows() {
  "$ROOT/.venv/bin/python" -m unittest discover -s .github/tests -v
}

cargo_deny_present() {
  cargo deny --version >/dev/null 2>&1 || die "cargo-deny missing (scripts/setup.sh dev installs it)"
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
    -*) usage_error "unknown option $1" ;;
  esac
  local steps=("$@") rc=0
  [ ${#steps[@]} -gt 0 ] || steps=("${ALL_STEPS[@]}")
  run_table step "${steps[@]}" || rc=1
  echo
  echo "pipeline: ${#RUN_PASSED[@]} passed, ${#RUN_FAILED[@]} failed${RUN_FAILED[*]:+ (${RUN_FAILED[*]})}"
  return "$rc"
}

main "$@"
