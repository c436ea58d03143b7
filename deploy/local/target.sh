# shellcheck shell=bash
# deploy.sh target "local": rolls a release across the instances of the
# loopback stack (deploy/local/stack.sh), one slot at a time, behind HAProxy.
# Sourced by scripts/deploy.sh, which defines step/die/run and sets ROOT,
# TARGET, ENV_NAME, ARTIFACT, ARTIFACT_SHA256, VERSION and DRY_RUN.

# shellcheck source=deploy/local/lib.sh
. "$ROOT/deploy/local/lib.sh"

LOCAL_STATE=$(default_state_dir)
LOCAL_READY_TIMEOUT=30   # a new instance must pass /readyz within this
LOCAL_DRAIN_TIMEOUT=10   # in-flight requests of a drained server must end within this
LOCAL_ROLLBACK_FILE=""
LOCAL_REPORT=""          # --report DIR: load + per-request CSV + timeline chart of this deploy
REPORT_LG_PID=""
# Canary step (settings from deploy.sh: CANARY, CANARY_WEIGHT, CANARY_WINDOW,
# CANARY_ALLOW_INCONCLUSIVE). The verdict itself is deploy/canary/verdict.py.
# shellcheck disable=SC2034 # read by scripts/deploy.sh
TARGET_CANARY=1                  # this target judges a canary
LOCAL_CANARY_WINDOW_DEFAULT=60   # seconds; the tests pass shorter windows
BASE_WEIGHT=100                  # HAProxy weight of a normal server (haproxy.cfg.tmpl)
ROLL_STOPPED=0                   # set by roll_slot: 1 once the slot's old process was stopped
ROLL_READY_NS=0                  # set by roll_slot: when the slot came UP (ns since the epoch)

target_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --state-dir) LOCAL_STATE=${2:?}; shift 2 ;;
      --ready-timeout) LOCAL_READY_TIMEOUT=${2:?}; shift 2 ;;
      --drain-timeout) LOCAL_DRAIN_TIMEOUT=${2:?}; shift 2 ;;
      --events) EVENTS_FILE=${2:?}; shift 2 ;;
      --report) LOCAL_REPORT=${2:?}; shift 2 ;;
      *) die "unknown option for --target local: $1" ;;
    esac
  done
  [[ $LOCAL_READY_TIMEOUT =~ ^[0-9]+$ && $LOCAL_DRAIN_TIMEOUT =~ ^[0-9]+$ ]] || die "timeouts are whole seconds"
  [ "$ENV_NAME" = staging ] || die "the local stack is a staging environment (--env staging)"
  [ -f "$LOCAL_STATE/stack.env" ] || die "no local stack in $LOCAL_STATE (deploy/local/stack.sh up --state-dir $LOCAL_STATE)"
  LOCAL_STATE=$(cd "$LOCAL_STATE" && pwd)
  LOCAL_ROLLBACK_FILE="$LOCAL_STATE/rollback"
  load_stack_env "$LOCAL_STATE"
  if [ -z "$ARTIFACT" ] && ! release_installed "$LOCAL_STATE" "$VERSION"; then
    die "release $VERSION is not installed in $LOCAL_STATE/releases (give --release PATH)"
  fi
}

target_url() { printf 'http://127.0.0.1:%s\n' "$HAPROXY_PORT"; }

target_plan() {
  local slot port pid rel
  echo "    stack $LOCAL_STATE, HAProxy $(target_url)"
  while read -r slot port _ pid rel; do
    if [ "$rel" = "$VERSION" ] && instance_alive "$pid" "$port"; then
      echo "    $slot (127.0.0.1:$port, pid $pid): already on $VERSION, skipped"
    else
      echo "    $slot (127.0.0.1:$port, pid $pid): $rel -> $VERSION: drain, wait for in-flight = 0," \
        "SIGTERM, start $VERSION, /readyz 200 within ${LOCAL_READY_TIMEOUT}s, HAProxy check UP, ready"
    fi
  done < <(instances "$LOCAL_STATE")
  canary_plan
  echo "    on failure: that slot goes back to its previous release, the others are untouched, exit non-zero"
}

