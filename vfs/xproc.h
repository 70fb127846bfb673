// xproc.h - cross-process coordination: the write turn shared by every process that loads
// libsafeconc on one database file, kept in a small sidecar file beside it (`<db>-safeconc`),
// mapped shared by each of them.
//
// Model. Inside a process the Coordinator (coordinator.h) decides which handle holds the
// process's write turn; that handle then takes the *shared* turn here before the base lock.
// So each process puts at most one waiter per handle that already won its own line into the
// shared line ("in-process queues feed the shared one"), and the shared line applies the same
// eventual-fairness policy as the in-process one (vfs/timing.h): while the front waiter has
// waited less than its safeconc_fair_ms, a free turn goes to whoever asks; past that, the
// release reserves the turn for the front waiter. One fairness clock per transaction: a
// handle waiting here holds up its process's line, so its clock (and its place, the line
// being ordered by the clock) is that of the longest-waiting request it holds up there or
// its own, at most its bound back, fixed when it enters. Without that, a writer that had
// just taken its process's turn (barging there) stood in the shared line with a fresh clock,
// overtaken for a whole bound while the requests behind it at home had already waited
// theirs: two bounds in a row (bench_xproc 4x4: sidecar p99 1.3-1.7x that of the same threads
// in one process, against 1.1-1.3x with one clock). A release wakes the front waiter through a
// futex on the shared mapping, so a process is woken by another's release as quickly as a
// thread by its own process's.
//
// The base POSIX locks stay the truth for data safety: the shared turn only orders and wakes.
// Processes that do not load the extension take the base locks as always (they may overtake);
// a request that cannot use the sidecar (none, or its mutex not available in time) goes on
// as without it, and the base lock decides, polled as before.
//
// Crash safety. The sidecar's mutex is a process-shared robust mutex: a process killed inside
// a sidecar update leaves it to the next locker with EOWNERDEAD, which repairs the state
// (RepairLocked) before going on. A process killed while holding the turn or waiting is
// found by liveness checks (pid plus process start time, so a reused pid is not taken for the
// dead one): the holder by its waiters every kXprocLiveness, a waiter by whoever meets its
// slot stale. Lock waits on the mutex are bounded (kXprocMutexWait): a process stopped while
// holding it costs others that long, then they go on without the sidecar for that request.
//
// Attaching (sidecar.cc) never fails an open: where the sidecar cannot be used (read-only
// directory, a network file system, a sidecar owned by another user than the database, from
// another version and in use, from another pid namespace, SAFECONC_SIDECAR=0), the file is
// coordinated inside the process only, other processes by polling, as before; the reason is
// logged once through sqlite3_log and shown in safeconc_stats().
//
// Mutex rules: CrossProcess::mu_ guards the attach state and the local counters; it is a
// leaf, never held across a wait. XShared::mu (the shared mutex) guards the shared state; it
// is never held across a futex wait, a base call or an SQLite call.
#ifndef SAFECONC_VFS_XPROC_H
#define SAFECONC_VFS_XPROC_H

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "base/histogram.h"
#include "base/json.h"
#include "base/sync.h"

namespace safeconc {

namespace xproc {

constexpr uint64_t kMagic = 0x31636e6f63656661ULL;  // "afeconc1" little-endian, + version
constexpr uint32_t kVersion = 4;                    // 4: XShared::file_writer
constexpr int kSlots = 64;  // waiting handles across all processes; more wait by polling

enum SlotState : uint32_t { kFree = 0, kWaiting = 1 };

// One waiter in the shared line. Guarded by XShared::mu.
struct Slot {
  uint32_t state;   // SlotState
  int32_t pid;      // the waiting process
  uint64_t pstart;  // its start time (clock ticks after boot): tells a reused pid
  uint64_t tid;     // the waiting thread (kernel id), for diagnostics
  uint64_t ticket;  // the handle, unique in its process
  uint64_t order;   // arrival order in this line: breaks ties of arrived_ns
  // Its fairness clock, CLOCK_MONOTONIC (the same clock in every process of the machine):
  // when the longest-waiting request it holds up in its own process began to wait (itself
  // included), at most its own bound before it entered. Set when it enters; the line is
  // ordered by it (LineOrder).
  int64_t arrived_ns;
  int64_t entered_ns;  // when it entered this line: its wait here (stats, release-to-grant)
  int64_t seen_ns;     // last time its waiter was awake in the line: stale when old
  int64_t fair_ns;     // its safeconc_fair_ms
  uint32_t parked;     // its waiter sleeps in the line now (a release can wake it): "live"
};

// The robust, process-shared mutex of the sidecar, as an annotated capability.
class SC_CAPABILITY("mutex") RobustMutex {
 public:
  // Called once, by the process that initialises the sidecar.
  bool Init();
  // Waits at most `wait`. *owner_died: a process died holding it (EOWNERDEAD); the caller
  // repairs the state and calls MarkConsistent() before unlocking. False if not acquired
  // (timeout, or unrecoverable).
  bool Lock(std::chrono::nanoseconds wait, bool* owner_died) SC_TRY_ACQUIRE(true);
  void MarkConsistent() SC_REQUIRES(this);
  void Unlock() SC_RELEASE();

