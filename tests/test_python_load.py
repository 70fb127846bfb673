"""Loading libsafeconc from Debian's python3 sqlite3 module, as a Python user would.

Run by ctest with /usr/bin/python3 (pyenv's python3 cannot load extensions) and
SAFECONC_SO set to the built library. The extension is loaded once, in setUpModule, from a
connection that is then closed: every test runs on connections opened after that.

Whether a connection goes through safeconc: `PRAGMA safeconc_timeout` returns a row only
there (SQLite ignores unknown pragmas, so elsewhere it returns nothing).
"""
import json
import os
import shutil
import sqlite3
import tempfile
import unittest

SO = os.environ.get("SAFECONC_SO", "")
# The exact set is pinned in tests/load_test.cc (kExpectedFunctions); here, the ones this
# file uses.
USED_FUNCTIONS = {"safeconc_config/1", "safeconc_config/2", "safeconc_stats/0",
                  "safeconc_version/0"}
MILLIS = "an integer number of milliseconds from 0 to 86400000"
TXN = "one of deferred, immediate, serial"

_before = set()


def functions(conn):
    return {f"{n}/{a}" for n, a in conn.execute("select name, narg from pragma_function_list")}


def uses_safeconc(conn):
    return conn.execute("pragma safeconc_timeout").fetchone() is not None


def setUpModule():
    global _before
    if not SO:
        raise RuntimeError("SAFECONC_SO must name the built libsafeconc.so (ctest sets it)")
    a = sqlite3.connect(":memory:")
    _before = functions(a)
    a.enable_load_extension(True)
    a.load_extension(SO)
    a.enable_load_extension(False)
    a.close()


class PythonLoad(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="safeconc-py-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def connect(self, name, **kw):
        conn = sqlite3.connect(self.path(name), **kw)
        self.addCleanup(conn.close)
        return conn

    # Catches a VFS that dies with the loading connection (A was closed in setUpModule).
    def test_later_connection_uses_safeconc(self):
        b = self.connect("b.db")
        self.assertTrue(uses_safeconc(b))
        b.execute("create table t(x)")
        b.executemany("insert into t values (?)", [(i,) for i in range(10)])
        b.commit()
        self.assertEqual(b.execute("select sum(x) from t").fetchone()[0], 45)

    # Later connections get the functions, and everything the extension adds is safeconc_*.
    def test_functions_added(self):
        added = functions(self.connect("f.db")) - _before
        self.assertLessEqual(USED_FUNCTIONS, added)
        self.assertEqual([f for f in added if not f.startswith("safeconc_")], [])

    def test_opt_out_with_vfs_unix(self):
        u = sqlite3.connect(f"file:{self.path('u.db')}?vfs=unix", uri=True)
        self.addCleanup(u.close)
        self.assertFalse(uses_safeconc(u))
        # Ignored, as SQLite ignores every unknown pragma: no error, no row.
        self.assertIsNone(u.execute("pragma safeconc_timeout = 'nonsense'").fetchone())

    def test_knob_pragmas(self):
        c = self.connect("k.db")
        self.assertEqual(c.execute("pragma safeconc_timeout").fetchone()[0], "5000")
        self.assertEqual(c.execute("pragma safeconc_txn").fetchone()[0], "deferred")
        self.assertEqual(c.execute("pragma safeconc_call_timeout").fetchone()[0], "10000")
        self.assertEqual(c.execute("pragma safeconc_timeout = 1200").fetchone()[0], "1200")
        self.assertEqual(c.execute("pragma safeconc_txn = IMMEDIATE").fetchone()[0], "immediate")
        cases = [("safeconc_timeout", "-1", "-1", MILLIS),
                 ("safeconc_timeout", "99999999999999999999", "99999999999999999999", MILLIS),
                 ("safeconc_call_timeout", "86400001", "86400001", MILLIS),
                 ("safeconc_call_timeout", "''", "", MILLIS),
                 ("safeconc_txn", "sometimes", "sometimes", TXN)]
        for knob, written, seen, accepted in cases:
            with self.subTest(knob=knob, value=written):
                with self.assertRaises(sqlite3.OperationalError) as cm:
                    c.execute(f"pragma {knob} = {written}")
                self.assertEqual(str(cm.exception),
                                 f"{knob}: bad value '{seen}': expected {accepted}")
        self.assertEqual(c.execute("pragma safeconc_timeout").fetchone()[0], "1200")

    def test_uri_knobs_and_bad_uri_value(self):
        c = sqlite3.connect(f"file:{self.path('uri.db')}?safeconc_txn=serial&safeconc_timeout=30",
                            uri=True)
        self.addCleanup(c.close)
        self.assertEqual(c.execute("pragma safeconc_txn").fetchone()[0], "serial")
        self.assertEqual(c.execute("pragma safeconc_timeout").fetchone()[0], "30")
        with self.assertRaises(sqlite3.OperationalError):
            sqlite3.connect(f"file:{self.path('bad.db')}?safeconc_timeout=-1", uri=True)
        self.assertFalse(os.path.exists(self.path("bad.db")))

    def test_config_sets_defaults_for_later_opens(self):
        c = self.connect("c.db")
        self.assertEqual(c.execute("select safeconc_config('safeconc_timeout', 777)").fetchone()[0],
                         "777")
        try:
            self.assertEqual(self.connect("c.db").execute("pragma safeconc_timeout").fetchone()[0],
                             "777")
            self.assertEqual(c.execute("pragma safeconc_timeout").fetchone()[0], "5000")
        finally:
            c.execute("select safeconc_config('safeconc_timeout', 5000)")

    def test_stats_is_json(self):
        c = self.connect("s.db")
        c.execute("create table t(x)")
        c.commit()
        stats = json.loads(c.execute("select safeconc_stats()").fetchone()[0])
        self.assertEqual(stats["vfs"]["name"], "safeconc")
        self.assertIs(stats["vfs"]["is_default"], True)
        self.assertGreaterEqual(stats["process"]["files_open"], 1)
        self.assertGreater(stats["process"]["lock_calls"]["xLock"], 0)
        paths = [d["path"] for d in stats["databases"]]
        self.assertIn(os.path.realpath(self.path("s.db")), [os.path.realpath(p) for p in paths])
        self.assertEqual(c.execute("select safeconc_version()").fetchone()[0], stats["version"])
        one = json.loads(c.execute("pragma safeconc_stats").fetchone()[0])
        self.assertEqual(os.path.realpath(one["path"]), os.path.realpath(self.path("s.db")))


if __name__ == "__main__":
    unittest.main()
