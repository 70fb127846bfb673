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
# The Node addon's JS UDF benchmark, when the addon was built.
if [ -f "$build/safeconc_node.node" ]; then
  echo "=== bench_node.js"
  SAFECONC_NODE_ADDON="$(realpath "$build/safeconc_node.node")" \
    SAFECONC_SO="$(realpath "$build/libsafeconc.so")" node "$(dirname "$0")/bench_node.js"
  echo
  ran=$((ran + 1))
fi
[ "$ran" -gt 0 ] || echo "no benchmarks built yet"
