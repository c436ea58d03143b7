# shellcheck shell=bash
# Helpers shared by the drills (sourced, not run): polling with a deadline,
# free loopback ports, throwaway PostgreSQL clusters, and service instances.
# Everything binds to 127.0.0.1 and lives under one temp dir that the caller
# removes in its EXIT trap (drill_cleanup).

DRILL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$DRILL_ROOT/.venv/bin:$PATH"
PY=${PYTHON:-python3}
# shellcheck disable=SC2034 # used by the drills that source this file
HBCLIENT="$DRILL_ROOT/drills/hbclient.py"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { printf 'DRILL FAILED: %s\n' "$*" >&2; exit 1; }

# now: wall-clock seconds with microseconds, the same clock the Python
# client stamps its requests with.
now() { printf '%s\n' "$EPOCHREALTIME"; }
# elapsed START [END]: seconds between two now() stamps, 3 decimals.
elapsed() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.3f\n", b - a }'; }

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s until it succeeds;
# fail the drill with WHAT once the deadline passes.
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(awk -v n="$EPOCHREALTIME" -v l="$limit" 'BEGIN { printf "%.3f", n + l }')
  until "$@" >/dev/null 2>&1; do
    if awk -v n="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
      fail "timed out after ${limit}s waiting for: $what"
    fi
    sleep 0.1
  done
}

# require CMD...: every command must exist. A drill never skips silently.
require() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || fail "missing tool: $c (run scripts/setup.sh dev)"
  done
}

# free_port: a port the kernel just handed out on 127.0.0.1. Used for servers
# that cannot report the port they bound (postgres, moto).
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# drill_workdir: a temp dir readable by the postgres user (its clusters live
# below it); sets WORK. The caller's EXIT trap calls drill_cleanup.
drill_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/hb-drill.XXXXXX")
  chmod 755 "$WORK"
  DRILL_PIDS=()
  DRILL_CLUSTERS=()
  # Turn signals into an exit, so the caller's EXIT trap cleans up.
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ---------------------------------------------------------------- PostgreSQL

# pg_server_bin NAME: the server binary (initdb, pg_ctl, postgres). The image
# has them on PATH; Debian's package keeps them in /usr/lib/postgresql/N/bin.
pg_server_bin() {
  local p
  if p=$(command -v "$1" 2>/dev/null); then printf '%s\n' "$p"; return; fi
  p=$(find /usr/lib/postgresql -path "*/bin/$1" 2>/dev/null | sort -V | tail -n1)
  [ -n "$p" ] || fail "PostgreSQL server binary $1 not found (run scripts/setup.sh dev)"
  printf '%s\n' "$p"
}

# as_postgres CMD...: PostgreSQL refuses to run as root.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_create NAME: initdb a cluster in $WORK/NAME with a loopback port, a
# socket dir of its own, scram passwords over TCP and trust on the socket.
# Sets PG_PORT_<NAME>.
pg_create() {
  local name=$1 dir="$WORK/$1" port
  port=$(free_port)
  mkdir -p "$dir/sock"
  [ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$dir"
  as_postgres "$(pg_server_bin initdb)" -D "$dir/data" -U postgres -A trust \
    --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; fail "initdb $name"; }
  pg_conf "$name" "listen_addresses = '127.0.0.1'" "port = $port" \
    "unix_socket_directories = '$dir/sock'" "fsync = on" "max_connections = 50"
  pg_set_port "$name" "$port"
}

# pg_conf NAME LINE...: append settings to the cluster's postgresql.conf.
pg_conf() {
  local name=$1; shift
  printf '%s\n' "$@" | as_postgres tee -a "$WORK/$name/data/postgresql.conf" >/dev/null
}

# pg_start NAME: start and wait until it accepts connections.
pg_start() {
  local name=$1 dir="$WORK/$1"
  as_postgres "$(pg_server_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null \
    || { tail -n 30 "$dir/server.log" >&2; fail "pg_ctl start $name"; }
  DRILL_CLUSTERS+=("$dir/data")
}

# pg_stop NAME [MODE]: fast by default; "immediate" is a crash.
pg_stop() {
  as_postgres "$(pg_server_bin pg_ctl)" -D "$WORK/$1/data" -m "${2:-fast}" -w -t 30 stop >/dev/null
}

