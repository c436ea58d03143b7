#!/usr/bin/env bash
# Provision a Linux host (Amazon Linux 2023, Debian, Ubuntu) to run
# hello-birthday under systemd. Called by `scripts/setup.sh host`.
# Idempotent: every step compares before it changes anything, and the env
# file, once there, is never overwritten (it holds the operator's settings).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/common.sh
. "$HERE/../../scripts/lib/common.sh"

usage() {
  cat <<'USAGE'
Usage: deploy/systemd/install-host.sh [--binary PATH] [--root DIR] [--no-start]

  --binary PATH  install this release binary as /usr/local/bin/hello-birthday
                 (the previous one is kept as hello-birthday.previous)
  --root DIR     install the files under DIR instead of / (image building,
                 tests): no user is created and systemctl is not called
  --no-start     enable the unit but do not (re)start it

Steps: system user and group 'hello-birthday' (no login, no home),
/etc/hello-birthday/env from deploy/systemd/hello-birthday.env (mode 0600,
root, only when missing), /etc/hello-birthday/database-url (the secret, a
systemd credential; mode 0600, root, only when missing), the hardened unit
hello-birthday.service,
the binary, daemon-reload, enable, and start (restart on a new binary).
The state directory /var/lib/hello-birthday is created by systemd
(StateDirectory=). Logs go to the journal: journalctl -u hello-birthday.
USAGE
}

BINARY="" ROOTDIR="" START=1
while [ $# -gt 0 ]; do
  case $1 in
    --binary) optarg BINARY "$@"; shift 2 ;;
    --root) optarg ROOTDIR "$@"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done


SERVICE_USER=hello-birthday
UNIT=hello-birthday.service
R=${ROOTDIR%/}
CHANGED_UNIT=0 CHANGED_BINARY=0

[ -n "$R" ] || [ "$(id -u)" -eq 0 ] || die "run as root (or with --root DIR)"
[ -z "$BINARY" ] || [ -x "$BINARY" ] || die "--binary $BINARY is not an executable file"

# Installs SRC at DEST with MODE unless DEST already has that content and
# mode; sets the variable named by $4 to 1 when it changed something.
install_file() {
  local src=$1 dest=$2 mode=$3 flag=${4:-}
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    note "$dest unchanged"
    return 0
  fi
  install -D -m "$mode" "$src" "$dest.new"
  mv -f "$dest.new" "$dest"
  note "$dest installed"
  [ -z "$flag" ] || printf -v "$flag" 1
}

step "operating system"
os_release="$R/etc/os-release"
[ -f "$os_release" ] || os_release=/etc/os-release
ID="" ID_LIKE="" PRETTY_NAME=""
# shellcheck disable=SC1090
. "$os_release"
case " $ID $ID_LIKE " in
  *" amzn "*|*" fedora "*|*" rhel "*) NOLOGIN=/sbin/nologin ;;
  *" debian "*|*" ubuntu "*) NOLOGIN=/usr/sbin/nologin ;;
  *) die "unsupported OS '$ID' (Amazon Linux 2023, Debian and Ubuntu are)" ;;
esac
note "${PRETTY_NAME:-$ID}"

step "system user $SERVICE_USER"
if [ -n "$R" ]; then
  note "skipped with --root"
elif getent passwd "$SERVICE_USER" >/dev/null; then
  note "exists"
else
  useradd --system --user-group --no-create-home --home-dir /var/lib/hello-birthday \
    --shell "$NOLOGIN" --comment "hello-birthday service" "$SERVICE_USER"
  note "created"
fi

step "configuration /etc/hello-birthday/env"
install -d -m 0755 "$R/etc/hello-birthday"
if [ -f "$R/etc/hello-birthday/env" ]; then
  note "exists: kept as it is"
else
  install -m 0600 "$HERE/hello-birthday.env" "$R/etc/hello-birthday/env"
  note "installed from the template: edit it to change the settings"
fi
# An older one may hold the database password: root only, whatever happened before.
chmod 0600 "$R/etc/hello-birthday/env"
[ -n "$R" ] || chown root:root "$R/etc/hello-birthday/env"

step "database URL /etc/hello-birthday/database-url (the unit's LoadCredential=)"
if [ -f "$R/etc/hello-birthday/database-url" ]; then
  note "exists: kept as it is"
else
  # SQLite in the state directory for a single host; a fleet shares
  # PostgreSQL: postgres://USER:PASSWORD@HOST:5432/hello_birthday?sslmode=require
  (umask 077 && printf '%s\n' "sqlite:///var/lib/hello-birthday/hello-birthday.db" \
    >"$R/etc/hello-birthday/database-url")
  note "installed: SQLite in the state directory (write a postgres:// URL here for a fleet)"
fi
chmod 0600 "$R/etc/hello-birthday/database-url"
[ -n "$R" ] || chown root:root "$R/etc/hello-birthday/database-url"

step "documentation /usr/share/doc/hello-birthday (the unit's Documentation=)"
DOCS=$(cd "$HERE/../.." && pwd)
if [ -f "$DOCS/README.md" ] && [ -d "$DOCS/docs" ]; then
  while read -r f; do
    install_file "$DOCS/$f" "$R/usr/share/doc/hello-birthday/$f" 0644
  done < <(cd "$DOCS" && { echo README.md; find docs -type f -name '*.md' | sort; })
else
  note "README.md and docs/ not beside this script: documentation not installed"
fi

step "systemd unit $UNIT"
install_file "$HERE/$UNIT" "$R/etc/systemd/system/$UNIT" 0644 CHANGED_UNIT

if [ -n "$BINARY" ]; then
  step "binary /usr/local/bin/hello-birthday"
  dest="$R/usr/local/bin/hello-birthday"
  if [ -f "$dest" ] && ! cmp -s "$BINARY" "$dest"; then
    cp -p "$dest" "$dest.previous"
    note "previous binary kept as $dest.previous"
  fi
  install_file "$BINARY" "$dest" 0755 CHANGED_BINARY
  [ -n "$R" ] || note "$("$dest" --version 2>/dev/null || echo 'version unknown')"
fi

if [ -n "$R" ]; then
  step "systemctl skipped with --root"
  exit 0
fi

command -v systemctl >/dev/null || die "systemctl not found: this host does not run systemd"
step "systemctl"
if [ "$CHANGED_UNIT" = 1 ]; then
  systemctl daemon-reload
  note "daemon-reload"
fi
systemctl enable --quiet "$UNIT"
note "enabled"
if [ "$START" = 0 ]; then
  note "not started (--no-start)"
elif [ ! -x /usr/local/bin/hello-birthday ]; then
  note "no binary installed yet (--binary PATH): not started"
elif ! systemctl is-active --quiet "$UNIT"; then
  systemctl start "$UNIT"
  note "started"
elif [ "$CHANGED_BINARY" = 1 ] || [ "$CHANGED_UNIT" = 1 ]; then
  # The service drains on SIGTERM, so a restart loses no request that a
  # load balancer has stopped sending it.
  systemctl restart "$UNIT"
  note "restarted on the new binary or unit"
else
  note "running, nothing changed"
fi
systemctl --no-pager --lines=0 status "$UNIT" || true
