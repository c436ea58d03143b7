#!/usr/bin/env bash
# Rolling deployment of hello-birthday, the same flow for every target:
# locate the artifact, verify its SHA-256, plan, roll out (the first instance
# as a canary judged against the others by deploy/canary/verdict.py; the
# target rolls back by itself when the canary fails or a new instance does not
# become ready), smoke test, and roll the whole fleet back when the smoke test
# fails. Targets live in
# deploy/TARGET/target.sh and implement only the platform steps; the
# contract is in deploy/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'USAGE'
Usage: scripts/deploy.sh --target local|aws (--release PATH | --version V) [options] [target options]

  --target T         where to deploy: local (deploy/local, the loopback stack) or aws
  --release PATH     release binary to deploy; its checksum file PATH.sha256
                     (sha256sum format) is verified when present
  --write-checksum   create PATH.sha256 when it is missing (a binary built here)
  --version V        release label (default: sha-<first 12 hex digits of the
                     binary's SHA-256>); without --release the target looks
                     the release up by this label
  --env E            staging (default) or production
  --dry-run          print the plan and the commands, change nothing
  --no-smoke         skip the smoke test after the roll-out
  --canary-weight P  share of the traffic, in percent, the canary takes (default 10)
  --canary-window S  how long the canary is judged before it is promoted
                     (default: the target's, local 60 s, aws 300 s in whole minutes)
  --canary-allow-inconclusive
                     go on when the canary saw too little traffic to judge
                     (default: stop and put the canary back)
  --no-canary        emergencies only: roll out WITHOUT canary analysis
  --plan FILE        publish the release and prepare every change without
                     executing any; write the plan to FILE (targets with
                     target_make_plan: aws)
  --execute-plan FILE
                     execute exactly the changes of that plan, or refuse when
                     the environment changed since; then smoke test as usual
  --rollback         return to the recorded previous release (no artifact
                     needed); with --version V, only when V is what runs.
                     The record of what "previous" is stays as it was
  -h, --help         this help

Target options (passed to target_args):
  local: --state-dir DIR  --ready-timeout SECS (30)  --drain-timeout SECS (10)
         --events FILE (append timeline events: unix_s,slot,event,release,detail)
         --report DIR (load during the roll-out; per-request CSV, events, timeline PNG)
  aws:   see deploy/aws/target.sh

Environment:
  DEPLOY_SMOKE   smoke test command, called with the target URL
                 (default scripts/smoke.sh; the tests set a failing one to
                 exercise the fleet rollback)
  DEPLOY_ROLLBACK=1  this deploy puts the previous release back: no canary
                 step (the local target also recognises the fleet's previous
                 release by itself)

Examples:
  scripts/deploy.sh --target local --release target/release/hello-birthday --write-checksum --version v2
  scripts/deploy.sh --target local --version v1      # back to an installed release
  scripts/deploy.sh --target aws --env staging --version 1.4.0 --dry-run
USAGE
}

step() { printf '==> %s\n' "$*"; }
die() { printf 'deploy.sh: error: %s\n' "$*" >&2; exit 1; }
# Prints the command; runs it unless this is a dry run.
run() {
  printf '    $ %s\n' "$*"
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}

TARGET="" ARTIFACT="" ARTIFACT_SHA256="" VERSION="" ENV_NAME=staging DRY_RUN=0
WRITE_CHECKSUM=0 SMOKE=1
CANARY=1 CANARY_WEIGHT=10 CANARY_WINDOW="" CANARY_ALLOW_INCONCLUSIVE=0
TARGET_ARGS=()
PLAN_FILE="" EXECUTE_PLAN="" ROLLBACK=0
while [ $# -gt 0 ]; do
  case $1 in
    --target) TARGET=${2:?--target needs a value}; shift 2 ;;
    --release) ARTIFACT=${2:?--release needs a path}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --env) ENV_NAME=${2:?--env needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --write-checksum) WRITE_CHECKSUM=1; shift ;;
    --no-smoke) SMOKE=0; shift ;;
    --canary-weight) CANARY_WEIGHT=${2:?--canary-weight needs a percentage}; shift 2 ;;
    --canary-window) CANARY_WINDOW=${2:?--canary-window needs seconds}; shift 2 ;;
    --canary-allow-inconclusive) CANARY_ALLOW_INCONCLUSIVE=1; shift ;;
    --no-canary) CANARY=0; shift ;;
    --plan) PLAN_FILE=${2:?--plan needs a file}; shift 2 ;;
    --execute-plan) EXECUTE_PLAN=${2:?--execute-plan needs a file}; shift 2 ;;
    --rollback) ROLLBACK=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) TARGET_ARGS+=("$1"); shift ;;
  esac
