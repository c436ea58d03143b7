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
# --no-rollback-triggers (to ship a fix while those alarms fire; a rollback
# never sets them), --monitoring-minutes N (how long CloudFormation watches
# them afterwards). Plan, then execute (deploy.sh --plan/--execute-plan):
# target_make_plan FILE creates every stack's change set without executing
# it; target_execute_plan FILE executes exactly those, or refuses.
# Environment: AWS_CLI (default: aws on PATH, else .venv/bin/aws).
set -euo pipefail

# Run directly (--help or by mistake): explain, since it only works sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
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
# Where a newly published release takes its image from (once: see _pin_image).
AWS_AMI_PARAMETER=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
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
  json=$(_stack_json "$1") || exit 1
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

# _cs_create STACK TYPE CHANGE_SET TEMPLATE PARAMS_JSON ROLLBACK_JSON
# Creates a change set and waits until CloudFormation has computed it. Sets
# CS_OUTCOME: "changes" (CS_JSON holds the description), "none" (identical
# update; the change set is deleted again) or "failed" (CS_REASON says why).
# Called plainly, never from `if`, so set -e stays on inside.
_cs_create() {
  local stack=$1 type=$2 cs=$3 template=$4 params=$5 rollback=$6
  CS_OUTCOME="" CS_JSON="" CS_REASON=""
  local tmp; tmp=$(mktemp); printf '%s' "$params" >"$tmp"
  local args=(cloudformation create-change-set --stack-name "$stack" --change-set-name "$cs"
    --change-set-type "$type" --template-body "file://$template" --parameters "file://$tmp"
    --capabilities CAPABILITY_IAM
    --tags "Key=project,Value=$AWS_PREFIX" "Key=environment,Value=$ENV_NAME")
  [ -n "$rollback" ] && args+=(--rollback-configuration "$rollback")
  # The bootstrap stack's CloudFormationRoleArn: CloudFormation, not the
  # caller, then holds the rights to create the resources.
  [ -n "${AWS_CFN_ROLE_ARN:-}" ] && args+=(--role-arn "$AWS_CFN_ROLE_ARN")
  local out rc=0
  out=$(run _aws "${args[@]}" --output text --query Id 2>&1) || rc=$?
  rm -f "$tmp"
  if [ "$rc" != 0 ]; then
    # An identical update is refused here by some endpoints, and reported
    # as a FAILED change set (below) by others.
    if [[ "$out" == *"No updates are to be performed"* ]]; then CS_OUTCOME=none; return 0; fi
    CS_OUTCOME=failed CS_REASON="create-change-set: $out"
    return 0
  fi
  printf '%s\n' "$out"
  # One describe call per poll gives the status and, once ready, the changes.
  local cs_status deadline=$((SECONDS + 600))
  while :; do
    CS_JSON=$(_aws cloudformation describe-change-set --stack-name "$stack" --change-set-name "$cs" --output json) \
      || { CS_OUTCOME=failed CS_REASON="describe-change-set $cs failed"; return 0; }
    cs_status=$(jq -r .Status <<<"$CS_JSON")
    case "$cs_status" in
      CREATE_COMPLETE) CS_OUTCOME=changes; return 0 ;;
      FAILED)
        CS_REASON=$(jq -r '.StatusReason // "unknown reason"' <<<"$CS_JSON")
        if [[ "$CS_REASON" == *"didn't contain changes"* || "$CS_REASON" == *"No updates are to be performed"* ]]; then
          _aws cloudformation delete-change-set --stack-name "$stack" --change-set-name "$cs" >/dev/null 2>&1 || true
          CS_OUTCOME=none
        else
          CS_OUTCOME=failed
        fi
        return 0 ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || { CS_OUTCOME=failed CS_REASON="still $cs_status after 10 minutes"; return 0; }
    sleep 5
  done
}

# The changes of a described change set, one line each (also what a plan
# compares: action, resource, type, replacement).
_cs_changes() {
  jq -r '.Changes[].ResourceChange | "\(.Action)\t\(.LogicalResourceId)\t\(.ResourceType)\t\(.Replacement // "-")"' <<<"$1"
}

