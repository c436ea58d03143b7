#!/usr/bin/env bash
# The local stack: a production-like staging environment on loopback.
# PostgreSQL + N instances of hello-birthday + HAProxy + Prometheus, every
# one on a random free 127.0.0.1 port, everything under one state dir.
set -euo pipefail

# The stack's helpers, and through them the shell library of every script
# (scripts/lib/common.sh: step, note, die, usage_error, optarg).
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: deploy/local/stack.sh COMMAND [--state-dir DIR] [options]

Commands:
  up        Start PostgreSQL (initdb into the state dir), N instances, HAProxy
            and Prometheus. A no-op when the stack in DIR is already up.
              --instances N     number of instances (default 3)
              --binary PATH     service binary (default target/debug/hello-birthday)
              --release LABEL   release label of the first release (default dev)
              --no-prometheus   do not start Prometheus
  down      Stop everything and delete the state dir (--keep: keep it).
  status    Show every instance's release, readiness and HAProxy state.
  env       Print stack.env (ports and URLs, KEY=VALUE).
  start SLOT     Start SLOT with the release recorded for it (after a crash)
                 and wait until HAProxy's check passes; records its pid.
                   --release LABEL      start this installed release instead
                   --ready-timeout SECS /readyz must answer 200 within (60)
                   --no-lb-wait         do not wait for HAProxy (a drained slot)
                 On failure the process is stopped and the slot recorded with pid 0.
  stop SLOT      SIGTERM the slot's process (it drains), wait for its exit
                 (SIGKILL after drain + shutdown + 5 s); records pid 0.
  install LABEL BINARY [--sha256 HEX]
                 Copy BINARY into releases/LABEL/ (refused if LABEL exists
                 with other bytes; --sha256: the checksum BINARY must have).
  haproxy CMD... Send a command to HAProxy's runtime API (e.g. "show stat").

The deploy program (scripts/deploy.sh --target local) calls start, stop and
install; it holds STATE/lock for its whole run and hands it over as fd 9.

Options:
  --state-dir DIR   default: $STACK_STATE_DIR or .state/local in the repository

State dir files (see deploy/local/README.md): stack.env, instances
("slot port metrics_port pid release" per line), releases/, logs/.
USAGE
}

require_tools() {
  local t missing=()
  for t in haproxy socat curl jq python3 setsid flock psql pg_isready; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (scripts/setup.sh dev)"
}

stack_up_already() {
  [ -f "$STATE/stack.env" ] || return 1
  local HAPROXY_PID=""
  # shellcheck disable=SC1091
  . "$STATE/stack.env"
  pid_is "$HAPROXY_PID" haproxy
}

start_postgres() {
  local port=$1
  if [ "$(id -u)" -eq 0 ]; then
    # The postgres user must reach its data dir through the state dir.
    chmod a+x "$STATE"
    as_pg test -x "$STATE" || die "the postgres user cannot reach $STATE: every parent directory needs o+x"
  fi
  step "PostgreSQL: initdb + start on 127.0.0.1:$port"
  pg_init "$STATE/pg" --user hello --password hello --auth-host scram-sha-256 --port "$port" \
    || die "initdb failed"
  pg_conf "$STATE/pg" "max_connections = 60" "shared_buffers = 32MB"
  pg_start "$STATE/pg" || die "PostgreSQL did not start"
  pg_psql "$STATE/pg" -d postgres -c "CREATE DATABASE hello_birthday" >/dev/null
}

render_haproxy() {
  local servers="" slot port
  while read -r slot port _; do
    servers+="    server $slot 127.0.0.1:$port"$'\n'
  done < <(instances "$STATE")
  mkdir -p "$STATE/haproxy"
  python3 - "$LOCAL_DIR/haproxy.cfg.tmpl" "$STATE/haproxy/haproxy.cfg" <<PY
import sys
text = open(sys.argv[1]).read()
for k, v in {"@STATE@": "$STATE", "@HAPROXY_PORT@": "$HAPROXY_PORT",
             "@HAPROXY_STATS_PORT@": "$HAPROXY_STATS_PORT", "@SERVERS@": """${servers%$'\n'}"""}.items():
    text = text.replace(k, v)
open(sys.argv[2], "w").write(text)
PY
  haproxy -c -q -f "$STATE/haproxy/haproxy.cfg" || die "generated HAProxy config is invalid"
}

