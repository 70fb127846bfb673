// fuzz_knobs.cc - libFuzzer target: knob names and values as a PRAGMA, safeconc_config() or a
// URI hands them to the parser, and whole URI parameter lists through ApplyUriKnobs.
//
// Input: byte 0 picks the mode, the rest is the payload.
//   mode 0: name \0 value (PRAGMA / safeconc_config): KnobByName, HasKnobPrefix, ParseKnob
//   mode 1: key \0 value \0 key \0 value ... : a file name built by sqlite3_create_filename,
//           then ApplyUriKnobs, as xOpen runs it.
//   mode 2: name \0 value as a real `PRAGMA "name" = 'value'` on a connection through the
//           safeconc VFS (SQLite's parser, then the shim's SQLITE_FCNTL_PRAGMA handler).
// Checks: no crash; an accepted value prints back (FormatKnob) to text that parses to the same
// value and is in range; an error message names the knob and stays short whatever the input.
#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "vfs/knobs.h"
#include "vfs/shim.h"

using namespace safeconc;

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void NameAndValue(const char* data, size_t size) {
  const char* nul = static_cast<const char*>(std::memchr(data, '\0', size));
  const std::string name(data, nul ? static_cast<size_t>(nul - data) : size);
  const char* value = nul ? nul + 1 : data;
  const size_t value_len = nul ? size - name.size() - 1 : size;
  Knob k = Knob::kTimeout;
  const bool known = KnobByName(name.c_str(), &k);
  if (known) Check(HasKnobPrefix(name.c_str()));
  for (int i = 0; i < kKnobCount; ++i) {
    const Knob kk = known ? k : static_cast<Knob>(i);
    int64_t v = -1;
    std::string err;
    if (ParseKnob(kk, value, value_len, &v, &err)) {
      Check(std::memchr(value, '\0', value_len) == nullptr);
      if (kk == Knob::kTxn) {
        Check(v >= 0 && v <= 2);
      } else {
        Check(v >= 0 && v <= kMaxMillis);
      }
      const std::string text = FormatKnob(kk, v);
      int64_t again = -1;
      Check(ParseKnob(kk, text.c_str(), &again, nullptr) && again == v);
    } else {
      Check(err.find(KnobName(kk)) == 0);
      Check(err.size() < 400);  // the echo is cut, whatever the value's length
    }
    if (known) break;
  }
  Check(Echo(data, size).size() <= 4 * kEchoMax + 40);
}

void UriParameters(const char* data, size_t size) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= size; ++i) {
    if (i == size || data[i] == '\0') {
      parts.emplace_back(data + start, i - start);
      start = i + 1;
    }
  }
  if (parts.size() % 2 == 1) parts.pop_back();
  if (parts.size() > 40) parts.resize(40);
  // An empty key ends SQLite's parameter list (name\0key\0value\0...\0\0): keep what it sees.
  for (size_t i = 0; i < parts.size(); i += 2) {
    if (parts[i].empty()) {
      parts.resize(i);
      break;
    }
  }
  std::vector<const char*> params;
  for (const std::string& p : parts) params.push_back(p.c_str());
  sqlite3_filename f = sqlite3_create_filename("/fuzz/x.db", "/fuzz/x.db-journal", "/fuzz/x.db-wal",
                                               static_cast<int>(params.size() / 2), params.data());
  if (f == nullptr) return;
  KnobSet knobs;
  const bool ok = ApplyUriKnobs(f, &knobs);
  if (ok) {
    // Every safeconc_ key named a knob with a valid value.
    for (size_t i = 0; i + 1 < parts.size(); i += 2) {
      if (!HasKnobPrefix(parts[i].c_str())) continue;
      Knob k;
      Check(KnobByName(parts[i].c_str(), &k));
    }
    Check(knobs.Get(Knob::kTimeout) >= 0 && knobs.Get(Knob::kTimeout) <= kMaxMillis);
  }
  sqlite3_free_filename(f);
}

extern "C" int sqlite3_safeconc_init(sqlite3*, char**, const sqlite3_api_routines*);

std::string Quote(const std::string& s, char q) {
  std::string out(1, q);
  for (char c : s) {
    out += c;
    if (c == q) out += q;
  }
  return out + q;
}

sqlite3* g_pragma_db = nullptr;
std::string g_pragma_dir;

void Pragma(const char* data, size_t size) {
  static sqlite3* db = [] {
    sqlite3* boot = nullptr;
    sqlite3_open(":memory:", &boot);
    char* err = nullptr;
    sqlite3_safeconc_init(boot, &err, nullptr);  // SQLITE_CORE: registers the VFS
    sqlite3_close(boot);
    char dir[] = "/tmp/safeconc-fuzz-XXXXXX";
    Check(mkdtemp(dir) != nullptr);
    g_pragma_dir = dir;
    sqlite3* d = nullptr;
    Check(sqlite3_open_v2((g_pragma_dir + "/p.db").c_str(), &d,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "safeconc") == SQLITE_OK);
    g_pragma_db = d;
    std::atexit([] {
      sqlite3_close(g_pragma_db);
      std::error_code ec;
      std::filesystem::remove_all(g_pragma_dir, ec);
    });
    return d;
  }();
  const char* nul = static_cast<const char*>(std::memchr(data, '\0', size));
  const std::string name(data, nul ? static_cast<size_t>(nul - data) : size);
  const std::string value = nul ? std::string(nul + 1, size - name.size() - 1) : std::string();
  if (value.find('\0') != std::string::npos) return;  // not expressible as an SQL literal
  const std::string sql = "PRAGMA " + Quote(name, '"') + (nul ? " = " + Quote(value, '\'') : "");
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &st, nullptr) !=
      SQLITE_OK) {
    // Unknown safeconc_ pragmas and bad values are refused at prepare time: with a message.
    if (HasKnobPrefix(name.c_str())) Check(std::strlen(sqlite3_errmsg(db)) < 500);
    sqlite3_finalize(st);
    return;
  }
  const int rc = sqlite3_step(st);
  Knob k;
  if (rc == SQLITE_ROW && KnobByName(name.c_str(), &k)) {
    // The value read back is one the parser accepts.
    const char* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    int64_t v;
    Check(text != nullptr && ParseKnob(k, text, &v, nullptr));
  }
  sqlite3_finalize(st);
  // Keep the connection's knobs sane for the next input.
  sqlite3_exec(db, "PRAGMA safeconc_timeout = 5000; PRAGMA safeconc_txn = deferred", nullptr,
               nullptr, nullptr);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0) return 0;
  const char* data = reinterpret_cast<const char*>(bytes) + 1;
  switch (bytes[0] % 3) {
    case 0:
      NameAndValue(data, size - 1);
      break;
    case 1:
      UriParameters(data, size - 1);
      break;
    default:
      Pragma(data, size - 1);
      break;
  }
  return 0;
}
