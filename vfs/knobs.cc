// knobs.cc - parsing and defaults for the knobs declared in knobs.h.
#include "vfs/knobs.h"

#include <strings.h>

#include <cstdio>
#include <cstring>

namespace safeconc {
namespace {

struct KnobInfo {
  const char* name;
  const char* accepted;
};

const KnobInfo kKnobs[kKnobCount] = {
    {"safeconc_timeout", "an integer number of milliseconds from 0 to 86400000"},
    {"safeconc_txn", "one of deferred, immediate, serial"},
    {"safeconc_call_timeout", "an integer number of milliseconds from 0 to 86400000"},
    {"safeconc_fair_ms", "an integer number of milliseconds from 0 to 1000"},
};

const char* const kTxnWords[] = {"deferred", "immediate", "serial"};

// Written by safeconc_config() on any thread, read at every open. Relaxed: each default is
// independent and an open that races a change may see either value.
// Initial values: the contract's defaults (5000 ms, deferred, 10000 ms, kDefaultFairMillis).
std::atomic<int64_t> g_defaults[kKnobCount] = {
    {5000}, {static_cast<int64_t>(TxnMode::kDeferred)}, {10000}, {kDefaultFairMillis}};

const KnobInfo& Info(Knob k) { return kKnobs[static_cast<int>(k)]; }

bool ParseMillis(const char* s, int64_t max, int64_t* out) {
  if (s == nullptr || *s == '\0') return false;
  int64_t v = 0;
  for (const char* p = s; *p; ++p) {
    if (*p < '0' || *p > '9') return false;
    v = v * 10 + (*p - '0');
    if (v > max) return false;  // also stops overflow of long digit strings
  }
  *out = v;
  return true;
}

}  // namespace

const char* KnobName(Knob k) { return Info(k).name; }
const char* KnobAccepted(Knob k) { return Info(k).accepted; }

bool KnobByName(const char* name, Knob* out) {
  if (name == nullptr) return false;
  for (int i = 0; i < kKnobCount; ++i) {
    if (strcasecmp(name, kKnobs[i].name) == 0) {
      *out = static_cast<Knob>(i);
      return true;
    }
  }
  return false;
}

bool ParseKnob(Knob k, const char* text, int64_t* out, std::string* err) {
  return ParseKnob(k, text, text ? std::strlen(text) : 0, out, err);
}

bool ParseKnob(Knob k, const char* bytes, size_t len, int64_t* out, std::string* err) {
  bool ok = false;
  // The parsers below read a C string: a copy, so `bytes` needs no terminating NUL.
  const std::string copy = bytes ? std::string(bytes, len) : std::string();
  const char* text = bytes ? copy.c_str() : nullptr;
  if (text != nullptr && std::memchr(text, '\0', len) != nullptr) {
    // An embedded NUL: whatever follows it would be silently dropped. Refuse.
  } else if (k == Knob::kTxn) {
    for (int i = 0; i < 3 && text != nullptr; ++i) {
      if (strcasecmp(text, kTxnWords[i]) == 0) {
        *out = i;
        ok = true;
      }
    }
  } else {
    ok = ParseMillis(text, k == Knob::kFairMs ? kMaxFairMillis : kMaxMillis, out);
  }
  if (!ok && err != nullptr) {
    *err = std::string(KnobName(k)) + ": bad value '" + (text ? Echo(text, len) : "") +
           "': expected " + KnobAccepted(k);
  }
  return ok;
}

bool HasKnobPrefix(const char* name) {
  return name != nullptr && strncasecmp(name, "safeconc_", 9) == 0;
}

std::string KnobList() {
  std::string s;
  for (int i = 0; i < kKnobCount; ++i) {
    if (i > 0) s += i + 1 == kKnobCount ? " or " : ", ";
    s += kKnobs[i].name;
  }
  return s;
}

std::string Echo(const char* s, size_t len) {
  std::string out;
  size_t n = len;
  if (n > kEchoMax) {
    n = kEchoMax;
    // Do not cut a UTF-8 sequence: back up over continuation bytes to its lead byte.
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;
  }
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (n < len) out += "... (" + std::to_string(len) + " bytes)";
  return out;
}

std::string FormatKnob(Knob k, int64_t value) {
  if (k == Knob::kTxn && value >= 0 && value < 3) return kTxnWords[value];
  return std::to_string(value);
}

int64_t DefaultKnob(Knob k) {
  return g_defaults[static_cast<int>(k)].load(std::memory_order_relaxed);
}
void SetDefaultKnob(Knob k, int64_t value) {
  g_defaults[static_cast<int>(k)].store(value, std::memory_order_relaxed);
}

KnobSet::KnobSet() {
  for (int i = 0; i < kKnobCount; ++i) v_[i].store(DefaultKnob(static_cast<Knob>(i)));
}

}  // namespace safeconc
