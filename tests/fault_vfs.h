// fault_vfs.h - a test-only base VFS, "fault", that wraps the default VFS (unix) and fails the
// Nth call of each method with an injected error, for the fault-injection sweep; and gates
// that hold xRead or xLock calls, for the misuse and journal-switch tests.
//
// Use: in a process of its own, call fault::Register() before the extension is loaded: it
// becomes the default VFS, so `safeconc` wraps it (safeconc -> fault -> unix) and every file,
// journals and WAL included, goes through it.
//
// Injection: Arm(n, kind) resets the per-method call counts; the nth call of each method from
// then on fails with `kind` mapped to what that method can return (kBusy on a lock call is
// SQLITE_BUSY, on a read SQLITE_IOERR_READ, ...). A failed call does nothing, except calls that
// release something (xUnlock, an xShmLock unlock, xShmUnmap, xClose): those do their work and
// then report the error, as a close() that returns EIO has still closed the descriptor.
//
// Thread safety: counters and settings are atomics; any thread may call anything.
#ifndef SAFECONC_TESTS_FAULT_VFS_H
#define SAFECONC_TESTS_FAULT_VFS_H

#include <cstdint>

namespace fault {

enum class Kind { kIoerr, kNomem, kFull, kBusy, kShortRead };
constexpr int kKinds = 5;
const char* KindName(Kind k);

// Registers "fault" as the default VFS wrapping the current default. Idempotent.
void Register();

// From now on, the nth call of each method fails with kind (n >= 1). Arm(0, ...) counts only.
void Arm(int64_t n, Kind kind);
void Disarm();
// The highest per-method call count since the last Arm.
int64_t MaxCalls();
// Faults injected since the process started.
int64_t Injected();

// The read gate: while closed, an xRead of a main database file blocks (after counting itself
// in ReadsHeld()) until the gate opens, or 5 s passed.
void CloseReadGate();
void OpenReadGate();
int64_t ReadsHeld();

// The lock gate: while closed for `level`, an xLock(level) of a main database file blocks
// (after counting itself in LocksHeld()) until the gate opens, or 10 s passed.
void CloseLockGate(int level);
void OpenLockGate();
int64_t LocksHeld();

}  // namespace fault

#endif  // SAFECONC_TESTS_FAULT_VFS_H