# _cs_execute STACK CHANGE_SET TYPE: execute, wait, and stop with
# CloudFormation's own reasons when the stack rolls back.
_cs_execute() {
  local stack=$1 cs=$2 type=$3 final
  run _aws cloudformation execute-change-set --stack-name "$stack" --change-set-name "$cs" \
    || die "aws target: execute-change-set $cs of $stack failed"
  local waiter="stack-update-complete"
  [ "$type" = CREATE ] && waiter="stack-create-complete"
  if ! _aws cloudformation wait "$waiter" --stack-name "$stack" 2>/dev/null; then
    final=$(_stack_status "$stack") || exit 1
    echo "CloudFormation reasons for $stack:" >&2
    _stack_failures "$stack" | sed 's/^/    /' >&2
    case "$final" in
      *ROLLBACK_COMPLETE) die "aws target: CloudFormation rolled back stack $stack ($final); the previous version is still serving" ;;
      *) die "aws target: stack $stack ended in $final" ;;
    esac
  fi
  echo "    $type complete"
}

# Change-set type for a stack in state $2, or die when it cannot be changed.
_cs_type() {
  case "$2" in
    NONE|REVIEW_IN_PROGRESS) echo CREATE ;;
    ROLLBACK_COMPLETE|ROLLBACK_FAILED|DELETE_FAILED)
      die "aws target: stack $1 is $2 (its creation failed). Delete it, then deploy again: aws cloudformation delete-stack --region $AWS_REGION_NAME --stack-name $1" ;;
    *_IN_PROGRESS) die "aws target: stack $1 is busy ($2); wait for it to finish" ;;
    *) echo UPDATE ;;
  esac
}

# Stateful stacks (their data or addresses cannot be recreated): a stack
# policy lets CloudFormation update them in place but never replace or delete
# the database, its backup vault, the VPC or a subnet. Changing one of those
# on purpose takes an explicit set-stack-policy first (runbook).
AWS_STATEFUL_STACKS="network database"
_stack_policy() {
  jq -cn '{Statement: [
    {Effect: "Allow", Action: "Update:*", Principal: "*", Resource: "*"},
    {Effect: "Deny", Action: ["Update:Replace", "Update:Delete"], Principal: "*", Resource: "*",
     Condition: {StringEquals: {ResourceType: ["AWS::RDS::DBInstance", "AWS::Backup::BackupVault",
                                               "AWS::EC2::VPC", "AWS::EC2::Subnet"]}}}]}'
}

# Sets the stack policy on a stateful stack that exists (idempotent).
_protect_stack() {
  local key=$1 stack
  [[ " $AWS_STATEFUL_STACKS " == *" $key "* ]] || return 0
  stack=$(_stack_name "$key")
  [ "$(_stack_status "$stack")" != NONE ] || return 0
  run _aws cloudformation set-stack-policy --stack-name "$stack" --stack-policy-body "$(_stack_policy)"
  echo "    stack policy: no replacement or deletion of the database, backup vault, VPC or subnets"
}

# _deploy_stack KEY TEMPLATE ROLLBACK_JSON [KEY=VALUE...]
_deploy_stack() {
  local key=$1 template=$2 rollback=$3; shift 3
  local stack status type cs params
  stack=$(_stack_name "$key")
  params=$(_stack_parameters_json "$key" "$@") || exit 1
  if [ "${DRY_RUN:-0}" = 1 ]; then
    local extra=()
    [ -n "$rollback" ] && extra=(--rollback-configuration "$rollback")
    step "stack $stack <- ${template#"$ROOT"/}"
    run "$AWS_CLI" --region "$AWS_REGION_NAME" cloudformation create-change-set --stack-name "$stack" \
      --template-body "file://$template" --parameters "$params" --capabilities CAPABILITY_IAM "${extra[@]}"
    return 0
  fi
  status=$(_stack_status "$stack") || exit 1
  type=$(_cs_type "$stack" "$status") || exit 1
  cs="deploy-$(date -u +%Y%m%d%H%M%S)-$key"
  step "stack $stack: $type change set $cs (${template#"$ROOT"/})"
  _protect_stack "$key"
  _cs_create "$stack" "$type" "$cs" "$template" "$params" "$rollback"
  case "$CS_OUTCOME" in
    none) echo "    no changes"; return 0 ;;
    failed) die "aws target: change set for $stack failed: $CS_REASON" ;;
  esac
  _cs_changes "$CS_JSON" | sed 's/^/    /'
  _cs_execute "$stack" "$cs" "$type"
  [ "$type" = CREATE ] && _protect_stack "$key"
  return 0
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

