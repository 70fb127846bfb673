"""The seed 004 workload: a web API whose request handlers share one SQLite file.

Each request checks permissions (reads) and caches the result with INSERT OR REPLACE, the
pattern that died with "database is locked" (../shared/seeds/004_*). Two shapes:

  cache   reads, then INSERT OR REPLACE, then commit (Python's implicit transactions)
  cursor  the INSERT OR REPLACE runs while a SELECT cursor of the same connection is still
          being iterated (what ORMs do): a read transaction that becomes a write transaction

Run with Debian's python3 (its sqlite3 module can load extensions). Used by `make demo`
(sql/demo.py) and by tests/test_python_coordinator.py. `worker` runs the same pattern as one
of several worker processes (gunicorn / uvicorn --workers N style), for the multi-process case.
"""
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SCHEMA = """
CREATE TABLE IF NOT EXISTS perms(user INT, resource INT, allowed INT);
CREATE TABLE IF NOT EXISTS cache(user INT, resource INT, allowed INT, checked REAL,
                                 PRIMARY KEY(user, resource));
CREATE TABLE IF NOT EXISTS hits(n INT);
"""


def setup(path, journal_mode):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=%s" % journal_mode)
    conn.executescript(SCHEMA)
    if conn.execute("SELECT count(*) FROM perms").fetchone()[0] == 0:
        conn.executemany("INSERT INTO perms VALUES(?,?,?)",
                         [(u, r, (u + r) % 2) for u in range(32) for r in range(8)])
        conn.execute("INSERT INTO hits VALUES(0)")
    conn.close()


def run(path, shape, threads=32, requests=640, timeout=5.0):
    """Runs `requests` requests on `threads` threads (one connection each, Python defaults:
    timeout=5.0, implicit transactions). Returns a dict of outcomes and latencies (ms)."""
    local = threading.local()
    conns = []
    lock = threading.Lock()

    def connection():
        if not hasattr(local, "conn"):
            local.conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
            with lock:
                conns.append(local.conn)
        return local.conn

    def request(i):
        conn = connection()
        user = i % 32
        start = time.monotonic()
        try:
            if shape == "cache":
                rows = conn.execute("SELECT resource, allowed FROM perms WHERE user=?",
                                    (user,)).fetchall()
                for resource, allowed in rows[:4]:
                    conn.execute("INSERT OR REPLACE INTO cache VALUES(?,?,?,?)",
                                 (user, resource, allowed, time.time()))
                conn.execute("UPDATE hits SET n = n + 1")
            else:
                cur = conn.execute("SELECT resource, allowed FROM perms WHERE user=?", (user,))
                for resource, allowed in cur:  # the cursor is still open while we write
                    conn.execute("INSERT OR REPLACE INTO cache VALUES(?,?,?,?)",
                                 (user, resource, allowed, time.time()))
                conn.execute("UPDATE hits SET n = n + 1")
            conn.commit()
            return ("ok", (time.monotonic() - start) * 1000)
        except sqlite3.OperationalError as e:
            try:
                conn.rollback()
            except sqlite3.Error:
                pass
            return (str(e), (time.monotonic() - start) * 1000)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(request, range(requests)))
    wall = time.monotonic() - t0
    for c in conns:
        c.close()
    lat = sorted(ms for _, ms in results)
    errors = {}
    for outcome, _ in results:
        if outcome != "ok":
            errors[outcome] = errors.get(outcome, 0) + 1
    ok = sum(1 for outcome, _ in results if outcome == "ok")
    return {
        "ok": ok,
        "failed": len(results) - ok,
        "errors": errors,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)],
        "max_ms": lat[-1],
        "lat_ms": lat,
        "wall_s": wall,
        "per_s": len(results) / wall,
    }


def worker(so, path, shape, threads, requests, start, results):
    """One worker process of a multi-process server (start it with the "spawn" method, so
    it inherits no connection and no loaded extension). With `so`, it loads libsafeconc with
    the documented setting for this pattern (safeconc_txn=serial, as `make demo` does), else it
    is stock SQLite. Waits at `start` (a Barrier) so all workers begin together, runs the
    thread-pool pattern of run(), and puts its outcome on `results`, with this process's view
    of the cross-process coordinator ("crossproc" of safeconc_stats) for libsafeconc."""
    watch = None
    if so:
        boot = sqlite3.connect(":memory:")
        boot.enable_load_extension(True)
        boot.load_extension(so)
        boot.execute("SELECT safeconc_config('safeconc_txn', 'serial')")
        boot.close()
        watch = sqlite3.connect(path)  # keeps this process's coordinator (and stats) alive
    start.wait()
    r = run(path, shape, threads=threads, requests=requests)
    if watch is not None:
        r["crossproc"] = json.loads(
            watch.execute("PRAGMA safeconc_stats").fetchone()[0]).get("crossproc")
        watch.close()
    results.put(r)


def committed_hits(path):
    conn = sqlite3.connect(path)
    n = conn.execute("SELECT n FROM hits").fetchone()[0]
    ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    return n, ok
