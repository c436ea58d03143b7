# shellcheck shell=bash
# The host side of the local stack, shared by deploy/local/stack.sh and the
# deploy tests: the state dir layout, the instance list, HAProxy's runtime
# API and the instances' lifecycle. The deploy program (deploy/hbdeploy,
# target local) calls stack.sh for every instance it starts or stops.
# Generic helpers come from scripts/lib/ (sourced below).
#
# State dir (default .state/local, or STACK_STATE_DIR, or --state-dir):
#   stack.env          KEY=VALUE lines: ports, URLs, pids of the shared servers
#   instances          one line per slot: "slot port metrics_port pid release"
#   releases/LABEL/    hello-birthday binary (+ .sha256) of each release label
#   haproxy/ pg/ prometheus/ logs/   configs, data and logs of each server
#   lock               flock(1) target: one mutation of the stack at a time
#   deploy-record.json the deploy program's own record (rollback targets)

LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOCAL_DIR/../.." && pwd)
# step, note, die, usage_error, optarg (scripts/lib/common.sh); wait_until,
# free_ports, pid_alive, spawn, stop_pid; as_pg and the throwaway
# PostgreSQL cluster (pg_init, pg_start, pg_stop...).
# shellcheck source=scripts/lib/pg.sh
. "$REPO_ROOT/scripts/lib/pg.sh"

# Tunables of the instances (environment overrides).
: "${INSTANCE_DRAIN_SECONDS:=1}"       # the service keeps serving this long after SIGTERM
: "${INSTANCE_SHUTDOWN_SECONDS:=5}"    # then in-flight requests get this long
: "${INSTANCE_POOL_SIZE:=8}"           # PostgreSQL connections per instance

default_state_dir() { printf '%s\n' "${STACK_STATE_DIR:-$REPO_ROOT/.state/local}"; }

# Loads stack.env into the environment; fails when the stack is not up.
load_stack_env() {
  local state=$1
  [ -f "$state/stack.env" ] || die "no stack in $state (run deploy/local/stack.sh up)"
  # shellcheck disable=SC1091
  . "$state/stack.env"
}

# pid_max is small (32768 here): a recorded pid may have been reused by an
# unrelated process, so check the process is what we started before
# signalling it. An instance is recognised by its PORT, a server by its name.
instance_alive() {
  pid_alive "$1" && tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qx "PORT=$2"
}
pid_is() { pid_alive "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

# ---- the instance list -----------------------------------------------------

# Prints the instance lines (no comments).
instances() { grep -v '^#' "$1/instances"; }

# Field of a slot: instance_field STATE SLOT port|metrics_port|pid|release
instance_field() {
  local col
  case $3 in port) col=2 ;; metrics_port) col=3 ;; pid) col=4 ;; release) col=5 ;; *) return 2 ;; esac
  awk -v s="$2" -v c="$col" '$1 == s { print $c }' "$1/instances"
}

# Rewrites a slot's pid and release atomically.
set_instance() {
  local state=$1 slot=$2 pid=$3 release=$4 tmp
  tmp=$(mktemp "$state/instances.XXXXXX")
  awk -v s="$slot" -v p="$pid" -v r="$release" \
    'BEGIN { OFS = " " } $1 == s { $4 = p; $5 = r } { print }' "$state/instances" >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$state/instances"
}

# ---- releases ---------------------------------------------------------------

valid_label() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]; }

# Copies BINARY into releases/LABEL/ (each release gets its own copy, so a
# rebuild of the source tree never changes what is running).
install_release() {
  local state=$1 label=$2 binary=$3 want=${4:-} dir got
  valid_label "$label" || die "bad release label '$label' (letters, digits, . _ -)"
  dir="$state/releases/$label"
  got=$(sha256sum "$binary" | cut -d' ' -f1)
  [ -z "$want" ] || [ "$got" = "$want" ] || die "checksum of $binary changed: $got, expected $want"
  if [ -f "$dir/hello-birthday.sha256" ]; then
    [ "$(cut -d' ' -f1 "$dir/hello-birthday.sha256")" = "$got" ] \
      || die "release label '$label' already exists with another binary; pick a new label"
    return 0
  fi
  mkdir -p "$dir"
  cp "$binary" "$dir/hello-birthday.tmp"
  chmod 0755 "$dir/hello-birthday.tmp"
  mv "$dir/hello-birthday.tmp" "$dir/hello-birthday"
  printf '%s  hello-birthday\n' "$got" >"$dir/hello-birthday.sha256"
}

