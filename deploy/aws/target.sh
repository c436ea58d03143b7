#!/usr/bin/env bash
# AWS target of scripts/deploy.sh (--target aws). Sourced, not executed:
# deploy.sh sets ROOT, TARGET, ENV_NAME, ARTIFACT, ARTIFACT_SHA256, VERSION,
# DRY_RUN and provides step, die and run, then calls the target_* functions.
#
# Stacks, in dependency order (each imports the exports of earlier ones):
#   [dr-vault in the DR Region] foundation network database edge monitoring app
# Every stack is deployed through a named change set, so each deploy shows
# what changes, waits for the outcome, and stops with CloudFormation's own
# failure reasons when a stack rolls back. The app stack carries the rollback
# triggers (the fast SLO burn alarms of the monitoring stack).
#
# Options (target_args): --aws-params FILE (default
# deploy/aws/parameters/$ENV_NAME.json), --region R, --stack-prefix P,
# --no-rollback-triggers (to ship a fix while those alarms fire),
# --monitoring-minutes N (how long CloudFormation watches them afterwards).
# Environment: AWS_CLI (default: aws on PATH, else .venv/bin/aws).
set -euo pipefail

# Run directly (--help or by mistake): explain, since it only works sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "Use it through: scripts/deploy.sh --target aws --env staging|production --release PATH --version V [options above]"
  case "${1:-}" in -h|--help) exit 0 ;; *) exit 2 ;; esac
fi

AWS_TEMPLATE_DIR="${ROOT:?}/deploy/aws/templates"
AWS_PARAMS_FILE=${AWS_PARAMS_FILE:-}
AWS_REGION_OPT=""
AWS_PREFIX_OPT=""
AWS_ROLLBACK_TRIGGERS=1
AWS_MONITORING_MINUTES=10
RELEASE_SHA256="" HOST_SHA256=""
# Set by target_deploy for target_rollback in the same run; also kept in S3.
AWS_PREVIOUS_RELEASE=""
# shellcheck source=deploy/aws/canary.sh
. "$ROOT/deploy/aws/canary.sh"

target_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --aws-params) AWS_PARAMS_FILE=${2:?--aws-params needs a file}; shift 2 ;;
      --region) AWS_REGION_OPT=${2:?--region needs a value}; shift 2 ;;
      --stack-prefix) AWS_PREFIX_OPT=${2:?--stack-prefix needs a value}; shift 2 ;;
      --no-rollback-triggers) AWS_ROLLBACK_TRIGGERS=0; shift ;;
      --monitoring-minutes) AWS_MONITORING_MINUTES=${2:?--monitoring-minutes needs a number}; shift 2 ;;
      *) die "aws target: unknown option $1 (known: --aws-params --region --stack-prefix --no-rollback-triggers --monitoring-minutes)" ;;
    esac
  done
  return 0
}

# --- configuration -----------------------------------------------------------

_aws_init() {
  [ -n "${_AWS_READY:-}" ] && return 0
  case "${ENV_NAME:-}" in staging|production) ;; *) die "aws target: ENV_NAME must be staging or production, not '${ENV_NAME:-}'" ;; esac
  command -v jq >/dev/null || die "aws target: jq is required (scripts/setup.sh dev)"
  AWS_PARAMS_FILE=${AWS_PARAMS_FILE:-$ROOT/deploy/aws/parameters/$ENV_NAME.json}
  [ -r "$AWS_PARAMS_FILE" ] || die "aws target: parameter file $AWS_PARAMS_FILE not found"
  jq -e '.region and .stackPrefix and .stacks' "$AWS_PARAMS_FILE" >/dev/null \
    || die "aws target: $AWS_PARAMS_FILE needs region, stackPrefix and stacks"
  AWS_REGION_NAME=${AWS_REGION_OPT:-$(jq -r '.region' "$AWS_PARAMS_FILE")}
  AWS_PREFIX=${AWS_PREFIX_OPT:-$(jq -r '.stackPrefix' "$AWS_PARAMS_FILE")}
  AWS_DR_REGION=$(jq -r '.drRegion // ""' "$AWS_PARAMS_FILE")
  if [ -z "${AWS_CLI:-}" ]; then
    if command -v aws >/dev/null; then AWS_CLI=aws
    elif [ -x "$ROOT/.venv/bin/aws" ]; then AWS_CLI="$ROOT/.venv/bin/aws"
    else die "aws target: the AWS CLI is not installed (scripts/setup.sh dev)"
    fi
  fi
  _AWS_READY=1
}