# Prometheus config: the monitoring generator, with the alert rules.
render_prometheus() {
  local targets=() slot mport
  while read -r slot _ mport _; do targets+=("127.0.0.1:$mport"); done < <(instances "$STATE")
  mkdir -p "$STATE/prometheus"
  "$REPO_ROOT/monitoring/prometheus/render-local-config.sh" --out "$STATE/prometheus/prometheus.yml" \
    --rules-dir "$REPO_ROOT/monitoring/prometheus/rules" "${targets[@]}"
}

cmd_up() {
  local n=3 binary="$REPO_ROOT/target/debug/hello-birthday" label=dev prom=1
  while [ $# -gt 0 ]; do
    case $1 in
      --instances) optarg n "$@"; shift 2 ;;
      --binary) optarg binary "$@"; shift 2 ;;
      --release) optarg label "$@"; shift 2 ;;
      --no-prometheus) prom=0; shift ;;
      *) usage_error "unknown option for up: $1" ;;
    esac
  done
  [[ $n =~ ^[1-9][0-9]?$ ]] || usage_error "--instances must be 1..99"
  [ -x "$binary" ] || die "no service binary at $binary (cargo build --bin hello-birthday)"
  require_tools
  [ "$prom" = 0 ] || command -v prometheus >/dev/null || die "prometheus not installed (scripts/setup.sh dev)"

  if stack_up_already; then
    step "stack in $STATE is already up"
    cmd_status
    return 0
  fi
  if [ -e "$STATE/stack.env" ]; then
    step "removing the stale state of an earlier stack in $STATE"
    cmd_down
  fi
  mkdir -p "$STATE/logs" "$STATE/releases"
  stack_lock "$STATE"
  STATE=$(cd "$STATE" && pwd)

  local ports i=0
  read -r -a ports <<<"$(free_ports $(( 2 * n + 4 )))"
  PG_PORT=${ports[0]}; HAPROXY_PORT=${ports[1]}; HAPROXY_STATS_PORT=${ports[2]}; PROMETHEUS_PORT=${ports[3]}
  DATABASE_URL="postgres://hello:hello@127.0.0.1:$PG_PORT/hello_birthday"
  {
    echo "# slot port metrics_port pid release"
    for ((i = 1; i <= n; i++)); do
      echo "s$i ${ports[$((2 + 2 * i))]} ${ports[$((3 + 2 * i))]} 0 $label"
    done
  } >"$STATE/instances"
  write_env() {
    cat >"$STATE/stack.env" <<ENV
STATE_DIR=$STATE
INSTANCES=$n
PG_PORT=$PG_PORT
PG_DATA=$STATE/pg/data
DATABASE_URL=$DATABASE_URL
HAPROXY_PORT=$HAPROXY_PORT
HAPROXY_URL=http://127.0.0.1:$HAPROXY_PORT
HAPROXY_STATS_PORT=$HAPROXY_STATS_PORT
HAPROXY_SOCKET=$STATE/haproxy/admin.sock
HAPROXY_PID=${HAPROXY_PID:-}
PROMETHEUS_PORT=$([ "$prom" = 1 ] && echo "$PROMETHEUS_PORT")
PROMETHEUS_URL=$([ "$prom" = 1 ] && echo "http://127.0.0.1:$PROMETHEUS_PORT")
PROMETHEUS_PID=${PROMETHEUS_PID:-}
ENV
  }
  write_env

  start_postgres "$PG_PORT"

  step "release $label: $binary"
  install_release "$STATE" "$label" "$binary"

  local slot pid
  for ((i = 1; i <= n; i++)); do
    slot="s$i"
    step "instance $slot: 127.0.0.1:$(instance_field "$STATE" "$slot" port) (metrics :$(instance_field "$STATE" "$slot" metrics_port))"
    pid=$(start_instance "$STATE" "$slot" "$label" 60) || die "instance $slot did not start (see $STATE/logs/$slot.log)"
    set_instance "$STATE" "$slot" "$pid" "$label"
  done

  step "HAProxy on 127.0.0.1:$HAPROXY_PORT (stats :$HAPROXY_STATS_PORT)"
  render_haproxy
  HAPROXY_PID=$(spawn "$STATE/logs/haproxy.log" haproxy -db -f "$STATE/haproxy/haproxy.cfg")
  write_env
  wait_until 10 test -S "$STATE/haproxy/admin.sock" || die "HAProxy did not start (see $STATE/logs/haproxy.log)"
  for ((i = 1; i <= n; i++)); do
    wait_until 10 haproxy_status_is "$STATE" "s$i" UP || die "HAProxy does not see s$i UP"
  done

  if [ "$prom" = 1 ]; then
    step "Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
    render_prometheus
    PROMETHEUS_PID=$(spawn "$STATE/logs/prometheus.log" prometheus \
      --config.file="$STATE/prometheus/prometheus.yml" \
      --storage.tsdb.path="$STATE/prometheus/data" \
      --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle)
    write_env
    wait_until 30 curl -fs -o /dev/null "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" \
      || die "Prometheus did not become ready (see $STATE/logs/prometheus.log)"
  fi
  step "stack up: http://127.0.0.1:$HAPROXY_PORT (state: $STATE)"
  cmd_status
}

