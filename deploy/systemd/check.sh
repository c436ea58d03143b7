#!/usr/bin/env bash
# Checks the systemd packaging without a running systemd: installs it into a
# throwaway root with install-host.sh, then
#   systemd-analyze verify              the unit parses and its command exists
#   systemd-analyze security --offline  exposure level at most MAX_EXPOSURE
#                                       (2.0, "OK") for every service unit
#   TimeoutStopSec > DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS of the env template
#   Type=notify with WatchdogSec=, the database URL a credential (LoadCredential=)
#   the env file and database-url are 0600 and survive a re-run; a re-run changes nothing
#   the scheduled-backup units verify, their timer's schedule is valid
#   the pgBackRest base-backup unit and its weekly/daily timers, likewise
# The one place that checks systemd units.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# systemd rates 0-10: below 2 "OK", below 5 "MEDIUM", above 9 "UNSAFE".
MAX_EXPOSURE=2.0

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
case ${1:-} in -h|--help) usage; exit 0 ;; "") ;; *) usage >&2; exit 2 ;; esac

command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed (scripts/setup.sh dev)" >&2; exit 1; }
UNIT=hello-birthday.service
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PASSED=0
ok() { PASSED=$((PASSED + 1)); printf '  ok  %s\n' "$*"; }

# exposure UNIT_FILE: systemd-analyze's score must not exceed MAX_EXPOSURE; the
# settings it counts against the unit are printed either way.
exposure() {
  local out score
  out=$(systemd-analyze security --offline=yes --no-pager "$1" 2>&1) || true
  score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || { printf '%s\n' "$out" | tail -n 20 >&2; fail "no exposure score for $1"; }
  if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    printf '%s\n' "$out" | grep -E '✗|Overall' >&2
    fail "$(basename "$1"): exposure level $score above $MAX_EXPOSURE"
  fi
  ok "$(printf '%s\n' "$out" | grep -o 'Overall exposure level.*') (limit $MAX_EXPOSURE)"
}
# install-host.sh reports its steps on stderr (scripts/lib/common.sh): the logs keep both.

echo "==> install-host.sh --root $TMP/root"
# verify resolves the unit's dependencies (sysinit.target, ...) in the root.
mkdir -p "$TMP/root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$TMP/root/usr/lib/systemd/"
printf '#!/bin/sh\necho hello-birthday test binary\n' >"$TMP/hello-birthday"
chmod +x "$TMP/hello-birthday"
"$HERE/install-host.sh" --root "$TMP/root" --binary "$TMP/hello-birthday" >"$TMP/first.log" 2>&1
sed 's/^/  | /' "$TMP/first.log"
for f in etc/systemd/system/$UNIT etc/hello-birthday/env etc/hello-birthday/database-url usr/local/bin/hello-birthday; do
  [ -f "$TMP/root/$f" ] || fail "/$f not installed"
done
ok "unit, env file and binary installed"

echo "==> systemd-analyze verify"
if ! out=$(systemd-analyze --root="$TMP/root" verify "/etc/systemd/system/$UNIT" 2>&1) || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify reported problems"
fi
ok "systemd-analyze verify: clean"

echo "==> systemd-analyze security --offline"
exposure "$TMP/root/etc/systemd/system/$UNIT"

echo "==> stop timeout"
DRAIN_SECONDS="" SHUTDOWN_TIMEOUT_SECONDS=""
eval "$(grep -E '^(DRAIN_SECONDS|SHUTDOWN_TIMEOUT_SECONDS)=[0-9]+$' "$HERE/hello-birthday.env")"
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$HERE/$UNIT")
if [ -z "$stop" ] || [ -z "$DRAIN_SECONDS" ] || [ -z "$SHUTDOWN_TIMEOUT_SECONDS" ]; then
  fail "cannot read TimeoutStopSec, DRAIN_SECONDS or SHUTDOWN_TIMEOUT_SECONDS"
fi
[ "$stop" -gt $((DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS)) ] \
  || fail "TimeoutStopSec=$stop does not exceed DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS = $((DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS))"
ok "TimeoutStopSec=${stop}s > drain ${DRAIN_SECONDS}s + shutdown ${SHUTDOWN_TIMEOUT_SECONDS}s"

echo "==> hardening and restart policy"
for d in User=hello-birthday NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
  Restart=on-failure EnvironmentFile=/etc/hello-birthday/env KillSignal=SIGTERM Type=notify \
  LoadCredential=database-url:/etc/hello-birthday/database-url; do
  grep -qx "$d" "$HERE/$UNIT" || fail "$UNIT lacks $d"
done
ok "runs as hello-birthday with NoNewPrivileges, ProtectSystem=strict, ProtectHome, PrivateTmp, Restart=on-failure, Type=notify, the URL as a credential"
watchdog=$(sed -n 's/^WatchdogSec=\([0-9]*\)s$/\1/p' "$HERE/$UNIT")
if [ -z "$watchdog" ] || [ "$watchdog" -lt 2 ]; then fail "$UNIT needs WatchdogSec= in whole seconds, at least 2"; fi
if grep -q '^DATABASE_URL=' "$HERE/hello-birthday.env"; then fail "the env template holds DATABASE_URL: it belongs in the credential"; fi
ok "WatchdogSec=${watchdog}s; no database URL in the env template"

