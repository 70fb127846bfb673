// busy.cc - busy handling: the handler the extension installs on every connection, the xSleep
// hook through which SQLite's default handler (and sqlite3_sleep) sleeps, the in-lock run of a
// binding's handler (RunHandlerInLock), and the probe that re-installs a handler on a
// connection whose binding cleared it (node:sqlite calls sqlite3_busy_timeout(db, 0) after
// open). The refused request's record itself belongs to vfs/refusal.cc.
//
// Thread safety: every state here is thread_local. The busy record holds a shared_ptr to the
// refused handle's Ticket; the ShimFile itself is used only from the busy handler, which
// SQLite runs inside a call on that very connection, and only while the ticket is open.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <algorithm>
#include <unordered_set>

#include "vfs/locking.h"
#include "vfs/shim.h"
#include "vfs/timing.h"

namespace safeconc {
namespace {

// Set while EnsureBusyHandler probes the connection's busy handler.
thread_local bool t_probing = false;
thread_local bool t_probe_slept = false;
thread_local bool t_probe_ours = false;
// Set while RunHandlerInLock runs the connection's handler inside a lock call.
thread_local InLockWait* t_in_lock = nullptr;

// Connections whose binding's own busy handler was seen (by any of their database files: the
// handler belongs to the connection). A handler that gave up earlier in the same statement
// answers 0 without running, exactly as "no handler" does; knowing it was seen keeps
// safeconc's handler from replacing it then. Entries are dropped when a new connection opens
// at the same address (ForgetConnection). Mutex rules: g_seen_mu guards g_binding_seen; a leaf.
Mutex g_seen_mu;
std::unordered_set<sqlite3*>* g_binding_seen SC_GUARDED_BY(g_seen_mu) = nullptr;

void NoteBindingHandler(sqlite3* db) {
  if (db == nullptr) return;
  MutexLock l(&g_seen_mu);
  if (g_binding_seen == nullptr) g_binding_seen = new std::unordered_set<sqlite3*>();
  g_binding_seen->insert(db);
}

bool BindingHandlerSeen(sqlite3* db) {
  MutexLock l(&g_seen_mu);
  return g_binding_seen != nullptr && g_binding_seen->count(db) != 0;
}

// Sleeps up to `d`, waking early if anything is released in p's database: in this process,
// or (through the sidecar) in another that loads libsafeconc.
void BackoffSleep(ShimFile* p, Clock::duration d) {
  CrossProcess& xp = p->entry->xproc();
  if (xp.Attached()) {
    xp.WaitForChange(xp.Seq(), Clock::now() + d);
    return;
  }
  Coordinator& c = *p->ticket->coord;
  c.WaitForChange(c.Generation(), Clock::now() + d);
}

}  // namespace

void ForgetConnection(sqlite3* db) {
  MutexLock l(&g_seen_mu);
  if (g_binding_seen != nullptr) g_binding_seen->erase(db);
}

void EnsureBusyHandler(ShimFile* p) {
  sqlite3* db = Caller(p);
  if (db == nullptr || p->busy_fn == nullptr || p->handler == ShimFile::Handler::kBinding) {
    return;
  }
  if (BindingHandlerSeen(db)) {
    p->handler = ShimFile::Handler::kBinding;
    return;
  }
  // SQLite hands every VFS its wrapper around the connection's handler
  // (SQLITE_FCNTL_BUSYHANDLER): with no handler set it returns 0 at once and changes nothing.
  // With one set, the handler runs once: ours returns 1 at once while probing; SQLite's
  // default handler sleeps through the VFS xSleep, which returns at once while probing. (A
  // binding's custom handler runs once; its count then starts one higher, so a handler that
  // gives up at its Nth call is still called N times in all.)
  t_probing = true;
  t_probe_slept = false;
  t_probe_ours = false;
  const int r = p->busy_fn(p->busy_arg);
  t_probing = false;
  if (t_probe_ours) {
    p->handler = ShimFile::Handler::kOurs;
  } else if (r != 0 || t_probe_slept) {
    p->handler = ShimFile::Handler::kBinding;
    NoteBindingHandler(db);
  } else {
    sqlite3_busy_handler(db, BusyHandler, db);
    p->handler = ShimFile::Handler::kOurs;
    p->ticket->coord->CountHandlerInstalled();
  }
}

void LeaveInLockMode() {
  if (t_in_lock != nullptr) t_in_lock = nullptr;  // restored by RunHandlerInLock's caller frame
}

int RunHandlerInLock(ShimFile* p, InLockWait* w) {
  InLockWait* const outer = t_in_lock;
  t_in_lock = w;
  const int again = p->busy_fn(p->busy_arg);
  t_in_lock = outer;

  if (w->reached_ours) {
    p->handler = ShimFile::Handler::kOurs;
  } else if (again != 0 || w->slept) {
    p->handler = ShimFile::Handler::kBinding;
    NoteBindingHandler(Caller(p));
  } else if (p->handler == ShimFile::Handler::kBinding ||
             (Caller(p) != nullptr && BindingHandlerSeen(Caller(p)))) {
    // The binding's handler, seen before, gave up without sleeping (its timeout is used up).
    w->gave_up = true;
  } else if (sqlite3* db = Caller(p)) {
    // No handler (or one that gave up at once without sleeping: indistinguishable): busy
    // handling is enforced, and the lock path goes on waiting by safeconc_timeout.
    sqlite3_busy_handler(db, BusyHandler, db);
    p->handler = ShimFile::Handler::kOurs;
    p->ticket->coord->CountHandlerInstalled();
  }
  return again;
}

int BusyHandler(void* arg, int count) {
  if (t_probing) {
    t_probe_ours = true;
    return 1;
  }
  if (t_in_lock != nullptr && (t_in_lock->db == nullptr || t_in_lock->db == arg)) {
    // Run by a lock path's in-lock wait: that wait goes on by safeconc_timeout itself.
    t_in_lock->reached_ours = true;
    return 1;
  }
  BusyRecord& r = ThreadBusyRecord();
  if (r.ticket != nullptr && !r.ticket->coord->IsOpen(r.ticket.get())) {
    r = BusyRecord();  // its file closed: r.file is gone, and r.db may be another connection
  }
  // Under shared cache the record names no connection (r.db null): SQLite runs the handler of
  // whichever connection of the cache was refused, on this thread, right after the refusal
  // (microseconds; a later handler call on this thread is another connection's episode).
  const bool mine = r.db == static_cast<sqlite3*>(arg) ||
                    (r.db == nullptr && r.kind == BusyKind::kTurn &&
                     Clock::now() - r.refused_at < timing::kFinalSleepWindow);
  if (r.ticket == nullptr || !r.armed || !mine || r.file == nullptr) {
    // Refused by something that left no armed record (wal.c reporting a busy read, a lock a
    // checkpoint holds): behave like a plain busy timeout with short sleeps. SQLite's count
    // only grows within one episode (our probe may have bumped it past 0), so a count that
    // did not grow, or another connection, starts a new one.
    thread_local sqlite3* episode_db = nullptr;
    thread_local int episode_count = 0;
    thread_local Clock::time_point episode_start;
    sqlite3* db = static_cast<sqlite3*>(arg);
    if (db != episode_db || count <= episode_count) {
      episode_db = db;
      episode_start = Clock::now();
    }
    episode_count = count;
    const int64_t timeout = ConnectionKnob(db, Knob::kTimeout);
    if (Clock::now() - episode_start > std::chrono::milliseconds(timeout)) return 0;
    sqlite3_sleep(static_cast<int>(timing::PollStep(count).count()));
    return 1;
  }
  ShimFile* p = r.file;  // alive: its file is open, and SQLite runs us inside a call on r.db
  p->handler = ShimFile::Handler::kOurs;
  Coordinator& c = *r.ticket->coord;
  switch (r.kind) {
    case BusyKind::kTurn:
      if (c.WaitForTurn(r.ticket.get(), r.deadline) != Coordinator::TurnWait::kTimedOut) {
        r.armed = false;
        return 1;  // its turn (or it left the line): retry
      }
      c.Cancel(r.ticket.get(), Coordinator::CancelWhy::kTimeout);
      RecordFailure(p, p->pending.lock, Outcome::kTimeout, "the write turn");
      ClearRefusal(p);
      return 0;
    case BusyKind::kCross:
      if (Clock::now() >= r.deadline) {
        c.Cancel(r.ticket.get(), Coordinator::CancelWhy::kGaveUp);
        c.CountTimeout();
        RecordFailure(p, p->pending.lock, Outcome::kTimeout, "a lock held by another process");
        ClearRefusal(p);
        return 0;
      }
      BackoffSleep(
          p, std::min<Clock::duration>(timing::PollStep(r.polls++), r.deadline - Clock::now()));
      return 1;
    case BusyKind::kFinal:
      break;
  }
  ClearRefusal(p);
  return 0;
}

int SleepHook(sqlite3_vfs* base, int micros) {
  if (t_probing) {
    t_probe_slept = true;
    return micros;
  }
  if (InLockWait* w = t_in_lock) {
    // The connection's handler sleeps between two tries of an in-lock wait: the lock path
    // spends that time parked in the coordinator, woken at each release (see locking.h).
    w->slept = true;
    w->slept_for += std::chrono::microseconds(micros);
    return micros;
  }
  BusyRecord& r = ThreadBusyRecord();
  if (r.ticket != nullptr && r.armed && r.kind == BusyKind::kTurn &&
      Clock::now() - r.refused_at < timing::kStaleTicket) {
    // The binding's handler (SQLite's default one) sleeps after our refusal. It counts the
    // delays it asked for, so return early only when the turn may be this waiter's.
    std::shared_ptr<Ticket> t = r.ticket;
    switch (t->coord->WaitForTurn(t.get(), Clock::now() + std::chrono::microseconds(micros))) {
      case Coordinator::TurnWait::kReady:
        r.armed = false;
        return micros;
      case Coordinator::TurnWait::kTimedOut:
        return micros;  // slept the whole delay; still armed for the next one
      case Coordinator::TurnWait::kNotQueued:
        r.armed = false;
        break;
    }
    // Not in line (a stale record): an ordinary sleep.
  }
  return base->xSleep(base, micros);
}

}  // namespace safeconc