# Account-specific values left as placeholders cannot be deployed.
_aws_check_placeholders() {
  local left
  left=$(jq -r '[.stacks | to_entries[] | .key as $s | .value | to_entries[]
                 | select((.value | tostring) | test("REPLACE_ME")) | "\($s).\(.key)"] | join(" ")' "$AWS_PARAMS_FILE")
  [ -z "$left" ] && return 0
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "aws target: note: still placeholders in $AWS_PARAMS_FILE: $left"
  else
    die "aws target: fill in $AWS_PARAMS_FILE first (placeholders: $left)"
  fi
}

_aws() { "$AWS_CLI" --region "$AWS_REGION_NAME" "$@"; }

_stack_name() { printf '%s-%s-%s' "$AWS_PREFIX" "$ENV_NAME" "$1"; }

# describe-stacks of one stack as JSON; empty when the stack does not exist.
_stack_json() {
  local out
  if out=$(_aws cloudformation describe-stacks --stack-name "$1" --query 'Stacks[0]' --output json 2>&1); then
    echo "$out"
  elif [[ "$out" != *"does not exist"* ]]; then
    die "aws target: describe-stacks $1 failed: $out"
  fi
}

# Stack status, or NONE when the stack does not exist.
_stack_status() {
  local json
  json=$(_stack_json "$1")
  if [ -z "$json" ]; then echo NONE; else jq -r .StackStatus <<<"$json"; fi
}

_stack_output() {
  local value
  value=$(_aws cloudformation describe-stacks --stack-name "$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue | [0]" --output text) \
    || die "aws target: cannot read output $2 of stack $1"
  if [ -z "$value" ] || [ "$value" = None ]; then
    die "aws target: stack $1 has no output $2 (deployed?)"
  fi
  echo "$value"
}

# CloudFormation parameters of stack $1 as JSON: the parameter file's values,
# plus StackPrefix and Environment, plus KEY=VALUE overrides ($2...).
_stack_parameters_json() {
  local key=$1; shift
  local overrides='{}' kv
  for kv in "$@"; do
    overrides=$(jq -c --arg k "${kv%%=*}" --arg v "${kv#*=}" '. + {($k): $v}' <<<"$overrides")
  done
  jq -c --arg s "$key" --arg p "$AWS_PREFIX" --arg e "$ENV_NAME" --argjson o "$overrides" '
    ((.stacks[$s] // {}) + {StackPrefix: $p, Environment: $e} + $o)
    | to_entries | map({ParameterKey: .key, ParameterValue: (.value | tostring)})' "$AWS_PARAMS_FILE"
}

# Reasons CloudFormation gave for the failed resources of stack $1 (newest first).
_stack_failures() {
  _aws cloudformation describe-stack-events --stack-name "$1" --max-items 60 \
    --query "StackEvents[?contains(ResourceStatus, 'FAILED')].[LogicalResourceId, ResourceStatus, ResourceStatusReason]" \
    --output text 2>/dev/null | head -n 15 || true
}

# _deploy_stack KEY TEMPLATE ROLLBACK_JSON [KEY=VALUE...]
_deploy_stack() {
  local key=$1 template=$2 rollback=$3; shift 3
  local stack status type cs params reason final
  stack=$(_stack_name "$key")
  params=$(_stack_parameters_json "$key" "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    local extra=()
    [ -n "$rollback" ] && extra=(--rollback-configuration "$rollback")
    step "stack $stack <- ${template#"$ROOT"/}"
    run "$AWS_CLI" --region "$AWS_REGION_NAME" cloudformation create-change-set --stack-name "$stack" \
      --template-body "file://$template" --parameters "$params" --capabilities CAPABILITY_IAM "${extra[@]}"
    return 0
  fi
  status=$(_stack_status "$stack")
  case "$status" in
    NONE|REVIEW_IN_PROGRESS) type=CREATE ;;
    ROLLBACK_COMPLETE|ROLLBACK_FAILED|DELETE_FAILED)
      die "aws target: stack $stack is $status (its creation failed). Delete it, then deploy again: aws cloudformation delete-stack --region $AWS_REGION_NAME --stack-name $stack" ;;
    *_IN_PROGRESS) die "aws target: stack $stack is busy ($status); wait for it to finish" ;;
    *) type=UPDATE ;;
  esac
  cs="deploy-$(date -u +%Y%m%d%H%M%S)"
  step "stack $stack: $type change set $cs (${template#"$ROOT"/})"
  local tmp; tmp=$(mktemp); printf '%s' "$params" >"$tmp"
  local args=(cloudformation create-change-set --stack-name "$stack" --change-set-name "$cs"
    --change-set-type "$type" --template-body "file://$template" --parameters "file://$tmp"
    --capabilities CAPABILITY_IAM
    --tags "Key=project,Value=$AWS_PREFIX" "Key=environment,Value=$ENV_NAME")
  [ -n "$rollback" ] && args+=(--rollback-configuration "$rollback")
  local out
  if ! out=$(run _aws "${args[@]}" --output text --query Id 2>&1); then
    rm -f "$tmp"
    # An identical update is refused here by some endpoints, and reported
    # as a FAILED change set (below) by others.
    if [[ "$out" == *"No updates are to be performed"* ]]; then
      echo "    no changes"
      return 0
    fi
    die "aws target: create-change-set for $stack failed: $out"
  fi
  rm -f "$tmp"
  printf '%s\n' "$out"
  # One describe call per poll gives the status and, once ready, the changes.
  local cs_json cs_status deadline=$((SECONDS + 600))
  while :; do
    cs_json=$(_aws cloudformation describe-change-set --stack-name "$stack" --change-set-name "$cs" --output json)
    cs_status=$(jq -r .Status <<<"$cs_json")
    case "$cs_status" in
      CREATE_COMPLETE) break ;;
      FAILED)
        reason=$(jq -r '.StatusReason // "unknown reason"' <<<"$cs_json")
        if [[ "$reason" == *"didn't contain changes"* || "$reason" == *"No updates are to be performed"* ]]; then
          _aws cloudformation delete-change-set --stack-name "$stack" --change-set-name "$cs" >/dev/null 2>&1 || true
          echo "    no changes"
          return 0
        fi
        die "aws target: change set for $stack failed: $reason" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "aws target: change set for $stack still $cs_status after 10 minutes"
    sleep 5
  done
  jq -r '.Changes[].ResourceChange | "    \(.Action)\t\(.LogicalResourceId)\t\(.ResourceType)\t\(.Replacement // "-")"' <<<"$cs_json"
  run _aws cloudformation execute-change-set --stack-name "$stack" --change-set-name "$cs"
  local waiter="stack-update-complete"
  [ "$type" = CREATE ] && waiter="stack-create-complete"
  if ! _aws cloudformation wait "$waiter" --stack-name "$stack" 2>/dev/null; then
    final=$(_stack_status "$stack")
    echo "CloudFormation reasons for $stack:" >&2
    _stack_failures "$stack" | sed 's/^/    /' >&2
    case "$final" in
      *ROLLBACK_COMPLETE) die "aws target: CloudFormation rolled back stack $stack ($final); the previous version is still serving" ;;
      *) die "aws target: stack $stack ended in $final" ;;
    esac
  fi
  echo "    $type complete"
}