echo "==> env file and idempotency"
[ "$(stat -c %a "$TMP/root/etc/hello-birthday/env")" = 600 ] || fail "env file is not mode 0600"
[ "$(stat -c %a "$TMP/root/etc/hello-birthday/database-url")" = 600 ] || fail "database-url is not mode 0600"
ok "env file and database-url mode 0600"
echo "DATABASE_URL=postgres://edited-by-operator" >>"$TMP/root/etc/hello-birthday/env"
chmod 0644 "$TMP/root/etc/hello-birthday/env"
before=$(cd "$TMP/root" && find etc usr/local -type f -exec sha256sum {} + | sort)
"$HERE/install-host.sh" --root "$TMP/root" --binary "$TMP/hello-birthday" >"$TMP/second.log" 2>&1
after=$(cd "$TMP/root" && find etc usr/local -type f -exec sha256sum {} + | sort)
[ "$before" = "$after" ] || fail "a second run changed files: $(diff <(echo "$before") <(echo "$after") || true)"
grep -q "edited-by-operator" "$TMP/root/etc/hello-birthday/env" || fail "a re-run overwrote the env file"
[ "$(stat -c %a "$TMP/root/etc/hello-birthday/env")" = 600 ] || fail "a re-run did not restore mode 0600"
grep -q "unchanged" "$TMP/second.log" || fail "a re-run did not report unchanged files"
ok "second run: no file changed, operator's env kept, mode back to 0600"

echo "==> operating systems"
# Amazon Linux 2023 is what the EC2 instances run; an unknown OS is refused.
mkdir -p "$TMP/al2023/etc" "$TMP/other/etc"
printf 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="fedora"\nVERSION_ID="2023"\nPRETTY_NAME="Amazon Linux 2023"\n' \
  >"$TMP/al2023/etc/os-release"
"$HERE/install-host.sh" --root "$TMP/al2023" >"$TMP/al.log" 2>&1 || { cat "$TMP/al.log" >&2; fail "install-host.sh failed on Amazon Linux 2023"; }
grep -q "Amazon Linux 2023" "$TMP/al.log" || fail "Amazon Linux 2023 not recognised"
printf 'ID=plan9\n' >"$TMP/other/etc/os-release"
if "$HERE/install-host.sh" --root "$TMP/other" >/dev/null 2>&1; then fail "install-host.sh accepted an unsupported OS"; fi
ok "Amazon Linux 2023 and Debian accepted, an unknown OS refused"

echo "==> scripts/setup.sh host"
"$HERE/../../scripts/setup.sh" host --root "$TMP/via-setup" >/dev/null || fail "scripts/setup.sh host failed"
[ -f "$TMP/via-setup/etc/systemd/system/$UNIT" ] || fail "scripts/setup.sh host did not install the unit"
ok "scripts/setup.sh host runs install-host.sh"

echo "==> scheduled-backup units"
# Installed with the scripts they run, as their header says.
R=$TMP/backup-root
mkdir -p "$R/usr/lib/systemd" "$R/bin"
cp -r /usr/lib/systemd/system "$R/usr/lib/systemd/"
cp /bin/sh "$R/bin/sh"
install -D -m 0755 "$ROOT/scripts/backup.sh" "$ROOT/scripts/restore.sh" -t "$R/usr/local/lib/hello-birthday/"
install -D -m 0644 "$ROOT/scripts/lib/common.sh" "$ROOT/scripts/lib/pg.sh" -t "$R/usr/local/lib/hello-birthday/lib/"
install -D -m 0644 "$HERE"/hello-birthday-backup.{service,timer} -t "$R/etc/systemd/system/"
if ! out=$(systemd-analyze --root="$R" verify /etc/systemd/system/hello-birthday-backup.{service,timer} 2>&1) \
  || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify reported problems with the backup units"
fi
ok "hello-birthday-backup.service and .timer verify clean"
exposure "$R/etc/systemd/system/hello-birthday-backup.service"
cal=$(sed -n 's/^OnCalendar=//p' "$R/etc/systemd/system/hello-birthday-backup.timer")
systemd-analyze calendar "$cal" >/dev/null || fail "OnCalendar=$cal is not valid"
grep -qx 'Persistent=true' "$R/etc/systemd/system/hello-birthday-backup.timer" || fail "the backup timer is not Persistent"
ok "backup timer: OnCalendar=$cal, Persistent=true"

echo "==> base-backup units (pgBackRest)"
install -D -m 0644 "$HERE"/hello-birthday-basebackup@.service "$HERE"/hello-birthday-basebackup-{full,diff}.timer \
  -t "$R/etc/systemd/system/"
if ! out=$(systemd-analyze --root="$R" verify /etc/systemd/system/hello-birthday-basebackup@full.service \
  /etc/systemd/system/hello-birthday-basebackup-{full,diff}.timer 2>&1) || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify reported problems with the base-backup units"
fi
ok "hello-birthday-basebackup@.service and its two timers verify clean"
exposure "$R/etc/systemd/system/hello-birthday-basebackup@.service"
grep -qx 'RemoveIPC=no' "$R/etc/systemd/system/hello-birthday-basebackup@.service" \
  || fail "the base-backup unit runs as postgres: RemoveIPC=yes would remove the server's shared memory"
for t in full diff; do
  f="$R/etc/systemd/system/hello-birthday-basebackup-$t.timer"
  cal=$(sed -n 's/^OnCalendar=//p' "$f")
  systemd-analyze calendar "$cal" >/dev/null || fail "OnCalendar=$cal is not valid"
  grep -qx 'Persistent=true' "$f" || fail "the $t base-backup timer is not Persistent"
  grep -qx "Unit=hello-birthday-basebackup@$t.service" "$f" || fail "the $t timer starts another unit"
  ok "base-backup timer $t: OnCalendar=$cal, Persistent=true"
done

echo "systemd checks: $PASSED passed, 0 failed"
