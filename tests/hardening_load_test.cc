// hardening_load_test.cc - loading the library the wrong way (issue 11, items 3, 4 and 8):
// a second copy from another path, the API symbol named as the entry point, and
// sqlite3_shutdown() + sqlite3_initialize() followed by loading again. Each test changes
// process-wide state, so CMake runs each in a process of its own (GTEST_FILTER).
#include <dlfcn.h>
#include <sqlite3.h>

#include <filesystem>
#include <string>

#include "tests/trampoline_util.h"

namespace {

int LoadInto(sqlite3* db, const std::string& path, const char* entry, std::string* err) {
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* e = nullptr;
  const int rc = sqlite3_load_extension(db, path.c_str(), entry, &e);
  if (err) *err = e ? e : "";
  sqlite3_free(e);
  return rc;
}

const safeconc_api_v1* TableOf(const std::string& path) {
  void* so = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (so == nullptr) return nullptr;
  auto fn = reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL));
  return fn ? static_cast<const safeconc_api_v1*>(fn(1)) : nullptr;
}

// Item 3: on 567f514 the copy's table used the copy's own state: a connection's
// safeconc_call_timeout=300 was not seen (it waited 10 s) and its calls were not in the stats.
TEST(HardeningLoad, SecondCopyHandsOutTheFirstCopysTable) {
  sctest::TempDir dir;
  const std::string copy = dir.File("libsafeconc.so");
  std::filesystem::copy_file(sctest::SoPath(), copy);
  const safeconc_api_v1* first = sctest::Api();  // loads the build's copy
  ASSERT_NE(first, nullptr);
  sctest::Db boot(":memory:");
  std::string err;
  ASSERT_EQ(LoadInto(boot.get(), copy, nullptr, &err), SQLITE_OK) << err;
  const safeconc_api_v1* second = TableOf(copy);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second, first) << "the second copy handed out a table of its own";

  // Behaviour, through the second copy's symbol: the connection's call timeout applies.
  safeconc_owner* owner = nullptr;
  ASSERT_EQ(second->owner_open_fd(&owner), SQLITE_OK) << second->errmsg();
  sctest::Db db("file:" + dir.File("c.db") + "?safeconc_call_timeout=300");
  ASSERT_EQ(second->create_function(
                db.get(), "f", 0, 0, owner, nullptr,
                [](safeconc_ctx* c) { TableOf(sctest::SoPath())->result_int64(c, 1); }, nullptr),
            SQLITE_OK);
  const int64_t before = db.Int("select json_extract(safeconc_stats(), '$.udf.calls_dispatched')");
  std::string msg;
  std::thread worker([&] {  // the owner thread never drains: the call must time out
    if (db.Exec("select f()") != SQLITE_OK) msg = db.error();
  });
  worker.join();
  EXPECT_NE(msg.find("safeconc_call_timeout=300 ms"), std::string::npos) << msg;
  EXPECT_EQ(db.Int("select json_extract(safeconc_stats(), '$.udf.calls_dispatched')"), before + 1);
  second->owner_drain(owner, 0);
  EXPECT_EQ(second->owner_close(owner), SQLITE_OK);
}

// Item 4: on 567f514 `.load libsafeconc safeconc_api` reported success and registered nothing.
TEST(HardeningLoad, ApiSymbolAsEntryPointFailsWithMessage) {
  sctest::Db boot(":memory:");
  std::string err;
  EXPECT_EQ(LoadInto(boot.get(), sctest::SoPath(), "safeconc_api", &err), SQLITE_ERROR);
  EXPECT_NE(err.find("not an entry point"), std::string::npos) << err;
  // The table is still reachable the documented way, and unknown versions are NULL.
  const safeconc_api_v1* api = sctest::Api();
  ASSERT_NE(api, nullptr);
  EXPECT_EQ(api->version, 1);
  void* so = dlopen(sctest::SoPath().c_str(), RTLD_NOW | RTLD_NOLOAD);
  auto fn = reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL));
  EXPECT_EQ(fn(2), nullptr);
  EXPECT_EQ(fn(0), nullptr);
  dlclose(so);
}

// Item 8: sqlite3_shutdown() clears the auto-extension and sqlite3_initialize() makes unix the
// default again; loading the extension again must restore both.
TEST(HardeningLoad, LoadingAgainAfterShutdownRestoresVfsAndAutoExtension) {
  sctest::TempDir dir;
  sctest::LoadExtension();
  {
    sctest::Db db(dir.File("a.db"));
    ASSERT_EQ(db.VfsName(), "safeconc/unix");
  }
  ASSERT_EQ(sqlite3_shutdown(), SQLITE_OK);
  ASSERT_EQ(sqlite3_initialize(), SQLITE_OK);
  {
    sctest::Db db(dir.File("a.db"));
    EXPECT_EQ(db.VfsName(), "unix");  // the trap
    EXPECT_NE(db.Exec("select safeconc_version()"), SQLITE_OK);
  }
  {
    sctest::Db boot(":memory:");
    std::string err;
    ASSERT_EQ(LoadInto(boot.get(), sctest::SoPath(), nullptr, &err), SQLITE_OK) << err;
  }
  sctest::Db db(dir.File("a.db"));
  EXPECT_EQ(db.VfsName(), "safeconc/unix");
  EXPECT_EQ(db.Text("select json_extract(safeconc_stats(), '$.vfs.is_default')"), "1");
  EXPECT_EQ(db.Text("pragma safeconc_timeout"), "5000");
  // Twice more: shutting down again and reloading keeps working.
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(sqlite3_shutdown(), SQLITE_OK);
    ASSERT_EQ(sqlite3_initialize(), SQLITE_OK);
    sctest::Db boot(":memory:");
    std::string err;
    ASSERT_EQ(LoadInto(boot.get(), sctest::SoPath(), nullptr, &err), SQLITE_OK) << err;
    sctest::Db again(dir.File("a.db"));
    EXPECT_EQ(again.VfsName(), "safeconc/unix");
    EXPECT_EQ(again.Text("select safeconc_version()").empty(), false);
  }
}

}  // namespace
