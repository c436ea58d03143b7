#!/usr/bin/env bash
# Stand-in for scripts/deploy.sh in the tests: provides what deploy.sh
# provides to a target (step, die, run and the variables), sources
# deploy/aws/target.sh and calls one of its functions.
#   driver.sh FUNCTION [TARGET_OPTIONS...]
#   env: ENV_NAME VERSION ARTIFACT DRY_RUN (ARTIFACT_SHA256 is computed);
#   PLAN_FILE, when set, is passed to the function (target_*_plan FILE)
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ] || [ $# -lt 1 ]; then
  sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
TARGET=aws
ENV_NAME=${ENV_NAME:-staging}
VERSION=${VERSION-0.0.0-test}
ARTIFACT=${ARTIFACT:-}
DRY_RUN=${DRY_RUN:-0}
ARTIFACT_SHA256=""
[ -n "$ARTIFACT" ] && [ -r "$ARTIFACT" ] && ARTIFACT_SHA256=$(sha256sum "$ARTIFACT" | cut -d' ' -f1)
export ROOT TARGET ENV_NAME VERSION ARTIFACT DRY_RUN ARTIFACT_SHA256

step() { printf '==> %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }
run() {
  printf '+ %s\n' "$*"
  [ "$DRY_RUN" = 1 ] && return 0
  "$@"
}

# shellcheck source=deploy/aws/target.sh
source "$ROOT/deploy/aws/target.sh"

fn=$1; shift
target_args "$@"
"$fn" ${PLAN_FILE:+"$PLAN_FILE"}
