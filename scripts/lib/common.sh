# shellcheck shell=bash
# The shell library every script of the repository sources: how a script
# talks and exits, and the process helpers (waiting on a condition with a
# deadline, free loopback ports, starting and stopping processes).
# PostgreSQL lives next door in pg.sh (which sources this file).
# Sourced, not run: it sets no shell options and defines functions and
# SCRIPT only, so a caller keeps its own `set -euo pipefail`.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"      (from scripts/)
#
# Messages (all on stderr: stdout is for a script's result, such as the
# manifest path backup.sh prints or the URL pg-throwaway.sh prints):
#   step MSG...        "==> MSG": a step begins
#   note MSG...        "    MSG": a detail of the current step
#   say MSG...         "SCRIPT: MSG": a remark that names the script
#   die MSG...         "SCRIPT: MSG", exit 1: the script could not do its job
#   fail MSG...        "SCRIPT: FAIL: MSG", exit 1: a check found the system
#                      under test wrong (tests, drills, smoke checks)
#   usage_error MSG... "SCRIPT: MSG (see SCRIPT --help)", exit 2
#   usage_from_header  prints the script's leading comment block, for --help
#   optarg VAR "$@"    in an option loop: VAR=$2, or a usage error when the
#                      option ($1) has no value:  --to) optarg dest "$@"; shift 2 ;;
# Exit codes, one rule for every script: 0 success, 1 failure, 2 usage
# error (unknown option, missing argument, unknown stage or drill); --help
# exits 0. scripts/check-fail-loud.sh runs every script with a bad option
# and with --help to prove it.
#
# SCRIPT is the running script's path from the repository root
# (scripts/backup.sh, monitoring/check.sh), or its file name when it runs
# outside a checkout (a copy installed under /usr/local/lib/hello-birthday).
#
# Time and tools:
#   elapsed START [END]  seconds between two $EPOCHREALTIME stamps (END: now)
#   require CMD...       dies naming every missing command
# Processes: wait_until, free_ports, free_port, pid_alive, pid_gone, spawn,
# stop_pid (each documented below).

HB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${SCRIPT:-}" ]; then
  SCRIPT=$(cd "$(dirname "$0")" 2>/dev/null && pwd)/${0##*/}
  # In a checkout, the path from its root; anywhere else, the file name.
  if [ -f "$HB_ROOT/scripts/lib/common.sh" ] && [[ $SCRIPT == "$HB_ROOT"/* ]]; then
    SCRIPT=${SCRIPT#"$HB_ROOT"/}
  else
    SCRIPT=${0##*/}
  fi
fi

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }
fail() { printf '%s: FAIL: %s\n' "$SCRIPT" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s (see %s --help)\n' "$SCRIPT" "$*" "$SCRIPT" >&2; exit 2; }

# usage_from_header: the comment block after the shebang line, without the
# leading "# ", up to the first line that is not a comment.
usage_from_header() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# optarg VAR OPTION [VALUE...]: sets VAR to VALUE, the argument after
# OPTION; exits 2 when it is missing or empty. (${2:?} would exit 127.)
optarg() {
  [ -n "${3:-}" ] || usage_error "$2 needs a value"
  printf -v "$1" '%s' "$3"
}

# elapsed START [END]: seconds (3 decimals) between two $EPOCHREALTIME
# stamps; END defaults to now.
elapsed() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.3f\n", b - a }'; }

# require CMD...: every command must exist; dies naming all that do not.
require() {
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (scripts/setup.sh dev installs them)"
}

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
