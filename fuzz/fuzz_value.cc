// fuzz_value.cc - libFuzzer target: the trampoline's value copy. A function registered through
// the API table with an owner on another thread is called from this thread, so every call is
// dispatched: its argument is copied into a task (CopiedValue::Set), read back by the host
// callback through the accessors, and its result copied back and applied on this thread.
//
// Input: byte 0 picks the type and encoding of the argument (NULL, INTEGER, FLOAT, TEXT as
// UTF-8, UTF-16LE or UTF-16BE, BLOB, zeroblob) and how the callback answers (echo through
// result_arg, or rebuild through the typed accessors and setters); the rest is the payload.
// Check: the result equals the argument (type, and bytes as SQLite renders them).
#include <poll.h>
#include <sqlite3.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "safeconc.h"

extern "C" int sqlite3_safeconc_init(sqlite3*, char**, const sqlite3_api_routines*);

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

const safeconc_api_v1* g_api = nullptr;

void Echo(safeconc_ctx* c) { g_api->result_arg(c, 0); }
void Rebuild(safeconc_ctx* c) {
  const safeconc_api_v1* a = g_api;
  switch (a->arg_type(c, 0)) {
    case SQLITE_INTEGER:
      a->result_int64(c, a->arg_int64(c, 0));
      break;
    case SQLITE_FLOAT:
      a->result_double(c, a->arg_double(c, 0));
      break;
    case SQLITE_TEXT: {
      const unsigned char* t = a->arg_text(c, 0);
      a->result_text(c, reinterpret_cast<const char*>(t), a->arg_bytes(c, 0));
      break;
    }
    case SQLITE_BLOB: {
      const int n = a->arg_bytes(c, 0);
      const void* b = a->arg_blob(c, 0);
      if (n == 0)
        a->result_zeroblob(c, 0);
      else
        a->result_blob(c, b, n);
      break;
    }
    default:
      a->result_null(c);
      break;
  }
}

struct World {
  sqlite3* db = nullptr;
  sqlite3_stmt* echo = nullptr;
  sqlite3_stmt* rebuild = nullptr;
  std::thread owner_thread;
  std::atomic<bool> ready{false};
  World() {
    sqlite3_open(":memory:", &db);
    char* err = nullptr;
    sqlite3_safeconc_init(db, &err, nullptr);  // SQLITE_CORE: registers the VFS, the functions
    g_api = static_cast<const safeconc_api_v1*>(safeconc_api(1));
    Check(g_api != nullptr);
    // The owner thread: an fd owner and its loop, for the life of the process.
    owner_thread = std::thread([this] {
      safeconc_owner* owner = nullptr;
      Check(g_api->owner_open_fd(&owner) == SQLITE_OK);
      Check(g_api->create_function(db, "echo", 1, 0, owner, nullptr, Echo, nullptr) == SQLITE_OK);
      Check(g_api->create_function(db, "rebuild", 1, 0, owner, nullptr, Rebuild, nullptr) ==
            SQLITE_OK);
      ready = true;
      pollfd p{g_api->owner_fd(owner), POLLIN, 0};
      for (;;) {
        if (poll(&p, 1, -1) > 0) g_api->owner_drain(owner, 0);
      }
    });
    owner_thread.detach();
    while (!ready.load()) std::this_thread::yield();
    Check(sqlite3_prepare_v2(db, "SELECT echo(?1), ?1", -1, &echo, nullptr) == SQLITE_OK);
    Check(sqlite3_prepare_v2(db, "SELECT rebuild(?1), ?1", -1, &rebuild, nullptr) == SQLITE_OK);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();  // leaked: the owner thread runs until exit
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const char* p = reinterpret_cast<const char*>(data + 1);
  const int n = static_cast<int>(size - 1);
  sqlite3_stmt* st = (mode & 0x80) ? w->rebuild : w->echo;
  switch (mode % 8) {
    case 0:
      sqlite3_bind_null(st, 1);
      break;
    case 1: {
      int64_t v = 0;
      std::memcpy(&v, p, std::min<size_t>(sizeof v, static_cast<size_t>(n)));
      sqlite3_bind_int64(st, 1, v);
      break;
    }
    case 2: {
      double d = 0;
      std::memcpy(&d, p, std::min<size_t>(sizeof d, static_cast<size_t>(n)));
      sqlite3_bind_double(st, 1, d);
      break;
    }
    case 3:
      sqlite3_bind_text(st, 1, p, n, SQLITE_TRANSIENT);
      break;
    case 4:
      sqlite3_bind_text64(st, 1, p, static_cast<sqlite3_uint64>(n & ~1), SQLITE_TRANSIENT,
                          SQLITE_UTF16LE);
      break;
    case 5:
      sqlite3_bind_text64(st, 1, p, static_cast<sqlite3_uint64>(n & ~1), SQLITE_TRANSIENT,
                          SQLITE_UTF16BE);
      break;
    case 6:
      sqlite3_bind_blob(st, 1, p, n, SQLITE_TRANSIENT);
      break;
    default:
      sqlite3_bind_zeroblob(st, 1, n % 4096);
      break;
  }
  const int rc = sqlite3_step(st);
  Check(rc == SQLITE_ROW);
  const int t0 = sqlite3_column_type(st, 0), t1 = sqlite3_column_type(st, 1);
  Check(t0 == t1);
  if (t0 == SQLITE_FLOAT) {
    const double a = sqlite3_column_double(st, 0), b = sqlite3_column_double(st, 1);
    Check((a != a && b != b) || std::memcmp(&a, &b, sizeof a) == 0);  // NaN, or the same bits
  } else if (t0 == SQLITE_INTEGER) {
    Check(sqlite3_column_int64(st, 0) == sqlite3_column_int64(st, 1));
  } else if (t0 == SQLITE_BLOB) {
    const int a = sqlite3_column_bytes(st, 0), b = sqlite3_column_bytes(st, 1);
    Check(a == b);
    const void* x = sqlite3_column_blob(st, 0);
    const void* y = sqlite3_column_blob(st, 1);
    Check(a == 0 || std::memcmp(x, y, static_cast<size_t>(a)) == 0);
  } else if (t0 == SQLITE_TEXT) {
    // As UTF-8, the rendering the callback saw (SQLite converts UTF-16 once, the same way).
    const unsigned char* x = sqlite3_column_text(st, 0);
    const int a = sqlite3_column_bytes(st, 0);
    const unsigned char* y = sqlite3_column_text(st, 1);
    const int b = sqlite3_column_bytes(st, 1);
    Check(a == b && std::memcmp(x, y, static_cast<size_t>(a)) == 0);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return 0;
}
