// busy.cc - busy handling: the thread-local record of the last refused lock request, the
// handler the extension installs on every connection, the xSleep hook through which
// SQLite's default handler sleeps, and the probe that re-installs a handler on a connection
// whose binding cleared it (node:sqlite calls sqlite3_busy_timeout(db, 0) after open).
//
// Thread safety: the record is thread_local. It holds a shared_ptr to the refused handle's
// Ticket, never a bare pointer the xSleep path would follow: a connection may be closed on
// another thread while this thread's record still names it. The ShimFile itself is used only
// from the busy handler, which SQLite runs inside a call on that very connection.
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <algorithm>
#include <thread>

#include "vfs/locking.h"
#include "vfs/shim.h"

namespace safeconc {
namespace {

struct BusyRecord {
  std::shared_ptr<Ticket> ticket;  // keeps the coordinator alive; null: no record
  // Valid only while the ticket's file is open (Coordinator::IsOpen), and then only inside
  // SQLite on `db` (the busy handler): the file may have been closed on another thread (its
  // connection closed, its database detached) since this thread's refusal.
  ShimFile* file = nullptr;
  sqlite3* db = nullptr;
  Clock::time_point refused_at;  // the latest refusal this record stands for
  BusyKind kind = BusyKind::kFinal;
  Clock::time_point deadline;
  int polls = 0;  // cross-process backoff step
  // Set by a refusal, cleared once a handler or xSleep woke the waiter for its turn: later
  // sleeps on this thread (wal.c's own retry loop sleeps through xSleep too) are ordinary
  // sleeps until the next refusal. Returning early from those would make wal.c spin.
  bool armed = false;
};

thread_local BusyRecord t_busy;
// Set while NoteRefusal probes the connection's busy handler (see Probe()).
thread_local bool t_probing = false;
thread_local bool t_probe_slept = false;
thread_local bool t_probe_ours = false;

// How long after a final refusal a sleep on the same thread still counts as SQLite's busy
// handler sleeping for that refusal (it sleeps microseconds after the lock call returned).
constexpr std::chrono::milliseconds kFinalSleepWindow{100};

int64_t Millis(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// Does the connection have a busy handler that will come back for a refused request? SQLite
// hands every VFS its wrapper around the connection's handler (SQLITE_FCNTL_BUSYHANDLER):
// calling it with no handler set returns 0 at once and changes nothing. With a handler set,
// the handler runs once: ours returns 1 at once while probing; SQLite's default handler
// sleeps through the VFS xSleep, which returns at once while probing. A connection with no
// handler gets ours, so busy handling is enforced even after a binding cleared it.
}  // namespace

void EnsureBusyHandler(ShimFile* p) {
  if (p->db == nullptr || p->busy_fn == nullptr || p->handler == ShimFile::Handler::kBinding) {
    return;
  }
  t_probing = true;
  t_probe_slept = false;
  t_probe_ours = false;
  const int r = p->busy_fn(p->busy_arg);
  t_probing = false;
  if (t_probe_ours) {
    p->handler = ShimFile::Handler::kOurs;
  } else if (r != 0 || t_probe_slept) {
    p->handler = ShimFile::Handler::kBinding;
  } else {
    sqlite3_busy_handler(p->db, BusyHandler, p->db);
    p->handler = ShimFile::Handler::kOurs;
    p->ticket->coord->CountHandlerInstalled();
  }
}

namespace {

// Sleeps up to `d`, waking early if anything is released in p's database.
void BackoffSleep(Coordinator& c, Clock::duration d) {
  c.WaitForChange(c.Generation(), Clock::now() + d);
}

Clock::duration PollStep(int polls) {
  // 1, 2, 4, 8, then 10 ms: bounded polling of a lock another process holds.
  return std::chrono::milliseconds(std::min(1 << std::min(polls, 4), 10));
}

void FailRecord(ShimFile* p, const char* result) {
  BlockerInfo b = p->ticket->coord->Blocker();
  std::string msg = std::string("gave up after ") +
                    std::to_string(Millis(Clock::now() - p->pending.arrived)) + " ms";
  if (b.held) {
    msg += "; the write turn is held by handle " + std::to_string(b.holder_handle) + " on thread " +
           std::to_string(b.holder_tid) + " for " + std::to_string(b.held_ms) + " ms";
  }
  RecordFailure(p, p->pending.lock, result, msg);
}

}  // namespace

void NoteRefusal(ShimFile* p, const char* lock, BusyKind kind) {
  const Clock::time_point now = Clock::now();
  if (!p->pending.active) {
    p->pending.active = true;
    p->pending.arrived = now;
    p->pending.deadline = now + std::chrono::milliseconds(p->knobs.Get(Knob::kTimeout));
  }
  p->pending.lock = lock;
  BusyRecord& r = t_busy;
  r.ticket = p->ticket;
  r.file = p;
  r.db = p->db;
  r.kind = kind;
  r.armed = true;
  r.refused_at = now;
  r.deadline = p->pending.deadline;
  if (kind != BusyKind::kCross) r.polls = 0;
  if (kind != BusyKind::kFinal) EnsureBusyHandler(p);
}

void ClearRefusal(ShimFile* p) {
  p->pending.active = false;
  if (t_busy.ticket == p->ticket) t_busy = BusyRecord();
}

void RecordFailure(ShimFile* p, const char* lock, const char* result, const std::string& message) {
  BlockerInfo b = p->ticket->coord->Blocker();
  JsonWriter w;
  w.BeginObject()
      .Field("lock", std::string(lock))
      .Field("result", std::string(result))
      .Field("waited_ms", p->pending.active ? Millis(Clock::now() - p->pending.arrived) : 0)
      .Key("holder");
  if (b.held) {
    w.BeginObject()
        .Field("handle", static_cast<int64_t>(b.holder_handle))
        .Field("thread", static_cast<int64_t>(b.holder_tid))
        .Field("held_ms", b.held_ms)
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
  p->last_busy = w.str();
  sqlite3_log(SQLITE_BUSY, "safeconc: %s: %s lock %s: %s", p->path, lock, result, message.c_str());
}

const char* const kFastFailMessage =
    "a read transaction tried to write while another connection held or waited for the write "
    "turn; SQLite fails this at once to avoid a deadlock (use BEGIN IMMEDIATE or "
    "safeconc_txn=immediate)";

int BusyHandler(void* arg, int count) {
  if (t_probing) {
    t_probe_ours = true;
    return 1;
  }
  BusyRecord& r = t_busy;
  if (r.ticket != nullptr && !r.ticket->coord->IsOpen(r.ticket.get())) {
    r = BusyRecord();  // its file closed: r.file is gone, and r.db may be another connection
  }
  if (r.ticket == nullptr || !r.armed || r.db != static_cast<sqlite3*>(arg) || r.file == nullptr) {
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
    sqlite3_sleep(std::min(1 << std::min(count, 4), 10));
    return 1;
  }
  ShimFile* p = r.file;  // alive: its file is open, and SQLite runs us inside a call on r.db
  p->handler = ShimFile::Handler::kOurs;
  Coordinator& c = *r.ticket->coord;
  switch (r.kind) {
    case BusyKind::kTurn:
      if (c.WaitForTurn(r.ticket.get(), r.deadline, /*confirm=*/true) !=
          Coordinator::TurnWait::kTimedOut) {
        r.armed = false;
        return 1;  // its turn (or it left the line): retry
      }
      c.Cancel(r.ticket.get(), Coordinator::CancelWhy::kTimeout);
      FailRecord(p, "timeout");
      ClearRefusal(p);
      return 0;
    case BusyKind::kCross:
      if (Clock::now() >= r.deadline) {
        c.Cancel(r.ticket.get(), Coordinator::CancelWhy::kTimeout);
        c.CountTimeout();
        FailRecord(p, "timeout");
        ClearRefusal(p);
        return 0;
      }
      c.WaitForTurn(r.ticket.get(), r.deadline, /*confirm=*/true);  // renews its place
      BackoffSleep(c, std::min<Clock::duration>(PollStep(r.polls++), r.deadline - Clock::now()));
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
  BusyRecord& r = t_busy;
  if (r.ticket != nullptr && r.armed && r.kind != BusyKind::kCross) {
    // The binding's handler (SQLite's default one) sleeps after our refusal. It counts the
    // delays it asked for, so return early only when it is this waiter's turn.
    if (r.kind == BusyKind::kFinal) {
      // Retrying cannot help: let the handler give up quickly. Only right after the refusal,
      // though: a handler that gave up leaves the record armed, and a later sleep on this
      // thread (the application's sqlite3_sleep, wal.c's retry loop) must really sleep.
      if (Clock::now() - r.refused_at < kFinalSleepWindow) return micros;
      r = BusyRecord();
      return base->xSleep(base, micros);
    }
    std::shared_ptr<Ticket> t = r.ticket;
    switch (t->coord->WaitForTurn(t.get(), Clock::now() + std::chrono::microseconds(micros),
                                  /*confirm=*/true)) {
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

std::string LastBusyJson(ShimFile* p) { return p->last_busy; }

}  // namespace safeconc