# Sets IMAGE_ID for release $VERSION: the image pinned when the release was
# first published (releases/$VERSION/image-id), so staging and production run
# the same image; a release published without one gets the newest Amazon
# Linux 2023 image now, recorded once and never re-resolved.
_pin_image() {
  local bucket=$1 dir=$2 key="releases/$VERSION/image-id"
  if [ "${DRY_RUN:-0}" = 1 ]; then IMAGE_ID="<image pinned in $key>"; return 0; fi
  IMAGE_ID=$(_aws s3 cp "s3://$bucket/$key" - 2>/dev/null | tr -d '[:space:]' || true)
  if [ -z "$IMAGE_ID" ]; then
    [ -n "${ARTIFACT:-}" ] || die "aws target: release $VERSION has no pinned image ($key); publish it with --release PATH"
    IMAGE_ID=$(_aws ssm get-parameter --name "$AWS_AMI_PARAMETER" --query Parameter.Value --output text) \
      || die "aws target: cannot resolve $AWS_AMI_PARAMETER"
    printf '%s\n' "$IMAGE_ID" >"$dir/image-id"
    _put_release_file "$dir/image-id" "$key" "$(_sha256 "$dir/image-id")" "$bucket"
  fi
  [[ $IMAGE_ID =~ ^ami-[0-9a-f]{8,17}$ ]] || die "aws target: $key holds '$IMAGE_ID', not an image id"
  echo "    image $IMAGE_ID (pinned for $VERSION)"
}

# The Route 53 health-check alarm, in us-east-1 where its metric is
# (templates/dns-alarm.yaml), fed the edge stack's health check id.
_deploy_dns_alarm() {
  local hc main_region=$AWS_REGION_NAME
  if [ "${DRY_RUN:-0}" = 1 ]; then hc="<HealthCheckId of $(_stack_name edge)>"
  else hc=$(_stack_output "$(_stack_name edge)" HealthCheckId) || exit 1
  fi
  AWS_REGION_NAME=us-east-1
  _deploy_stack dns-alarm "$AWS_TEMPLATE_DIR/dns-alarm.yaml" "" "HealthCheckId=$hc" \
    "AlarmEmail=$(jq -r '.stacks.foundation.AlarmEmail // ""' "$AWS_PARAMS_FILE")"
  AWS_REGION_NAME=$main_region
}

_rollback_configuration() {
  [ "$AWS_ROLLBACK_TRIGGERS" = 1 ] || { echo '{"RollbackTriggers":[]}'; return 0; }
  local arns
  if [ "${DRY_RUN:-0}" = 1 ]; then arns="<RollbackTriggerAlarmArns of $(_stack_name monitoring)>"
  else arns=$(_stack_output "$(_stack_name monitoring)" RollbackTriggerAlarmArns) || exit 1
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

# --- the deployment record ------------------------------------------------------
# s3://<artifacts>/deployments/<env>/previous.json is the rollback target: the
# release the app stack ran before the last deploy that replaced it (AppVersion
# and its two checksums, read from the app stack's own parameters, i.e. what
# CloudFormation runs) and ReplacedBy, the release that replaced it. It is
# written before the first stack changes, never by a rollback, and never when
# the release being deployed is the recorded one (a rollback by label):
# rolling back does not change what "previous" means.

# What the app stack runs, as record JSON; empty when there is no app stack.
# Dies when it cannot be known: no deploy starts without its rollback target.
_app_running() {
  local json
  json=$(_stack_json "$(_stack_name app)") || exit 1
  [ -n "$json" ] || return 0
  case "$(jq -r .StackStatus <<<"$json")" in
    *_IN_PROGRESS|*_FAILED) die "aws target: $(_stack_name app) is $(jq -r .StackStatus <<<"$json"): which release it runs is not settled; wait, or repair it first" ;;
  esac
  jq -ce '(.Parameters // []) | map({(.ParameterKey): .ParameterValue}) | add // {}
    | {AppVersion, ArtifactSha256, HostBundleSha256, ImageId}
    | select(.AppVersion and .ArtifactSha256 and .HostBundleSha256)' <<<"$json" \
    || die "aws target: cannot tell which release $(_stack_name app) runs (no AppVersion and checksums in its parameters): no rollback target, nothing deployed"
}