cmd_down() {
  local keep=0
  case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) usage_error "unknown option for down: $1" ;;
  esac
  if [ ! -f "$STATE/stack.env" ]; then
    step "no stack in $STATE"
    [ "$keep" = 1 ] || rm -rf "$STATE"
    return 0
  fi
  local HAPROXY_PID="" PROMETHEUS_PID="" PG_DATA=""
  # shellcheck disable=SC1091
  . "$STATE/stack.env"
  step "stopping the stack in $STATE"
  local slot port pid
  if [ -f "$STATE/instances" ]; then
    while read -r slot port _ pid _; do
      # Stop them together: each one drains for DRAIN_SECONDS.
      if instance_alive "$pid" "$port"; then note "instance $slot (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true; fi
    done < <(instances "$STATE")
    while read -r slot port _ pid _; do
      if instance_alive "$pid" "$port"; then stop_instance "$pid"; fi
    done < <(instances "$STATE")
  fi
  if pid_is "$PROMETHEUS_PID" prometheus; then note "prometheus (pid $PROMETHEUS_PID)"; stop_pid "$PROMETHEUS_PID" 10; fi
  if pid_is "$HAPROXY_PID" haproxy; then note "haproxy (pid $HAPROXY_PID)"; stop_pid "$HAPROXY_PID" 5; fi
  if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    note "postgresql"
    pg_stop "${PG_DATA%/data}" fast 2>/dev/null || true
  fi
  if [ "$keep" = 1 ]; then
    rm -f "$STATE/stack.env.stopped"; mv "$STATE/stack.env" "$STATE/stack.env.stopped"
    step "stopped; state kept in $STATE"
  else
    rm -rf "$STATE"
    step "stopped; $STATE removed"
  fi
}

cmd_status() {
  load_stack_env "$STATE"
  printf 'stack %s\n' "$STATE"
  printf '  haproxy     %s (pid %s, %s)   stats http://127.0.0.1:%s/\n' "$HAPROXY_URL" "$HAPROXY_PID" \
    "$(pid_is "$HAPROXY_PID" haproxy && echo up || echo DOWN)" "$HAPROXY_STATS_PORT"
  printf '  postgresql  127.0.0.1:%s (%s)\n' "$PG_PORT" \
    "$(pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null && echo up || echo DOWN)"
  if [ -n "${PROMETHEUS_URL:-}" ]; then
    printf '  prometheus  %s (pid %s, %s)\n' "$PROMETHEUS_URL" "$PROMETHEUS_PID" \
      "$(pid_is "$PROMETHEUS_PID" prometheus && echo up || echo DOWN)"
  fi
  printf '  %-4s %-6s %-7s %-8s %-8s %-14s %-22s %-7s %s\n' slot port metrics pid process release version readyz haproxy
  local slot port mport pid rel running ready hstat health version
  local stat
  stat=$(haproxy_cmd "$STATE" "show stat" 2>/dev/null || true)
  while read -r slot port mport pid rel; do
    running=$(instance_alive "$pid" "$port" && echo alive || echo dead)
    ready=$(http_code "http://127.0.0.1:$port/readyz")
    [ "$ready" != 000 ] || ready=-
    # What the process itself reports (/healthz), not what the list says.
    health=$(curl -fsS -m 2 "http://127.0.0.1:$port/healthz" 2>/dev/null || true)
    rel=$(jq -r '.release // "?"' <<<"${health:-{\}}" 2>/dev/null || echo '?')
    version=$(jq -r '"\(.version // "?") (\(.revision // "?"))"' <<<"${health:-{\}}" 2>/dev/null || echo '?')
    hstat=$(awk -F, -v s="$slot" '$1 == "be" && $2 == s { print $18 }' <<<"$stat")
    printf '  %-4s %-6s %-7s %-8s %-8s %-14s %-22s %-7s %s\n' "$slot" "$port" "$mport" "$pid" "$running" "$rel" \
      "$version" "$ready" "${hstat:-?}"
  done < <(instances "$STATE")
}