 private:
  pthread_mutex_t m_;
};

// The sidecar's content, mapped shared. All-zero is "not initialised".
struct XShared {
  // Written once by the initialising process (under the init lock, before `magic`), then
  // constant.
  uint64_t magic;
  uint32_t version;
  uint32_t size;   // sizeof(XShared): another layout is another version
  uint64_t pidns;  // the pid namespace of its processes (pids mean nothing across them)
  RobustMutex mu;

  // The turn. Guarded by mu.
  int32_t holder_pid SC_GUARDED_BY(mu);  // 0: free
  uint64_t holder_pstart SC_GUARDED_BY(mu);
  uint64_t holder_tid SC_GUARDED_BY(mu);
  uint64_t holder_ticket SC_GUARDED_BY(mu);
  int64_t holder_since_ns SC_GUARDED_BY(mu);
  int64_t holder_checked_ns SC_GUARDED_BY(mu);  // last liveness check of the holder
  // Taken before a WAL read start (a pre-read turn): revoked by another process's waiter
  // after kPreReadLease if that read start never came back (as the in-process line does).
  uint32_t holder_pre_read SC_GUARDED_BY(mu);
  int32_t reserved SC_GUARDED_BY(mu);  // slot the turn is handed to, or -1
  int64_t reserved_until_ns SC_GUARDED_BY(mu);
  int64_t released_at_ns SC_GUARDED_BY(mu);
  uint64_t next_order SC_GUARDED_BY(mu);
  Slot slots[kSlots] SC_GUARDED_BY(mu);

  // Counters since the sidecar was built. Guarded by mu.
  uint64_t acquisitions SC_GUARDED_BY(mu);
  uint64_t waits SC_GUARDED_BY(mu);     // grants after waiting in the line
  uint64_t handoffs SC_GUARDED_BY(mu);  // grants of a reserved turn
  uint64_t barges SC_GUARDED_BY(mu);    // grants ahead of a live waiter (within its bound)
  uint64_t claim_lapsed SC_GUARDED_BY(mu);
  uint64_t timeouts SC_GUARDED_BY(mu);
  uint64_t dead_holders SC_GUARDED_BY(mu);  // turns taken back from dead processes
  uint64_t dead_waiters SC_GUARDED_BY(mu);  // slots taken back from dead processes
  uint64_t repairs SC_GUARDED_BY(mu);       // EOWNERDEAD recoveries, corrupt fields fixed
  uint64_t max_overtaken_wait_us SC_GUARDED_BY(mu);
  uint64_t revoked SC_GUARDED_BY(mu);  // pre-read turns taken back (see holder_pre_read)