# The record in bucket $1; empty when there is none yet.
_record_read() {
  local err rc=0 out
  err=$(mktemp)
  out=$(_aws s3 cp "s3://$1/deployments/$ENV_NAME/previous.json" - 2>"$err") || rc=$?
  if [ "$rc" != 0 ] && ! grep -qE '404|Not Found|NoSuchKey' "$err"; then
    cat "$err" >&2; rm -f "$err"
    die "aws target: cannot read the deployment record s3://$1/deployments/$ENV_NAME/previous.json"
  fi
  rm -f "$err"
  [ "$rc" = 0 ] && printf '%s\n' "$out"
  return 0
}

# _record_previous CURRENT_JSON WORK_DIR: before anything changes, record
# what runs now as the rollback target of $VERSION (see above).
_record_previous() {
  local current=$1 work=$2 bucket recorded cur_v
  cur_v=$(jq -r .AppVersion <<<"$current")
  bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName) || exit 1
  recorded=$(_record_read "$bucket") || exit 1
  if [ "$cur_v" = "$VERSION" ]; then
    echo "    $ENV_NAME already runs $VERSION; rollback record kept ($(jq -r '.AppVersion // "none"' <<<"${recorded:-null}"))"
    return 0
  fi
  if [ -n "$recorded" ] && [ "$(jq -r .AppVersion <<<"$recorded")" = "$VERSION" ]; then
    echo "    $VERSION is the recorded rollback target: record kept (a rollback does not change what \"previous\" means)"
    return 0
  fi
  AWS_PREVIOUS_RELEASE=$(jq -c --arg v "$VERSION" '. + {ReplacedBy: $v}' <<<"$current")
  printf '%s\n' "$AWS_PREVIOUS_RELEASE" >"$work/previous.json"
  run _aws s3 cp --only-show-errors "$work/previous.json" "s3://$bucket/deployments/$ENV_NAME/previous.json" \
    || die "aws target: cannot write the deployment record; nothing deployed"
  echo "    previous release: $cur_v (the rollback target, recorded before any change)"
}

# Reads the rollback target (or says there is none) before the first change.
_deploy_record_step() {
  local work=$1 current
  step "rollback target (deployment record, from the app stack's parameters)"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "    dry run: would record the release $(_stack_name app) runs in deployments/$ENV_NAME/previous.json"
    return 0
  fi
  current=$(_app_running) || exit 1
  if [ -z "$current" ]; then
    echo "    no app stack yet: a first deploy has nothing to roll back to"
    return 0
  fi
  _record_previous "$current" "$work"
}

# The database stack's link to the DR Region, one KEY=VALUE a line (nothing
# without a DR Region): where its automated backups are replicated, with the
# key there, and the vault that receives the daily copies (dr-vault outputs).
_dr_database_params() {
  [ -n "$AWS_DR_REGION" ] || return 0
  local stack pair value
  stack=$(_stack_name dr-vault)
  echo "DrRegion=$AWS_DR_REGION"
  for pair in DrBackupVaultArn=VaultArn DrReplicationKmsKeyArn=ReplicationKeyArn; do
    if [ "${DRY_RUN:-0}" = 1 ]; then value="<${pair#*=} of $stack>"
    else value=$(AWS_REGION_NAME=$AWS_DR_REGION _stack_output "$stack" "${pair#*=}") || exit 1
    fi
    echo "${pair%%=*}=$value"
  done
}

# --- the interface deploy.sh calls, continued --------------------------------------

