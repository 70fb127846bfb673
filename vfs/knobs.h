// knobs.h - the four tuning knobs of the contract, their parsing, validation and the
// process-wide defaults that new connections start with.
//
// A knob is set per connection (URI parameter at open, PRAGMA later) and stored on that
// connection's shim file; `safeconc_config()` changes the process default that later opens
// copy. Every value is held as an int64 (txn modes as their enum value) so one code path
// parses, validates, stores and prints all of them.
//
// Thread safety: the process defaults are relaxed atomics (each is an independent value; a
// reader needs no ordering with anything else). Parse/Format are pure.
#ifndef SAFECONC_VFS_KNOBS_H
#define SAFECONC_VFS_KNOBS_H

#include <atomic>
#include <cstdint>
#include <string>

namespace safeconc {

enum class Knob : int { kTimeout = 0, kTxn = 1, kCallTimeout = 2, kFairMs = 3 };
constexpr int kKnobCount = 4;

enum class TxnMode : int64_t { kDeferred = 0, kImmediate = 1, kSerial = 2 };

constexpr int64_t kMaxMillis = 86400000;  // one day
constexpr int64_t kMaxFairMillis = 1000;  // safeconc_fair_ms: past a second fairness is moot
// safeconc_fair_ms's default: see vfs/timing.h for the measurement behind it.
constexpr int64_t kDefaultFairMillis = 5;

// The knob's SQL/URI name, e.g. "safeconc_timeout".
const char* KnobName(Knob k);
// What the knob accepts, for error messages.
const char* KnobAccepted(Knob k);
// The knob whose name is `name` (case-insensitive). Returns false if none.
bool KnobByName(const char* name, Knob* out);

// Parses `text` for knob `k`. On failure returns false and sets *err to a message that
// names the knob, the value given (cut to a sane length, see Echo) and what is accepted.
bool ParseKnob(Knob k, const char* text, int64_t* out, std::string* err);
// The same for a value of `len` bytes (an SQL value may hold a NUL: "77\0 99" is refused, not
// read as 77).
bool ParseKnob(Knob k, const char* text, size_t len, int64_t* out, std::string* err);

// True if `name` starts with "safeconc_" in any case: a URI parameter or PRAGMA meant for us,
// which must name a knob (a misspelt one is refused, never ignored).
bool HasKnobPrefix(const char* name);
// "safeconc_timeout, safeconc_txn, ..." for messages about unknown names.
std::string KnobList();
// A user-given string for an error message: at most kEchoMax bytes (cut at a character
// boundary, then "..." and the full length), control bytes and NULs shown as \xNN.
constexpr size_t kEchoMax = 64;
std::string Echo(const char* s, size_t len);
inline std::string Echo(const char* s) {
  return s ? Echo(s, std::char_traits<char>::length(s)) : "";
}
// The value as a user would write it ("5000", "immediate").
std::string FormatKnob(Knob k, int64_t value);

// The process-wide defaults.
int64_t DefaultKnob(Knob k);
void SetDefaultKnob(Knob k, int64_t value);

// One connection's knob values (one per open main-database file). Written by the
// connection's own thread (open, PRAGMA); read by it and by diagnostics on other threads,
// hence relaxed atomics.
class KnobSet {
 public:
  KnobSet();  // starts from the process defaults
  int64_t Get(Knob k) const { return v_[static_cast<int>(k)].load(std::memory_order_relaxed); }
  void Set(Knob k, int64_t value) {
    v_[static_cast<int>(k)].store(value, std::memory_order_relaxed);
  }
  TxnMode txn() const { return static_cast<TxnMode>(Get(Knob::kTxn)); }

 private:
  std::atomic<int64_t> v_[kKnobCount];
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_KNOBS_H
