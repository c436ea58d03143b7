#!/usr/bin/env bash
# Canary step of the AWS target. Sourced by deploy/aws/target.sh (which
# provides _aws, _deploy_stack, _stack_name, _stack_output, step, die, run),
# never run alone.
#
# Before the main Auto Scaling group rolls, the new release runs on a
# one-instance canary group (app stack, CanaryAppVersion) in its own target
# group, and the listener sends it CANARY_WEIGHT % of the requests (edge
# stack, CanaryWeight/MainWeight). Every minute CloudWatch's
# RequestCount, HTTPCode_Target_5XX_Count and TargetResponseTime p99 of both
# target groups, over the same minutes since the canary took traffic, go to
# deploy/canary/verdict.py. Fail: weight 0, canary removed, non-zero. Pass
# (only at the end of the window): weight 0, and the main roll-out removes the
# canary group in the same update that rolls the main group.
#
# Settings (from scripts/deploy.sh): CANARY (0: --no-canary), CANARY_WEIGHT
# (%), CANARY_WINDOW (s, rounded up to whole minutes; default 300),
# CANARY_ALLOW_INCONCLUSIVE, DEPLOY_ROLLBACK.
# Environment: AWS_CANARY_PERIOD (s, CloudWatch granularity, 60),
# AWS_CANARY_LOAD_URL (staging: the synthetic load's target; default the
# service URL), AWS_CANARY_LOAD_RATE (requests/s, 20), AWS_CANARY_LOAD=0 (no
# synthetic load), AWS_CANARY_READY_SECONDS (600).

# Run directly: explain, since it only works sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  case "${1:-}" in -h|--help) exit 0 ;; *) exit 2 ;; esac
fi

# shellcheck disable=SC2034 # read by scripts/deploy.sh: this target judges a canary
TARGET_CANARY=1
AWS_CANARY_WINDOW_DEFAULT=300
AWS_CANARY_LOAD_PID="" AWS_CANARY_LOAD_CODES=""

_canary_period() { printf '%s\n' "${AWS_CANARY_PERIOD:-60}"; }

# The window in seconds, whole periods (ALB metrics are per minute).
_canary_window() {
  local w=${CANARY_WINDOW:-$AWS_CANARY_WINDOW_DEFAULT} p
  p=$(_canary_period)
  echo $(( (w + p - 1) / p * p ))
}

aws_canary_plan() {
  if [ "${CANARY:-1}" != 1 ]; then
    echo "     canary: SKIPPED (--no-canary)"
  else
    echo "     canary first: $VERSION on a one-instance canary group with ${CANARY_WEIGHT:-10}% of the requests for" \
      "$(( $(_canary_window) / 60 )) min, judged every minute on CloudWatch (5xx and p99 per target group) by" \
      "deploy/canary/verdict.py; fail or inconclusive: canary removed, exit non-zero"
    [ "$ENV_NAME" = staging ] && [ "${AWS_CANARY_LOAD:-1}" = 1 ] \
      && echo "     staging: synthetic load of ${AWS_CANARY_LOAD_RATE:-20} requests/s during the window"
  fi
  return 0
}

# The get-metric-data queries: per target group TG (full name) and side,
# requests, 5xx and p99 over one period of PERIOD seconds.
_canary_queries() {
  local lb=$1 canary_tg=$2 main_tg=$3 period=$4
  jq -cn --arg lb "$lb" --arg c "$canary_tg" --arg b "$main_tg" --argjson p "$period" '
    def q($id; $tg; $metric; $stat):
      {Id: $id, ReturnData: true, MetricStat: {Period: $p, Stat: $stat, Metric: {
        Namespace: "AWS/ApplicationELB", MetricName: $metric,
        Dimensions: [{Name: "TargetGroup", Value: $tg}, {Name: "LoadBalancer", Value: $lb}]}}};
    [ ({side: "canary", tg: $c}, {side: "baseline", tg: $b})
      | q(.side + "_requests"; .tg; "RequestCount"; "Sum"),
        q(.side + "_errors"; .tg; "HTTPCode_Target_5XX_Count"; "Sum"),
        q(.side + "_p99"; .tg; "TargetResponseTime"; "p99") ]'
}

