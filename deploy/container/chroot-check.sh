#!/usr/bin/env bash
# Library (sourced by scripts/release.sh and deploy/container/build.sh): start
# hello-birthday inside a chroot that holds nothing else, as an unprivileged
# user, and check it serves. A static binary that works there needs nothing
# from the host filesystem, which is what a FROM scratch image gives it.
set -euo pipefail

# wait_until, pid_gone
# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"

# chroot_serve_check ROOTFS EXE USERSPEC REVISION RELEASE [VAR=VALUE...]
#   Runs /EXE in ROOTFS as USERSPEC (uid:gid) on 127.0.0.1 with kernel-picked
#   ports, plus the given environment, then checks: /healthz names REVISION
#   and RELEASE, a PUT is stored and read back, /metrics answers, SIGTERM ends
#   it with status 0. The environment should set DATABASE_URL to a path the
#   user can write inside ROOTFS. Runs in a subshell: its trap stops the
#   server on any failure.
chroot_serve_check() (
  local rootfs=$1 exe=$2 userspec=$3 revision=$4 release=$5
  shift 5
  local log pid="" api metrics health code greeting rc body
  log=$(mktemp)
  # shellcheck disable=SC2317  # run by the trap
  stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$log"
  }
  trap stop EXIT
  fail_with_log() { echo "--- service log:" >&2; cat "$log" >&2; echo "chroot check: $*" >&2; exit 1; }

  # env -i: nothing from the caller's environment leaks in; later assignments
  # win, so loopback and free ports override whatever the caller passed.
  env -i "$@" RELEASE="$release" LOG_FORMAT=json \
    PORT=0 METRICS_PORT=0 BIND_ADDR=127.0.0.1 DRAIN_SECONDS=0 SHUTDOWN_TIMEOUT_SECONDS=5 \
    "$(command -v chroot)" --userspec="$userspec" "$rootfs" "$exe" >"$log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2317  # run by wait_until
  listening() { grep -q listening "$log" || { kill -0 "$pid" 2>/dev/null || fail_with_log "the service exited"; return 1; }; }
  wait_until 30 listening || fail_with_log "no 'listening' line within 30s"
  addr_of() { # the host:port logged for field $1 (JSON or text log line)
    grep listening "$log" | sed 's/\x1b\[[0-9;]*m//g' \
      | grep -oE "\"?$1\"?[=:] ?\"?[0-9.]+:[0-9]+" | grep -oE '[0-9.]+:[0-9]+' | head -n1
  }
  api=$(addr_of addr)
  metrics=$(addr_of metrics_addr)
  if [ -z "$api" ] || [ -z "$metrics" ]; then fail_with_log "cannot read the bound addresses from the log"; fi
  echo "  serving on $api, metrics on $metrics, as $userspec"

  health=$(curl -fsS --max-time 5 "http://$api/healthz") || fail_with_log "GET /healthz failed"
  echo "  GET /healthz: $health"
  [ "$(jq -r .status <<<"$health")" = ok ] || fail_with_log "/healthz status is not ok"
  [ "$(jq -r .revision <<<"$health")" = "$revision" ] || fail_with_log "/healthz revision is not $revision"
  [ "$(jq -r .release <<<"$health")" = "$release" ] || fail_with_log "/healthz release is not $release"
  code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X PUT \
    -H 'Content-Type: application/json' -d '{"dateOfBirth":"1990-02-03"}' \
    "http://$api/hello/chrootcheck") || fail_with_log "PUT failed"
  [ "$code" = 204 ] || fail_with_log "PUT /hello/chrootcheck answered $code, not 204"
  greeting=$(curl -fsS --max-time 5 "http://$api/hello/chrootcheck") || fail_with_log "GET /hello/chrootcheck failed"
  echo "  PUT 204, then GET: $greeting"
  [[ "$(jq -r .message <<<"$greeting")" == "Hello, chrootcheck! "* ]] || fail_with_log "unexpected greeting"
  # The whole body first: grep -q stops reading at its match, and curl then
  # fails writing the rest (exit 23) once the page outgrows a pipe buffer.
  body=$(curl -fsS --max-time 5 "http://$metrics/metrics") || fail_with_log "GET /metrics failed"
  grep -q '^hello_birthday_build_info{' <<<"$body" || fail_with_log "/metrics has no hello_birthday_build_info"
  echo "  GET /metrics: hello_birthday_build_info present"

  kill -TERM "$pid"
  wait_until 20 pid_gone "$pid" || fail_with_log "still running 20s after SIGTERM"
  rc=0
  wait "$pid" || rc=$?
  pid=""
  [ "$rc" = 0 ] || fail_with_log "exit status $rc after SIGTERM, not 0"
  echo "  SIGTERM: exit 0"
)
