#!/usr/bin/env bash
# shell_load_test.sh SHELL BINARY_DIR
# Loads the extension in the real sqlite3 shell exactly as README shows it, with a relative
# path from the directory above the build directory (`.load ./build/libsafeconc`), then opens
# a file and checks that the later connection goes through safeconc (`.vfsname`).
set -uo pipefail
shell=$1
bindir=$(realpath "$2")
work=$(mktemp -d "${TMPDIR:-/tmp}/safeconc-shell-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$(dirname "$bindir")" || exit 2
load="./$(basename "$bindir")/libsafeconc"

out=$("$shell" -batch -bail :memory: 2>&1 <<SQL
.load $load
.open $work/app.db
.vfsname
create table t(x);
insert into t values (42);
select x from t;
SQL
)
rc=$?
want=$'safeconc/unix\n42'
if [ "$rc" -ne 0 ] || [ "$out" != "$want" ]; then
  echo "FAIL: '.load $load' in $(pwd), then .open: exit $rc, output:" >&2
  echo "$out" | sed 's/^/  /' >&2
  echo "expected:" >&2
  echo "$want" | sed 's/^/  /' >&2
  exit 1
fi
echo "ok: .load $load (cwd $(pwd)), then .open uses safeconc/unix"