# ---- HAProxy runtime API ----------------------------------------------------

haproxy_cmd() {
  local state=$1; shift
  printf '%s\n' "$*" | socat -t 2 - "UNIX-CONNECT:$state/haproxy/admin.sock"
}

# Field of one server in "show stat": haproxy_stat STATE SLOT status|scur|...
haproxy_stat() {
  local state=$1 slot=$2 field=$3
  haproxy_cmd "$state" "show stat" | awk -F, -v s="$slot" -v f="$field" '
    NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == "be" && $2 == s { print $(col[f]) }'
}

haproxy_status_is() { [ "$(haproxy_stat "$1" "$2" status)" = "$3" ]; }

# stack_lock STATE: one mutation of the stack at a time. A caller that holds
# STATE/lock already (the deploy program, for its whole run) hands it over as
# fd 9; otherwise it is taken here, waiting up to 60 s.
stack_lock() {
  if ! [ /proc/self/fd/9 -ef "$1/lock" ]; then
    exec 9>"$1/lock"
  fi
  flock -w 60 9 || die "another command holds $1/lock"
}

# ---- instances --------------------------------------------------------------

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

instance_ready() { [ "$(http_code "http://127.0.0.1:$1/readyz")" = 200 ]; }

# Release label reported by the instance on PORT (/healthz).
instance_release() { curl -fsS -m 2 "http://127.0.0.1:$1/healthz" 2>/dev/null | jq -r '.release // empty' 2>/dev/null || true; }

# Starts SLOT with release LABEL on the slot's ports, waits for /readyz 200.
# Prints the pid. Fails (after stopping the process) when it exits or does not
# become ready within TIMEOUT seconds.
start_instance() {
  local state=$1 slot=$2 label=$3 timeout=${4:-30}
  local port mport pid log bin
  load_stack_env "$state"
  port=$(instance_field "$state" "$slot" port)
  mport=$(instance_field "$state" "$slot" metrics_port)
  [ -n "$port" ] || die "no slot $slot in $state/instances"
  bin="$state/releases/$label/hello-birthday"
  [ -x "$bin" ] || die "release $label is not installed in $state/releases"
  log="$state/logs/$slot.log"
  printf '=== %s start %s release=%s\n' "$(date -u +%FT%TZ)" "$slot" "$label" >>"$log"
  pid=$(spawn "$log" env \
    PORT="$port" METRICS_PORT="$mport" BIND_ADDR=127.0.0.1 \
    DATABASE_URL="$DATABASE_URL" DB_POOL_SIZE="$INSTANCE_POOL_SIZE" \
    DRAIN_SECONDS="$INSTANCE_DRAIN_SECONDS" SHUTDOWN_TIMEOUT_SECONDS="$INSTANCE_SHUTDOWN_SECONDS" \
    LOG_FORMAT=text LOG_LEVEL="${INSTANCE_LOG_LEVEL:-warn,hello_birthday=info}" RELEASE="$label" \
    "$bin")
  local deadline=$(( $(date +%s) + timeout ))
  while ! instance_ready "$port"; do
    if ! pid_alive "$pid"; then
      printf 'error: %s (release %s) exited before it was ready; last log lines:\n' "$slot" "$label" >&2
      tail -n 5 "$log" >&2
      echo "$pid"
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf 'error: %s (release %s) not ready within %ss; last log lines:\n' "$slot" "$label" "$timeout" >&2
      tail -n 5 "$log" >&2
      stop_pid "$pid" 5
      echo "$pid"
      return 1
    fi
    sleep 0.1
  done
  echo "$pid"
}

# The service's own drain: readiness 503 at once, DRAIN_SECONDS of serving,
# then in-flight requests finish within SHUTDOWN_TIMEOUT_SECONDS.
stop_instance() {
  local pid=$1
  stop_pid "$pid" $(( INSTANCE_DRAIN_SECONDS + INSTANCE_SHUTDOWN_SECONDS + 5 ))
}
