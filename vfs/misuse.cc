// misuse.cc - the cold half of misuse.h: counting and logging overlaps.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "vfs/misuse.h"

#include "base/thread_id.h"

namespace safeconc {
namespace {
std::atomic<uint64_t> g_overlaps{0};  // relaxed: a count for diagnostics
}  // namespace

[[gnu::noinline, gnu::cold]] void ReportOverlap(const char* path, const char* method,
                                                bool at_entry) {
  g_overlaps.fetch_add(1, std::memory_order_relaxed);
  sqlite3_log(SQLITE_MISUSE,
              "safeconc: %s on %s: two threads inside calls on the same database file at once "
              "(%s, thread %llu): a connection opened with SQLITE_OPEN_NOMUTEX, or in "
              "SQLITE_CONFIG_MULTITHREAD mode, is used by two threads at once; use it from one "
              "thread at a time or drop NOMUTEX",
              method, path ? path : "?",
              at_entry ? "refused: another thread is inside" : "seen when the call ended",
              static_cast<unsigned long long>(CurrentThreadId()));
}

uint64_t OverlappingCalls() { return g_overlaps.load(std::memory_order_relaxed); }

}  // namespace safeconc
