#!/usr/bin/env bash
# Runs every benchmark built in <build-dir> and prints its table.
# Usage: bench/run.sh [build-dir]
set -euo pipefail
build=${1:-build}
ran=0
for b in "$build"/bench/bench_*; do
  [ -x "$b" ] || continue
  echo "=== $(basename "$b")"
  "$b"
  echo
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || echo "no benchmarks built yet"
