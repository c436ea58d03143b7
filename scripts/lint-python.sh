#!/usr/bin/env bash
# Lint (ruff, ruff.toml) and type-check (mypy --strict, mypy.ini) every
# Python file the repository tracks, and new ones: *.py and any file whose
# first line is a python shebang. The files are found, not listed, so a new
# one is checked without anyone adding it here.
#   scripts/lint-python.sh      (no arguments)
# Exit status: 0 clean, 1 a finding, 2 usage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh
case "${1:-}" in
  -h|--help) usage_from_header; exit 0 ;;
  "") ;;
  *) usage_error "takes no arguments" ;;
esac
# The project's pinned ruff and mypy (requirements-dev.txt); mypy must run
# from .venv to see the third-party packages the code imports.
export PATH="$PWD/.venv/bin:$PATH"
require ruff mypy

mapfile -t files < <({ git ls-files --cached --others --exclude-standard -- '*.py'
  git grep -l --untracked -I -E '^#!.*python' -- ':!*.py' ':!*.md' 2>/dev/null || true; } | sort -u)
[ "${#files[@]}" -gt 0 ] || die "no Python files found"

step "ruff: ${#files[@]} files"
ruff check --no-cache "${files[@]}"

# One mypy run over every file: module names come from the roots in
# mypy.ini's mypy_path (each folder that holds scripts run by path). The
# canary's unit tests are the exception: unittest runs them from inside
# deploy/canary (`discover -s deploy/canary`), so they import `verdict`
# while the deploy program imports the same file as `canary.verdict`, and
# mypy refuses one file under two names in one run. They get a second run
# with deploy/canary as their root.
main=() canary=()
for f in "${files[@]}"; do
  if [[ $f == deploy/canary/test_*.py ]]; then canary+=("$f"); else main+=("$f"); fi
done
cache=${TMPDIR:-/tmp}/hb-mypy-cache-$(printf '%s' "$PWD" | cksum | cut -d' ' -f1)
step "mypy --strict: ${#main[@]} files"
mypy --cache-dir "$cache" "${main[@]}"
if [ "${#canary[@]}" -gt 0 ]; then
  step "mypy --strict: ${#canary[@]} files, deploy/canary as their root"
  MYPYPATH=deploy/canary mypy --cache-dir "$cache-canary" "${canary[@]}"
fi
echo "ruff, mypy --strict: ${#files[@]} Python files clean"