# --- release artifacts -----------------------------------------------------------

# host.tar.gz: what `scripts/setup.sh host` and the instance bootstrap need.
# Built reproducibly (sorted, fixed owner and mtime) so the same sources give
# the same checksum and a re-run of a deploy changes nothing.
_build_host_bundle() {
  local out=$1 paths=(scripts/setup.sh deploy/systemd deploy/aws/host) p
  for p in "${paths[@]}"; do [ -e "$ROOT/$p" ] || die "aws target: $p is missing; the host bundle needs it"; done
  tar -C "$ROOT" --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
    --exclude='__pycache__' -cf - "${paths[@]}" | gzip -n -9 >"$out"
}

_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# Puts $1 at s3://$bucket/$2 unless it is already there with the same
# checksum; a different checksum is refused (a published release is immutable).
_put_release_file() {
  local file=$1 key=$2 sha=$3 bucket=$4 existing
  existing=$(_aws s3 cp "s3://$bucket/$key.sha256" - 2>/dev/null | cut -d' ' -f1 || true)
  if [ -n "$existing" ]; then
    [ "$existing" = "$sha" ] || die "aws target: s3://$bucket/$key already exists with sha256 $existing (this build: $sha). Releases are immutable: use a new version."
    echo "    s3://$bucket/$key already published (sha256 matches)"
    return 0
  fi
  run _aws s3 cp --only-show-errors "$file" "s3://$bucket/$key"
  printf '%s  %s\n' "$sha" "${key##*/}" >"$file.sha256"
  run _aws s3 cp --only-show-errors "$file.sha256" "s3://$bucket/$key.sha256"
}

