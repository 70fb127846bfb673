// refusal.cc - see refusal.h.
#include "vfs/refusal.h"

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "base/thread_id.h"
#include "vfs/locking.h"
#include "vfs/shim.h"
#include "vfs/timing.h"

namespace safeconc {
namespace {

thread_local BusyRecord t_busy;

// Guards every ShimFile::last_busy: under shared cache one file's failures are written by
// whichever connection of the cache was refused, and read by safeconc_last_busy() on another.
// A leaf; taken only on a failure and by the SQL function.
Mutex g_last_busy_mu;

int64_t Millis(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

const char* OutcomeName(Outcome why) {
  switch (why) {
    case Outcome::kTimeout:
      return "timeout";
    case Outcome::kFastFail:
      return "fast_fail";
    case Outcome::kBusy:
      return "busy";
  }
  return "busy";
}

// Starts the record of a refused request, once: its retries keep arrival and deadline.
void Begin(ShimFile* p, const char* lock, Clock::time_point now) {
  ShimFile::Pending& r = p->pending;
  // A retry continues the request: it comes back within kStaleTicket (SQLite's default handler
  // sleeps at most 100 ms a step). A final refusal is never continued: the handler that could
  // come back for it (ours) clears it, and any other gave up already.
  if (!r.active || r.final || now - r.last > timing::kStaleTicket) {
    r.active = true;
    r.final = false;
    r.arrived = now;
    r.deadline = now + std::chrono::milliseconds(p->knobs.Get(Knob::kTimeout));
  }
  r.last = now;
  r.lock = lock;
}

// safeconc_last_busy()'s "message" (docs/vfs.md shows these texts; a test pins them).
std::string Message(Outcome why, const char* what, int64_t waited_ms, const BlockerInfo& b) {
  switch (why) {
    case Outcome::kFastFail:
      return "a read transaction tried to write while another connection held the write "
             "turn; SQLite fails this at once to avoid a deadlock (use BEGIN IMMEDIATE or "
             "safeconc_txn=immediate)";
    case Outcome::kBusy:
      return "the lock is held outside this process's coordinator (another process, or a "
             "connection that opted out with ?vfs=unix), and SQLite does not retry a write "
             "inside an open read transaction";
    case Outcome::kTimeout:
      break;
  }
  std::string m = "gave up after " + std::to_string(waited_ms) + " ms waiting for " + what;
  if (b.held) {
    m += "; the write turn is held by handle " + std::to_string(b.holder_handle) + " on thread " +
         std::to_string(b.holder_last_tid) + " for " + std::to_string(b.held_ms) + " ms";
    if (b.holder_last_tid == CurrentThreadId()) {
      m += " (last used on this thread: if only this thread will finish that transaction, "
           "it cannot while this one waits)";
    }
  }
  return m;
}

}  // namespace

Clock::time_point RefusalDeadline(ShimFile* p, const char* lock) {
  Begin(p, lock, Clock::now());
  return p->pending.deadline;
}

bool RefusalActive(const ShimFile* p) {
  const ShimFile::Pending& r = p->pending;
  return r.active && !r.final && Clock::now() - r.last <= timing::kStaleTicket;
}

BusyRecord& ThreadBusyRecord() { return t_busy; }

void NoteRefusal(ShimFile* p, const char* lock, BusyKind kind) {
  const Clock::time_point now = Clock::now();
  Begin(p, lock, now);
  BusyRecord& r = t_busy;
  r.ticket = p->ticket;
  r.file = p;
  r.db = Caller(p);  // null under shared cache: the busy handler then accepts any caller
  r.kind = kind;
  r.armed = true;
  r.refused_at = now;
  r.deadline = p->pending.deadline;
  p->pending.final = kind == BusyKind::kFinal;
  if (kind != BusyKind::kCross) r.polls = 0;
  if (kind != BusyKind::kFinal) EnsureBusyHandler(p);
}

void ClearRefusal(ShimFile* p) {
  p->pending.active = false;
  if (t_busy.ticket == p->ticket) t_busy = BusyRecord();
}

void RecordFailure(ShimFile* p, const char* lock, Outcome why, const char* what) {
  const BlockerInfo b = p->ticket->coord->Blocker();
  const int64_t waited = p->pending.active ? Millis(Clock::now() - p->pending.arrived) : 0;
  std::string message = Message(why, what, waited, b);
  // A holder in another process, known through the sidecar (vfs/xproc.h).
  int32_t xpid = 0;
  uint64_t xtid = 0;
  int64_t xheld = 0;
  const bool other = p->entry->xproc().OtherHolder(&xpid, &xtid, &xheld);
  if (other) {
    message += "; the write turn is held by process " + std::to_string(xpid) + " (thread " +
               std::to_string(xtid) + ") for " + std::to_string(xheld) + " ms";
  }
  JsonWriter w;
  w.BeginObject()
      .Field("lock", std::string(lock))
      .Field("result", std::string(OutcomeName(why)))
      .Field("waited_ms", waited)
      .Key("holder");
  if (b.held) {
    w.BeginObject()
        .Field("handle", static_cast<int64_t>(b.holder_handle))
        .Field("thread", static_cast<int64_t>(b.holder_last_tid))
        .Field("held_ms", b.held_ms)
        .Key("this_thread")
        .Bool(b.holder_last_tid == CurrentThreadId())
        .EndObject();
  } else {
    w.Null();
  }
  w.Key("other_process");
  if (other) {
    w.BeginObject()
        .Field("pid", xpid)
        .Field("thread", static_cast<int64_t>(xtid))
        .Field("held_ms", xheld)
        .EndObject();
  } else {
    w.Null();
  }
  w.Field("queued", b.queued)
      .Field("readers", b.readers)
      .Field("handle", static_cast<int64_t>(p->handle_id))
      .Field("thread", static_cast<int64_t>(CurrentThreadId()))
      .Field("message", message)
      .EndObject();
  {
    MutexLock l(&g_last_busy_mu);
    p->last_busy = w.str();
  }
  sqlite3_log(SQLITE_BUSY, "safeconc: %s: %s lock %s: %s", p->path, lock, OutcomeName(why),
              message.c_str());
}

std::string LastBusyJson(ShimFile* p) {
  MutexLock l(&g_last_busy_mu);
  return p->last_busy;
}

}  // namespace safeconc
