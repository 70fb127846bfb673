// knobs.cc - parsing and defaults for the knobs declared in knobs.h.
#include "vfs/knobs.h"

#include <strings.h>

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
  bool ok = false;
  if (k == Knob::kTxn) {
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
    *err = std::string(KnobName(k)) + ": bad value '" + (text ? text : "") + "': expected " +
           KnobAccepted(k);
  }
  return ok;
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
