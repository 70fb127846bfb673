"""make demo: the seed 004 story in under a minute.

A web API's request handlers (32 threads, Python's sqlite3 with its defaults: timeout=5.0,
implicit transactions) share one SQLite file; each request checks permissions and caches
the result. First on stock SQLite, then with libsafeconc loaded, side by side.

Then the same server as 4 worker processes (gunicorn / uvicorn --workers 4 style: Python
multiprocessing, "spawn"), each with a pool of 8 threads running the same requests: stock
processes against processes that each load libsafeconc (coordinated across processes through
the sidecar file beside the database).

Usage: /usr/bin/python3 sql/demo.py build/libsafeconc.so
"""
import json
import multiprocessing
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
PROCS, PROC_THREADS, PROC_REQUESTS = 4, 8, 80  # 32 threads, 320 requests in all
LOCKED = "database is locked"


def row(label, r):
    errors = ", ".join("%d x %s" % (n, e) for e, n in r["errors"].items()) or "-"
    return "  %-11s %6d/%-4d %8.0f %8.0f %9.0f   %s" % (
        label, r["ok"], r["ok"] + r["failed"], r["p50_ms"], r["max_ms"], r["per_s"], errors)


def run_processes(so, path, shape):
    """PROCS spawned worker processes (stock if `so` is None) run the thread-pool pattern on
    one file, starting together. Returns their outcomes pooled: latencies over every request
    of every process, req/s over the slowest worker's wall time, and the cross-process
    coordinator's view (libsafeconc): the shared counters as last read, and release->grant
    p50 as the median of the workers' own p50s (workers that never waited are left out)."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCS + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=seed004.worker,
                         args=(so, path, shape, PROC_THREADS, PROC_REQUESTS, start, results))
             for _ in range(PROCS)]
    for p in procs:
        p.start()
    start.wait(timeout=60)
    outs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(ms for r in outs for ms in r["lat_ms"])
    errors = {}
    for r in outs:
        for e, n in r["errors"].items():
            errors[e] = errors.get(e, 0) + n
    ok = sum(r["ok"] for r in outs)
    out = {
        "ok": ok,
        "failed": len(lat) - ok,
        "errors": errors,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)],
        "max_ms": lat[-1],
        "per_s": len(lat) / max(r["wall_s"] for r in outs),
    }
    xps = [r["crossproc"] for r in outs if r.get("crossproc")]
    if xps:
        last = max(xps, key=lambda x: x.get("all_processes", {}).get("acquisitions", -1))
        p50s = sorted(x["release_to_grant_us"]["p50_us"] for x in xps
                      if x["release_to_grant_us"]["count"] > 0)
        out["crossproc"] = {
            "modes": sorted(set(x["mode"] for x in xps)),
            "all": last.get("all_processes", {}),
            "r2g_p50_us": p50s[len(p50s) // 2] if p50s else None,
            "timeouts": sum(x["timeouts"] for x in xps),
        }
    return out


def proc_row(label, r):
    locked = r["errors"].get(LOCKED, 0)
    other = ", ".join("%d x %s" % (n, e) for e, n in r["errors"].items() if e != LOCKED) or "-"
    return "  %-11s %6d/%-4d %7d %8.0f %8.0f %8.0f %8.0f   %s" % (
        label, r["ok"], r["ok"] + r["failed"], locked, r["p50_ms"], r["p99_ms"], r["max_ms"],
        r["per_s"], other)


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
        # The multi-process server: stock worker processes, then libsafeconc ones (each
        # process loads it itself: spawned, they inherit nothing from this one).
        print("%d worker processes x %d threads x %d requests (%d in all) against one file,\n"
              "each process the thread pool above; libsafeconc with safeconc_txn=serial\n" % (
                  PROCS, PROC_THREADS, PROC_REQUESTS, PROCS * PROC_REQUESTS))
        multi = {}
        for mode, _ in MODES:
            for shape, _ in SHAPES:
                for peer, lib in (("stock", None), ("libsafeconc", so)):
                    path = os.path.join(work, "procs-%s-%s-%s.db" % (peer, mode, shape))
                    seed004.setup(path, mode)
                    multi[peer, mode, shape] = run_processes(lib, path, shape)
        for mode, mode_name in MODES:
            for shape, what in SHAPES:
                print("%d processes, %s journal, %s:" % (PROCS, mode_name, what))
                print("  %-11s %11s %7s %8s %8s %8s %8s   %s" % (
                    "", "succeeded", "locked", "p50 ms", "p99 ms", "max ms", "req/s",
                    "other errors"))
                print(proc_row("stock", multi["stock", mode, shape]))
                r = multi["libsafeconc", mode, shape]
                print(proc_row("libsafeconc", r))
                x = r.get("crossproc")
                if x:
                    a = x["all"]
                    r2g = x["r2g_p50_us"]
                    print("  libsafeconc across processes (%s): %d shared write turns, %d waited "
                          "in the shared line, release->grant p50 %s (median of the workers' "
                          "p50s), barges %d, hand-offs %d, timeouts %d\n" % (
                              "/".join(x["modes"]), a.get("acquisitions", 0), a.get("waits", 0),
                              "-" if r2g is None else "%d us" % r2g, a.get("barges", 0),
                              a.get("handoffs", 0), x["timeouts"]))
                else:
                    print()
        failed = sum(r["failed"] for r in safe.values())
        failed += sum(r["failed"] for (peer, _, _), r in multi.items() if peer == "libsafeconc")
        print("libsafeconc %s: %s" % (version, "no request failed" if failed == 0 else
                                      "%d requests failed" % failed))
        return 0 if failed == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
