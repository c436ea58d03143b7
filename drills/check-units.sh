#!/usr/bin/env bash
# Checks the scheduled-backup units without a running systemd: installs them
# and the scripts they run into a throwaway root, as their header says, then
#   systemd-analyze verify              both units parse, ExecStart exists
#   systemd-analyze security --offline  exposure level at most 2.0
#   systemd-analyze calendar            the timer's schedule is valid
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "usage: drills/check-units.sh" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

echo "==> install into $TMP/root"
R=$TMP/root
mkdir -p "$R/usr/lib/systemd" "$R/bin"
# verify resolves dependencies (timers.target, ...) and commands in the root.
cp -r /usr/lib/systemd/system "$R/usr/lib/systemd/"
cp /bin/sh "$R/bin/sh"
install -D -m 0755 "$ROOT/scripts/backup.sh" "$ROOT/scripts/restore.sh" -t "$R/usr/local/lib/hello-birthday/"
install -D -m 0644 "$ROOT"/deploy/systemd/hello-birthday-backup.{service,timer} -t "$R/etc/systemd/system/"

echo "==> systemd-analyze verify"
out=$(systemd-analyze --root="$R" verify /etc/systemd/system/hello-birthday-backup.{service,timer} 2>&1) \
  || { printf '%s\n' "$out" >&2; fail "verify failed"; }
[ -z "$out" ] || { printf '%s\n' "$out" >&2; fail "verify reported problems"; }
echo "  ok  both units verify clean"

echo "==> systemd-analyze security --offline"
out=$(systemd-analyze security --offline=yes --threshold=20 "$R/etc/systemd/system/hello-birthday-backup.service" 2>&1) \
  || { printf '%s\n' "$out" | grep -E '✗|Overall' >&2; fail "exposure level above 2.0"; }
echo "  ok  $(printf '%s\n' "$out" | grep -o 'Overall exposure level.*')"

echo "==> timer schedule"
cal=$(sed -n 's/^OnCalendar=//p' "$R/etc/systemd/system/hello-birthday-backup.timer")
systemd-analyze calendar "$cal" >/dev/null || fail "OnCalendar=$cal is not valid"
grep -qx 'Persistent=true' "$R/etc/systemd/system/hello-birthday-backup.timer" || fail "timer is not Persistent"
echo "  ok  OnCalendar=$cal, Persistent=true"
