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
  echo "    on failure: that slot goes back to its previous release, the others are untouched, exit non-zero"
}

server_idle() { [ "$(haproxy_stat "$LOCAL_STATE" "$1" scur)" = 0 ]; }

# Rolls one slot to RELEASE. Returns non-zero (and leaves the slot drained,
# its new process stopped) when the new process does not become ready.
roll_slot() {
  local slot=$1 release=$2 pid port t0
  pid=$(instance_field "$LOCAL_STATE" "$slot" pid)
  port=$(instance_field "$LOCAL_STATE" "$slot" port)
  t0=$(date +%s%N)

  run haproxy_set_state "$LOCAL_STATE" "$slot" drain
  event "$slot" drain "$(instance_field "$LOCAL_STATE" "$slot" release)"
  if [ "$DRY_RUN" = 0 ]; then
    # HAProxy sends a drained server no new requests; wait for the current ones.
    if wait_until "$LOCAL_DRAIN_TIMEOUT" server_idle "$slot"; then
      echo "    $slot: no request in flight after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    else
      echo "    $slot: still $(haproxy_stat "$LOCAL_STATE" "$slot" scur) in-flight requests after ${LOCAL_DRAIN_TIMEOUT}s; stopping anyway"
    fi
  fi
  if instance_alive "$pid" "$port"; then
    local t1
    t1=$(date +%s%N)
    run stop_instance "$pid"
    [ "$DRY_RUN" = 1 ] || echo "    $slot: pid $pid exited $(( ($(date +%s%N) - t1) / 1000000 )) ms after SIGTERM"
  fi
  event "$slot" stopped ""

  local newpid=""
  if [ "$DRY_RUN" = 1 ]; then
    run start_instance "$LOCAL_STATE" "$slot" "$release" "$LOCAL_READY_TIMEOUT"
    run haproxy_set_state "$LOCAL_STATE" "$slot" ready
    return 0
  fi
  echo "    \$ start_instance $slot $release (127.0.0.1:$port)"
  event "$slot" starting "$release"
  if ! newpid=$(start_instance "$LOCAL_STATE" "$slot" "$release" "$LOCAL_READY_TIMEOUT"); then
    set_instance "$LOCAL_STATE" "$slot" 0 "$release"
    event "$slot" failed "$release"
    return 1
  fi
  set_instance "$LOCAL_STATE" "$slot" "$newpid" "$release"
  event "$slot" started "$release"
  # Wait for HAProxy's own health check to pass before the slot takes
  # traffic again: in drain state a healthy server reports DRAIN.
  if ! wait_until 10 haproxy_status_is "$LOCAL_STATE" "$slot" DRAIN; then
    echo "    $slot: HAProxy health check did not pass within 10s (status $(haproxy_stat "$LOCAL_STATE" "$slot" status))" >&2
    stop_instance "$newpid"
    set_instance "$LOCAL_STATE" "$slot" 0 "$release"
    event "$slot" failed "$release"
    return 1
  fi
  run haproxy_set_state "$LOCAL_STATE" "$slot" ready
  wait_until 5 haproxy_status_is "$LOCAL_STATE" "$slot" UP || { echo "    $slot: HAProxy does not report UP" >&2; return 1; }
  event "$slot" ready "$release"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '    %s: pid %s -> %s, release %s, UP after %d.%03ds\n' "$slot" "$pid" "$newpid" "$release" \
    $((ms / 1000)) $((ms % 1000))
}

# --report DIR: steady load from tools/loadgen through HAProxy for the whole
# roll-out (its users are deleted afterwards), then DIR/requests.csv,
# DIR/events.csv, DIR/summary.json and DIR/timeline.png.
report_start() {
  local lg="$ROOT/target/debug/loadgen"
  mkdir -p "$LOCAL_REPORT"
  LOCAL_REPORT=$(cd "$LOCAL_REPORT" && pwd)
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
  if [ -n "$LOCAL_REPORT" ] && [ "$DRY_RUN" = 0 ]; then report_start || return 1; fi
  roll_all || rc=$?
  if [ -n "$REPORT_LG_PID" ]; then report_finish; fi
  return "$rc"
}

# Deploys VERSION to every slot; on a slot that fails, puts its previous
# release back and stops.
roll_all() {
  exec 9>"$LOCAL_STATE/lock"
  flock -w 60 9 || { echo "another deploy holds $LOCAL_STATE/lock" >&2; return 1; }
  if [ -n "$ARTIFACT" ]; then
    run install_release "$LOCAL_STATE" "$VERSION" "$ARTIFACT" "$ARTIFACT_SHA256"
  fi
  [ "$DRY_RUN" = 1 ] || instances "$LOCAL_STATE" | awk '{ print $1, $5 }' >"$LOCAL_ROLLBACK_FILE"

  local slot port pid rel n_done=0 total
  total=$(instances "$LOCAL_STATE" | wc -l)
  while read -r slot port _ pid rel; do
    if [ "$rel" = "$VERSION" ] && instance_alive "$pid" "$port" && [ "$DRY_RUN" = 0 ]; then
      echo "    $slot: already on $VERSION (pid $pid)"
      n_done=$((n_done + 1))
      continue
    fi
    step "$slot: $rel -> $VERSION"
    if ! roll_slot "$slot" "$VERSION" </dev/null; then
      echo "    $slot: release $VERSION did not become ready: putting $rel back" >&2
      event "$slot" rollback "$rel"
      if ! roll_slot "$slot" "$rel" </dev/null; then
        echo "ROLLBACK FAILED: $slot could not be restored to $rel; stack needs attention (deploy/local/stack.sh status)" >&2
        return 1
      fi
      echo "deploy of $VERSION failed on $slot; $slot is back on $rel;" \
        "$n_done of $total slots on $VERSION, the rest untouched" >&2
      return 1
    fi
    n_done=$((n_done + 1))
  done < <(instances "$LOCAL_STATE")

  [ "$DRY_RUN" = 0 ] || return 0
  target_verify "$VERSION"
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
  local bad=0 port got
  while read -r slot prev; do
    port=$(instance_field "$LOCAL_STATE" "$slot" port)
    got=$(instance_release "$port")
    [ "$got" = "$prev" ] || { echo "    $slot reports '${got:-?}' after the rollback, expected $prev" >&2; bad=1; }
  done <"$LOCAL_ROLLBACK_FILE"
  return "$bad"
}
