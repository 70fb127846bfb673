// fuzz_json.cc - libFuzzer target: the JSON writer behind safeconc_stats(), PRAGMA
// safeconc_stats and safeconc_last_busy(). The input is a program of writer calls (objects,
// arrays, keys, strings of arbitrary bytes (file paths, lock names, messages), integers, doubles
// of any bit pattern, booleans, null), kept well-formed the way the callers keep it (a key before
// every value in an object, every Begin closed). Check: the output is valid JSON (RFC 8259,
// UTF-8 included), by a strict validator below and by SQLite's json_valid().
#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/json.h"

using safeconc::JsonWriter;

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

// ---- A strict validator -------------------------------------------------------------------
struct Parser {
  const std::string& s;
  size_t i = 0;
  int depth = 0;
  void Ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool Lit(const char* w) {
    const size_t n = std::strlen(w);
    if (s.compare(i, n, w) != 0) return false;
    i += n;
    return true;
  }
  bool Utf8() {  // one well-formed UTF-8 sequence of 2-4 bytes at i
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
      n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else
      return false;
    if (i + n > s.size() || b(i + 1) < lo || b(i + 1) > hi) return false;
    for (size_t k = 2; k < n; ++k)
      if (b(i + k) < 0x80 || b(i + k) > 0xbf) return false;
    i += n;
    return true;
  }
  bool String() {
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    while (i < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      if (c == '"') {
        ++i;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        if (++i >= s.size()) return false;
        const char e = s[i];
        if (e == 'u') {
          for (int k = 1; k <= 4; ++k)
            if (i + k >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + k])))
              return false;
          i += 5;
        } else if (std::strchr("\"\\/bfnrt", e) != nullptr && e != '\0') {
          ++i;
        } else {
          return false;
        }
      } else if (c < 0x80) {
        ++i;
      } else if (!Utf8()) {
        return false;
      }
    }
    return false;
  }
  bool Number() {
    const size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size()) return false;
    if (s[i] == '0')
      ++i;
    else if (s[i] >= '1' && s[i] <= '9')
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    else
      return false;
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    return i > start;
  }
  bool Value() {
    Ws();
    if (i >= s.size() || ++depth > 1000) return false;
    bool ok;
    const char c = s[i];
    if (c == '{') {
      ++i;
      Ws();
      if (i < s.size() && s[i] == '}') {
        ++i;
        ok = true;
      } else {
        for (;;) {
          Ws();
          if (!String()) return false;
          Ws();
          if (i >= s.size() || s[i++] != ':') return false;
          if (!Value()) return false;
          Ws();
          if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
          }
          if (i < s.size() && s[i] == '}') {
            ++i;
            break;
          }
          return false;
        }
        ok = true;
      }
    } else if (c == '[') {
      ++i;
      Ws();
      if (i < s.size() && s[i] == ']') {
        ++i;
        ok = true;
      } else {
        for (;;) {
          if (!Value()) return false;
          Ws();
          if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
          }
          if (i < s.size() && s[i] == ']') {
            ++i;
            break;
          }
          return false;
        }
        ok = true;
      }
    } else if (c == '"') {
      ok = String();
    } else if (c == 't') {
      ok = Lit("true");
    } else if (c == 'f') {
      ok = Lit("false");
    } else if (c == 'n') {
      ok = Lit("null");
    } else {
      ok = Number();
    }
    --depth;
    return ok;
  }
};

bool ValidJson(const std::string& s) {
  Parser p{s};
  if (!p.Value()) return false;
  p.Ws();
  return p.i == s.size();
}

sqlite3* Db() {
  static sqlite3* db = [] {
    sqlite3* d = nullptr;
    sqlite3_open(":memory:", &d);
    return d;
  }();
  return db;
}

// ---- The program ------------------------------------------------------------------------------
struct Reader {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t Byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string Bytes() {
    const size_t len = std::min<size_t>(Byte(), n);
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
  uint64_t U64() {
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = v << 8 | Byte();
    return v;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  JsonWriter w;
  // Open containers: true for an object (a key must precede each value).
  std::vector<bool> open{true};
  w.BeginObject();
  int ops = 0;
  while (!r.empty() && ops++ < 2000) {
    const uint8_t op = r.Byte();
    if (open.back()) w.Key(r.Bytes().c_str());  // keys are C strings in the callers
    switch (op % 9) {
      case 0:
        if (open.size() < 64) {
          w.BeginObject();
          open.push_back(true);
        } else {
          w.Null();
        }
        break;
      case 1:
        if (open.size() < 64) {
          w.BeginArray();
          open.push_back(false);
        } else {
          w.Null();
        }
        break;
      case 2:
        w.String(r.Bytes());
        break;
      case 3:
        w.Int(static_cast<int64_t>(r.U64()));
        break;
      case 4: {
        const uint64_t bits = r.U64();
        double d;
        std::memcpy(&d, &bits, sizeof d);
        w.Double(d);
        break;
      }
      case 5:
        w.Bool(r.Byte() & 1);
        break;
      case 6:
        w.Null();
        break;
      default:  // close the innermost container (a value first if a key is pending)
        if (open.back()) w.Null();
        if (open.size() > 1) {
          if (open.back())
            w.EndObject();
          else
            w.EndArray();
          open.pop_back();
        }
        break;
    }
  }
  while (!open.empty()) {
    if (open.back())
      w.EndObject();
    else
      w.EndArray();
    open.pop_back();
  }
  const std::string& out = w.str();
  if (!ValidJson(out)) {
    std::fprintf(stderr, "invalid JSON (%zu bytes): %.2000s\n", out.size(), out.c_str());
    std::abort();
  }
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(Db(), "SELECT json_valid(?1)", -1, &st, nullptr);
  sqlite3_bind_text(st, 1, out.data(), static_cast<int>(out.size()), SQLITE_STATIC);
  Check(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1);
  sqlite3_finalize(st);
  return 0;
}
