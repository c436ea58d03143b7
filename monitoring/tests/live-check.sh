#!/usr/bin/env bash
# Live check of the monitoring on a real stack, all on 127.0.0.1:
#   - the local stack (deploy/local/stack.sh: PostgreSQL, 2 instances, HAProxy),
#   - a TLS endpoint with a 7-day self-signed certificate + a blackbox exporter,
#   - Prometheus with the config of render-local-config.sh and our rules.
# Proves: every target is scraped; the recording rules produce values under
# load; CertificateExpiringSoon goes pending for the 7-day certificate;
# stopping PostgreSQL makes DatabaseUnavailable pending within its `for`
# window and the 5xx show in the SLO ratio; every dashboard and rule query
# parses, names only metrics that exist (scraped from the running service,
# recorded, or known to Prometheus) and runs on the live Prometheus.
# Everything it starts is stopped on exit, failure included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MON="$ROOT/monitoring"

usage() {
  cat <<'USAGE'
Usage: monitoring/tests/live-check.sh [--keep]

Starts a throwaway stack on 127.0.0.1 (random ports, temp dir), checks the
Prometheus rules, alerts and Grafana queries against it, and tears it down.
  --keep   keep the temp dir (logs, scrapes) for inspection
Needs: target/debug/hello-birthday (cargo build --bin hello-birthday),
deploy/local/stack.sh and its tools, prometheus, promtool,
prometheus-blackbox-exporter, openssl, curl, jq, python3 with PyYAML
(scripts/setup.sh dev installs them all).
USAGE
}

KEEP=0
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --keep) KEEP=1 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac


PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
BIN="$ROOT/target/debug/hello-birthday"
LOADGEN="$ROOT/target/debug/loadgen"
STACK="$ROOT/deploy/local/stack.sh"
# wait_until, free_port; pg_stop
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"