# pg_psql NAME [ARGS...]: psql as the superuser over the cluster's socket.
pg_psql() {
  local name=$1; shift
  psql -X -q -v ON_ERROR_STOP=1 -h "$WORK/$name/sock" -p "$(pg_port "$name")" -U postgres "$@"
}
pg_port() { local v="PG_PORT_$1"; printf '%s\n' "${!v}"; }
pg_set_port() { printf -v "PG_PORT_$1" '%s' "$2"; }

# pg_app_db NAME USER PASSWORD DB: an application role owning its database.
# The values travel on stdin, not in psql's argv (visible in ps).
pg_app_db() {
  {
    printf "\\set u '%s'\n\\set p '%s'\n\\set d '%s'\n" "${2//\'/\'\'}" "${3//\'/\'\'}" "${4//\'/\'\'}"
    cat <<'SQL'
CREATE ROLE :"u" LOGIN PASSWORD :'p';
CREATE DATABASE :"d" OWNER :"u";
SQL
  } | pg_psql "$1" -d postgres
}

# ------------------------------------------------------------------- service

HB_BIN=${HELLO_BIRTHDAY_BIN:-$DRILL_ROOT/target/debug/hello-birthday}

# build_service: the `test` stage has normally built it; this is a no-op then.
build_service() {
  if [ -z "${HELLO_BIRTHDAY_BIN:-}" ]; then
    log "cargo build --bin hello-birthday"
    (cd "$DRILL_ROOT" && cargo build --quiet --locked --bin hello-birthday) || fail "cargo build"
  fi
  [ -x "$HB_BIN" ] || fail "service binary $HB_BIN missing"
}

# service_start NAME DATABASE_URL: run an instance on free loopback ports
# (PORT=0, METRICS_PORT=0) and wait until its log reports "listening".
# Sets SVC_PID_<NAME>, SVC_URL_<NAME> (API) and SVC_METRICS_<NAME>.
service_start() {
  local name=$1 url=$2 logf="$WORK/svc-$1.log" pid line addrs a api="" metrics=""
  : >"$logf"
  PORT=0 METRICS_PORT=0 BIND_ADDR=127.0.0.1 DATABASE_URL="$url" LOG_FORMAT=text \
    LOG_LEVEL="${SVC_LOG_LEVEL:-warn,hello_birthday=info}" DRAIN_SECONDS=0 \
    DB_TIMEOUT_MS="${SVC_DB_TIMEOUT_MS:-2000}" "$HB_BIN" >>"$logf" 2>&1 &
  pid=$!
  DRILL_PIDS+=("$pid")
  printf -v "SVC_PID_$name" '%s' "$pid"
  wait_until 60 "service $name to log 'listening'" grep -q listening "$logf"
  kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; fail "service $name exited"; }
  line=$(grep -m1 listening "$logf")
  # The line names both bound addresses; tell them apart by asking.
  addrs=$(grep -oE '127\.0\.0\.1:[0-9]+' <<<"$line" | sort -u)
  for a in $addrs; do
    if curl -fsS -m 2 "http://$a/healthz" >/dev/null 2>&1; then api=$a
    elif curl -fsS -m 2 "http://$a/metrics" >/dev/null 2>&1; then metrics=$a
    fi
  done
  [ -n "$api" ] || { cat "$logf" >&2; fail "service $name: no API address in: $line"; }
  printf -v "SVC_URL_$name" 'http://%s' "$api"
  printf -v "SVC_METRICS_$name" 'http://%s' "$metrics"
}

# service_stop NAME: SIGTERM and wait for a clean exit (status 0).
service_stop() {
  local v="SVC_PID_$1" pid rc=0
  pid=${!v}
  kill -TERM "$pid" 2>/dev/null || return 0
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "service $1 exited with status $rc after SIGTERM"
}

svc_url() { local v="SVC_URL_$1"; printf '%s\n' "${!v}"; }
svc_metrics() { local v="SVC_METRICS_$1"; printf '%s\n' "${!v}"; }
svc_pid() { local v="SVC_PID_$1"; printf '%s\n' "${!v}"; }

# drill_cleanup: stop what the drill started, even after a failure.
drill_cleanup() {
  local p d
  for p in "${DRILL_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DRILL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${DRILL_CLUSTERS[@]}"; do
    if [ -f "$d/postmaster.pid" ]; then
      as_postgres "$(pg_server_bin pg_ctl)" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  if [ "${DRILL_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
