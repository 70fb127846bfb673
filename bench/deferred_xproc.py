#!/usr/bin/python3
"""Deferred read-then-write across processes, stock SQLite against libsafeconc, interleaved.

P processes x T threads (Python threads, one connection each, busy timeout 5 s) run 100
transactions each of BEGIN; SELECT; INSERT; UPDATE; COMMIT with no safeconc_txn setting: the
pattern SQLite fails (SQLITE_BUSY at the write of a read transaction) and the first rule says
libsafeconc must never fail more often than stock. Each round runs stock, then libsafeconc
(each process loads it before it opens the database), on a fresh database; failures are
counted per run. One run is noisy (its standard deviation is about half its mean on a 2-core
machine): use 20-30 rounds.

Needs a python3 whose sqlite3 module can load extensions (Debian's /usr/bin/python3).
Usage: bench/deferred_xproc.py [--journal wal|delete] [--rounds N] [--procs P] [--threads T]
       [--so build/libsafeconc.so] [--sidecar-off]
"""
import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import tempfile
import threading
import time


def worker(path, so, queue):
    if so:
        c = sqlite3.connect(":memory:")
        c.enable_load_extension(True)
        c.load_extension(so)
        c.close()
    failed = [0]
    lock = threading.Lock()

    def run():
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        for _ in range(100):
            try:
                db.execute("BEGIN")
                n = db.execute("SELECT n FROM c").fetchone()[0]
                db.execute("INSERT INTO t(v) VALUES (randomblob(100))")
                db.execute("UPDATE c SET n = ?", (n + 1,))
                db.execute("COMMIT")
            except sqlite3.OperationalError:
                with lock:
                    failed[0] += 1
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        db.close()

    threads = [threading.Thread(target=run) for _ in range(int(os.environ["DX_THREADS"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(failed[0])


def one_run(journal, procs, so):
    d = tempfile.mkdtemp(prefix="safeconc-deferred-")
    path = os.path.join(d, "x.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE c(n);"
                     "INSERT INTO c VALUES (0);")
    db.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(path, so, queue)) for _ in range(procs)]
    t0 = time.time()
    for p in ps:
        p.start()
    failed = sum(queue.get() for _ in ps)
    for p in ps:
        p.join()
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
    return failed, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--journal", default="delete", choices=["wal", "delete"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--so", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                 "libsafeconc.so"))
    ap.add_argument("--sidecar-off", action="store_true", help="SAFECONC_SIDECAR=0 (polling)")
    a = ap.parse_args()
    os.environ["DX_THREADS"] = str(a.threads)
    if a.sidecar_off:
        os.environ["SAFECONC_SIDECAR"] = "0"
    so = os.path.abspath(a.so)
    total = a.procs * a.threads * 100
    runs = {"stock": [], "libsafeconc": []}
    print(f"deferred read-then-write, {a.journal}, {a.procs} processes x {a.threads} threads x 100"
          f" transactions ({total} per run), {a.rounds} interleaved rounds", flush=True)
    for r in range(a.rounds):
        for name, lib in (("stock", None), ("libsafeconc", so)):
            failed, secs = one_run(a.journal, a.procs, lib)
            runs[name].append(failed)
            print(f"  round {r + 1:2d} {name:12s} failed {failed:5d} of {total} ({secs:.1f} s)",
                  flush=True)
    for name, v in runs.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{name:12s} failed: mean {statistics.mean(v):.0f}, median {statistics.median(v):.0f}"
              f", sd {sd:.0f} (of {total} per run)")
    s, l = statistics.mean(runs["stock"]), statistics.mean(runs["libsafeconc"])
    print(f"libsafeconc / stock failures (means): {l / max(s, 1):.2f}x (the promise: never above 1)")


if __name__ == "__main__":
    main()