done

[ -n "$TARGET" ] || { usage >&2; die "--target is required"; }
if ! [[ $TARGET =~ ^[a-z0-9-]+$ ]] || [ ! -f "$ROOT/deploy/$TARGET/target.sh" ]; then
  die "unknown target '$TARGET' (no deploy/$TARGET/target.sh)"
fi
case $ENV_NAME in staging|production) ;; *) die "--env must be staging or production" ;; esac
check_mode_options() {
  local modes=$ROLLBACK
  [ -z "$PLAN_FILE" ] || modes=$((modes + 1))
  [ -z "$EXECUTE_PLAN" ] || modes=$((modes + 1))
  [ "$modes" -le 1 ] || die "--plan, --execute-plan and --rollback exclude each other"
  if [ -n "$PLAN_FILE" ]; then [ -n "$ARTIFACT" ] || die "--plan publishes what it plans: give --release PATH"; fi
  if [ -n "$EXECUTE_PLAN" ] || [ "$ROLLBACK" = 1 ]; then
    [ -z "$ARTIFACT" ] || die "--execute-plan and --rollback take no --release (the release is already published)"
  fi
  if [ -n "$EXECUTE_PLAN" ]; then [ -f "$EXECUTE_PLAN" ] || die "plan $EXECUTE_PLAN not found"; fi
  return 0
}
check_mode_options
[ -n "$ARTIFACT" ] || [ -n "$VERSION" ] || [ -n "$EXECUTE_PLAN" ] || [ "$ROLLBACK" = 1 ] \
  || die "give --release PATH or --version V"

# Canary settings, exported for the target. --no-canary is for emergencies
# and says so loudly, at the start and at the end.
canary_settings() {
  if ! [[ $CANARY_WEIGHT =~ ^[0-9]+$ ]] || [ "$CANARY_WEIGHT" -lt 1 ] || [ "$CANARY_WEIGHT" -gt 50 ]; then
    die "--canary-weight must be a whole percentage from 1 to 50"
  fi
  [ -z "$CANARY_WINDOW" ] || [[ $CANARY_WINDOW =~ ^[1-9][0-9]*$ ]] || die "--canary-window must be whole seconds"
  export CANARY CANARY_WEIGHT CANARY_WINDOW CANARY_ALLOW_INCONCLUSIVE DEPLOY_ROLLBACK="${DEPLOY_ROLLBACK:-0}"
  [ "$CANARY" = 1 ] || canary_warning
}
canary_warning() {
  printf '!!! WARNING: --no-canary: no canary analysis; a release that fails some requests or is slow goes to EVERY instance !!!\n' >&2
}
canary_settings

START=$(date +%s)
step "deploy to $TARGET ($ENV_NAME)$([ "$DRY_RUN" = 1 ] && echo ', dry run')"

