#!/usr/bin/env bash
# Deploys hello-birthday: the entry point of the deploy program
# (deploy/hbdeploy, Python), which runs one flow for every target: verify the
# artifact, plan, preflight, canary judged by deploy/canary/verdict.py,
# promote or stop, roll out, verify, smoke test, roll back when it fails.
# `scripts/deploy.sh --help` lists the options; deploy/README.md explains
# the flow. Exit status: 0 done, 1 a step failed (named in the error), 2 a
# usage error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# The project's virtualenv (boto3 for the aws target); the local target
# needs only the standard library.
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$ROOT/deploy${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m hbdeploy "$@"