target_deploy() {
  _aws_init
  _aws_check_placeholders
  [ -n "${VERSION:-}" ] || die "aws target: VERSION is empty"
  local work dr_params dr=() bucket
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $work is a local
  trap "rm -rf '$work'; trap - RETURN" RETURN

  _deploy_record_step "$work"

  if [ -n "$AWS_DR_REGION" ]; then
    local main_region=$AWS_REGION_NAME
    AWS_REGION_NAME=$AWS_DR_REGION
    _deploy_stack dr-vault "$AWS_TEMPLATE_DIR/dr-vault.yaml" ""
    AWS_REGION_NAME=$main_region
  fi
  dr_params=$(_dr_database_params) || exit 1
  [ -z "$dr_params" ] || mapfile -t dr <<<"$dr_params"

  _deploy_stack foundation "$AWS_TEMPLATE_DIR/foundation.yaml" ""

  if [ "${DRY_RUN:-0}" = 1 ]; then bucket="<ArtifactsBucketName of $(_stack_name foundation)>"
  else bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName) || exit 1
  fi
  _publish_release "$bucket" "$work"
  _pin_image "$bucket" "$work"

  _deploy_stack network "$AWS_TEMPLATE_DIR/network.yaml" ""
  _deploy_stack database "$AWS_TEMPLATE_DIR/database.yaml" "" "${dr[@]}"
  _deploy_stack edge "$AWS_TEMPLATE_DIR/edge.yaml" ""
  _deploy_dns_alarm
  _deploy_stack monitoring "$AWS_TEMPLATE_DIR/monitoring.yaml" ""

  # The new release first on the canary group (deploy/aws/canary.sh).
  aws_canary_step "$AWS_PREVIOUS_RELEASE" || return 1
  local rollback; rollback=$(_rollback_configuration) || exit 1
  _deploy_stack app "$AWS_TEMPLATE_DIR/app.yaml" "$rollback" \
    "AppVersion=$VERSION" "ArtifactSha256=$RELEASE_SHA256" "HostBundleSha256=$HOST_SHA256" "ImageId=$IMAGE_ID"
  _aws_after_app
  if [ "${DRY_RUN:-0}" = 1 ]; then step "dry run: AWS $ENV_NAME would run $VERSION"
  else step "AWS $ENV_NAME runs $VERSION"
  fi
}

# Hook after the app stack of a deploy (plain or planned) has run its
# rolling update, before deploy.sh's smoke test: the place for canary
# analysis. deploy/aws/canary.sh, when present, is sourced here and may
# redefine it; failing it (die) fails the deploy, and deploy.sh rolls back.
_aws_after_app() { return 0; }
if [ -r "$ROOT/deploy/aws/canary.sh" ]; then
  # shellcheck source=/dev/null
  . "$ROOT/deploy/aws/canary.sh"
fi

target_url() {
  _aws_init
  local url=""
  if [ "${DRY_RUN:-0}" != 1 ]; then
    url=$(_stack_output "$(_stack_name edge)" ServiceUrl 2>/dev/null || true)
  fi
  [ -n "$url" ] || url="https://$(jq -r '.stacks.edge.DomainName' "$AWS_PARAMS_FILE")"
  echo "$url"
}

# Returns the app stack to the recorded previous release. VERSION, when set,
# is the release being undone: the rollback refuses when something else runs
# (another deploy's work is never rolled back). Always without rollback
# triggers: while the bad release's alarms still fire, CloudFormation would
# otherwise roll the rollback back. Never writes the record.
target_rollback() {
  _aws_init
  local record=$AWS_PREVIOUS_RELEASE bucket current running target replaced
  if [ "${DRY_RUN:-0}" = 1 ]; then
    step "rollback: would redeploy the recorded previous release, without rollback triggers"
    return 0
  fi
  if [ -z "$record" ]; then
    bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName) || exit 1
    record=$(_record_read "$bucket") || exit 1
  fi
  [ -n "$record" ] || die "aws target: no previous release recorded for $ENV_NAME; nothing to roll back to"
  # A deploy interrupted mid-update (job cancelled or timed out) leaves
  # CloudFormation working: let it finish (or roll back) first.
  if [[ "$(_stack_status "$(_stack_name app)")" == *_IN_PROGRESS ]]; then
    step "rollback: $(_stack_name app) is still changing; waiting for CloudFormation to finish"
    _aws cloudformation wait stack-update-complete --stack-name "$(_stack_name app)" 2>/dev/null || true
  fi
  current=$(_app_running) || exit 1
  [ -n "$current" ] || die "aws target: $(_stack_name app) does not exist; nothing to roll back"
  running=$(jq -r .AppVersion <<<"$current")
  target=$(jq -r .AppVersion <<<"$record")
  replaced=$(jq -r '.ReplacedBy // ""' <<<"$record")
  if [ "$running" = "$target" ]; then
    step "rollback: $ENV_NAME already runs $target, the recorded rollback target: nothing to do"
    return 0
  fi
  if [ -n "${VERSION:-}" ] && [ "$running" != "$VERSION" ]; then
    die "aws target: $ENV_NAME runs $running, not $VERSION: refusing to roll back a deploy that is not the one being undone"
  fi
  if [ "$running" != "$replaced" ]; then
    die "aws target: the record says $target was replaced by ${replaced:-an unrecorded release}, but $ENV_NAME runs $running: refusing to guess (deploy the release you want by label: --version V)"
  fi
  step "rollback: redeploy $target to $(_stack_name app) (replacing $running)"
  echo "    rollback triggers: off for a rollback (the alarms of $running may still be firing)"
  _deploy_stack app "$AWS_TEMPLATE_DIR/app.yaml" '{"RollbackTriggers":[]}' \
    "AppVersion=$target" \
    "ArtifactSha256=$(jq -r .ArtifactSha256 <<<"$record")" \
    "HostBundleSha256=$(jq -r .HostBundleSha256 <<<"$record")" \
    "ImageId=$(jq -r --argjson cur "$current" '.ImageId // $cur.ImageId' <<<"$record")"
}

