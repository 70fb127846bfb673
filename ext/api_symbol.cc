// api_symbol.cc - the one exported symbol of the C API, safeconc_api (include/safeconc.h).
//
// Why a file of its own: a user may name it as the entry point by mistake
// (`.load ./build/libsafeconc safeconc_api`). SQLite then calls it as an extension init
// function, (sqlite3* db, char** pzErrMsg, const sqlite3_api_routines* pApi), and reads its
// result as an int: a NULL table would read as SQLITE_OK, and the load would "succeed" having
// registered nothing. So the definition takes the loader's three arguments (this file does not
// include safeconc.h, whose one-argument prototype bindings call; on the x86-64 and AArch64
// C ABIs the extra parameters are just argument registers a one-argument caller leaves
// unspecified, and they are read only when the first one cannot be a table version).
//
// A version is a small number; the loader's first argument is a heap pointer whose low 32 bits
// are 8-aligned and, but for a 1 in 2^22 chance, above kMaxVersion. Such a call fails the load
// (a non-zero int result) and, when pApi is provably SQLite's routine table (it lies in the
// same loaded object as SQLite's own sqlite3_load_extension), says why through *pzErrMsg.
#include <dlfcn.h>
#include <sqlite3ext.h>

#include <cstdint>

#include "ext/internal.h"

namespace {

constexpr int kMaxVersion = 1024;

bool IsSqliteRoutineTable(const void* p) {
  void* load = dlsym(RTLD_DEFAULT, "sqlite3_load_extension");
  Dl_info a, b;
  return p != nullptr && load != nullptr && dladdr(p, &a) != 0 && dladdr(load, &b) != 0 &&
         a.dli_fbase == b.dli_fbase;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const void* safeconc_api(
    int version, char** pzErrMsg, const sqlite3_api_routines* pApi) {
  if (version >= 0 && version < kMaxVersion) return safeconc::ApiTable(version);
  // Called as an extension entry point.
  if (pzErrMsg != nullptr && IsSqliteRoutineTable(pApi)) {
    *pzErrMsg = pApi->mprintf(
        "safeconc_api is the C API table accessor of libsafeconc, not an entry point: load the "
        "library without naming one (.load ./build/libsafeconc), or name sqlite3_safeconc_init");
  }
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(SQLITE_ERROR));
}