# Sets RELEASE_SHA256 and HOST_SHA256 for release $VERSION: with an
# artifact, publishes it (and the host bundle built from this checkout);
# without one (deploy.sh --version V only), takes the release already
# published under that label.
_publish_release() {
  local bucket=$1 dir=$2 prefix="releases/$VERSION"
  if [ -n "${ARTIFACT:-}" ]; then
    step "publish release $VERSION to s3://$bucket/$prefix/"
    [ -r "$ARTIFACT" ] || die "aws target: artifact $ARTIFACT not readable"
    RELEASE_SHA256=${ARTIFACT_SHA256:-$(_sha256 "$ARTIFACT")}
    _build_host_bundle "$dir/host.tar.gz"
    HOST_SHA256=$(_sha256 "$dir/host.tar.gz")
    if [ "${DRY_RUN:-0}" = 1 ]; then
      run "$AWS_CLI" s3 cp "$ARTIFACT" "s3://$bucket/$prefix/hello-birthday"
      run "$AWS_CLI" s3 cp host.tar.gz "s3://$bucket/$prefix/host.tar.gz"
      return 0
    fi
    cp "$ARTIFACT" "$dir/hello-birthday"
    _put_release_file "$dir/hello-birthday" "$prefix/hello-birthday" "$RELEASE_SHA256" "$bucket"
    _put_release_file "$dir/host.tar.gz" "$prefix/host.tar.gz" "$HOST_SHA256" "$bucket"
  else
    step "use release $VERSION already published in s3://$bucket/$prefix/"
    if [ "${DRY_RUN:-0}" = 1 ]; then
      RELEASE_SHA256="<sha256 of $prefix/hello-birthday>" HOST_SHA256="<sha256 of $prefix/host.tar.gz>"
      return 0
    fi
    RELEASE_SHA256=$(_aws s3 cp "s3://$bucket/$prefix/hello-birthday.sha256" - 2>/dev/null | cut -d' ' -f1 || true)
    HOST_SHA256=$(_aws s3 cp "s3://$bucket/$prefix/host.tar.gz.sha256" - 2>/dev/null | cut -d' ' -f1 || true)
    if [ -z "$RELEASE_SHA256" ] || [ -z "$HOST_SHA256" ]; then
      die "aws target: release $VERSION is not published for $ENV_NAME; deploy it with --release PATH"
    fi
    echo "    sha256 $RELEASE_SHA256"
  fi
}

_rollback_configuration() {
  [ "$AWS_ROLLBACK_TRIGGERS" = 1 ] || { echo '{"RollbackTriggers":[]}'; return 0; }
  local arns
  if [ "${DRY_RUN:-0}" = 1 ]; then arns="<RollbackTriggerAlarmArns of $(_stack_name monitoring)>"
  else arns=$(_stack_output "$(_stack_name monitoring)" RollbackTriggerAlarmArns)
  fi
  jq -cn --arg arns "$arns" --argjson m "$AWS_MONITORING_MINUTES" \
    '{RollbackTriggers: ($arns | split(",") | map({Arn: ., Type: "AWS::CloudWatch::Alarm"})), MonitoringTimeInMinutes: $m}'
}

# --- the interface deploy.sh calls ------------------------------------------------

target_plan() {
  _aws_init
  echo "AWS target: $ENV_NAME in $AWS_REGION_NAME (parameters: ${AWS_PARAMS_FILE#"$ROOT"/})"
  [ -n "$AWS_DR_REGION" ] && echo "  0. stack $(_stack_name dr-vault) in the DR Region $AWS_DR_REGION (backup copies)"
  echo "  1. stack $(_stack_name foundation) (KMS key, buckets, alarm topic)"
  if [ -n "${ARTIFACT:-}" ]; then
    echo "  2. publish $ARTIFACT (sha256 ${ARTIFACT_SHA256:-?}) and host.tar.gz to s3://<artifacts bucket>/releases/$VERSION/ (refused if $VERSION exists with other bytes)"
  else
    echo "  2. use release $VERSION as already published in s3://<artifacts bucket>/releases/$VERSION/"
  fi
  echo "  3. stacks $(_stack_name network), $(_stack_name database), $(_stack_name edge), $(_stack_name monitoring)"
  echo "  4. stack $(_stack_name app) with AppVersion=$VERSION: instances replaced one at a time, each signalling when /readyz and its target are healthy"
  if [ "$AWS_ROLLBACK_TRIGGERS" = 1 ]; then
    echo "     rollback triggers: the 5-minute 5xx and latency burn alarms, watched for $AWS_MONITORING_MINUTES more minutes"
  else
    echo "     rollback triggers: none (--no-rollback-triggers)"
  fi
  aws_canary_plan
  _aws_check_placeholders
}