# --- plan, then execute ---------------------------------------------------------
# A plan is made before approval by a role that may create change sets but
# not execute them; the approved run executes exactly those, or refuses.

# What must not change between a plan and its execution: the stack's status,
# last update and parameters. NONE for a stack that does not exist.
_stack_fingerprint() {
  local json
  json=$(_stack_json "$1") || exit 1
  if [ -z "$json" ]; then echo NONE; return 0; fi
  jq -cS '{StackStatus, Updated: (.LastUpdatedTime // .CreationTime),
           Parameters: ((.Parameters // []) | sort_by(.ParameterKey) | map([.ParameterKey, .ParameterValue]))}' <<<"$json" \
    | sha256sum | cut -c1-16
}

# The stacks, in dependency order: KEY REGION.
_stack_keys() {
  [ -z "$AWS_DR_REGION" ] || echo "dr-vault $AWS_DR_REGION"
  local key
  for key in foundation network database edge monitoring app; do echo "$key $AWS_REGION_NAME"; done
}

# target_make_plan FILE: publish the artifact, create every stack's change
# set (none executed), print them and write the plan to FILE.
target_make_plan() {
  local file=${1:?target_make_plan needs a file}
  _aws_init
  _aws_check_placeholders
  [ "${DRY_RUN:-0}" != 1 ] || die "aws target: a plan asks AWS; --plan and --dry-run exclude each other"
  [ -n "${ARTIFACT:-}" ] || die "aws target: a plan publishes the artifact it plans: give --release PATH"
  local work main_region=$AWS_REGION_NAME bucket cs
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $work is a local
  trap "rm -rf '$work'; trap - RETURN" RETURN
  [ "$(_stack_status "$(_stack_name foundation)")" != NONE ] \
    || die "aws target: $(_stack_name foundation) does not exist: the first creation of an environment is a deploy without --plan (docs/runbooks/deploy-rollback.md)"
  bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName) || exit 1
  _publish_release "$bucket" "$work"
  _pin_image "$bucket" "$work"
  local stamp; stamp=$(date -u +%Y%m%d%H%M%S)
  local entries="$work/entries" key region stack status type template params rollback fp changed="" extra extra_lines
  : >"$entries"
  while read -r key region; do
    AWS_REGION_NAME=$region
    stack=$(_stack_name "$key")
    template="$AWS_TEMPLATE_DIR/$key.yaml"
    status=$(_stack_status "$stack") || exit 1
    type=$(_cs_type "$stack" "$status") || exit 1
    fp=$(_stack_fingerprint "$stack") || exit 1
    extra=() rollback=""
    case $key in
      database) extra_lines=$(_dr_database_params) || exit 1
                [ -z "$extra_lines" ] || mapfile -t extra <<<"$extra_lines" ;;
      app) extra=("AppVersion=$VERSION" "ArtifactSha256=$RELEASE_SHA256" "HostBundleSha256=$HOST_SHA256" "ImageId=$IMAGE_ID")
           rollback=$(_rollback_configuration) || exit 1 ;;
    esac
    params=$(_stack_parameters_json "$key" "${extra[@]}") || exit 1
    if [ -n "$changed" ]; then
      step "plan: stack $stack ($type), provisional: computed before the change of $changed is executed"
    else
      step "plan: stack $stack ($type)"
    fi
    # One name per stack and plan (the emulator looks change sets up by name alone).
    cs="plan-$stamp-$key"
    _cs_create "$stack" "$type" "$cs" "$template" "$params" "$rollback"
    case "$CS_OUTCOME" in
      none) echo "    no changes" ;;
      changes) _cs_changes "$CS_JSON" | sed 's/^/    /' ;;
      failed)
        [ -n "$changed" ] || die "aws target: change set for $stack failed: $CS_REASON"
        echo "    cannot be computed until $changed's change is executed: $CS_REASON" ;;
    esac
    jq -cn --arg key "$key" --arg region "$region" --arg stack "$stack" --arg type "$type" \
      --arg fp "$fp" --arg cs "$cs" --arg outcome "$CS_OUTCOME" --arg reason "$CS_REASON" \
      --arg after "$changed" --arg template "${template#"$ROOT"/}" --arg tsha "$(_sha256 "$template")" \
      --argjson params "$params" --arg rollback "$rollback" \
      --arg changes "$([ "$CS_OUTCOME" = changes ] && _cs_changes "$CS_JSON")" '
      {key: $key, region: $region, stack: $stack, type: $type, fingerprint: $fp,
       changeSet: (if $outcome == "changes" then $cs else null end), outcome: $outcome,
       reason: (if $reason == "" then null else $reason end),
       provisional: ($after != ""), after: (if $after == "" then null else $after end),
       template: $template, templateSha256: $tsha, parameters: $params,
       rollbackConfiguration: (if $rollback == "" then null else ($rollback | fromjson) end),
       changes: ($changes | split("\n") | map(select(. != "") | split("\t")
                 | {action: .[0], logicalId: .[1], type: .[2], replacement: .[3]}))}' >>"$entries"
    [ "$CS_OUTCOME" = none ] || changed=$key
  done < <(_stack_keys)
  AWS_REGION_NAME=$main_region
  jq -s --arg env "$ENV_NAME" --arg region "$AWS_REGION_NAME" --arg prefix "$AWS_PREFIX" --arg v "$VERSION" \
    --arg sha "$RELEASE_SHA256" --arg host "$HOST_SHA256" --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg triggers "$AWS_ROLLBACK_TRIGGERS" '
    {environment: $env, region: $region, stackPrefix: $prefix, version: $v,
     artifactSha256: $sha, hostBundleSha256: $host, createdAt: $at,
     rollbackTriggers: ($triggers == "1"), stacks: .}' "$entries" >"$file"
  step "plan written to $file: $(jq '[.stacks[] | select(.outcome != "none")] | length' "$file") stack(s) to change, nothing executed"
}

