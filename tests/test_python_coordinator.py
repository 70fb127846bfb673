"""Debian's python3 sqlite3 module with default settings (timeout=5.0, implicit
transactions), 32 threads doing the seed 004 pattern, with libsafeconc loaded: zero
"database is locked", in WAL and rollback modes, for both request shapes. The cursor shape
(a write while a SELECT of the same connection is iterated) needs safeconc_txn=serial, set
once with safeconc_config after loading.

Would catch: writers failing under contention, an upgrade failing despite serial mode, lost
or doubled commits (hits == successful requests), a corrupt file.
Stock SQLite on this machine: 290 of 640 cursor-shape requests fail in WAL, 447 in rollback.
"""
import os
import shutil
import sqlite3
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sql"))
import seed004  # noqa: E402

SO = os.environ["SAFECONC_SO"]


def load_once():
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(SO)
    conn.execute("SELECT safeconc_config('safeconc_txn', 'serial')")
    conn.close()


class Seed004(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        load_once()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="safeconc-py-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def check(self, journal_mode, shape):
        path = os.path.join(self.dir, "app-%s-%s.db" % (journal_mode, shape))
        seed004.setup(path, journal_mode)
        r = seed004.run(path, shape)
        self.assertEqual(r["errors"], {}, r)
        self.assertEqual(r["ok"], 640, r)
        hits, integrity = seed004.committed_hits(path)
        self.assertEqual(hits, r["ok"])
        self.assertEqual(integrity, "ok")
        # The connection really went through safeconc: stats saw this database.
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("PRAGMA safeconc_txn").fetchone()[0], "serial")
        conn.close()

    def test_wal_cache(self):
        self.check("wal", "cache")

    def test_wal_cursor(self):
        self.check("wal", "cursor")

    def test_rollback_cache(self):
        self.check("delete", "cache")

    def test_rollback_cursor(self):
        self.check("delete", "cursor")


if __name__ == "__main__":
    unittest.main()