# _canary_look LB CANARY_TG MAIN_TG START END WINDOW: one verdict line for
# the interval [START, END) (unix s, whole periods), from CloudWatch.
_canary_look() {
  local lb=$1 ctg=$2 btg=$3 start=$4 end=$5 window=$6 out rc=0
  out=$(mktemp)
  # One period over the whole interval: CloudWatch computes the p99 of all
  # of it, not of each minute.
  if ! _aws cloudwatch get-metric-data --output json \
      --start-time "$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)" \
      --end-time "$(date -u -d "@$end" +%Y-%m-%dT%H:%M:%SZ)" \
      --metric-data-queries "$(_canary_queries "$lb" "$ctg" "$btg" $((end - start)))" >"$out"; then
    rm -f "$out"
    echo "error get-metric-data failed"
    return 0
  fi
  python3 "$ROOT/deploy/canary/verdict.py" cloudwatch --metric-data "$out" \
    --elapsed $((end - start)) --window "$window" || rc=$?
  rm -f "$out"
  [ "$rc" = 0 ] || echo "error verdict.py could not read the metrics"
}

# Staging has no users: a steady, bounded synthetic load (GET /hello/<user>
# of a few users, 404 or 200, both judged), for the window only. Its own
# status codes (000: no answer) are kept: the client's view includes the
# load balancer's 5xx, which CloudWatch cannot attribute to a target group.
_canary_load_start() {
  local url=$1 seconds=$2 rate=${AWS_CANARY_LOAD_RATE:-20}
  local total=$((rate * seconds))
  AWS_CANARY_LOAD_CODES=$(mktemp)
  echo "    synthetic load: $rate requests/s for ${seconds}s at $url (at most $total requests)"
  # Line-buffered, so what was answered before the stop is counted.
  stdbuf -oL curl --silent --output /dev/null --max-time 5 --rate "$rate/s" --write-out '%{http_code}\n' \
    "$url/hello/canaryload[1-$total]" >"$AWS_CANARY_LOAD_CODES" 2>/dev/null &
  AWS_CANARY_LOAD_PID=$!
}

_canary_load_stop() {
  [ -n "$AWS_CANARY_LOAD_PID" ] || return 0
  kill "$AWS_CANARY_LOAD_PID" 2>/dev/null || true
  wait "$AWS_CANARY_LOAD_PID" 2>/dev/null || true
  AWS_CANARY_LOAD_PID=""
  awk '{ n++ } /^(5|000)/ { bad++ } END { printf "    synthetic load: %d requests, %d answered 5xx or not at all (either side, load balancer included)\n", n, bad }' \
    "$AWS_CANARY_LOAD_CODES"
  rm -f "$AWS_CANARY_LOAD_CODES"
}

# _canary_set_weight PCT: the canary's share of the listener's requests.
_canary_set_weight() {
  local pct=$1
  step "canary: weight $pct% (edge stack)"
  _deploy_stack edge "$AWS_TEMPLATE_DIR/edge.yaml" "" "CanaryWeight=$pct" "MainWeight=$((100 - pct))"
}

# The app stack with the main group unchanged (PREVIOUS: its release as
# JSON) and the canary group running KEY=VALUE... (none: no canary group).
_canary_app_stack() {
  local previous=$1; shift
  _deploy_stack app "$AWS_TEMPLATE_DIR/app.yaml" "" \
    "AppVersion=$(jq -r .AppVersion <<<"$previous")" \
    "ArtifactSha256=$(jq -r .ArtifactSha256 <<<"$previous")" \
    "HostBundleSha256=$(jq -r .HostBundleSha256 <<<"$previous")" \
    "ImageId=$(jq -r '.ImageId // empty' <<<"$previous")" "$@"
}

# Waits until the canary target group has a healthy target.
_canary_wait_healthy() {
  local tg=$1 deadline=$((SECONDS + ${AWS_CANARY_READY_SECONDS:-600})) healthy
  while :; do
    healthy=$(_aws elbv2 describe-target-health --target-group-arn "$tg" \
      --query "length(TargetHealthDescriptions[?TargetHealth.State=='healthy'])" --output text 2>/dev/null || echo 0)
    [ "${healthy:-0}" -ge 1 ] 2>/dev/null && return 0
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 5
  done
}

