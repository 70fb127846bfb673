#!/usr/bin/env bash
# run_sql.sh SHELL EXTENSION SCRIPT
# Runs SCRIPT in the real sqlite3 shell, with EXTENSION (a path without the .so suffix, as
# `.load` takes it) loaded on the shell's first, in-memory connection, in a fresh temporary
# working directory (so the script's relative `.open` paths are private to this run).
#
# Every check in a script is one line `select 'id', <expr> = <expected>;`, printed by the shell
# as `id|1` when it holds. The run fails if any output line does not end in `|1`, if there
# is no output at all, if anything reaches stderr, or if the shell exits non-zero.
set -uo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 SHELL EXTENSION SCRIPT" >&2
  exit 2
fi
shell=$1
ext="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"  # absolute: we cd below
script=$(realpath "$3")
work=$(mktemp -d "${TMPDIR:-/tmp}/safeconc-sql-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 2

"$shell" -batch -bail -cmd ".load $ext" :memory: <"$script" >"$work/out" 2>"$work/err"
rc=$?

fail=0
if [ "$rc" -ne 0 ]; then
  echo "FAIL: the shell exited with status $rc" >&2
  fail=1
fi
if [ -s "$work/err" ]; then
  echo "FAIL: the shell wrote to stderr:" >&2
  sed 's/^/  /' "$work/err" >&2
  fail=1
fi
if [ ! -s "$work/out" ]; then
  echo "FAIL: no output (no check ran)" >&2
  fail=1
fi
if grep -vn '|1$' "$work/out" >"$work/bad"; then
  echo "FAIL: checks that do not hold (line: output):" >&2
  sed 's/^/  /' "$work/bad" >&2
  fail=1
fi
checks=$(grep -c '|1$' "$work/out")
[ "$fail" -eq 0 ] && echo "ok: $checks checks in $(basename "$script")"
exit "$fail"
