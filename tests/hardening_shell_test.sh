#!/usr/bin/env bash
# The sqlite3 shell, as a user types it (issue 11, item 4): naming the API symbol as the entry
# point must fail with a message, and loading normally afterwards must still work.
#   hardening_shell_test.sh <sqlite3> <build dir>
set -uo pipefail
shell=$1
so=$2/libsafeconc
out=$("$shell" :memory: ".load $so safeconc_api" 2>&1)
rc=$?
if [ $rc -eq 0 ] || ! grep -q "not an entry point" <<<"$out"; then
  echo "FAIL: .load $so safeconc_api: rc=$rc, output: $out"
  exit 1
fi
out=$(printf '.load %s safeconc_api\n.load %s\nselect safeconc_version();\n' "$so" "$so" |
  "$shell" :memory: 2>&1)
if ! grep -qE "^[0-9]+\.[0-9]+\.[0-9]+$" <<<"$out"; then
  echo "FAIL: loading after the refused entry point: $out"
  exit 1
fi
echo "ok: $(head -1 <<<"$("$shell" :memory: ".load $so safeconc_api" 2>&1)")"