missing=()
for t in prometheus promtool prometheus-blackbox-exporter openssl curl jq runuser; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
"$PY" -c 'import yaml' 2>/dev/null || missing+=("PyYAML for $PY")
[ -x "$STACK" ] || missing+=("$STACK")
[ -x "$BIN" ] || missing+=("$BIN (cargo build --bin hello-birthday)")
[ -x "$LOADGEN" ] || missing+=("$LOADGEN (cargo build -p loadgen)")
# A missing tool is a failure, never a skip: this check is the proof.
[ ${#missing[@]} -eq 0 ] || fail "missing: ${missing[*]} (scripts/setup.sh dev)"

WORK=$(mktemp -d /tmp/monitoring-live.XXXXXX)
# The stack runs PostgreSQL as the postgres user, who must reach the dir.
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  "$STACK" down --state-dir "$WORK/stack" >"$WORK/stack-down.log" 2>&1 || cat "$WORK/stack-down.log" >&2
  if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
    [ "$rc" -ne 0 ] && [ -f "$WORK/prometheus.log" ] && { echo "--- prometheus.log (tail)" >&2; tail -n 20 "$WORK/prometheus.log" >&2; }
    echo "live-check: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION CMD...: wait_until, then say how long it took.
wait_for() {
  local secs=$1 what=$2 start=$EPOCHREALTIME
  shift 2
  wait_until "$secs" "$@" || fail "$what: not true within ${secs}s"
  note "$what ($(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s)"
}

# ---------------------------------------------------------------- the stack
step "local stack: PostgreSQL, 2 instances, HAProxy (deploy/local/stack.sh)"
"$STACK" up --state-dir "$WORK/stack" --instances 2 --no-prometheus >"$WORK/stack-up.log" 2>&1 \
  || { tail -n 20 "$WORK/stack-up.log" >&2; fail "the local stack did not come up"; }
# shellcheck disable=SC1091
. "$WORK/stack/stack.env"
API_URLS=() METRICS=()
while read -r _slot port mport _; do
  API_URLS+=("http://127.0.0.1:$port")
  METRICS+=("127.0.0.1:$mport")
done < <(grep -v '^#' "$WORK/stack/instances")
note "HAProxy $HAPROXY_URL, instances ${API_URLS[*]}, metrics ${METRICS[*]}"

step "TLS endpoint with a 7-day certificate, blackbox exporter"
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" >/dev/null 2>&1
TLS_PORT=$(free_port)
"$PY" - "$TLS_PORT" "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.log" 2>&1 <<'PY' &
import http.server, ssl, sys
port, crt, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
srv = http.server.HTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(crt, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
PIDS+=($!)
BB_PORT=$(free_port)
prometheus-blackbox-exporter --config.file="$MON/tests/blackbox-local.yml" \
  --web.listen-address="127.0.0.1:$BB_PORT" >"$WORK/blackbox.log" 2>&1 &
PIDS+=($!)

step "Prometheus with the rules of monitoring/prometheus/rules"
PROM_PORT=$(free_port)
PROM="http://127.0.0.1:$PROM_PORT"
"$MON/prometheus/render-local-config.sh" --out "$WORK/prometheus.yml" --rules-dir "$MON/prometheus/rules" \
  --self "127.0.0.1:$PROM_PORT" --blackbox "127.0.0.1:$BB_PORT" --probe "https://127.0.0.1:$TLS_PORT/healthz" \
  "${METRICS[@]}" | sed 's/^/    /'
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_for 30 "Prometheus ready" curl -fs -o /dev/null "$PROM/-/ready"

# query EXPR: the first sample's value, or nothing.
query() {
  curl -fsG "$PROM/api/v1/query" --data-urlencode "query=$1" | jq -r '.data.result[0].value[1] // empty'
}
# holds EXPR: true when the (filtering) expression returns at least one sample.
holds() { [ -n "$(query "$1")" ]; }
alert_state() {
  curl -fs "$PROM/api/v1/alerts" | jq -r --arg a "$1" '[.data.alerts[] | select(.labels.alertname == $a) | .state][0] // empty'
}
active_alerts() { curl -fs "$PROM/api/v1/alerts" | jq -r '[.data.alerts[] | "\(.labels.alertname)=\(.state)"] | join(" ")'; }

targets_up() {
  [ "$(curl -fs "$PROM/api/v1/targets" | jq '[.data.activeTargets[] | select(.health == "up")] | length')" = "$1" ]
}
# 2 instances + Prometheus itself + the probe + the exporter's own metrics.
wait_for 30 "all 5 scrape targets up (2 instances, prometheus, blackbox probe, blackbox exporter)" targets_up 5

# ------------------------------------------------------------- under load
step "load through HAProxy, then the recording rules must have values"
# PUT 204, GET 200 (greeting checked), GET of unknown users 404 and invalid
# names 400 (--invalid-ratio), DELETE 204 (--cleanup); any other answer fails.
"$LOADGEN" run --url "$HAPROXY_URL" --duration 6 --rate 200 --connections 4 --invalid-ratio 0.3 --cleanup \
  2>"$WORK/loadgen-up.log" | sed 's/^/    /' || { tail -n 20 "$WORK/loadgen-up.log" >&2; fail "traffic through HAProxy failed"; }
wait_for 20 "job:up:sum == 2" holds 'job:up:sum{job="hello-birthday"} == 2'
wait_for 20 "job:hello_birthday_instances_ready:sum == 2" holds 'job:hello_birthday_instances_ready:sum{job="hello-birthday"} == 2'
wait_for 20 "job_http_route:http_server_requests:rate5m{http_route=/hello/{username}} > 0" \
  holds 'job_http_route:http_server_requests:rate5m{job="hello-birthday",http_route="/hello/{username}"} > 0'
wait_for 20 "job_http_route_http_response_status_code:http_server_requests:rate5m has the 204, 200, 404 and 400 answers" \
  holds 'count(job_http_route_http_response_status_code:http_server_requests:rate5m{http_route="/hello/{username}",http_response_status_code=~"204|200|404|400"}) == 4'
wait_for 20 "job:slo_availability_errors:ratio_rate5m == 0 (no 5xx yet)" holds 'job:slo_availability_errors:ratio_rate5m == 0'
wait_for 20 "job:slo_latency_errors:ratio_rate5m present" holds 'job:slo_latency_errors:ratio_rate5m >= 0'
wait_for 20 "p99 latency of /hello recorded" \
  holds 'job_http_route:http_server_request_duration_seconds:quantile_rate5m{quantile="0.99",http_route="/hello/{username}"} > 0'
wait_for 20 "db query p99 recorded" holds 'job_db_operation_name:db_client_operation_duration_seconds:p99_rate5m{db_operation_name="upsert"} > 0'
wait_for 20 "probe_success == 1 for the TLS endpoint" holds 'probe_success{job="blackbox"} == 1'
note "rates: /hello $(query 'job_http_route:http_server_requests:rate5m{http_route="/hello/{username}"}') req/s," \
  "p99 $(query 'job_http_route:http_server_request_duration_seconds:quantile_rate5m{quantile="0.99",http_route="/hello/{username}"}') s," \
  "slow ratio $(query 'job:slo_latency_errors:ratio_rate5m')"
# The certificate alert's `for` is 1h: pending is what it can reach here.
wait_for 20 "CertificateExpiringSoon pending for the 7-day certificate" test "$(alert_state CertificateExpiringSoon)" = pending
[ -z "$(alert_state DatabaseUnavailable)" ] || fail "DatabaseUnavailable active while the database is up"
[ -z "$(alert_state ServiceDown)" ] || fail "ServiceDown active while both instances are up"
note "active alerts: $(active_alerts)"
i=0
for m in "${METRICS[@]}"; do
  i=$((i + 1))
  curl -fs "http://$m/metrics" >"$WORK/metrics-up-$i.txt"
done

# ------------------------------------------------------- database stopped
step "stop PostgreSQL: DatabaseUnavailable must go pending within its \`for\`"
FOR_SECONDS=$("$PY" - "$MON/prometheus/rules/cause-alerts.yml" <<'PY'
import re, sys, yaml
for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for r in g["rules"]:
        if r.get("alert") == "DatabaseUnavailable":
            n, u = re.fullmatch(r"(\d+)([smh])", r["for"]).groups()
            print(int(n) * {"s": 1, "m": 60, "h": 3600}[u])
PY
)
[ -n "$FOR_SECONDS" ] || fail "DatabaseUnavailable has no \`for\` in cause-alerts.yml"
pg_stop "${PG_DATA%/data}" fast >"$WORK/pg-stop.log" 2>&1 || fail "pg_ctl stop failed"
# Requests straight to the instances (HAProxy stops routing to unready ones):
# each fails in the database, so hello_birthday_db_errors_total and the 503s
# show up; an invalid name is still 400 (checked before the database).
lg_urls=()
for u in "${API_URLS[@]}"; do lg_urls+=(--url "$u"); done
"$LOADGEN" run "${lg_urls[@]}" --duration 2 --rate 100 --connections 4 --invalid-ratio 0.3 --accept-status 503 \
  --no-verify 2>"$WORK/loadgen-down.log" | sed 's/^/    /' || { tail -n 20 "$WORK/loadgen-down.log" >&2; fail "traffic during the outage failed"; }
wait_for "$FOR_SECONDS" "DatabaseUnavailable pending (its for: ${FOR_SECONDS}s)" \
  test "$(alert_state DatabaseUnavailable)" = pending
wait_for 20 "5xx now burn the availability SLO (ratio_rate5m > 0)" holds 'job:slo_availability_errors:ratio_rate5m > 0'
note "availability error ratio (5m): $(query 'job:slo_availability_errors:ratio_rate5m')"
note "active alerts: $(active_alerts)"
i=0
for m in "${METRICS[@]}"; do
  i=$((i + 1))
  curl -fs "http://$m/metrics" >"$WORK/metrics-down-$i.txt"
done
grep -q '^hello_birthday_db_errors_total{' "$WORK"/metrics-down-*.txt || fail "no hello_birthday_db_errors_total sample after the database stopped"
curl -fs "$PROM/api/v1/label/__name__/values" >"$WORK/prometheus-names.json"

# --------------------------------------------------------------- queries
step "dashboard and rule queries against the running service and Prometheus"
check_args=(--dashboards "$MON/grafana/dashboards" --datasources "$MON/grafana/provisioning/datasources"
  --metrics "$WORK"/metrics-*.txt --prometheus-names "$WORK/prometheus-names.json")
"$PY" "$MON/tests/check_queries.py" --rules-dir "$MON/prometheus/rules" "${check_args[@]}" \
  --prometheus-url "$PROM" --must-have-data \
  "Availability burn rate" "Latency burn rate" "Requests per second by route" "Requests per second by status" \
  "5xx ratio by route" "Latency percentiles by route" "p99 latency by instance" "Requests in flight" \
  "Instances up / ready" "Ready per instance" "Draining" "Releases running" "Uptime" "Database reachable" \
  "Pool connections" "Database errors per second" "Database call p99 by operation" "Database calls per second" \
  "Resident memory" "CPU (cores)" "Open file descriptors" | sed 's/^/    /'

# The checker must catch what it is there to catch: a renamed metric and a
# misspelt route label in an otherwise identical dashboard.
step "the query check rejects a dashboard with a wrong metric and a wrong label value"
mkdir -p "$WORK/bad-dashboards"
sed -e 's/http_server_active_requests/http_server_active_request/' -e 's|http_route=\\"/hello/{username}\\"|http_route=\\"/hello/{user}\\"|' \
  "$MON/grafana/dashboards/hello-birthday.json" >"$WORK/bad-dashboards/bad.json"
check_args[1]="$WORK/bad-dashboards"
if "$PY" "$MON/tests/check_queries.py" --rules-dir "$MON/prometheus/rules" "${check_args[@]}" >"$WORK/bad.out" 2>&1; then
  fail "check_queries.py accepted a broken dashboard"
fi
grep -q 'http_server_active_request is neither exported' "$WORK/bad.out" || fail "the renamed metric was not reported"
grep -q 'http_route="/hello/{user}"} matches no scraped sample' "$WORK/bad.out" || fail "the wrong route was not reported"
note "rejected, as it should: $(grep -c '^FAIL' "$WORK/bad.out") problems reported"

step "live check passed"
