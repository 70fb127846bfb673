// bench_util.h - what the benchmarks share: loading the built extension as a binding does.
#ifndef SAFECONC_BENCH_BENCH_UTIL_H
#define SAFECONC_BENCH_BENCH_UTIL_H

#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>

// Loads SAFECONC_SO_PATH through sqlite3_load_extension on a throwaway connection; prints
// why and returns false if it cannot.
inline bool LoadSafeconc() {
  sqlite3* db = nullptr;
  sqlite3_open(":memory:", &db);
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, nullptr);
  char* err = nullptr;
  // SAFECONC_SO: another build of the library (an A/B comparison with the same benchmark).
  const char* so = std::getenv("SAFECONC_SO");
  if (so == nullptr || *so == '\0') so = SAFECONC_SO_PATH;
  const bool ok = sqlite3_load_extension(db, so, nullptr, &err) == SQLITE_OK;
  if (!ok) std::fprintf(stderr, "cannot load %s: %s\n", so, err ? err : "?");
  sqlite3_free(err);
  sqlite3_close(db);
  return ok;
}

#endif  // SAFECONC_BENCH_BENCH_UTIL_H
