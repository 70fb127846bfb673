// crossproc_line_test.cc - the shared line's order, driven directly through vfs/xproc.h in
// forked processes (no SQLite in the loop): its front is the longest-waiting transaction of
// all processes (one fairness clock per transaction), not the first handle to enter it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/crossproc_util.h"
#include "vfs/xproc.h"

namespace safeconc {
namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// A forked process with its own CrossProcess on the file, run by one-byte commands:
//   'h' take the free turn, 'r' release it, 'w' wait in line with a fresh clock,
//   'o' wait in line with a clock 2 s old (a request that waited in its own process first),
//   'q' exit.
// Replies one line per command ("ok", "refused", or for a wait "granted <ns>" when granted,
// after holding the turn kHoldMs, then releasing it).
constexpr int kHoldMs = 30;

struct Proc {
  xptest::Child child;
  int cmd = -1;
  void Send(char c) { ASSERT_EQ(write(cmd, &c, 1), 1); }
  std::string Line() {
    std::string s;
    char c;
    while (read(child.out, &c, 1) == 1 && c != '\n') s += c;
    return s;
  }
};

Proc Start(const std::string& db) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  Proc p;
  p.child = xptest::ForkChild([&](int out) {
    close(fds[1]);
    CrossProcess xp;
    xp.Attach(db.c_str(), /*writable=*/true);
    auto reply = [&](const std::string& s) {
      const std::string line = s + "\n";
      return write(out, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    };
    if (!reply(xp.Attached() ? "attached" : "not attached")) return 2;
    const uint64_t ticket = 7;
    for (char c; read(fds[0], &c, 1) == 1;) {
      if (c == 'q') return 0;
      if (c == 'h') {
        reply(xp.TryTake(ticket, 1, /*upgrade=*/false) == CrossProcess::Grant::kGranted
                  ? "ok"
                  : "refused");
      } else if (c == 'r') {
        xp.Release(ticket);
        reply("ok");
      } else if (c == 'w' || c == 'o') {
        const auto now = SteadyClock::now();
        const auto since = c == 'o' ? now - milliseconds(2000) : now;
        const CrossProcess::Grant g =
            xp.Take(ticket, 1, milliseconds(1000), since, now + milliseconds(20000));
        const int64_t at = xproc::NowNs();
        if (g == CrossProcess::Grant::kGranted) {
          usleep(kHoldMs * 1000);
          xp.Release(ticket);
          reply("granted " + std::to_string(at));
        } else {
          reply("not granted " + std::to_string(static_cast<int>(g)));
        }
      }
    }
    return 0;
  });
  close(fds[0]);
  p.cmd = fds[1];
  return p;
}

// Waiters parked in the shared line right now (read racily from the mapping: a test probe).
int Parked(const xproc::XShared* s) {
  int n = 0;
  for (const xproc::Slot& u : s->slots) {
    n += __atomic_load_n(&u.state, __ATOMIC_RELAXED) == xproc::kWaiting &&
         __atomic_load_n(&u.parked, __ATOMIC_RELAXED) != 0;
  }
  return n;
}

void WaitParked(const xproc::XShared* s, int n) {
  const auto give_up = SteadyClock::now() + milliseconds(20000);
  while (Parked(s) < n && SteadyClock::now() < give_up) usleep(1000);
  ASSERT_GE(Parked(s), n);
}

// Process A enters the shared line first with a fresh clock; process B enters after it,
// standing in for a request that had waited 2 s in B's own line (its clock is that old). The
// holder's release must hand the turn to B: past its bound (1 s), it is the longest-waiting
// transaction. A line ordered by entry would wake A first, and A, within its bound and with
// nobody ahead of it, would take the turn.
TEST(SharedLine, FrontIsTheLongestWaitingTransaction) {
  char tmpl[] = "/tmp/safeconc-line-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string db = dir + "/line.db";
  std::FILE* f = std::fopen(db.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);

  Proc holder = Start(db), a = Start(db), b = Start(db);
  for (Proc* p : {&holder, &a, &b}) ASSERT_EQ(p->Line(), "attached");
  const int fd = open((db + "-safeconc").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* m = mmap(nullptr, sizeof(xproc::XShared), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  ASSERT_NE(m, MAP_FAILED);
  const auto* s = static_cast<const xproc::XShared*>(m);

  holder.Send('h');
  ASSERT_EQ(holder.Line(), "ok");
  a.Send('w');
  ASSERT_NO_FATAL_FAILURE(WaitParked(s, 1));
  b.Send('o');
  ASSERT_NO_FATAL_FAILURE(WaitParked(s, 2));
  holder.Send('r');
  ASSERT_EQ(holder.Line(), "ok");
  const std::string ra = a.Line(), rb = b.Line();
  ASSERT_EQ(ra.rfind("granted ", 0), 0u) << ra;
  ASSERT_EQ(rb.rfind("granted ", 0), 0u) << rb;
  const int64_t at_a = std::stoll(ra.substr(8)), at_b = std::stoll(rb.substr(8));
  // The release reserved the turn for B. Only if B did not run for the whole claim lease
  // (kClaimLease) after its wake-up could A take it legitimately: then the run says nothing.
  const uint64_t lapsed = __atomic_load_n(&s->claim_lapsed, __ATOMIC_RELAXED);
  if (at_a < at_b && lapsed > 0) GTEST_SKIP() << "B was not scheduled within the claim lease";
  EXPECT_LT(at_b, at_a) << "the turn went to the first to enter the line, not the oldest";

  for (Proc* p : {&holder, &a, &b}) {
    p->Send('q');
    close(p->cmd);
    EXPECT_EQ(p->child.Wait(), 0);
  }
  munmap(m, sizeof(xproc::XShared));
  EXPECT_EQ(std::system(("rm -rf " + dir).c_str()), 0);
}

}  // namespace
}  // namespace safeconc
