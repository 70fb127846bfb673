// hardening_knobs_test.cc - knob names and values a hostile or careless user can pass (issue
// 11, items 5 and 6): a `safeconc_`-prefixed URI parameter in any case must name a knob or
// fail the open with a logged message listing the knobs; knob names match in any case; a value
// with an embedded NUL is refused; the echo of a huge bad value is cut to a sane length.
// Own main: the log callback must be installed before sqlite3_initialize().
#include <sqlite3.h>

#include <mutex>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace {

std::mutex g_log_mu;
std::vector<std::string> g_log;

void LogCallback(void*, int code, const char* msg) {
  std::lock_guard<std::mutex> l(g_log_mu);
  g_log.push_back(std::to_string(code) + " " + (msg ? msg : ""));
}

// The log lines since the last call.
std::vector<std::string> TakeLog() {
  std::lock_guard<std::mutex> l(g_log_mu);
  std::vector<std::string> out;
  out.swap(g_log);
  return out;
}

bool LogHas(const std::vector<std::string>& log, const std::string& needle) {
  for (const std::string& l : log)
    if (l.find(needle) != std::string::npos) return true;
  return false;
}

class Knobs : public ::testing::Test {
 protected:
  void SetUp() override {
    sctest::LoadExtension();
    TakeLog();
  }
  std::string Uri(const std::string& query) { return "file:" + dir_.File("k.db") + "?" + query; }
  sctest::TempDir dir_;
};

// Item 5: on 567f514 `?SAFECONC_TIMEOUT=-1` was ignored (sqlite3_uri_parameter matches names
// exactly) and the connection opened with the default.
TEST_F(Knobs, UriKnobNameInAnyCaseIsValidated) {
  sctest::Db bad(Uri("SAFECONC_TIMEOUT=-1"));
  EXPECT_EQ(bad.open_rc(), SQLITE_CANTOPEN);
  EXPECT_TRUE(LogHas(TakeLog(), "safeconc_timeout: bad value '-1'"));
  sctest::Db good(Uri("Safeconc_Timeout=250&SAFECONC_TXN=Immediate"));
  ASSERT_EQ(good.open_rc(), SQLITE_OK) << good.error();
  EXPECT_EQ(good.Text("pragma safeconc_timeout"), "250");
  EXPECT_EQ(good.Text("pragma safeconc_txn"), "immediate");
}

// Item 5: a misspelt knob opened normally on 567f514.
TEST_F(Knobs, UnknownUriKnobFailsTheOpenNamingItAndTheKnobs) {
  sctest::Db db(Uri("safeconc_timout=1"));
  EXPECT_EQ(db.open_rc(), SQLITE_CANTOPEN);
  const std::vector<std::string> log = TakeLog();
  EXPECT_TRUE(LogHas(log, "unknown URI parameter 'safeconc_timout'"));
  EXPECT_TRUE(LogHas(log, "safeconc_timeout, safeconc_txn"));
  sctest::Db upper(Uri("SAFECONC_NOPE=1"));
  EXPECT_EQ(upper.open_rc(), SQLITE_CANTOPEN);
  EXPECT_TRUE(LogHas(TakeLog(), "'SAFECONC_NOPE'"));
  // Parameters that are not ours stay SQLite's business.
  sctest::Db other(Uri("cache=private&safeconcx=1"));
  EXPECT_EQ(other.open_rc(), SQLITE_OK) << other.error();
}

// The same rule for PRAGMAs: a misspelt safeconc_ pragma is an error, not a silent no-op.
TEST_F(Knobs, UnknownSafeconcPragmaIsAnError) {
  sctest::Db db(Uri("safeconc_timeout=100"));
  ASSERT_EQ(db.open_rc(), SQLITE_OK);
  EXPECT_EQ(db.Exec("pragma safeconc_timout = 5"), SQLITE_ERROR);
  EXPECT_NE(db.error().find("safeconc_timeout"), std::string::npos) << db.error();
  EXPECT_EQ(db.Text("pragma SAFECONC_TIMEOUT"), "100");
  EXPECT_EQ(db.Exec("pragma user_version"), SQLITE_OK);  // SQLite's own still work
}

// Item 6: x'3737003939' was read as 77 on 567f514.
TEST_F(Knobs, ValueWithEmbeddedNulIsRefused) {
  sctest::Db db(Uri("safeconc_timeout=100"));
  const std::string before = db.Text("select safeconc_config('safeconc_timeout')");
  EXPECT_EQ(db.Exec("select safeconc_config('safeconc_timeout', cast(x'3737003939' as text))"),
            SQLITE_ERROR);
  EXPECT_NE(db.error().find("bad value '77\\x0099'"), std::string::npos) << db.error();
  EXPECT_EQ(db.Exec("select safeconc_config('safeconc_timeout', x'3737003939')"), SQLITE_ERROR);
  EXPECT_EQ(db.Text("select safeconc_config('safeconc_timeout')"), before);
  // A name with a NUL inside names no knob.
  EXPECT_EQ(db.Exec("select safeconc_config(cast(x'73616665636f6e635f74786e0078' as text))"),
            SQLITE_ERROR);
  EXPECT_NE(db.error().find("unknown knob"), std::string::npos) << db.error();
}

// Item 6: a 1 MB bad value produced a 1 MB error message on 567f514.
TEST_F(Knobs, HugeBadValueEchoIsCut) {
  sctest::Db db(Uri("safeconc_timeout=100"));
  const std::string big(1000000, '7');
  EXPECT_EQ(db.Exec("select safeconc_config('safeconc_timeout', '" + big + "')"), SQLITE_ERROR);
  EXPECT_LT(db.error().size(), 300u) << db.error().substr(0, 300);
  EXPECT_NE(db.error().find("(1000000 bytes)"), std::string::npos) << db.error().substr(0, 300);
  EXPECT_EQ(db.Exec("pragma safeconc_txn = '" + big + "'"), SQLITE_ERROR);
  EXPECT_LT(db.error().size(), 300u);
  EXPECT_EQ(db.Exec("select safeconc_config('" + big + "')"), SQLITE_ERROR);
  EXPECT_LT(db.error().size(), 300u);
  // The URI path logs it cut too.
  TakeLog();
  sctest::Db bad(Uri("safeconc_txn=" + std::string(100000, 'x')));
  EXPECT_EQ(bad.open_rc(), SQLITE_CANTOPEN);
  const std::vector<std::string> log = TakeLog();
  ASSERT_FALSE(log.empty());
  for (const std::string& l : log) EXPECT_LT(l.size(), 500u) << l.substr(0, 200);
}

}  // namespace

int main(int argc, char** argv) {
  sqlite3_config(SQLITE_CONFIG_LOG, LogCallback, nullptr);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
