// test_util.cc - see test_util.h.
#include "tests/test_util.h"

#include <stdlib.h>

#include <filesystem>
#include <mutex>

namespace sctest {

std::string SoPath() { return SAFECONC_SO_PATH; }

void LoadExtension() {
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    sqlite3* db = nullptr;
    sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, nullptr);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
    char* err = nullptr;
    if (sqlite3_load_extension(db, SoPath().c_str(), nullptr, &err) != SQLITE_OK) {
      error = err ? err : "unknown error";
    }
    sqlite3_free(err);
    sqlite3_close(db);
  });
  ASSERT_EQ(error, "") << "loading " << SoPath();
}

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/safeconc-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Db::Db(const std::string& name, const char* vfs, int flags) {
  open_rc_ = sqlite3_open_v2(name.c_str(), &db_, flags, vfs);
}

Db::~Db() { sqlite3_close_v2(db_); }

std::string Db::error() const { return db_ ? sqlite3_errmsg(db_) : "no connection"; }

int Db::Exec(const std::string& sql) {
  return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
}

void Db::Must(const std::string& sql) { ASSERT_EQ(Exec(sql), SQLITE_OK) << sql << ": " << error(); }

std::vector<std::string> Db::Rows(const std::string& sql) {
  std::vector<std::string> rows;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << error();
  if (rc != SQLITE_OK) return rows;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    std::string row;
    for (int i = 0; i < sqlite3_column_count(st); ++i) {
      if (i) row += '|';
      const unsigned char* t = sqlite3_column_text(st, i);
      row += t ? reinterpret_cast<const char*>(t) : "NULL";
    }
    rows.push_back(row);
  }
  EXPECT_EQ(rc, SQLITE_DONE) << sql << ": " << error();
  sqlite3_finalize(st);
  return rows;
}

std::string Db::Text(const std::string& sql) {
  std::vector<std::string> rows = Rows(sql);
  return rows.empty() ? "" : rows[0].substr(0, rows[0].find('|'));
}

int64_t Db::Int(const std::string& sql) { return std::stoll("0" + Text(sql)); }

std::string Db::VfsName() {
  char* name = nullptr;
  if (sqlite3_file_control(db_, "main", SQLITE_FCNTL_VFSNAME, &name) != SQLITE_OK) return "";
  std::string s = name ? name : "";
  sqlite3_free(name);
  return s;
}

}  // namespace sctest
