#!/usr/bin/env bash
# Run shellcheck on every shell script the repository tracks (and new ones).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v shellcheck >/dev/null || { echo "shellcheck not installed (scripts/setup.sh dev)" >&2; exit 1; }
mapfile -t files < <({ git ls-files --cached --others --exclude-standard -- '*.sh'; git grep -l --untracked -I '^#!/usr/bin/env bash' -- ':!*.sh' ':!*.md' 2>/dev/null || true; } | sort -u)
echo "shellcheck: ${#files[@]} scripts"
shellcheck -x "${files[@]}"