server_idle() { [ "$(haproxy_stat "$LOCAL_STATE" "$1" scur)" = 0 ]; }

# set -e is off in everything below: deploy.sh calls target_deploy from
# `if !`. Every step that can fail is checked where it runs, and a failure
# returns before the next step touches an instance.

# One runtime API command that must succeed: socat must connect and HAProxy
# must answer nothing (it answers a message only on an error).
lb_cmd() {
  local out
  printf '    $ haproxy: %s\n' "$*"
  [ "$DRY_RUN" = 0 ] || return 0
  if ! out=$(haproxy_cmd "$LOCAL_STATE" "$*" 2>&1); then
    echo "    HAProxy runtime API unreachable ($LOCAL_STATE/haproxy/admin.sock): ${out:-no answer}" >&2
    return 1
  fi
  [ -z "$out" ] || { echo "    HAProxy refused '$*': $out" >&2; return 1; }
}
lb_state() { lb_cmd "set server be/$1 state $2"; }
lb_weight() { lb_cmd "set weight be/$1 $2"; }

# Before anything changes: the runtime API answers and knows every slot, so
# every instance can be drained before it is stopped.
lb_preflight() {
  local stat slot missing=()
  if ! stat=$(haproxy_cmd "$LOCAL_STATE" "show stat" 2>&1); then
    echo "    HAProxy runtime API unreachable ($LOCAL_STATE/haproxy/admin.sock): ${stat:-no answer};" \
      "no instance can be drained, so none is touched" >&2
    return 1
  fi
  while read -r slot _; do
    awk -F, -v s="$slot" '$1 == "be" && $2 == s { f = 1 } END { exit !f }' <<<"$stat" || missing+=("$slot")
  done < <(instances "$LOCAL_STATE")
  [ ${#missing[@]} -eq 0 ] || { echo "    HAProxy has no server for ${missing[*]}; nothing touched" >&2; return 1; }
}

# Rolls one slot to RELEASE. Returns non-zero when a step fails; ROLL_STOPPED
# tells the caller whether the slot's old process was already stopped (0: it
# still serves the old release, nothing to restore but its HAProxy state).
roll_slot() {
  local slot=$1 release=$2 pid port prev t0 newpid=""
  ROLL_STOPPED=0
  pid=$(instance_field "$LOCAL_STATE" "$slot" pid)
  port=$(instance_field "$LOCAL_STATE" "$slot" port)
  prev=$(instance_field "$LOCAL_STATE" "$slot" release)
  [ -n "$port" ] || { echo "    $slot: not in $LOCAL_STATE/instances" >&2; return 1; }
  t0=$(date +%s%N)

  lb_state "$slot" drain || return 1
  event "$slot" drain "$prev"
  if [ "$DRY_RUN" = 0 ]; then
    # HAProxy sends a drained server no new requests; wait for the current ones.
    if wait_until "$LOCAL_DRAIN_TIMEOUT" server_idle "$slot"; then
      echo "    $slot: no request in flight after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    else
      local scur
      scur=$(haproxy_stat "$LOCAL_STATE" "$slot" scur)
      if [ -z "$scur" ]; then
        echo "    $slot: HAProxy stopped answering while $slot drained; not stopping it" >&2
        return 1
      fi
      echo "    $slot: still $scur in-flight requests after ${LOCAL_DRAIN_TIMEOUT}s; stopping anyway"
    fi
  fi
  if instance_alive "$pid" "$port"; then
    local t1
    t1=$(date +%s%N)
    ROLL_STOPPED=1
    run stop_instance "$pid"
    if [ "$DRY_RUN" = 0 ]; then
      pid_gone "$pid" || { echo "    $slot: pid $pid does not exit" >&2; return 1; }
      echo "    $slot: pid $pid exited $(( ($(date +%s%N) - t1) / 1000000 )) ms after SIGTERM"
    fi
  fi
  ROLL_STOPPED=1
  event "$slot" stopped ""

  if [ "$DRY_RUN" = 1 ]; then
    run start_instance "$LOCAL_STATE" "$slot" "$release" "$LOCAL_READY_TIMEOUT"
    lb_state "$slot" ready
    return 0
  fi
  echo "    \$ start_instance $slot $release (127.0.0.1:$port)"
  event "$slot" starting "$release"
  if ! newpid=$(start_instance "$LOCAL_STATE" "$slot" "$release" "$LOCAL_READY_TIMEOUT"); then
    set_instance "$LOCAL_STATE" "$slot" 0 "$release" || true
    event "$slot" failed "$release"
    return 1
  fi
  if ! set_instance "$LOCAL_STATE" "$slot" "$newpid" "$release"; then
    echo "    $slot: cannot record pid $newpid in $LOCAL_STATE/instances; stopping it" >&2
    stop_instance "$newpid"
    return 1
  fi
  event "$slot" started "$release"
  # Wait for HAProxy's own health check to pass before the slot takes
  # traffic again: in drain state a healthy server reports DRAIN.
  if ! wait_until 10 haproxy_status_is "$LOCAL_STATE" "$slot" DRAIN; then
    echo "    $slot: HAProxy health check did not pass within 10s (status $(haproxy_stat "$LOCAL_STATE" "$slot" status))" >&2
    stop_instance "$newpid"
    set_instance "$LOCAL_STATE" "$slot" 0 "$release" || true
    event "$slot" failed "$release"
    return 1
  fi
  lb_state "$slot" ready || return 1
  wait_until 5 haproxy_status_is "$LOCAL_STATE" "$slot" UP || { echo "    $slot: HAProxy does not report UP" >&2; return 1; }
  ROLL_READY_NS=$(date +%s%N)
  event "$slot" ready "$release"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '    %s: pid %s -> %s, release %s, UP after %d.%03ds\n' "$slot" "$pid" "$newpid" "$release" \
    $((ms / 1000)) $((ms % 1000))
}

# After roll_slot SLOT failed while rolling to a new release: put PREV back.
# Returns 0 when the slot serves PREV again (non-zero: it needs attention).
restore_slot() {
  local slot=$1 prev=$2
  if [ "$ROLL_STOPPED" = 0 ]; then
    # Its old process never stopped: only put it back in rotation.
    if [ "$DRY_RUN" = 0 ] && ! lb_state "$slot" ready; then
      echo "    $slot still serves $prev but stays drained in HAProxy: re-enable it (stack.sh haproxy set server be/$slot state ready)" >&2
      return 1
    fi
    echo "    $slot was not stopped: still on $prev" >&2
    return 0
  fi
  echo "    $slot: putting $prev back" >&2
  event "$slot" rollback "$prev"
  roll_slot "$slot" "$prev" </dev/null && return 0
  echo "ROLLBACK FAILED: $slot could not be restored to $prev; stack needs attention (deploy/local/stack.sh status)" >&2
  return 1
}

# --report DIR: steady load from tools/loadgen through HAProxy for the whole
# roll-out (its users are deleted afterwards), then DIR/requests.csv,
# DIR/events.csv, DIR/summary.json and DIR/timeline.png.
report_start() {
  local lg="$ROOT/target/debug/loadgen"
  mkdir -p "$LOCAL_REPORT" || return 1
  LOCAL_REPORT=$(cd "$LOCAL_REPORT" && pwd) || return 1
  rm -f "$LOCAL_REPORT"/{requests.csv,events.csv,summary.json,timeline.png,loadgen.log,ready}
  EVENTS_FILE="$LOCAL_REPORT/events.csv"
  [ -x "$lg" ] || (cd "$ROOT" && cargo build -q -p loadgen) || { echo "cannot build tools/loadgen" >&2; return 1; }
  step "report: ${REPORT_RATE:-200} req/s through $(target_url) during the deploy, into $LOCAL_REPORT"
  "$lg" --url "$(target_url)" --rate "${REPORT_RATE:-200}" --connections "${REPORT_CONNECTIONS:-16}" \
    --duration 900 --max-failures 1000000000 --cleanup --ready-file "$LOCAL_REPORT/ready" \
    --csv "$LOCAL_REPORT/requests.csv" --summary "$LOCAL_REPORT/summary.json" \
    >"$LOCAL_REPORT/loadgen.log" 2>&1 9>&- &
  REPORT_LG_PID=$!
  wait_until 15 test -e "$LOCAL_REPORT/ready" || { echo "report: the load did not start" >&2; return 1; }
  rm -f "$LOCAL_REPORT/ready"
  sleep 1   # a baseline before the first drain
}

report_finish() {
  sleep 1
  kill -INT "$REPORT_LG_PID" 2>/dev/null || true
  wait "$REPORT_LG_PID" || true
  REPORT_LG_PID=""
  grep -E '^loadgen: [0-9]+ requests|lost' "$LOCAL_REPORT/loadgen.log" | sed 's/^/    /'
  local py="$ROOT/.venv/bin/python"
  [ -x "$py" ] || py=python3
  if "$py" "$ROOT/deploy/local/timeline.py" --requests "$LOCAL_REPORT/requests.csv" --events "$EVENTS_FILE" \
    --title "Deploy of $VERSION" --out "$LOCAL_REPORT/timeline.png" | sed 's/^/    /'; then
    :
  else
    echo "    report: no chart (matplotlib missing? scripts/setup.sh dev)" >&2
  fi
}

target_deploy() {
  local rc=0
  if [ -n "$LOCAL_REPORT" ] && [ "$DRY_RUN" = 0 ]; then report_start || rc=1; fi
  [ "$rc" != 0 ] || roll_all || rc=$?
  if [ -n "$REPORT_LG_PID" ]; then report_finish; fi
  return "$rc"
}

# Deploys VERSION to every slot, the first one as a canary; on a slot that
# fails, puts its previous release back and stops.
roll_all() {
  exec 9>"$LOCAL_STATE/lock" || return 1
  flock -w 60 9 || { echo "another deploy holds $LOCAL_STATE/lock" >&2; return 1; }
  lb_preflight || return 1
  if [ -n "$ARTIFACT" ]; then
    run install_release "$LOCAL_STATE" "$VERSION" "$ARTIFACT" "$ARTIFACT_SHA256" || return 1
  fi
  if [ "$DRY_RUN" = 0 ]; then
    instances "$LOCAL_STATE" | awk '{ print $1, $5 }' >"$LOCAL_ROLLBACK_FILE" \
      || { echo "cannot write $LOCAL_ROLLBACK_FILE" >&2; return 1; }
    cp -f "$LOCAL_STATE/previous-release" "$LOCAL_STATE/previous-release.before" 2>/dev/null \
      || rm -f "$LOCAL_STATE/previous-release.before"
  fi

  local slot port pid rel n_done=0 total todo=() from
  total=$(instances "$LOCAL_STATE" | wc -l)
  while read -r slot port _ pid rel; do
    if [ "$rel" = "$VERSION" ] && instance_alive "$pid" "$port" && [ "$DRY_RUN" = 0 ]; then
      echo "    $slot: already on $VERSION (pid $pid)"
      n_done=$((n_done + 1))
    else
      todo+=("$slot")
    fi
  done < <(instances "$LOCAL_STATE")
  from=$(instances "$LOCAL_STATE" | awk '{ print $5 }' | sort -u | paste -sd, -)

  if [ ${#todo[@]} -gt 0 ] && canary_wanted "$total" "${#todo[@]}"; then
    canary_step "${todo[0]}" "$total" || return 1
    n_done=$((n_done + 1))
    todo=("${todo[@]:1}")
  fi
  for slot in "${todo[@]}"; do
    rel=$(instance_field "$LOCAL_STATE" "$slot" release)
    step "$slot: $rel -> $VERSION"
    if ! roll_slot "$slot" "$VERSION" </dev/null; then
      echo "    $slot: release $VERSION did not become ready" >&2
      restore_slot "$slot" "$rel" || return 1
      echo "deploy of $VERSION failed on $slot; $slot is back on $rel;" \
        "$n_done of $total slots on $VERSION, the rest untouched" >&2
      return 1
    fi
    n_done=$((n_done + 1))
  done

  [ "$DRY_RUN" = 0 ] || return 0
  target_verify "$VERSION" || return 1
  # A later deploy of this release counts as a rollback (no canary).
  if [[ $from != *,* ]] && [ "$from" != "$VERSION" ]; then
    printf '%s\n' "$from" >"$LOCAL_STATE/previous-release" || true
  fi
}

# Every slot: process alive, /healthz reports RELEASE, HAProxy UP.
target_verify() {
  local want=$1 slot port pid rel got bad=0
  while read -r slot port _ pid rel; do
    got=$(instance_release "$port")
    # A check that fails once (a busy instance) is not a failed deploy:
    # allow HAProxy a few seconds to see the slot UP.
    if ! instance_alive "$pid" "$port" || [ "$got" != "$want" ] \
      || ! wait_until 10 haproxy_status_is "$LOCAL_STATE" "$slot" UP; then
      echo "    $slot: pid $pid $(instance_alive "$pid" "$port" && echo alive || echo dead), reports '${got:-?}', HAProxy $(haproxy_stat "$LOCAL_STATE" "$slot" status) (want $want, UP)" >&2
      bad=1
    else
      echo "    $slot: pid $pid reports release $got, HAProxy UP"
    fi
  done < <(instances "$LOCAL_STATE")
  return "$bad"
}

# After a failed smoke test: every slot back to the release it ran before
# this deploy.
target_rollback() {
  [ -f "$LOCAL_ROLLBACK_FILE" ] || { echo "no rollback record in $LOCAL_STATE" >&2; return 1; }
  local slot prev cur
  while read -r slot prev; do
    cur=$(instance_field "$LOCAL_STATE" "$slot" release)
    [ "$cur" != "$prev" ] || continue
    step "$slot: $cur -> $prev (rollback)"
    event "$slot" rollback "$prev"
    roll_slot "$slot" "$prev" </dev/null || return 1
  done <"$LOCAL_ROLLBACK_FILE"
  # The fleet is where it was: so is the record of its previous release.
  if [ -f "$LOCAL_STATE/previous-release.before" ]; then
    mv -f "$LOCAL_STATE/previous-release.before" "$LOCAL_STATE/previous-release"
  else
    rm -f "$LOCAL_STATE/previous-release"
  fi
  local bad=0 port got
  while read -r slot prev; do
    port=$(instance_field "$LOCAL_STATE" "$slot" port)
    got=$(instance_release "$port")
    [ "$got" = "$prev" ] || { echo "    $slot reports '${got:-?}' after the rollback, expected $prev" >&2; bad=1; }
  done <"$LOCAL_ROLLBACK_FILE"
  return "$bad"
}

# ---- canary ------------------------------------------------------------------
# The first slot of a roll-out runs VERSION with CANARY_WEIGHT % of the
# traffic while the others stay on the current release; HAProxy's
# per-request log (logs/haproxy.log, "hb-req" lines) is judged by
# deploy/canary/verdict.py every CANARY_INTERVAL seconds, canary vs the other
# servers over the same interval.

canary_window() { printf '%s\n' "${CANARY_WINDOW:-$LOCAL_CANARY_WINDOW_DEFAULT}"; }
# A look every thirtieth of the window (at most 30 looks: see ALPHA in
# verdict.py), at least every second, at most every 10 s.
canary_interval() { awk -v w="$(canary_window)" 'BEGIN { i = w / 30; if (i < 1) i = 1; if (i > 10) i = 10; print i }'; }

# HAProxy weight that gives the canary PCT % of the traffic next to N servers
# of weight BASE_WEIGHT (roundrobin shares traffic by weight).
canary_weight_for() {
  awk -v p="$1" -v n="$2" -v b="$BASE_WEIGHT" 'BEGIN {
    w = int(b * n * p / (100 - p) + 0.5); if (w < 1) w = 1; if (w > 256) w = 256; print w }'
}

# Appends a canary event (figures in the detail column, without commas).
canary_event() { event "$1" "$2" "$3" "$(tr ',' ';' <<<"${4:-}")"; }

# Whether this roll-out starts with a canary (prints why when it does not).
canary_wanted() {
  local total=$1 n_todo=$2 slot
  slot=$(instances "$LOCAL_STATE" | awk 'NR == 1 { print $1 }')
  if [ "${CANARY:-1}" = 0 ]; then
    echo "    WARNING: --no-canary: $VERSION goes to every instance WITHOUT canary analysis" >&2
    canary_event "$slot" canary-skipped "$VERSION" "--no-canary"
    return 1
  fi
  if [ "${DEPLOY_ROLLBACK:-0}" = 1 ] || [ "$VERSION" = "$(cat "$LOCAL_STATE/previous-release" 2>/dev/null)" ]; then
    echo "    $VERSION is the release this fleet ran before: a rollback, no canary step"
    canary_event "$slot" canary-skipped "$VERSION" "rollback to the previous release"
    return 1
  fi
  if [ "$total" -lt 2 ] || [ "$n_todo" -lt 2 ]; then
    echo "    WARNING: no baseline to compare with ($total instance(s), $n_todo to roll): no canary analysis" >&2
    canary_event "$slot" canary-skipped "$VERSION" "no baseline"
    return 1
  fi
}

canary_plan() {
  local total
  total=$(instances "$LOCAL_STATE" | wc -l)
  if [ "${CANARY:-1}" = 0 ]; then
    echo "    canary: SKIPPED (--no-canary)"
  else
    echo "    canary: the first slot to roll takes ${CANARY_WEIGHT:-10}% of the traffic (HAProxy weight" \
      "$(canary_weight_for "${CANARY_WEIGHT:-10}" $((total - 1))) vs $BASE_WEIGHT) for $(canary_window)s, judged every" \
      "$(canary_interval)s by deploy/canary/verdict.py; fail or inconclusive: it goes back, exit non-zero" \
      "(skipped for a rollback to the previous release)"
  fi
}

# Canary step on SLOT: roll it with a small weight, judge, then give it its
# full weight (pass) or put its release back (fail, inconclusive).
canary_step() {
  local slot=$1 total=$2 prev weight pct=${CANARY_WEIGHT:-10} window
  prev=$(instance_field "$LOCAL_STATE" "$slot" release)
  window=$(canary_window)
  weight=$(canary_weight_for "$pct" $((total - 1)))
  step "canary: $slot $prev -> $VERSION with ${pct}% of the traffic (weight $weight) for ${window}s"
  canary_event "$slot" canary-start "$VERSION" "weight $weight = ${pct}% of traffic; window ${window}s"
  # The weight first: the new process enters rotation at the canary's share.
  lb_weight "$slot" "$weight" || return 1
  # The analysis reads the log from here on (it keeps the requests accepted
  # after the canary came UP).
  CANARY_LOG_OFFSET=$(stat -c %s "$LOCAL_STATE/logs/haproxy.log" 2>/dev/null || echo 0)
  if ! roll_slot "$slot" "$VERSION" </dev/null; then
    echo "    $slot: release $VERSION did not become ready" >&2
    lb_weight "$slot" "$BASE_WEIGHT" || echo "    $slot keeps weight $weight: set it back (stack.sh haproxy set weight be/$slot $BASE_WEIGHT)" >&2
    restore_slot "$slot" "$prev" || return 1
    echo "deploy of $VERSION failed on the canary $slot; $slot is back on $prev, the rest untouched" >&2
    return 1
  fi
  [ "$DRY_RUN" = 0 ] || { lb_weight "$slot" "$BASE_WEIGHT"; return 0; }

  canary_analyse "$slot" "$window"
  case $CANARY_DECISION in
    pass)
      step "canary: PASS ($CANARY_DETAIL)"
      canary_event "$slot" canary-pass "$VERSION" "$CANARY_DETAIL"
      ;;
    inconclusive)
      if [ "${CANARY_ALLOW_INCONCLUSIVE:-0}" = 1 ]; then
        step "canary: INCONCLUSIVE, going on (--canary-allow-inconclusive): $CANARY_DETAIL"
        canary_event "$slot" canary-inconclusive "$VERSION" "going on: $CANARY_DETAIL"
      else
        canary_event "$slot" canary-inconclusive "$VERSION" "$CANARY_DETAIL"
        canary_back "$slot" "$prev" "INCONCLUSIVE" || return 1
        echo "canary verdict INCONCLUSIVE: $CANARY_DETAIL" >&2
        echo "    too little traffic to judge $VERSION; $slot is back on $prev, the rest untouched" \
          "(a longer --canary-window, or --canary-allow-inconclusive to go on without a verdict)" >&2
        return 1
      fi
      ;;
    *)
      canary_event "$slot" canary-fail "$VERSION" "$CANARY_DETAIL"
      canary_back "$slot" "$prev" "FAIL" || return 1
      echo "canary verdict FAIL: $CANARY_DETAIL" >&2
      echo "    $slot is back on $prev, the rest untouched; $VERSION is not deployed" >&2
      return 1
      ;;
  esac
  lb_weight "$slot" "$BASE_WEIGHT" || return 1
}

