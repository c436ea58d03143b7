#!/usr/bin/env bash
# The monitoring stage of scripts/ci.sh: static checks of the Prometheus,
# blackbox, Alertmanager and Grafana configuration, the promtool unit tests
# of every rule, and the live check on a throwaway stack.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
MON="$ROOT/monitoring"
cd "$ROOT"

usage() {
  cat <<'USAGE'
Usage: monitoring/check.sh [--static]

Runs, in order:
  1. promtool check config (AWS prometheus.yml) and promtool check rules
  2. blackbox exporter config check (production and test modules)
  3. promtool test rules monitoring/tests/rules/*.test.yml
  4. every alert: severity, summary, description, an existing runbook, and
     at least one unit test where it fires and one where it stays quiet
  5. amtool check-config, routing and inhibition (monitoring/tests/alertmanager-check.sh)
  6. the live check (monitoring/tests/live-check.sh): local stack + Prometheus,
     recording rules under load, DatabaseUnavailable pending when PostgreSQL
     stops, every dashboard and rule query checked against the running service
  --static   stop after step 5 (no service binary needed)
Needs what scripts/setup.sh dev installs; a missing tool is a failure.
USAGE
}

STATIC=0
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --static) STATIC=1 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac


PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
missing=()
for t in promtool amtool prometheus prometheus-alertmanager prometheus-blackbox-exporter; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
"$PY" -c 'import yaml' 2>/dev/null || missing+=("PyYAML for $PY")
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (scripts/setup.sh dev)"
printf 'tools: %s; %s\n' "$(promtool --version 2>&1 | head -n1)" "$(amtool --version 2>&1 | head -n1)"

step "1. promtool check config + rules"
promtool check config "$MON/prometheus/prometheus.yml"
promtool check rules "$MON"/prometheus/rules/*.yml

step "2. blackbox exporter modules"
for f in "$MON/prometheus/blackbox.yml" "$MON/tests/blackbox-local.yml"; do
  prometheus-blackbox-exporter --config.check --config.file="$f" >/dev/null 2>&1 \
    || { prometheus-blackbox-exporter --config.check --config.file="$f" || true; fail "invalid $f"; }
  echo "  $f: ok"
done

step "3. promtool test rules"
start=$SECONDS
promtool test rules "$MON"/tests/rules/*.test.yml
echo "  unit tests took $((SECONDS - start))s"

step "4. alerts: labels, annotations, runbooks, tests that fire and stay quiet"
"$PY" "$MON/tests/check_rules_coverage.py" "$MON/prometheus/rules" "$MON/tests/rules" "$ROOT"

step "5. Alertmanager"
"$MON/tests/alertmanager-check.sh"

if [ "$STATIC" = 1 ]; then
  echo "monitoring: static checks passed (live check not run: --static)"
  exit 0
fi

step "6. live check"
# The service binary the stack runs and the load generator; no-ops when up to date.
cargo build --locked --quiet -p hello-birthday -p loadgen --bin hello-birthday --bin loadgen
"$MON/tests/live-check.sh"

echo "monitoring: all checks passed"