  // Read and written without mu: futex words and hints.
  std::atomic<uint32_t> wake[kSlots];  // bumped to wake a slot's waiter (FUTEX_WAKE)
  std::atomic<uint32_t> seq;           // bumped at every release and lock-period end
  std::atomic<uint32_t> seq_waiters;   // processes waiting on seq
  std::atomic<int32_t> holder_hint;    // holder_pid, for Contended() without the mutex
  std::atomic<uint32_t> waiting_hint;  // slots waiting
  // A release its process could not make (the mutex was not available): (pid << 32) | low 32
  // bits of the ticket. Whoever takes the mutex next makes it if that handle still holds.
  std::atomic<uint64_t> owed_release;
  // Processes attached (a clean detach counts down; a killed one is counted until the sidecar
  // is rebuilt). While this process is the only one, the shared turn is not taken at all: one
  // process is coordinated by its own line, at no cost on its lock path.
  std::atomic<uint32_t> attached;
  // A handle that holds RESERVED or a granted EXCLUSIVE lock on the database file (one at a
  // time in all processes): a rollback-mode writer (during a journal_mode switch from WAL, its
  // commit waits for the SHARED lock every WAL connection holds), or the last WAL connection
  // closing the WAL. (pid << 32) | low 32 bits of the handle; 0 if none. Set and cleared by
  // that handle's process (CrossProcess::NoteFileWriter), or cleared by any process that finds
  // it dead; a WAL request of another process does not wait in the line while it is set
  // (OtherFileWriter). file_writer_start: its process's start time, stored before the mark (a
  // reused pid is not taken for it).
  // Its own cache line: written twice per rollback write transaction, beside hints every
  // process reads on its lock paths.
  alignas(64) std::atomic<uint64_t> file_writer;
  std::atomic<uint64_t> file_writer_start;
};

// The line's order: the fairness clock, arrival order breaking ties. True if `a` is ahead.
inline bool LineOrder(const Slot& a, const Slot& b) {
  return a.arrived_ns != b.arrived_ns ? a.arrived_ns < b.arrived_ns : a.order < b.order;
}

// CLOCK_MONOTONIC now, in ns.
int64_t NowNs();
// This process's start time (field 22 of /proc/self/stat); 0 if unknown. Cached per pid.
uint64_t SelfStart();
// Is process `pid`, started at `pstart` (0: unknown), alive?
bool ProcessAlive(int32_t pid, uint64_t pstart);
// The inode of /proc/self/ns/pid; 0 if unknown.
uint64_t PidNamespace();

}  // namespace xproc

// One process's handle on one database file's sidecar (one per DbEntry).
class CrossProcess {
 public:
  // kYielded: not waited for (Take's `holds_read_lock`): it left the line.
  enum class Grant { kGranted, kRefused, kTimeout, kUnavailable, kYielded };

  CrossProcess() = default;
  ~CrossProcess();  // detaches; removes the sidecar if no other process uses it
  CrossProcess(const CrossProcess&) = delete;
  CrossProcess& operator=(const CrossProcess&) = delete;

  // Attaches to the sidecar of the database at `db_path` (created if missing), once; later
  // calls return at once. `writable`: the connection may write (a read-only one never takes
  // the turn and does not attach). Never fails: a sidecar that cannot be used leaves the file
  // in polling mode, with the reason logged and kept for the stats.
  void Attach(const char* db_path, bool writable) SC_EXCLUDES(mu_);
  bool Attached() const { return shared_.load(std::memory_order_acquire) != nullptr; }

  // Takes the shared turn for handle `ticket` if a newcomer may (or, `upgrade`, if it is
  // free at all, as stock SQLite grants a free write lock). A turn held by this process (a
  // handle revoked by the in-process coordinator) passes to `ticket`.
  Grant TryTake(uint64_t ticket, uint64_t tid, bool upgrade);
  // Waits in the shared line until granted or `until` (steady_clock). On kTimeout the
  // handle keeps its place (a binding's busy handler waits in steps): the next Take or
  // TryTake of `ticket` goes on from it; Cancel() gives it up.
  // `since`: when the longest-waiting request this one holds up in its process's line began
  // to wait: its fairness clock and its place in the shared line (the line is ordered by
  // it), so a transaction waiting in two lines is not bounded twice.
  // `holds_read_lock`: a WAL request, holding the database file's SHARED lock while it waits;
  // it leaves the line with kYielded when another process's handle holds the file's lock above
  // SHARED (OtherFileWriter), seen within kXprocRecheck: that handle may hold the turn, or wait
  // for a lock of its holder, while its commit waits for this SHARED lock.
  Grant Take(uint64_t ticket, uint64_t tid, std::chrono::nanoseconds fair,
             std::chrono::steady_clock::time_point since,
             std::chrono::steady_clock::time_point until, bool holds_read_lock = false);
  // Would Take/TryTake use the sidecar now (attached, and another process attached or a place
  // kept in line)? When false they return kUnavailable at once: a caller may skip computing
  // their arguments.
  bool Engaged() const;
  // Leaves the line (a wait that gave up; `timed_out` false: one that yielded, not counted).
  void Cancel(uint64_t ticket, bool timed_out = true) SC_EXCLUDES(mu_);
  // Gives the turn back if `ticket` holds it (and its place in line, if it kept one).
  void Release(uint64_t ticket);
  // The turn `ticket` holds was taken before a WAL read start: others may revoke it after
  // kPreReadLease unless ReadStarted() comes first. False if `ticket` does not hold it.
  bool MarkPreRead(uint64_t ticket);
  // The read start came: the turn is an ordinary one again. False if it was revoked.
  bool ReadStarted(uint64_t ticket);
  // Another process holds the turn or waits for it (a relaxed look, no mutex).
  bool Contended() const;