# aws_canary_step PREVIOUS_JSON: run and judge the canary of $VERSION against
# the main group (running PREVIOUS_JSON's release). 0: roll out; 1: stop (the
# canary is removed and the traffic back on the main group).
aws_canary_step() {
  local previous=${1:-}
  if [ "${CANARY:-1}" != 1 ]; then
    echo "    WARNING: --no-canary: $VERSION goes to every instance WITHOUT canary analysis" >&2
    return 0
  fi
  if [ "${DEPLOY_ROLLBACK:-0}" = 1 ]; then
    echo "    rollback to the previous release: no canary step"; return 0
  fi
  if [ -z "$previous" ]; then
    echo "    WARNING: no running release to compare with (first deploy): no canary analysis" >&2; return 0
  fi
  if [ "$(jq -r .AppVersion <<<"$previous")" = "$VERSION" ]; then
    echo "    $VERSION already runs: no canary step"; return 0
  fi
  local pct=${CANARY_WEIGHT:-10} window period
  window=$(_canary_window); period=$(_canary_period)
  if [ "${DRY_RUN:-0}" = 1 ]; then
    step "canary: would run $VERSION on the canary group with $pct% of the requests for ${window}s"
    return 0
  fi

  step "canary: $VERSION on a one-instance canary group, $pct% of the requests, window ${window}s"
  _canary_app_stack "$previous" "CanaryAppVersion=$VERSION" \
    "CanaryArtifactSha256=$RELEASE_SHA256" "CanaryHostBundleSha256=$HOST_SHA256"
  local edge lb ctg ctg_arn btg
  edge=$(_stack_name edge)
  lb=$(_stack_output "$edge" LoadBalancerFullName)
  ctg=$(_stack_output "$edge" CanaryTargetGroupFullName)
  ctg_arn=$(_stack_output "$edge" CanaryTargetGroupArn)
  btg=$(_stack_output "$edge" TargetGroupFullName)
  if ! _canary_wait_healthy "$ctg_arn"; then
    echo "canary: no healthy target in the canary group after ${AWS_CANARY_READY_SECONDS:-600}s" >&2
    _canary_remove "$previous"
    return 1
  fi
  _canary_set_weight "$pct"

  # The first whole period with the canary at its weight starts the window;
  # each look waits for a period to end plus the lag of ALB metrics.
  local now start end next line="" decision="" lag=${AWS_CANARY_LAG:-60}
  now=$(date +%s)
  start=$(( (now + period - 1) / period * period ))
  next=$((start + period))
  if [ "$ENV_NAME" = staging ] && [ "${AWS_CANARY_LOAD:-1}" = 1 ]; then
    _canary_load_start "${AWS_CANARY_LOAD_URL:-$(target_url)}" $((start - now + window + lag))
  fi
  while :; do
    now=$(date +%s)
    [ "$now" -ge $((next + lag)) ] || sleep $((next + lag - now))
    end=$(( ($(date +%s) - lag) / period * period ))
    [ "$end" -le $((start + window)) ] || end=$((start + window))
    next=$((end + period))
    line=$(_canary_look "$lb" "$ctg" "$btg" "$start" "$end" "$window")
    decision=${line%% *}
    echo "    canary look $((end - start))/${window}s: $line"
    if [ "$decision" != continue ] || [ "$end" -ge $((start + window)) ]; then break; fi
  done
  _canary_load_stop

  case "$decision" in
    pass)
      step "canary: PASS (${line#pass })"
      _canary_set_weight 0
      return 0 ;;
    inconclusive)
      if [ "${CANARY_ALLOW_INCONCLUSIVE:-0}" = 1 ]; then
        step "canary: INCONCLUSIVE, going on (--canary-allow-inconclusive): ${line#inconclusive }"
        _canary_set_weight 0
        return 0
      fi
      echo "canary: INCONCLUSIVE: ${line#inconclusive }" >&2 ;;
    fail) echo "canary: FAIL: ${line#fail }" >&2 ;;
    *) echo "canary: no verdict: $line" >&2 ;;
  esac
  _canary_remove "$previous"
  echo "canary: $VERSION stopped; the main group still runs $(jq -r .AppVersion <<<"$previous")" >&2
  return 1
}

# Traffic back on the main group, then the canary group deleted.
_canary_remove() {
  _canary_load_stop
  _canary_set_weight 0
  step "canary: remove the canary group (app stack, CanaryAppVersion empty)"
  _canary_app_stack "$1"
}
