#!/usr/bin/env bash
# Alertmanager routing and inhibition, checked for real on 127.0.0.1:
#   - amtool: severity=page goes to receiver "page", ticket to "ticket";
#   - a throwaway Alertmanager runs monitoring/alertmanager/alertmanager.yml
#     with its receivers pointed at a closed loopback port (nothing leaves
#     the machine) and its routes and inhibit rules unchanged; alerts are
#     posted through its API and each must be inhibited, or not, as the
#     rules say (a page silences its ticket, and so on).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
CONFIG="$ROOT/monitoring/alertmanager/alertmanager.yml"

usage() {
  cat <<'USAGE'
Usage: monitoring/tests/alertmanager-check.sh

Checks the routing tree with amtool and the inhibit rules on a throwaway
Alertmanager (random port, temp dir, stopped on exit). Needs amtool,
prometheus-alertmanager, curl, jq, python3 with PyYAML.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; "") ;; *) usage >&2; exit 2 ;; esac


PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
for t in amtool prometheus-alertmanager curl jq; do
  command -v "$t" >/dev/null 2>&1 || die "missing $t (scripts/setup.sh dev)"
done

step "amtool check-config and routing"
amtool check-config "$CONFIG" | sed 's/^/    /'
route_is() {
  local want=$1; shift
  amtool config routes test --config.file="$CONFIG" --verify.receivers="$want" "$@" >/dev/null 2>&1 \
    || fail "labels $* are not routed to $want"
  note "$* -> $want"
}
route_is page severity=page alertname=SLOAvailabilityBurnRate1h slo=availability
route_is page severity=page alertname=DatabaseUnavailable
route_is ticket severity=ticket alertname=SLOLatencyBurnRate3d slo=latency
route_is ticket severity=ticket alertname=HighMemory
# An alert without severity must still reach someone.
route_is ticket alertname=SomethingNew

WORK=$(mktemp -d /tmp/alertmanager-check.XXXXXX)
AM_PID=""
cleanup() {
  [ -n "$AM_PID" ] && { kill "$AM_PID" 2>/dev/null || true; wait "$AM_PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
AM_PORT=$(port)
DEAD_PORT=$(port)  # nothing listens there: notifications go nowhere

step "throwaway Alertmanager on 127.0.0.1:$AM_PORT with the production routes and inhibit rules"
"$PY" - "$CONFIG" "$WORK/alertmanager.yml" "$DEAD_PORT" "$ROOT/monitoring/alertmanager/templates" <<'PY'
import sys, yaml
src, dst, port, templates = sys.argv[1:]
c = yaml.safe_load(open(src))
t = {
    "route": c["route"],
    "inhibit_rules": c["inhibit_rules"],
    "templates": [templates + "/*.tmpl"],
    # Same receiver names; only the integrations differ.
    "receivers": [{"name": r["name"], "webhook_configs": [{"url": f"http://127.0.0.1:{port}/{r['name']}"}]}
                  for r in c["receivers"]],
}
yaml.safe_dump(t, open(dst, "w"))
PY
amtool check-config "$WORK/alertmanager.yml" >/dev/null || fail "the test copy of the config is invalid"
prometheus-alertmanager --config.file="$WORK/alertmanager.yml" --storage.path="$WORK/data" \
  --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address="" >"$WORK/am.log" 2>&1 &
AM_PID=$!
AM="http://127.0.0.1:$AM_PORT"
deadline=$((SECONDS + 20))
until curl -fs -o /dev/null "$AM/-/ready"; do
  [ $SECONDS -lt $deadline ] || { cat "$WORK/am.log" >&2; die "Alertmanager not ready within 20s"; }
  sleep 0.2
done

# name severity extra-labels(JSON object)
alert() {
  jq -n --arg n "$1" --arg s "$2" --argjson extra "$3" \
    '{labels: ({alertname: $n, severity: $s, job: "hello-birthday"} + $extra), annotations: {summary: $n}}'
}
alerts=$(jq -s . <(alert SLOAvailabilityBurnRate1h page '{"slo":"availability"}') \
  <(alert SLOAvailabilityBurnRate1d ticket '{"slo":"availability"}') \
  <(alert SLOLatencyBurnRate3d ticket '{"slo":"latency"}') \
  <(alert DatabaseUnavailable page '{}') \
  <(alert ReadinessFailing ticket '{"instance":"a:9464"}') \
  <(alert DatabaseErrors ticket '{"operation":"upsert"}') \
  <(alert HighMemory ticket '{"instance":"a:9464"}'))
curl -fsS -H 'Content-Type: application/json' -d "$alerts" "$AM/api/v2/alerts" >/dev/null

# expect NAME suppressed|active
expect() {
  local name=$1 want=$2 got deadline=$((SECONDS + 10))
  while true; do
    got=$(curl -fs "$AM/api/v2/alerts" | jq -r --arg n "$name" '.[] | select(.labels.alertname == $n) | .status.state')
    [ "$got" = "$want" ] && break
    [ $SECONDS -lt $deadline ] || fail "$name is ${got:-missing}, expected $want"
    sleep 0.2
  done
  note "$(printf '%-28s %s' "$name" "$want")"
}
step "inhibition"
expect SLOAvailabilityBurnRate1h active
expect SLOAvailabilityBurnRate1d suppressed   # its page fires
expect SLOLatencyBurnRate3d active            # another SLO
expect DatabaseUnavailable active
expect ReadinessFailing suppressed            # same cause: the database
expect DatabaseErrors suppressed
expect HighMemory active                      # unrelated
step "alertmanager check passed"
