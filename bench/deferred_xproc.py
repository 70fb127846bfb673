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
Usage: bench/deferred_xproc.py [--journal wal|delete] [--rounds N] [--procs P] [--threads T] [--tx N]
       [--so build/libsafeconc.so] [--sidecar-off] [--dir DIR] [--peer NAME=PATH[:ENV=VAL...]]...
       [--no-rotate]

The peers run in a rotated order each round (a fixed order measured the first peer of a round
on a cooler machine). --peer adds another build (an A/B of two libraries); ENV=VAL pairs are
set in that peer's processes only; NAME=stock adds stock again (an A/A control).
"""
import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import tempfile
import threading
import time


def worker(path, so, env, queue):
    os.environ.update(env)
    if so:
        c = sqlite3.connect(":memory:")
        c.enable_load_extension(True)
        c.load_extension(so)
        c.close()
    failed = [0]
    lock = threading.Lock()

    def run(autocommit):
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        for _ in range(int(os.environ["DX_TX"])):
            if autocommit:  # --mix: a plain INSERT beside the read-then-write transactions
                try:
                    db.execute("INSERT INTO t(v) VALUES (randomblob(100))")
                except sqlite3.OperationalError:
                    with lock:
                        failed[0] += 1
                continue
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

    mix = os.environ.get("DX_MIX") == "1"
    threads = [threading.Thread(target=run, args=(mix and i % 2 == 1,))
               for i in range(int(os.environ["DX_THREADS"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(failed[0])


def one_run(journal, procs, so, env, where):
    d = tempfile.mkdtemp(prefix="safeconc-deferred-", dir=where)
    path = os.path.join(d, "x.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE c(n);"
                     "INSERT INTO c VALUES (0);")
    db.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(path, so, env, queue)) for _ in range(procs)]
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
    ap.add_argument("--tx", type=int, default=100, help="transactions per thread")
    ap.add_argument("--mix", action="store_true",
                    help="every other thread runs autocommit INSERTs instead (writers beside"
                    " the read-then-write transactions; failures counted over all)")
    ap.add_argument("--so", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                 "libsafeconc.so"))
    ap.add_argument("--sidecar-off", action="store_true", help="SAFECONC_SIDECAR=0 (polling)")
    ap.add_argument("--dir", default=None,
                    help="where the databases go (default: TMPDIR). On a disk, each commit's"
                    " fsync time varies run to run and dominates the spread; /dev/shm (no"
                    " fsync cost) shows the lock protocol's own difference")
    ap.add_argument("--no-rotate", action="store_true",
                    help="run the peers in the same order every round (to see the order effect)")
    ap.add_argument("--peer", action="append", default=[],
                    help="NAME=PATH[:ENV=VAL...]: another library build to compare")
    a = ap.parse_args()
    os.environ["DX_THREADS"] = str(a.threads)
    os.environ["DX_TX"] = str(a.tx)
    os.environ["DX_MIX"] = "1" if a.mix else "0"
    so = os.path.abspath(a.so)
    total = a.procs * a.threads * a.tx
    peers = [("stock", None, {}),
             ("libsafeconc", so, {"SAFECONC_SIDECAR": "0"} if a.sidecar_off else {})]
    for spec in a.peer:
        name, _, rest = spec.partition("=")
        path, *envs = rest.split(":")
        if not name or not (path == "stock" or os.path.exists(path)):
            ap.error(f"--peer {spec}: expected NAME=PATH to an existing library (or NAME=stock)")
        peers.append((name, None if path == "stock" else os.path.abspath(path),
                      dict(e.split("=", 1) for e in envs)))
    runs = {name: [] for name, _, _ in peers}
    print(f"deferred read-then-write, {a.journal}, {a.procs} processes x {a.threads} threads x {a.tx}"
          f" transactions ({total} per run), {a.rounds} interleaved rounds", flush=True)
    for r in range(a.rounds):
        for i in range(len(peers)):
            name, lib, env = peers[(i if a.no_rotate else r + i) % len(peers)]
            failed, secs = one_run(a.journal, a.procs, lib, env, a.dir)
            runs[name].append(failed)
            print(f"  round {r + 1:2d} {name:12s} failed {failed:5d} of {total} ({secs:.1f} s)",
                  flush=True)
    for name, v in runs.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{name:12s} failed: mean {statistics.mean(v):.0f}, median {statistics.median(v):.0f}"
              f", sd {sd:.0f} (of {total} per run)")
    s = statistics.mean(runs["stock"])
    for name, v in runs.items():
        if name != "stock":
            print(f"{name} / stock failures (means): {statistics.mean(v) / max(s, 1):.2f}x"
                  " (the promise: never above 1)")
            # Paired by round (the same machine state, minutes apart): the difference and a
            # rough 95% interval (2 standard errors). An interval that covers 0 shows no
            # difference this batch could tell from noise.
            d = [x - y for x, y in zip(v, runs["stock"])]
            if len(d) > 1:
                se = statistics.stdev(d) / len(d) ** 0.5
                print(f"{name} - stock, paired by round: {statistics.mean(d):+.0f} failures per run,"
                      f" 95% interval [{statistics.mean(d) - 2 * se:+.0f}, "
                      f"{statistics.mean(d) + 2 * se:+.0f}]")


if __name__ == "__main__":
    main()