cmd_start() {
  local slot="" rel="" timeout=60 lb_wait=1 pid
  while [ $# -gt 0 ]; do
    case $1 in
      --release) optarg rel "$@"; shift 2 ;;
      --ready-timeout) optarg timeout "$@"; shift 2 ;;
      --no-lb-wait) lb_wait=0; shift ;;
      -*) usage_error "unknown option for start: $1" ;;
      *) [ -z "$slot" ] || usage_error "start takes one SLOT"; slot=$1; shift ;;
    esac
  done
  [ -n "$slot" ] || usage_error "usage: stack.sh start SLOT [--release LABEL] [--ready-timeout SECS] [--no-lb-wait]"
  [[ $timeout =~ ^[0-9]+$ ]] || usage_error "--ready-timeout must be whole seconds"
  load_stack_env "$STATE"
  stack_lock "$STATE"
  pid=$(instance_field "$STATE" "$slot" pid)
  [ -n "$pid" ] || die "no slot $slot"
  if [ -z "$rel" ]; then
    rel=$(instance_field "$STATE" "$slot" release)
    if instance_alive "$pid" "$(instance_field "$STATE" "$slot" port)"; then step "$slot already running (pid $pid)"; return 0; fi
  fi
  note "starting $slot on release $rel"
  if ! pid=$(start_instance "$STATE" "$slot" "$rel" "$timeout"); then
    set_instance "$STATE" "$slot" 0 "$rel"
    die "$slot did not become ready on release $rel"
  fi
  set_instance "$STATE" "$slot" "$pid" "$rel"
  [ "$lb_wait" = 1 ] || { note "$slot up (pid $pid)"; return 0; }
  if ! wait_until 10 haproxy_status_is "$STATE" "$slot" UP; then
    stop_instance "$pid"
    set_instance "$STATE" "$slot" 0 "$rel"
    die "HAProxy does not see $slot UP; stopped it"
  fi
  step "$slot up (pid $pid), HAProxy: UP"
}

cmd_stop() {
  local slot=${1:-} pid port t0
  if [ -z "$slot" ] || [ $# -ne 1 ]; then usage_error "usage: stack.sh stop SLOT"; fi
  [[ $slot != -* ]] || usage_error "unknown option for stop: $slot"
  load_stack_env "$STATE"
  stack_lock "$STATE"
  pid=$(instance_field "$STATE" "$slot" pid)
  port=$(instance_field "$STATE" "$slot" port)
  [ -n "$port" ] || die "no slot $slot"
  if instance_alive "$pid" "$port"; then
    t0=$(date +%s%N)
    stop_instance "$pid"
    pid_gone "$pid" || die "$slot: pid $pid does not exit"
    note "$slot: pid $pid exited $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGTERM"
  fi
  set_instance "$STATE" "$slot" 0 "$(instance_field "$STATE" "$slot" release)"
}

cmd_install() {
  local label=${1:-} binary=${2:-} sha=""
  [ $# -ge 2 ] || usage_error "usage: stack.sh install LABEL BINARY [--sha256 HEX]"
  shift 2
  case "${1:-}" in
    --sha256) optarg sha "$@" ;;
    "") ;;
    *) usage_error "unknown option for install: $1" ;;
  esac
  [ -f "$binary" ] || die "no binary at $binary"
  load_stack_env "$STATE"
  stack_lock "$STATE"
  install_release "$STATE" "$label" "$binary" "$sha"
  note "release $label installed in $STATE/releases/$label"
}

main() {
  local cmd=${1:-}
  [ -n "$cmd" ] || usage_error "a COMMAND is required"
  shift
  case $cmd in -h|--help|help) usage; exit 0 ;; esac
  STATE=$(default_state_dir)
  local args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --state-dir) optarg STATE "$@"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  case $cmd in
    up) cmd_up "${args[@]}" ;;
    down) cmd_down "${args[@]}" ;;
    status) cmd_status ;;
    env) load_stack_env "$STATE"; cat "$STATE/stack.env" ;;
    start) cmd_start "${args[@]}" ;;
    stop) cmd_stop "${args[@]}" ;;
    install) cmd_install "${args[@]}" ;;
    haproxy) load_stack_env "$STATE"; haproxy_cmd "$STATE" "${args[*]}" ;;
    *) usage_error "unknown command: $cmd" ;;
  esac
}

main "$@"
