#!/usr/bin/env bash
# Run shellcheck on every shell script the repository tracks (and new ones).
#   scripts/lint-shell.sh      (no arguments)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh
case "${1:-}" in
  -h|--help) usage_from_header; exit 0 ;;
  "") ;;
  *) usage_error "takes no arguments" ;;
esac
require shellcheck
mapfile -t files < <({ git ls-files --cached --others --exclude-standard -- '*.sh'; git grep -l --untracked -I '^#!/usr/bin/env bash' -- ':!*.sh' ':!*.md' 2>/dev/null || true; } | sort -u)
echo "shellcheck: ${#files[@]} scripts"
shellcheck -x "${files[@]}"
