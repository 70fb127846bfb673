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
// Telling the two calls apart. Version 1 is the table, whatever else is passed. Otherwise the
// call is the loader's when the first argument is a pointer (above 4 GB: a binding's int
// version arrives zero-extended to a 32-bit value; or an implausible version, negative or from
// 1024 up) and the third is SQLite's routine table (it lies in the same loaded object as SQLite's
// own sqlite3_load_extension). Only then is *pzErrMsg written. (A first version of this check
// looked at the low 32 bits of the pointer alone; ASan's allocator hands out sqlite3 objects
// whose low 32 bits are small numbers.)
#include <dlfcn.h>
#include <sqlite3ext.h>

#include <cstdint>

#include "ext/internal.h"

namespace {

bool IsSqliteRoutineTable(const void* p) {
  void* load = dlsym(RTLD_DEFAULT, "sqlite3_load_extension");
  Dl_info a, b;
  return p != nullptr && load != nullptr && dladdr(p, &a) != 0 && dladdr(load, &b) != 0 &&
         a.dli_fbase == b.dli_fbase;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const void* safeconc_api(
    uintptr_t first, char** pzErrMsg, const sqlite3_api_routines* pApi) {
  const int version = static_cast<int>(static_cast<uint32_t>(first));
  if (version == 1) return safeconc::ApiTable(version);
  // A heap pointer below 4 GB (a non-PIE program's brk heap) is not a plausible version either.
  const bool pointer = first > 0xffffffffu || version < 0 || version >= 1024;
  if (!pointer) return safeconc::ApiTable(version);
  const bool sqlite_table = IsSqliteRoutineTable(pApi);
  // Without SQLite's symbol to compare with (SQLite linked statically and not exported), a
  // 64-bit first argument alone decides, and no message is written.
  const bool loader = sqlite_table || (first > 0xffffffffu &&
                                       dlsym(RTLD_DEFAULT, "sqlite3_load_extension") == nullptr);
  if (!loader) return safeconc::ApiTable(version);  // a binding's odd version: NULL
  if (sqlite_table && pzErrMsg != nullptr) {
    *pzErrMsg = pApi->mprintf(
        "safeconc_api is the C API table accessor of libsafeconc, not an entry point: load the "
        "library without naming one (.load ./build/libsafeconc), or name sqlite3_safeconc_init");
  }
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(SQLITE_ERROR));
}