target_deploy() {
  _aws_init
  _aws_check_placeholders
  [ -n "${VERSION:-}" ] || die "aws target: VERSION is empty"
  local work dr_vault="" bucket
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $work is a local
  trap "rm -rf '$work'; trap - RETURN" RETURN

  if [ -n "$AWS_DR_REGION" ]; then
    local main_region=$AWS_REGION_NAME
    AWS_REGION_NAME=$AWS_DR_REGION
    _deploy_stack dr-vault "$AWS_TEMPLATE_DIR/dr-vault.yaml" ""
    if [ "${DRY_RUN:-0}" = 1 ]; then dr_vault="<VaultArn of $(_stack_name dr-vault)>"
    else dr_vault=$(_stack_output "$(_stack_name dr-vault)" VaultArn)
    fi
    AWS_REGION_NAME=$main_region
  fi

  _deploy_stack foundation "$AWS_TEMPLATE_DIR/foundation.yaml" ""

  if [ "${DRY_RUN:-0}" = 1 ]; then bucket="<ArtifactsBucketName of $(_stack_name foundation)>"
  else bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName)
  fi
  _publish_release "$bucket" "$work"

  _deploy_stack network "$AWS_TEMPLATE_DIR/network.yaml" ""
  if [ -n "$dr_vault" ]; then
    _deploy_stack database "$AWS_TEMPLATE_DIR/database.yaml" "" "DrBackupVaultArn=$dr_vault"
  else
    _deploy_stack database "$AWS_TEMPLATE_DIR/database.yaml" ""
  fi
  _deploy_stack edge "$AWS_TEMPLATE_DIR/edge.yaml" ""
  _deploy_stack monitoring "$AWS_TEMPLATE_DIR/monitoring.yaml" ""

  # Remember what runs now, so target_rollback can return to it.
  local app_json=""
  [ "${DRY_RUN:-0}" = 1 ] || app_json=$(_stack_json "$(_stack_name app)")
  if [ -n "$app_json" ]; then
    AWS_PREVIOUS_RELEASE=$(jq -c '.Parameters | map({(.ParameterKey): .ParameterValue}) | add
      | {AppVersion, ArtifactSha256, HostBundleSha256}' <<<"$app_json")
    if [ "$(jq -r .AppVersion <<<"$AWS_PREVIOUS_RELEASE")" != "$VERSION" ]; then
      printf '%s\n' "$AWS_PREVIOUS_RELEASE" >"$work/previous.json"
      run _aws s3 cp --only-show-errors "$work/previous.json" "s3://$bucket/deployments/$ENV_NAME/previous.json"
      echo "    previous release: $(jq -r .AppVersion <<<"$AWS_PREVIOUS_RELEASE")"
    fi
  fi

  # The new release first on the canary group (deploy/aws/canary.sh).
  aws_canary_step "$AWS_PREVIOUS_RELEASE" || return 1
  _deploy_stack app "$AWS_TEMPLATE_DIR/app.yaml" "$(_rollback_configuration)" \
    "AppVersion=$VERSION" "ArtifactSha256=$RELEASE_SHA256" "HostBundleSha256=$HOST_SHA256"
  if [ "${DRY_RUN:-0}" = 1 ]; then step "dry run: AWS $ENV_NAME would run $VERSION"
  else step "AWS $ENV_NAME runs $VERSION"
  fi
}

target_url() {
  _aws_init
  local url=""
  if [ "${DRY_RUN:-0}" != 1 ]; then
    url=$(_stack_output "$(_stack_name edge)" ServiceUrl 2>/dev/null || true)
  fi
  [ -n "$url" ] || url="https://$(jq -r '.stacks.edge.DomainName' "$AWS_PARAMS_FILE")"
  echo "$url"
}

target_rollback() {
  _aws_init
  local previous=$AWS_PREVIOUS_RELEASE bucket version
  if [ -z "$previous" ] && [ "${DRY_RUN:-0}" != 1 ]; then
    bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName)
    previous=$(_aws s3 cp "s3://$bucket/deployments/$ENV_NAME/previous.json" - 2>/dev/null || true)
  fi
  if [ -z "$previous" ]; then
    [ "${DRY_RUN:-0}" = 1 ] && { step "rollback: would redeploy the recorded previous release"; return 0; }
    die "aws target: no previous release recorded for $ENV_NAME; nothing to roll back to"
  fi
  version=$(jq -r .AppVersion <<<"$previous")
  step "rollback: redeploy $version to $(_stack_name app)"
  _deploy_stack app "$AWS_TEMPLATE_DIR/app.yaml" "$(_rollback_configuration)" \
    "AppVersion=$version" \
    "ArtifactSha256=$(jq -r .ArtifactSha256 <<<"$previous")" \
    "HostBundleSha256=$(jq -r .HostBundleSha256 <<<"$previous")"
}
