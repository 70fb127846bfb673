#!/usr/bin/env bash
# Runs each libFuzzer target for a set time from its checked-in seed corpus and prints the
# executions per target. Findings (crash-*, leak-*, timeout-*) are left in the build directory.
#   fuzz/run.sh <build dir> <seconds per target>
set -euo pipefail
build=$1
secs=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
status=0
summary=""
for t in fuzz_knobs fuzz_json fuzz_value; do
  work="$build/fuzz-corpus/$t"   # new inputs go here; the checked-in seeds stay read-only
  mkdir -p "$work" "$build/fuzz-artifacts"
  log="$build/fuzz-$t.log"
  echo "== $t: ${secs} s"
  if ! "$build/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build/fuzz-artifacts/$t-" "$work" "$here/corpus/$t" >"$log" 2>&1; then
    echo "FAILED: $t (see $log)"
    tail -40 "$log"
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  summary+="$t: ${execs:-?} executions in ${secs} s"$'\n'
done
printf '%s' "$summary"
exit $status