# The planned changes of one stack, as _cs_changes prints them, sorted.
_plan_changes() { jq -r '.changes[] | "\(.action)\t\(.logicalId)\t\(.type)\t\(.replacement)"' <<<"$1" | sort; }

# target_execute_plan FILE: refuse when the plan is not for this environment
# and release, or when any stack changed since the plan; then execute the
# planned change sets in order. A stack planned after an earlier stack's
# unexecuted change is re-computed once that change ran, and executed only
# when its changes are the planned ones.
target_execute_plan() {
  local file=${1:?target_execute_plan needs a file}
  _aws_init
  _aws_check_placeholders
  [ "${DRY_RUN:-0}" != 1 ] || die "aws target: --execute-plan and --dry-run exclude each other"
  [ -r "$file" ] || die "aws target: plan $file not readable"
  jq -e --arg env "$ENV_NAME" --arg region "$AWS_REGION_NAME" --arg prefix "$AWS_PREFIX" --arg v "${VERSION:-}" '
    .environment == $env and .region == $region and .stackPrefix == $prefix and ($v == "" or .version == $v)' "$file" >/dev/null \
    || die "aws target: plan $file is for $(jq -r '"\(.environment) in \(.region), release \(.version)"' "$file"), not $ENV_NAME in $AWS_REGION_NAME${VERSION:+, release $VERSION}"
  VERSION=$(jq -r .version "$file")
  RELEASE_SHA256=$(jq -r .artifactSha256 "$file")
  HOST_SHA256=$(jq -r .hostBundleSha256 "$file")
  local work main_region=$AWS_REGION_NAME entry key region stack fp now drift="" n i
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $work is a local
  trap "rm -rf '$work'; trap - RETURN" RETURN
  n=$(jq '.stacks | length' "$file")

  step "check that $ENV_NAME is still what was planned ($(jq -r .createdAt "$file"))"
  for ((i = 0; i < n; i++)); do
    entry=$(jq -c ".stacks[$i]" "$file")
    AWS_REGION_NAME=$(jq -r .region <<<"$entry")
    stack=$(jq -r .stack <<<"$entry")
    fp=$(jq -r .fingerprint <<<"$entry")
    now=$(_stack_fingerprint "$stack") || exit 1
    [ "$now" = "$fp" ] || drift+=" $stack"
    [ "$(_sha256 "$ROOT/$(jq -r .template <<<"$entry")")" = "$(jq -r .templateSha256 <<<"$entry")" ] \
      || drift+=" $(jq -r .template <<<"$entry")(template)"
  done
  AWS_REGION_NAME=$main_region
  [ -z "$drift" ] || die "aws target: refusing: changed since the plan:$drift. Plan again (nothing executed)"
  echo "    unchanged: every stack and template as planned"

  local bucket published
  bucket=$(_stack_output "$(_stack_name foundation)" ArtifactsBucketName) || exit 1
  published=$(_aws s3 cp "s3://$bucket/releases/$VERSION/hello-birthday.sha256" - 2>/dev/null | cut -d' ' -f1) || true
  [ "$published" = "$RELEASE_SHA256" ] \
    || die "aws target: release $VERSION in s3://$bucket is ${published:-missing}, the plan says $RELEASE_SHA256"

  _deploy_record_step "$work"

  local changed="" outcome cs type template params rollback
  for ((i = 0; i < n; i++)); do
    entry=$(jq -c ".stacks[$i]" "$file")
    key=$(jq -r .key <<<"$entry") region=$(jq -r .region <<<"$entry") stack=$(jq -r .stack <<<"$entry")
    outcome=$(jq -r .outcome <<<"$entry") type=$(jq -r .type <<<"$entry") cs=$(jq -r '.changeSet // ""' <<<"$entry")
    AWS_REGION_NAME=$region
    step "execute: stack $stack"
    if [ "$(jq -r .provisional <<<"$entry")" = true ] && [ -n "$changed" ]; then
      # Planned before an earlier stack's change ran: compute it again now.
      template="$ROOT/$(jq -r .template <<<"$entry")"
      params=$(jq -c .parameters <<<"$entry")
      rollback=$(jq -c '.rollbackConfiguration // empty' <<<"$entry")
      cs="exec-$(date -u +%Y%m%d%H%M%S)-$key"
      _cs_create "$stack" "$type" "$cs" "$template" "$params" "$rollback"
      [ "$CS_OUTCOME" != failed ] || die "aws target: re-computed change set for $stack failed: $CS_REASON"
      if [ "$outcome" = failed ] || [ "$(_plan_changes "$entry")" != "$( [ "$CS_OUTCOME" = changes ] && _cs_changes "$CS_JSON" | sort)" ]; then
        echo "    planned:" >&2; _plan_changes "$entry" | sed 's/^/      /' >&2
        echo "    now:" >&2; [ "$CS_OUTCOME" = changes ] && _cs_changes "$CS_JSON" | sed 's/^/      /' >&2
        die "aws target: refusing: $stack's change after ${changed}'s differs from the approved plan. Plan again (stacks before it are done)"
      fi
      outcome=$CS_OUTCOME
      echo "    re-computed after $changed: same changes as planned"
    elif [ "$outcome" = changes ]; then
      local desc
      desc=$(_aws cloudformation describe-change-set --stack-name "$stack" --change-set-name "$cs" --output json) \
        || die "aws target: planned change set $cs of $stack is gone: plan again"
      jq -e '.Status == "CREATE_COMPLETE" and .ExecutionStatus == "AVAILABLE"' <<<"$desc" >/dev/null \
        || die "aws target: planned change set $cs of $stack is $(jq -r '"\(.Status)/\(.ExecutionStatus)"' <<<"$desc"): plan again"
    fi
    if [ "$outcome" = none ]; then
      echo "    no changes"
      continue
    fi
    _cs_changes "$(jq -c '{Changes: [.changes[] | {ResourceChange: {Action: .action, LogicalResourceId: .logicalId, ResourceType: .type, Replacement: .replacement}}]}' <<<"$entry")" | sed 's/^/    /'
    _protect_stack "$key"
    _cs_execute "$stack" "$cs" "$type"
    [ "$type" = CREATE ] && _protect_stack "$key"
    [ "$key" = app ] && _aws_after_app
    changed=$key
  done
  AWS_REGION_NAME=$main_region
  step "AWS $ENV_NAME runs $VERSION (plan $(basename "$file") executed)"
}
