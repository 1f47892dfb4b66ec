#!/usr/bin/env bash
# Runs every fuzz target for a bounded time over a scratch copy of its seed corpus and prints the
# executions each reached. Fails if a target crashes or breaks a check; the input is then under
# $WORK/artifacts (add it to tests/fuzz/regressions/ once fixed).
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET]     (default 20)
set -uo pipefail
build=${1:?usage: run.sh BUILD_DIR [SECONDS]}
seconds=${2:-20}
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/mimo-fuzz.XXXXXX")
mkdir -p "$work/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
printf '%-18s %12s %10s %8s\n' target executions exec/s status
for bin in "$build"/tests/fuzz/fuzz_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  target=${name#fuzz_}
  mkdir -p "$work/$target"
  extra=()
  # tokenizer.json seeds are small files; keep mutations small too (the real 11 MB file is
  # covered by the tokenizer tests).
  [ "$target" = tokenizer_json ] && extra=(-max_len=65536)
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$target-" "${extra[@]}" "$work/$target" "$here/corpus/$target" \
    >"$work/$target.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$')
  status=ok
  if [ $rc -ne 0 ]; then
    status="FAILED($rc)"
    failed=1
    tail -n 60 "$work/$target.log"
  fi
  printf '%-18s %12s %10s %8s\n' "$target" "${execs:-?}" "${rate:-?}" "$status"
done
if [ $failed -ne 0 ]; then
  echo "fuzzing found a failure; inputs are in $work/artifacts"
  exit 1
fi
rm -rf "$work"