canary_back() {
  local slot=$1 prev=$2 what=$3
  step "canary: $what: $slot back to $prev"
  lb_weight "$slot" "$BASE_WEIGHT" || echo "    $slot keeps the canary weight: set it back (stack.sh haproxy set weight be/$slot $BASE_WEIGHT)" >&2
  ROLL_STOPPED=1
  restore_slot "$slot" "$prev"
}

# Looks at the canary every canary_interval seconds until the verdict is
# not "continue"; sets CANARY_DECISION and CANARY_DETAIL.
canary_analyse() {
  local slot=$1 window=$2 interval_ms log since offset t0 next end now elapsed out pid port status
  interval_ms=$(awk -v i="$(canary_interval)" 'BEGIN { printf "%d", i * 1000 }')
  log="$LOCAL_STATE/logs/haproxy.log"
  pid=$(instance_field "$LOCAL_STATE" "$slot" pid)
  port=$(instance_field "$LOCAL_STATE" "$slot" port)
  # The window starts when the canary came UP.
  offset=${CANARY_LOG_OFFSET:-0}
  t0=$ROLL_READY_NS
  since="$((t0 / 1000000000)).$(printf '%03d' $(( t0 / 1000000 % 1000 )))"
  end=$((t0 + window * 1000000000))
  next=$t0
  CANARY_DECISION=fail CANARY_DETAIL="no verdict"
  while :; do
    # Looks on a fixed beat, the last one exactly at the end of the window.
    next=$((next + interval_ms * 1000000))
    [ "$next" -le "$end" ] || next=$end
    now=$(date +%s%N)
    if [ "$next" -gt "$now" ]; then
      sleep "$(( (next - now) / 1000000000 )).$(printf '%03d' $(( (next - now) / 1000000 % 1000 )))"
    fi
    now=$(date +%s%N)
    elapsed="$(( (now - t0) / 1000000000 )).$(( (now - t0) / 100000000 % 10 ))"
    # The last look is the end of the window, even if sleep woke a little early.
    [ "$next" -lt "$end" ] || elapsed=$window
    # Health first: a canary that died or left rotation is a failed canary.
    status=$(haproxy_stat "$LOCAL_STATE" "$slot" status)
    if ! instance_alive "$pid" "$port" || [ "$status" != UP ]; then
      CANARY_DECISION=fail
      CANARY_DETAIL="canary $slot is $(instance_alive "$pid" "$port" && echo alive || echo dead), HAProxy ${status:-unreachable} after ${elapsed}s"
      echo "    canary ${elapsed}s: $CANARY_DETAIL" >&2
      return 0
    fi
    if ! out=$(python3 "$ROOT/deploy/canary/verdict.py" haproxy --log "$log" --offset "$offset" --since "$since" \
      --canary "$slot" --elapsed "$elapsed" --window "$window"); then
      CANARY_DECISION=fail CANARY_DETAIL="deploy/canary/verdict.py failed: no verdict"
      return 0
    fi
    CANARY_DECISION=${out%% *}
    CANARY_DETAIL=${out#* }
    echo "    canary ${elapsed}s: $out"
    canary_event "$slot" canary-check "$VERSION" "$out"
    [ "$CANARY_DECISION" = continue ] || return 0
  done
}
