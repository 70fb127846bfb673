// load_test.cc - the built libsafeconc.so loaded the way a binding loads it
// (sqlite3_load_extension): the default VFS it installs, the SQL functions it adds, the knobs
// through URI, PRAGMA and safeconc_config, and safeconc_stats.
//
// This binary has its own main(): it installs a SQLITE_CONFIG_LOG callback before
// sqlite3_initialize() so the tests can see what the extension logs. The first test needs a
// process in which the extension has not been loaded yet: ctest runs it in a process of its
// own (load_fresh_process_test, see tests/CMakeLists.txt), and it fails, saying so, in a
// process where another test loaded the extension first.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "safeconc_version.h"
#include "tests/test_util.h"

namespace {

using sctest::Db;
using sctest::TempDir;

// The SQL functions the extension adds to every connection, as "name/nargs". This is the one
// place to edit when an issue adds a function.
const std::set<std::string> kExpectedFunctions = {
    "safeconc_config/1",  "safeconc_config/2",  "safeconc_last_busy/0", "safeconc_stats/0",
    "safeconc_waiters/0", "safeconc_waiters/1", "safeconc_version/0"};

const char* kMillisAccepted = "an integer number of milliseconds from 0 to 86400000";
const char* kTxnAccepted = "one of deferred, immediate, serial";

// ---- sqlite3_log capture (installed in main) -------------------------------------------
std::mutex g_log_mu;
std::vector<std::string> g_log;  // "code: message", guarded by g_log_mu

void LogCallback(void*, int code, const char* msg) {
  std::lock_guard<std::mutex> l(g_log_mu);
  g_log.push_back(std::to_string(code) + ": " + (msg ? msg : ""));
}
std::vector<std::string> TakeLog() {
  std::lock_guard<std::mutex> l(g_log_mu);
  std::vector<std::string> out;
  out.swap(g_log);
  return out;
}

// ---- helpers --------------------------------------------------------------------------
std::set<std::string> Functions(Db& db) {
  std::set<std::string> out;
  for (const std::string& r : db.Rows("select name || '/' || narg from pragma_function_list"))
    out.insert(r);
  return out;
}
std::set<std::string> Minus(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::inserter(out, out.end()));
  return out;
}

// Runs `sql` expecting it to fail; returns SQLite's error message ("" if it succeeded).
std::string ErrorOf(Db& db, const std::string& sql) {
  if (db.Exec(sql) == SQLITE_OK) return "";
  return db.error();
}

std::string BadValue(const char* knob, const std::string& value, const char* accepted) {
  return std::string(knob) + ": bad value '" + value + "': expected " + accepted;
}

