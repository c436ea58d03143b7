#!/usr/bin/env bash
# Every check of the AWS deployment, as run by scripts/ci.sh (stage "aws"):
#   1. cfn-lint on every template: no error, no warning, no informational finding
#   2. checkov on every template: no failed check (skips are inline, with a reason)
#   3. property tests of the templates and parameter files (test_templates.py,
#      test_canary_templates.py for the canary's resources); what the
#      environment's identities may do, decided as IAM does (test_iam.py);
#      every alarm evaluated over recorded series (test_alarms.py); the web
#      ACL (test_waf.py); parliament and cloudsplaining over every policy
#      (test_policy_analysis.py)
#   4. the instance-side script (test_host.py); the service's database users
#      on a real PostgreSQL (test_db_users.py)
#   5. the deploy program's AWS target against moto in-process, CloudWatch
#      answers and CloudFormation outcomes moto lacks scripted
#      (test_deploy.py: staging's life, production's approved plans)
#   6. the architecture diagram still renders from its code
# (ruff and mypy --strict over this Python: the "python" stage,
# scripts/lint-python.sh)
# Usage: deploy/aws/check.sh [--fast]   (--fast: skip 5, the slow one)
set -euo pipefail

AWS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$AWS_DIR/../.." && pwd)
VENV=$ROOT/.venv/bin
FAST=0

# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

case "${1:-}" in
  -h|--help) usage_from_header; exit 0 ;;
  --fast) FAST=1 ;;
  "") ;;
  *) usage_error "unknown option $1" ;;
esac
[ $# -le 1 ] || usage_error "takes at most one option"

# Missing tools are failures, never skips (scripts/setup.sh dev installs them).
for tool in "$VENV/cfn-lint" "$VENV/checkov" "$VENV/python" "$VENV/aws"; do
  [ -x "$tool" ] || die "$tool missing: run scripts/setup.sh dev"
done
require jq dot psql openssl
"$VENV/python" -c 'import yaml, boto3, moto, diagrams, parliament, cloudsplaining' 2>/dev/null \
  || die "python packages missing (PyYAML, moto, diagrams, parliament, cloudsplaining): run scripts/setup.sh dev"

cd "$ROOT"
mapfile -t templates < <(find deploy/aws/templates -name '*.yaml' | sort)
[ "${#templates[@]}" -gt 0 ] || die "no templates under deploy/aws/templates"

step "cfn-lint ${#templates[@]} templates (regions of the parameter files)"
mapfile -t regions < <(jq -r '.region, (.drRegion // empty) | select(. != "")' deploy/aws/parameters/*.json | sort -u)
# Exit status is a bit mask of errors, warnings and informational findings;
# any of them fails the check.
"$VENV/cfn-lint" --regions "${regions[@]}" --format parseable -- "${templates[@]}"
echo "cfn-lint: 0 findings in ${templates[*]##*/}"

step "checkov"
"$VENV/checkov" --directory deploy/aws/templates --framework cloudformation \
  --skip-download --compact --quiet --output cli

step "property tests of the templates"
(cd deploy/aws/tests && "$VENV/python" -m unittest test_templates test_canary_templates test_iam test_alarms test_waf test_runbooks)

step "IAM policy analysis (parliament, cloudsplaining) of every policy the templates define"
(cd deploy/aws/tests && "$VENV/python" -m unittest test_policy_analysis)

step "instance-side script"
(cd deploy/aws/tests && "$VENV/python" -m unittest test_host)

step "the service's database users on a real PostgreSQL"
(cd deploy/aws/tests && "$VENV/python" -m unittest test_db_users)

if [ "$FAST" = 1 ]; then
  step "deploy program against moto: skipped (--fast)"
else
  step "deploy program against moto in-process (test_deploy.py)"
  (cd deploy/aws/tests && PYTHONPATH="$ROOT/deploy" "$VENV/python" -m unittest test_deploy)
fi

step "architecture diagram renders"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$VENV/python" deploy/aws/diagram.py --out "$out/architecture"
[ -s "$out/architecture.png" ] || die "diagram not rendered"
echo "rendered $(stat -c %s "$out/architecture.png") bytes"

echo
echo "aws checks passed"
