# shellcheck shell=bash
# The shell library every script sources (deploy/local, drills, monitoring
# tests): waiting on a condition with a deadline, free loopback ports, and
# starting and stopping processes. PostgreSQL lives next door in pg.sh.
# Sourced, not run: it sets no shell options and defines functions only.

# wait_until SECONDS CMD...: runs CMD every 0.1 s until it succeeds; returns 1
# once SECONDS (fractions allowed) have passed. The caller says what failed:
#   wait_until 30 ready || fail "the service did not become ready"
wait_until() {
  local limit=$1 deadline
  shift
  deadline=$(( ${EPOCHREALTIME/./} + $(awk -v s="$limit" 'BEGIN { printf "%d", s * 1000000 }') ))
  until "$@"; do
    [ "${EPOCHREALTIME/./}" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# free_ports N: N distinct TCP ports on 127.0.0.1, held open together so they
# differ. Another process could take one before the caller binds it; that
# bind then fails loudly. For servers that cannot report the port they bound.
free_ports() {
  python3 - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
free_port() { free_ports 1; }

# pid_alive PID: a positive pid (kill -0 0 would address our own group) of a
# process that has not exited. An orphan that exited stays a zombie until
# init reaps it, which can take a second.
pid_alive() {
  [[ ${1:-} =~ ^[1-9][0-9]*$ ]] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
pid_gone() { ! pid_alive "$1"; }

# spawn LOG CMD...: starts CMD detached from our session (a Ctrl-C of the
# caller must not kill it), output appended to LOG; prints CMD's own pid.
spawn() {
  local log=$1 pidfile; shift
  pidfile=$(mktemp)
  # shellcheck disable=SC2016
  # fd 9 is the callers' lock file by convention: the child must not hold it.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$log" 2>&1 9>&- &
  wait_until 5 test -s "$pidfile" || { rm -f "$pidfile"; return 1; }
  cat "$pidfile"
  rm -f "$pidfile"
}

# stop_pid PID [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (10) for the
# exit, then SIGKILL.
stop_pid() {
  local pid=$1 timeout=${2:-10}
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$timeout" pid_gone "$pid"; then
    printf '    pid %s still running after %ss: SIGKILL\n' "$pid" "$timeout" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 pid_gone "$pid" || true
  fi
}
