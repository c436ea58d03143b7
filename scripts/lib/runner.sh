# shellcheck shell=bash
# The one name-to-command runner: the stages of scripts/ci.sh, the drills of
# drills/run.sh and the steps of .github/check.sh are tables that this file
# runs, so they select, time, report and fail the same way.
# Sourced after common.sh; defines functions only.
#
#   RUN_NAMES=(a b c)            the table, in the order it runs
#   RUN_CMDS=("cmd a" ...)       one shell command per name (eval'ed in a
#                                subshell with set -e, from the caller's cwd,
#                                so it may call the caller's functions)
#   RUN_STOP_AFTER=(b)           optional: a failure of these ends the run
#   run_table KIND [NAME...]     runs NAMEs (every entry when none), in table
#                                order; prints "==> [KIND NAME] CMD" before and
#                                "<== [KIND NAME] ok|FAIL (exit N) in S s" after;
#                                sets RUN_FAILED and RUN_PASSED; returns 1 when
#                                an entry failed
#   run_check_names KIND NAME... usage_error (exit 2) for a name not in the
#                                table: running nothing and reporting "passed"
#                                would hide a typo in a CI job
#   run_list                     the names, one a line

run_list() { printf '%s\n' "${RUN_NAMES[@]}"; }

run_check_names() {
  local kind=$1 n
  shift
  for n in "$@"; do
    run_list | grep -qxF -- "$n" || usage_error "unknown $kind '$n' (${kind}s: $(run_list | paste -sd' '))"
  done
}

run_table() {
  local kind=$1 i name cmd start rc stop
  shift
  run_check_names "$kind" "$@"
  RUN_FAILED=() RUN_PASSED=()
  for i in "${!RUN_NAMES[@]}"; do
    name=${RUN_NAMES[$i]} cmd=${RUN_CMDS[$i]}
    if [ $# -gt 0 ] && [[ ! " $* " == *" $name "* ]]; then continue; fi
    printf '\n==> [%s %s] %s\n' "$kind" "$name" "$cmd"
    start=$EPOCHREALTIME
    # Not as an `if` condition: that would switch set -e off inside it.
    set +e
    (set -e; eval "$cmd")
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
      RUN_PASSED+=("$name")
      printf '<== [%s %s] ok in %ss\n' "$kind" "$name" "$(elapsed "$start")"
    else
      RUN_FAILED+=("$name")
      printf '<== [%s %s] FAIL (exit %d) in %ss\n' "$kind" "$name" "$rc" "$(elapsed "$start")"
      for stop in "${RUN_STOP_AFTER[@]}"; do
        [ "$stop" != "$name" ] || { printf '    %s failed: the rest depends on it\n' "$name"; return 1; }
      done
    fi
  done
  [ ${#RUN_FAILED[@]} -eq 0 ]
}
