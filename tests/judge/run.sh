#!/bin/bash
# run.sh - SQLite's own concurrency tests as judges of the lock paths: mptest (processes, with
# its scripts) and threadtest3 (threads, shared cache, WAL, checkpoints), each run on stock
# SQLite and then with libsafeconc loaded as the default VFS, on the same machine.
#
# Not part of `make test`: it needs SQLite's source tree, which is not in this repository and
# must not be downloaded at build time. On Debian, fetch the source of the SQLite you link:
#     apt-get source sqlite3      (needs a deb-src line in /etc/apt/sources.list.d)
# then: make judge SQLITE_SRC=/path/to/sqlite3-3.40.1
#
# Usage: tests/judge/run.sh SQLITE_SRC [path/to/libsafeconc.so]
# Exit status: 0 when every run of both peers passed; the per-run lines say what failed.
set -u
src=${1:?usage: run.sh SQLITE_SRC [libsafeconc.so]}
so=$(realpath "${2:-build/libsafeconc.so}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/safeconc-judge-XXXXXX)
trap 'rm -rf "$work"' EXIT
for f in mptest/mptest.c test/threadtest3.c src/test_multiplex.c; do
  [ -f "$src/$f" ] || { echo "no $src/$f: not an SQLite source tree" >&2; exit 2; }
done
[ -f "$so" ] || { echo "no $so: run make first" >&2; exit 2; }
cc=${CC:-cc}
set -e
$cc -O2 -c "$here/loader.c" -o "$work/loader.o"
$cc -O2 -Dmain=judge_main -c "$src/mptest/mptest.c" -o "$work/mptest.o"
$cc "$work/mptest.o" "$work/loader.o" -o "$work/mptest" -lsqlite3 -lpthread
$cc -O2 -Dmain=judge_main -I"$src/src" -I"$src" -c "$src/test/threadtest3.c" -o "$work/tt3.o"
$cc -O2 -I"$src/src" -c "$src/src/test_multiplex.c" -o "$work/multiplex.o"
$cc "$work/tt3.o" "$work/multiplex.o" "$work/loader.o" -o "$work/threadtest3" -lsqlite3 -lpthread
set +e

failed=0
# One run: peer, a label, then the command (run in a fresh directory). Prints one line.
run() {
  local peer=$1 label=$2
  shift 2
  local dir="$work/run-$peer-${label//[^a-z0-9]/_}"
  mkdir -p "$dir"
  cp "$work"/scripts/* "$dir"/  # mptest's --source names files relative to its directory
  local env=(env -u JUDGE_SO)
  [ "$peer" = safeconc ] && env=(env "JUDGE_SO=$so")
  local t0 t1 rc
  t0=$(date +%s.%N)
  (cd "$dir" && timeout 900 "${env[@]}" "$@" >out.txt 2>&1)
  rc=$?
  t1=$(date +%s.%N)
  local summary
  summary=$(grep -E "^Summary:|errors out of" "$dir/out.txt" | tail -1)
  local errors
  errors=$(grep -c "^Error:" "$dir/out.txt")
  local verdict=ok
  if [ $rc -ne 0 ] || [ "$errors" -ne 0 ] || ! echo "$summary" | grep -q "^Summary: 0 errors\|^0 errors"; then
    verdict=FAILED
    failed=1
  fi
  printf "  %-8s %-26s %6.1f s  exit %-3d %s%s\n" "$peer" "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    "$rc" "$verdict" "${summary:+  ($summary)}"
  if [ "$verdict" = FAILED ]; then
    grep -m5 "^Error:" "$dir/out.txt" | sed 's/^/      /'
    [ $rc -eq 124 ] && echo "      (timed out after 900 s: a hang)"
  fi
}

mkdir -p "$work/scripts"
cp "$src"/mptest/*.test "$src"/mptest/*.subtest "$work/scripts/"
# config01 runs only on a VFS named "unix" (safeconc names itself "safeconc/unix").
sed -i "s#vfsname() GLOB 'unix'#vfsname() GLOB '*unix'#" "$work/scripts/config01.test"

echo "mptest (SQLite $(sqlite3 --version | cut -d' ' -f1)): processes sharing one database"
for peer in stock safeconc; do
  vfs=()
  [ "$peer" = safeconc ] && vfs=(--vfs safeconc)
  for jm in delete wal; do
    run "$peer" "multiwrite01 ($jm)" "$work/mptest" mp.db "${vfs[@]}" --journalmode "$jm" \
      --quiet multiwrite01.test
  done
  for t in config01 config02 crash01; do
    run "$peer" "$t" "$work/mptest" mp.db "${vfs[@]}" --quiet "$t.test"
  done
done
echo "threadtest3: threads, shared cache, WAL, checkpoints (about 4 minutes per peer)"
for peer in stock safeconc; do
  run "$peer" "threadtest3 (all)" "$work/threadtest3"
done
exit $failed