  // Handle `ticket`'s lock on the database file crossed SHARED (held: now above it).
  // Lock-free: an atomic store on the way up, a compare-and-swap on the way down.
  void NoteFileWriter(uint64_t ticket, bool held);
  // A mark of another process's handle is set (no liveness check: only atomics, so it may be
  // called under any mutex). The in-process line looks at it (Coordinator::WatchCrossProcess).
  bool MarkedByOther() const;
  // Does a live handle of another process hold the database file's lock above SHARED? A WAL
  // request then does not wait for the shared turn, as stock SQLite would not (see Take).
  // Reads /proc when a mark is set: never called with the sidecar's mutex held.
  bool OtherFileWriter();

  // Waiting for another process's lock (not the turn) without polling: Seq() before trying,
  // then WaitForChange(seq, until) wakes at the next release or lock-period end anywhere.
  uint32_t Seq() const;
  void WaitForChange(uint32_t seq, std::chrono::steady_clock::time_point until);
  // A lock period ended here: wakes other processes that wait for locks, if any do.
  void NotifyChange();

  // The holder, if another process holds the turn: its pid and thread (0 if none).
  bool OtherHolder(int32_t* pid, uint64_t* tid, int64_t* held_ms);

  // "crossproc": {...} for safeconc_stats().
  void WriteJson(JsonWriter& w) SC_EXCLUDES(mu_);
  // The sidecar of `db_path` as an operator sees it (holder, waiters of every process),
  // read without attaching. Returns false, with *err, if there is none or it is unusable.
  static bool Describe(const char* db_path, std::string* json, std::string* err);

 private:
  xproc::XShared* Shared() const { return shared_.load(std::memory_order_acquire); }
  // Takes the sidecar's mutex, waiting at most kXprocMutexWait (`wait` false: not at all, for
  // diagnostics), repairs what a dead or corrupt writer left, makes an owed release.
  bool LockShared(xproc::XShared* s, bool wait = true) SC_TRY_ACQUIRE(true, s->mu);
  void Count(bool waited, bool timeout, int64_t wait_ns, int64_t r2g_ns) SC_EXCLUDES(mu_);
  // The slot `ticket` kept in line (forgotten here), or -1.
  int TakeKept(uint64_t ticket) SC_EXCLUDES(mu_);
  void Keep(uint64_t ticket, int slot) SC_EXCLUDES(mu_);
  // Counts out processes killed while attached, when nobody else holds or waits (see
  // timing::kXprocRecount): the kernel's attach locks are the truth, `attached` a cache.
  void RecountIfIdle(xproc::XShared* s);

  std::atomic<xproc::XShared*> shared_{nullptr};  // set once by Attach, then constant
  std::atomic<int> probe_fd_{-1};                 // fd_, for RecountIfIdle without mu_
  std::atomic<int64_t> recount_at_ns_{0};         // the next RecountIfIdle may probe then
  std::atomic<uint64_t> recounted_{0};            // processes counted out by it
  // Until then (ns), requests do not wait for the sidecar's mutex: it was not available.
  std::atomic<int64_t> skip_until_ns_{0};
  Mutex mu_;
  bool tried_ SC_GUARDED_BY(mu_) = false;        // a writable open tried to attach
  int32_t attached_pid_ SC_GUARDED_BY(mu_) = 0;  // a forked child must not remove the file
  int fd_ SC_GUARDED_BY(mu_) = -1;
  std::string sidecar_ SC_GUARDED_BY(mu_);  // its path
  std::string reason_ SC_GUARDED_BY(mu_);   // why not attached (or why it stopped)
  uint64_t waits_ SC_GUARDED_BY(mu_) = 0;
  uint64_t timeouts_ SC_GUARDED_BY(mu_) = 0;
  uint64_t unavailable_ SC_GUARDED_BY(mu_) = 0;  // requests that went on without the sidecar
  Histogram wait_us_ SC_GUARDED_BY(mu_);
  Histogram release_to_grant_us_ SC_GUARDED_BY(mu_);
  std::map<uint64_t, int> kept_ SC_GUARDED_BY(mu_);  // handle -> its slot kept in line
  std::atomic<int> kept_count_{0};                   // kept_.size(), for a look without mu_
};

}  // namespace safeconc

#endif  // SAFECONC_VFS_XPROC_H
