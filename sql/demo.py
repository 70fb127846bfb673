"""make demo: the seed 004 story in under 30 seconds.

A web API's request handlers (32 threads, Python's sqlite3 with its defaults: timeout=5.0,
implicit transactions) share one SQLite file; each request checks permissions and caches
the result. First on stock SQLite, then with libsafeconc loaded, side by side.

Usage: /usr/bin/python3 sql/demo.py build/libsafeconc.so
"""
import json
import os
import shutil
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed004  # noqa: E402

SHAPES = [
    ("cache", "read, then INSERT OR REPLACE, commit"),
    ("cursor", "INSERT OR REPLACE while a SELECT cursor is open"),
]
MODES = [("wal", "WAL"), ("delete", "rollback")]


def row(label, r):
    errors = ", ".join("%d x %s" % (n, e) for e, n in r["errors"].items()) or "-"
    return "  %-11s %6d/%-4d %8.0f %8.0f %9.0f   %s" % (
        label, r["ok"], r["ok"] + r["failed"], r["p50_ms"], r["max_ms"], r["per_s"], errors)


def main():
    so = sys.argv[1] if len(sys.argv) > 1 else "build/libsafeconc.so"
    work = tempfile.mkdtemp(prefix="safeconc-demo-")
    try:
        print("libsafeconc demo: 32 threads x 640 requests against one SQLite file")
        print("(Python sqlite3 defaults: timeout=5.0 s, implicit transactions)\n")
        stock = {}
        for mode, _ in MODES:
            for shape, _ in SHAPES:
                path = os.path.join(work, "stock-%s-%s.db" % (mode, shape))
                seed004.setup(path, mode)
                stock[mode, shape] = seed004.run(path, shape)

        # Load the extension once; every connection opened afterwards goes through it.
        boot = sqlite3.connect(":memory:")
        boot.enable_load_extension(True)
        boot.load_extension(so)
        version = boot.execute("SELECT safeconc_version()").fetchone()[0]
        # Every lock period of a connection takes the write turn first, so a write made
        # while one of its own cursors is open cannot fail.
        boot.execute("SELECT safeconc_config('safeconc_txn', 'serial')")
        boot.close()
        safe, stats = {}, {}
        for mode, _ in MODES:
            for shape, _ in SHAPES:
                path = os.path.join(work, "safe-%s-%s.db" % (mode, shape))
                seed004.setup(path, mode)
                watch = sqlite3.connect(path)  # keeps the file's coordinator (and stats) alive
                safe[mode, shape] = seed004.run(path, shape)
                stats[mode, shape] = json.loads(
                    watch.execute("PRAGMA safeconc_stats").fetchone()[0])["coordinator"]
                watch.close()

        for mode, mode_name in MODES:
            for shape, what in SHAPES:
                print("%s journal, %s:" % (mode_name, what))
                print("  %-11s %11s %8s %8s %9s   %s" % ("", "succeeded", "p50 ms", "max ms",
                                                        "req/s", "errors"))
                print(row("stock", stock[mode, shape]))
                print(row("libsafeconc", safe[mode, shape]))
                s = stats[mode, shape]
                print("  libsafeconc coordinator: %d write turns, %d waited (p99 %d us), "
                      "release->grant p50 %d us, max queue %d, barges %d (longest overtaken "
                      "wait %.1f ms), hand-offs %d, timeouts %d\n" % (
                          s["acquisitions"], s["waits"], s["wait_us"]["p99_us"],
                          s["release_to_grant_us"]["p50_us"], s["max_queue_depth"],
                          s["barges"], s["max_overtaken_wait_us"] / 1000.0, s["handoffs"],
                          s["timeouts"]))
        failed = sum(r["failed"] for r in safe.values())
        print("libsafeconc %s: %s" % (version, "no request failed" if failed == 0 else
                                      "%d requests failed" % failed))
        return 0 if failed == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