if [ -n "$ARTIFACT" ]; then
  [ -f "$ARTIFACT" ] || die "release artifact $ARTIFACT does not exist"
  ARTIFACT=$(cd "$(dirname "$ARTIFACT")" && pwd)/$(basename "$ARTIFACT")
  step "artifact $ARTIFACT"
  ARTIFACT_SHA256=$(sha256sum "$ARTIFACT" | cut -d' ' -f1)
  if [ -f "$ARTIFACT.sha256" ]; then
    want=$(awk 'NR == 1 { print $1 }' "$ARTIFACT.sha256")
    [ "$want" = "$ARTIFACT_SHA256" ] \
      || die "checksum mismatch for $ARTIFACT: $ARTIFACT_SHA256, but $ARTIFACT.sha256 says $want"
    echo "    sha256 $ARTIFACT_SHA256 matches $(basename "$ARTIFACT").sha256"
  elif [ "$WRITE_CHECKSUM" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
      echo "    sha256 $ARTIFACT_SHA256 (dry run: $(basename "$ARTIFACT").sha256 not written)"
    else
      printf '%s  %s\n' "$ARTIFACT_SHA256" "$(basename "$ARTIFACT")" >"$ARTIFACT.sha256"
      echo "    sha256 $ARTIFACT_SHA256 written to $(basename "$ARTIFACT").sha256"
    fi
  else
    die "no checksum file $ARTIFACT.sha256 (publish one with the artifact, or pass --write-checksum for a binary built here)"
  fi
  [ -n "$VERSION" ] || VERSION="sha-${ARTIFACT_SHA256:0:12}"
fi
if [ -n "$VERSION" ] || { [ -z "$EXECUTE_PLAN" ] && [ "$ROLLBACK" = 0 ]; }; then
  [[ $VERSION =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "bad release label '$VERSION' (letters, digits, . _ -)"
  step "release $VERSION"
fi

export ROOT TARGET ENV_NAME ARTIFACT ARTIFACT_SHA256 VERSION DRY_RUN
# shellcheck source=deploy/local/target.sh
. "$ROOT/deploy/$TARGET/target.sh"
for fn in target_args target_plan target_deploy target_url target_rollback; do
  declare -F "$fn" >/dev/null || die "deploy/$TARGET/target.sh does not define $fn"
done

# A target that judges a canary sets TARGET_CANARY=1; with any other, say
# loudly that nothing compares the new release with the one it replaces.
if [ "$CANARY" = 1 ] && [ "${TARGET_CANARY:-0}" != 1 ]; then
  printf '!!! WARNING: target %s has no canary analysis: the release is judged by health checks only !!!\n' "$TARGET" >&2
fi

target_args "${TARGET_ARGS[@]}"

# --plan, --execute-plan, --rollback: the target must implement them.
mode_function() {
  local fn=$1
  declare -F "$fn" >/dev/null || die "deploy/$TARGET/target.sh does not define $fn (needed by this option)"
}
# --plan: prepare, print and write the plan; change nothing that runs.
if [ -n "$PLAN_FILE" ]; then
  mode_function target_make_plan
  step "plan"
  target_plan
  target_make_plan "$PLAN_FILE"
  exit 0
fi
# --rollback: back to the recorded previous release, then the smoke test.
if [ "$ROLLBACK" = 1 ]; then
  step "roll back${VERSION:+ $VERSION}"
  target_rollback || die "rollback failed: the fleet needs attention"
  [ "$DRY_RUN" = 1 ] && exit 0
  if [ "$SMOKE" = 1 ]; then
    url=$(target_url)
    step "smoke test against $url"
    ${DEPLOY_SMOKE:-"$ROOT/scripts/smoke.sh"} "$url" || die "smoke test failed after the rollback: the fleet needs attention"
  fi
  step "rolled back in $(( $(date +%s) - START ))s"
  exit 0
fi
# The roll-out: a prepared plan, or a deploy.
rollout() {
  if [ -n "$EXECUTE_PLAN" ]; then
    mode_function target_execute_plan
    target_execute_plan "$EXECUTE_PLAN"
  else
    target_deploy
  fi
}

step "plan"
target_plan

step "roll out"
if ! rollout; then
  die "roll-out of $VERSION to $TARGET failed after $(( $(date +%s) - START ))s (see above; the target restored what it had changed)"
fi

if [ "$DRY_RUN" = 1 ]; then
  step "dry run: nothing changed"
  exit 0
fi

if [ "$SMOKE" = 1 ]; then
  url=$(target_url)
  step "smoke test against $url"
  if ! ${DEPLOY_SMOKE:-"$ROOT/scripts/smoke.sh"} "$url"; then
    step "smoke test failed: rolling the fleet back"
    target_rollback || die "smoke test failed AND the rollback failed: the fleet needs attention"
    die "smoke test failed on $VERSION; rolled back"
  fi
fi

[ "$CANARY" = 1 ] || canary_warning
step "deployed $VERSION to $TARGET ($ENV_NAME) in $(( $(date +%s) - START ))s"
