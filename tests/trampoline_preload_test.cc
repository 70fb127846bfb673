// trampoline_preload_test.cc - the API table reached before the extension was loaded (a
// binding that dlopen()s the .so itself, too early): every call fails with SQLITE_MISUSE and
// a message saying what to do, none crashes. Its own process: nothing loads the extension.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <string>

#include "safeconc.h"
#include "tests/test_util.h"

namespace {

TEST(TrampolinePreload, CallsBeforeLoadingFailWithMessage) {
  void* so = dlopen(sctest::SoPath().c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(so, nullptr) << dlerror();
  auto fn = reinterpret_cast<safeconc_api_fn>(dlsym(so, SAFECONC_API_SYMBOL));
  ASSERT_NE(fn, nullptr);
  auto api = static_cast<const safeconc_api_v1*>(fn(1));
  ASSERT_NE(api, nullptr);
  EXPECT_EQ(api->version, 1);
  safeconc_owner* o = reinterpret_cast<safeconc_owner*>(1);
  EXPECT_EQ(api->owner_open_fd(&o), SQLITE_MISUSE);
  EXPECT_EQ(o, nullptr);
  EXPECT_NE(std::string(api->errmsg()).find("sqlite3_load_extension"), std::string::npos)
      << api->errmsg();
  EXPECT_EQ(api->create_function(nullptr, "f", 1, 0, nullptr, nullptr, nullptr, nullptr),
            SQLITE_MISUSE);
  EXPECT_EQ(api->in_callback(nullptr), 0);
  dlclose(so);
}

}  // namespace