int LoadInto(Db& db, std::string* err, const std::string& so = sctest::SoPath()) {
  sqlite3_db_config(db.get(), SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* e = nullptr;
  int rc = sqlite3_load_extension(db.get(), so.c_str(), nullptr, &e);
  *err = e ? e : "";
  sqlite3_free(e);
  return rc;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Loading from connection A, closing A, then opening B: B goes through safeconc and has
// exactly the expected functions, A has them too but keeps its own VFS. Catches a VFS that
// dies with the loading connection, a missing SQLITE_OK_LOAD_PERMANENTLY, a function added
// or lost without updating kExpectedFunctions, and functions missing on the loading one.
TEST(Load, FromConnectionAThenCloseAThenOpenB) {
  ASSERT_EQ(sqlite3_vfs_find("safeconc"), nullptr)
      << "this test must run first, in a process that has not loaded the extension";
  TempDir dir;
  std::set<std::string> before;
  {
    Db a(dir.File("a.db"));
    ASSERT_EQ(a.open_rc(), SQLITE_OK);
    before = Functions(a);
    EXPECT_EQ(a.VfsName(), "unix");
    std::string err;
    ASSERT_EQ(LoadInto(a, &err), SQLITE_OK) << err;
    EXPECT_EQ(Minus(Functions(a), before), kExpectedFunctions) << "on the loading connection";
    EXPECT_EQ(a.VfsName(), "unix") << "the loading connection keeps the VFS it was opened with";
    EXPECT_EQ(a.Text("select safeconc_config('safeconc_timeout')"), "5000");
    EXPECT_EQ(a.Text("select safeconc_version()"), SAFECONC_VERSION);
  }
  ASSERT_NE(sqlite3_vfs_find(nullptr), nullptr);
  EXPECT_STREQ(sqlite3_vfs_find(nullptr)->zName, "safeconc");
  Db b(dir.File("b.db"));
  ASSERT_EQ(b.open_rc(), SQLITE_OK) << b.error();
  EXPECT_EQ(b.VfsName(), "safeconc/unix");
  EXPECT_EQ(Minus(Functions(b), before), kExpectedFunctions);
  b.Must("create table t(x); insert into t values (1), (2), (3)");
  EXPECT_EQ(b.Int("select sum(x) from t"), 6);
  EXPECT_EQ(b.Rows("pragma safeconc_timeout"), std::vector<std::string>{"5000"});
}

// Loading again, from a safeconc connection and from a unix one, succeeds and changes
// nothing: no duplicate functions, still one safeconc VFS and still the default. Catches a
// second registration that wraps safeconc in itself.
TEST(Load, LoadingAgainIsHarmless) {
  sctest::LoadExtension();
  TempDir dir;
  Db s(dir.File("s.db"));
  Db u("file:" + dir.File("u.db") + "?vfs=unix");
  const std::set<std::string> fs = Functions(s);
  for (Db* db : {&s, &u, &s}) {
    std::string err;
    EXPECT_EQ(LoadInto(*db, &err), SQLITE_OK) << err;
  }
  EXPECT_EQ(Functions(s), fs);
  EXPECT_STREQ(sqlite3_vfs_find(nullptr)->zName, "safeconc");
  int n = 0;
  for (sqlite3_vfs* v = sqlite3_vfs_find(nullptr); v; v = v->pNext)
    n += v->zName == std::string("safeconc");
  EXPECT_EQ(n, 1);
  Db later(dir.File("later.db"));
  EXPECT_EQ(later.VfsName(), "safeconc/unix") << "not safeconc/safeconc/unix";
  later.Must("create table t(x)");
}

// A second copy of the library (another file, e.g. one bundled by a binding: dlopen gives it
// its own globals) finds `safeconc` registered by the first and defers to it, however often
// it is loaded. Catches a re-load of the second copy registering its own, never-filled
// sqlite3_vfs (no name, no methods) as the default, which crashes the next open.
TEST(Load, SecondCopyOfTheLibraryDefersToTheFirst) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string copy = dir.File("libsafeconc.so");
  std::filesystem::copy_file(sctest::SoPath(), copy);
  sqlite3_vfs* first = sqlite3_vfs_find("safeconc");
  ASSERT_NE(first, nullptr);
  for (int i = 0; i < 3; ++i) {
    Db db(":memory:");
    std::string err;
    EXPECT_EQ(LoadInto(db, &err, copy), SQLITE_OK) << err;
  }
  int named = 0;
  for (sqlite3_vfs* v = sqlite3_vfs_find(nullptr); v; v = v->pNext) {
    ASSERT_NE(v->zName, nullptr) << "a VFS without a name was registered";
    named += v->zName == std::string("safeconc");
  }
  EXPECT_EQ(named, 1);
  EXPECT_EQ(sqlite3_vfs_find(nullptr), first);
  Db later(dir.File("later.db"));
  ASSERT_EQ(later.open_rc(), SQLITE_OK) << later.error();
  EXPECT_EQ(later.VfsName(), "safeconc/unix");
  later.Must("create table t(x)");
  // The functions later connections get are still the first copy's: they see its state.
  EXPECT_GE(later.Int("select json_extract(safeconc_stats(), '$.process.files_open')"), 1);
}

// `?vfs=unix` and sqlite3_open_v2(..., "unix") opt out; `?vfs=safeconc` selects it
// explicitly. A PRAGMA safeconc_* on an opted-out connection is ignored as SQLite ignores
// every unknown pragma: no row, no error - which is how a user tells the two apart.
TEST(Load, VfsUnixOptsOutAndUnknownPragmaIsIgnored) {
  sctest::LoadExtension();
  TempDir dir;
  Db uri("file:" + dir.File("x.db") + "?vfs=unix");
  Db arg(dir.File("y.db"), "unix");
  Db mem(":memory:");
  Db explicit_("file:" + dir.File("z.db") + "?vfs=safeconc");
  EXPECT_EQ(uri.VfsName(), "unix");
  EXPECT_EQ(arg.VfsName(), "unix");
  EXPECT_EQ(explicit_.VfsName(), "safeconc/unix");
  for (Db* db : {&uri, &arg, &mem}) {
    EXPECT_TRUE(db->Rows("pragma safeconc_timeout").empty());
    EXPECT_EQ(ErrorOf(*db, "pragma safeconc_timeout = 'not a number'"), "") << "ignored";
    EXPECT_TRUE(db->Rows("pragma safeconc_txn = serial").empty());
    EXPECT_TRUE(db->Rows("pragma safeconc_stats").empty());
    // The functions come with the auto-extension, whatever the VFS.
    EXPECT_EQ(db->Text("select safeconc_version()"), SAFECONC_VERSION);
  }
  EXPECT_EQ(explicit_.Rows("pragma safeconc_txn"), std::vector<std::string>{"deferred"});
}

// safeconc_stats() is valid JSON with the documented keys, and counts what happened: the
// open database is listed with its path and lock calls. Catches malformed JSON (a comma bug)
// and counters that are never incremented.
TEST(Stats, IsValidJsonWithTheDocumentedKeys) {
  sctest::LoadExtension();
  TempDir dir;
  const std::string path = dir.File("stats.db");
  Db db(path);
  db.Must("create table t(x); insert into t values (1)");
  EXPECT_EQ(db.Int("select json_valid(safeconc_stats())"), 1) << db.Text("select safeconc_stats()");
  const std::vector<std::pair<std::string, std::string>> types = {
      {"$.version", "text"},
      {"$.vfs", "object"},
      {"$.vfs.name", "text"},
      {"$.vfs.base", "text"},
      {"$.vfs.is_default", "true"},
      {"$.vfs.default", "text"},
      {"$.process", "object"},
      {"$.process.files_open", "integer"},
      {"$.process.databases_open", "integer"},
      {"$.process.opens", "integer"},
      {"$.process.lock_calls.xLock", "integer"},
      {"$.process.lock_calls.xUnlock", "integer"},
      {"$.process.lock_calls.xCheckReservedLock", "integer"},
      {"$.process.lock_calls.xShmLock", "integer"},
      {"$.databases", "array"},
  };
  for (const auto& t : types) {
    EXPECT_EQ(db.Text("select json_type(safeconc_stats(), '" + t.first + "')"), t.second)
        << t.first;
  }
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.version')"), SAFECONC_VERSION);
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.vfs.name')"), "safeconc");
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.vfs.base')"), "unix");
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.vfs.default')"), "safeconc");
  EXPECT_GE(db.Int("select json_extract(safeconc_stats(), '$.process.files_open')"), 1);
  EXPECT_GE(db.Int("select json_extract(safeconc_stats(), '$.process.opens')"), 1);
  EXPECT_GT(db.Int("select json_extract(safeconc_stats(), '$.process.lock_calls.xLock')"), 0);

  // This database's entry, found by path, and the same object through PRAGMA safeconc_stats.
  const std::string entry =
      "(select value from json_each(safeconc_stats(), '$.databases') "
      "where json_extract(value, '$.path') = '" +
      path + "')";
  EXPECT_EQ(db.Int("select json_extract(" + entry + ", '$.handles')"), 1);
  EXPECT_GT(db.Int("select json_extract(" + entry + ", '$.lock_calls.xLock')"), 0);
  EXPECT_EQ(db.Text("select json_type(" + entry + ", '$.ino')"), "integer");
  const std::string pragma = db.Text("pragma safeconc_stats");
  EXPECT_EQ(db.Int("select json_valid('" + pragma + "')"), 1) << pragma;
  EXPECT_EQ(db.Text("select json_extract(json('" + pragma + "'), '$.path')"), path);
  {
    Db second(path);
    EXPECT_EQ(second.Int("select json_extract(" + entry + ", '$.handles')"), 2)
        << "two connections to one file share one entry";
  }
  EXPECT_EQ(ErrorOf(db, "pragma safeconc_stats = 1"), "safeconc_stats: takes no value (got '1')");
}

// PRAGMA reads and writes each knob for that connection only, in any case, and refuses bad
// values with the exact message; the refused value leaves the old one in place. Catches a
// knob stored process-wide by mistake and a PRAGMA that half-applies a bad value.
TEST(Knobs, PragmaReadsWritesAndValidates) {
  sctest::LoadExtension();
  TempDir dir;
  Db db(dir.File("k.db"));
  Db other(dir.File("k.db"));
  EXPECT_EQ(db.Rows("pragma safeconc_timeout"), std::vector<std::string>{"5000"});
  EXPECT_EQ(db.Rows("pragma safeconc_txn"), std::vector<std::string>{"deferred"});
  EXPECT_EQ(db.Rows("pragma safeconc_call_timeout"), std::vector<std::string>{"10000"});

  EXPECT_EQ(db.Rows("pragma safeconc_timeout = 0"), std::vector<std::string>{"0"});
  EXPECT_EQ(db.Rows("pragma safeconc_timeout = 86400000"), std::vector<std::string>{"86400000"});
  EXPECT_EQ(db.Rows("pragma SAFECONC_TXN = IMMEDIATE"), std::vector<std::string>{"immediate"});
  EXPECT_EQ(db.Rows("pragma safeconc_txn = 'Serial'"), std::vector<std::string>{"serial"});
  EXPECT_EQ(db.Rows("pragma main.safeconc_call_timeout = 250"), std::vector<std::string>{"250"});
  EXPECT_EQ(db.Text("pragma safeconc_timeout"), "86400000");
  EXPECT_EQ(db.Text("pragma safeconc_txn"), "serial");
  EXPECT_EQ(other.Text("pragma safeconc_timeout"), "5000") << "per connection";
  EXPECT_EQ(other.Text("pragma safeconc_txn"), "deferred");
  EXPECT_EQ(db.Text("select safeconc_config('safeconc_timeout')"), "5000") << "not the default";

  struct Bad {
    const char* knob;
    const char* sql_value;  // as written after '='
    const char* seen;       // what the knob receives
    const char* accepted;
  };
  const Bad bad[] = {
      {"safeconc_timeout", "-1", "-1", kMillisAccepted},
      {"safeconc_timeout", "abc", "abc", kMillisAccepted},
      {"safeconc_timeout", "99999999999999999999", "99999999999999999999", kMillisAccepted},
      {"safeconc_timeout", "86400001", "86400001", kMillisAccepted},
      {"safeconc_timeout", "''", "", kMillisAccepted},
      {"safeconc_timeout", "1.5", "1.5", kMillisAccepted},
      {"safeconc_call_timeout", "-5", "-5", kMillisAccepted},
      {"safeconc_call_timeout", "'ten'", "ten", kMillisAccepted},
      {"safeconc_call_timeout", "86400001", "86400001", kMillisAccepted},
      {"safeconc_call_timeout", "''", "", kMillisAccepted},
      {"safeconc_txn", "exclusive", "exclusive", kTxnAccepted},
      {"safeconc_txn", "''", "", kTxnAccepted},
      {"safeconc_txn", "1", "1", kTxnAccepted},
      {"safeconc_txn", "-1", "-1", kTxnAccepted},
  };
  for (const Bad& b : bad) {
    const std::string sql = std::string("pragma ") + b.knob + " = " + b.sql_value;
    EXPECT_EQ(ErrorOf(db, sql), BadValue(b.knob, b.seen, b.accepted)) << sql;
  }
  EXPECT_EQ(db.Text("pragma safeconc_timeout"), "86400000") << "unchanged by refused values";
  EXPECT_EQ(db.Text("pragma safeconc_txn"), "serial");
  EXPECT_EQ(db.Text("pragma safeconc_call_timeout"), "250");
}

// Knobs given as URI parameters are applied at open; they are per connection. Catches URI
// parameters that are parsed but not stored, or stored on the wrong knob.
TEST(Knobs, UriParametersApplyAtOpen) {
  sctest::LoadExtension();
  TempDir dir;
  Db db("file:" + dir.File("u.db") +
        "?safeconc_timeout=2000&safeconc_txn=Immediate&safeconc_call_timeout=0");
  ASSERT_EQ(db.open_rc(), SQLITE_OK) << db.error();
  EXPECT_EQ(db.Text("pragma safeconc_timeout"), "2000");
  EXPECT_EQ(db.Text("pragma safeconc_txn"), "immediate");
  EXPECT_EQ(db.Text("pragma safeconc_call_timeout"), "0");
  Db plain(dir.File("u.db"));
  EXPECT_EQ(plain.Text("pragma safeconc_timeout"), "5000");
  // An attached database reads its own URI.
  db.Must("attach 'file:" + dir.File("aux.db") + "?safeconc_txn=serial' as aux");
  EXPECT_EQ(db.Text("pragma aux.safeconc_txn"), "serial");
  EXPECT_EQ(db.Text("pragma main.safeconc_txn"), "immediate");
}

// A bad URI value makes the open fail (never silently ignored), does not create the file,
// and the reason - naming the knob, the value and what is accepted - reaches sqlite3_log.
TEST(Knobs, BadUriValueFailsTheOpenAndIsLogged) {
  sctest::LoadExtension();
  TempDir dir;
  struct Bad {
    const char* param;
    const char* value;
    const char* accepted;
  };
  const Bad bad[] = {
      {"safeconc_timeout", "-1", kMillisAccepted},
      {"safeconc_timeout", "abc", kMillisAccepted},
      {"safeconc_timeout", "99999999999999999999", kMillisAccepted},
      {"safeconc_timeout", "86400001", kMillisAccepted},
      {"safeconc_timeout", "", kMillisAccepted},
      {"safeconc_call_timeout", "x1", kMillisAccepted},
      {"safeconc_txn", "exclusive", kTxnAccepted},
      {"safeconc_txn", "", kTxnAccepted},
  };
  int i = 0;
  for (const Bad& b : bad) {
    const std::string path = dir.File("bad" + std::to_string(i++) + ".db");
    TakeLog();
    {
      Db db("file:" + path + "?" + b.param + "=" + b.value);
      EXPECT_EQ(db.open_rc(), SQLITE_CANTOPEN) << b.param << "=" << b.value;
    }
    EXPECT_FALSE(Exists(path)) << "a refused open must not create " << path;
    const std::string want = std::to_string(SQLITE_CANTOPEN) + ": safeconc: cannot open " + path +
                             ": URI parameter " + BadValue(b.param, b.value, b.accepted);
    const std::vector<std::string> log = TakeLog();
    EXPECT_NE(std::find(log.begin(), log.end(), want), log.end()) << "want: " << want << "\nlog:\n"
                                                                  << ::testing::PrintToString(log);
  }
  // ATTACH of a file with a bad value fails too.
  Db db(dir.File("main.db"));
  EXPECT_NE(db.Exec("attach 'file:" + dir.File("aux.db") + "?safeconc_txn=maybe' as aux"),
            SQLITE_OK);
}

// safeconc_config sets the process default that later opens start with; connections already
// open keep their values and a URI parameter still overrides it. Bad names and values are
// refused with the exact message. Catches defaults read once at load instead of per open.
TEST(Config, SetsDefaultsForLaterOpens) {
  sctest::LoadExtension();
  TempDir dir;
  Db early(dir.File("c.db"));
  EXPECT_EQ(early.Text("select safeconc_config('safeconc_timeout', 1500)"), "1500");
  EXPECT_EQ(early.Text("select safeconc_config('SAFECONC_TXN', 'Serial')"), "serial");
  EXPECT_EQ(early.Text("select safeconc_config('safeconc_call_timeout', '20')"), "20");
  EXPECT_EQ(early.Text("select safeconc_config('safeconc_timeout')"), "1500");
  EXPECT_EQ(early.Text("pragma safeconc_timeout"), "5000") << "open connections keep theirs";
  {
    Db later(dir.File("c.db"));
    EXPECT_EQ(later.Text("pragma safeconc_timeout"), "1500");
    EXPECT_EQ(later.Text("pragma safeconc_txn"), "serial");
    EXPECT_EQ(later.Text("pragma safeconc_call_timeout"), "20");
    Db uri("file:" + dir.File("c.db") + "?safeconc_timeout=7");
    EXPECT_EQ(uri.Text("pragma safeconc_timeout"), "7");
    EXPECT_EQ(uri.Text("pragma safeconc_txn"), "serial");
  }
  EXPECT_EQ(ErrorOf(early, "select safeconc_config('safeconc_timeout', -1)"),
            BadValue("safeconc_timeout", "-1", kMillisAccepted));
  EXPECT_EQ(ErrorOf(early, "select safeconc_config('safeconc_timeout', '99999999999999999999')"),
            BadValue("safeconc_timeout", "99999999999999999999", kMillisAccepted));
  EXPECT_EQ(ErrorOf(early, "select safeconc_config('safeconc_txn', '')"),
            BadValue("safeconc_txn", "", kTxnAccepted));
  EXPECT_EQ(ErrorOf(early, "select safeconc_config('nope')"),
            "safeconc_config: unknown knob 'nope': expected safeconc_timeout, safeconc_txn, "
            "safeconc_call_timeout or safeconc_fair_ms");
  EXPECT_EQ(ErrorOf(early, "select safeconc_config('safeconc_timeout', 1, 2)"),
            "wrong number of arguments to function safeconc_config()");
  EXPECT_EQ(early.Text("select safeconc_config('safeconc_timeout')"), "1500") << "unchanged";
  // Restore the contract's defaults for the tests that follow.
  early.Must(
      "select safeconc_config('safeconc_timeout', 5000), safeconc_config('safeconc_txn', "
      "'deferred'), safeconc_config('safeconc_call_timeout', 10000)");
}

// When another VFS becomes the default (as sqlite3_shutdown()+sqlite3_initialize() does),
// safeconc_stats says so: vfs.is_default false. Catches a stats field computed at load time.
TEST(Stats, ShowsWhenSafeconcIsNoLongerTheDefault) {
  sctest::LoadExtension();
  TempDir dir;
  Db db(dir.File("d.db"));
  sqlite3_vfs* safeconc = sqlite3_vfs_find("safeconc");
  ASSERT_EQ(sqlite3_vfs_register(sqlite3_vfs_find("unix"), 1), SQLITE_OK);
  EXPECT_EQ(db.Text("select json_type(safeconc_stats(), '$.vfs.is_default')"), "false");
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.vfs.default')"), "unix");
  ASSERT_EQ(sqlite3_vfs_register(safeconc, 1), SQLITE_OK);
  EXPECT_EQ(db.Text("select json_type(safeconc_stats(), '$.vfs.is_default')"), "true");
}

// A database whose path is not UTF-8 (a Latin-1 "é" byte) still gives valid JSON, with the
// byte shown as U+FFFD. Catches a path copied into safeconc_stats() byte for byte: Python's
// sqlite3 then cannot even fetch the result ("Could not decode to UTF-8"), and strict JSON
// parsers reject it.
TEST(Stats, StaysValidJsonForANonUtf8Path) {
  sctest::LoadExtension();
  TempDir dir;
  Db db(dir.File("caf\xe9.db"));
  ASSERT_EQ(db.open_rc(), SQLITE_OK) << db.error();
  db.Must("create table t(x)");
  EXPECT_EQ(db.Int("select json_valid(safeconc_stats())"), 1);
  // Compared as bytes: LIKE and = would read the stray byte as U+FFFD themselves.
  EXPECT_EQ(db.Int("select count(*) from json_each(safeconc_stats(), '$.databases') "
                   "where hex(json_extract(value, '$.path')) like '%2F636166EFBFBD2E6462'"),
            1)
      << db.Text("select safeconc_stats()");
}

// The documented trap: sqlite3_shutdown()+sqlite3_initialize() makes "unix" the default again
// and clears the auto-extension, so later opens bypass safeconc until the extension is
// loaded again; `?vfs=safeconc` still works meanwhile. Runs last: it resets SQLite.
TEST(Trap, ShutdownInitializeBypassesUntilReloaded) {
  sctest::LoadExtension();
  TempDir dir;
  ASSERT_EQ(sqlite3_shutdown(), SQLITE_OK);
  ASSERT_EQ(sqlite3_initialize(), SQLITE_OK);
  Db bypass(dir.File("t.db"));
  EXPECT_EQ(bypass.VfsName(), "unix");
  EXPECT_TRUE(bypass.Rows("pragma safeconc_timeout").empty());
  EXPECT_NE(bypass.Exec("select safeconc_version()"), SQLITE_OK) << "auto-extension cleared";
  Db chosen("file:" + dir.File("t.db") + "?vfs=safeconc");
  EXPECT_EQ(chosen.VfsName(), "safeconc/unix");
  std::string err;
  ASSERT_EQ(LoadInto(bypass, &err), SQLITE_OK) << err;
  Db again(dir.File("t.db"));
  EXPECT_EQ(again.VfsName(), "safeconc/unix");
  EXPECT_EQ(again.Text("select json_type(safeconc_stats(), '$.vfs.is_default')"), "true");
}

}  // namespace

int main(int argc, char** argv) {
  // Must precede sqlite3_initialize(), which the first sqlite3_open runs.
  if (sqlite3_config(SQLITE_CONFIG_LOG, LogCallback, nullptr) != SQLITE_OK) return 2;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
