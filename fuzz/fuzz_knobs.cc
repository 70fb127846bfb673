// fuzz_knobs.cc - libFuzzer target: knob names and values as a PRAGMA, safeconc_config() or a
// URI hands them to the parser, and whole URI parameter lists through ApplyUriKnobs.
//
// Input: byte 0 picks the mode, the rest is the payload.
//   mode 0: name \0 value (PRAGMA / safeconc_config): KnobByName, HasKnobPrefix, ParseKnob
//   mode 1: key \0 value \0 key \0 value ... : a file name built by sqlite3_create_filename,
//           then ApplyUriKnobs, as xOpen runs it.
// Checks: no crash; an accepted value prints back (FormatKnob) to text that parses to the same
// value and is in range; an error message names the knob and stays short whatever the input.
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  if (size == 0) return 0;
  const char* data = reinterpret_cast<const char*>(bytes) + 1;
  if (bytes[0] % 2 == 0) {
    NameAndValue(data, size - 1);
  } else {
    UriParameters(data, size - 1);
  }
  return 0;
}
