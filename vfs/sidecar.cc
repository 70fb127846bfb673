// sidecar.cc - finding, creating, checking and mapping the sidecar file of a database
// (`<db>-safeconc`), and the process facts the shared line relies on (liveness, pid
// namespace). The turn protocol itself is in xproc.cc; the model in xproc.h.
//
// Creation: O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC with the database's mode (never world-
// writable, never executable) and, when created by root, the database's owner. Every opener
// checks that it is a regular file owned by the database's owner and not world-writable.
//
// Initialisation and removal are serialised by open-file-description locks on the sidecar
// itself (never on the database: closing a descriptor would drop SQLite's POSIX locks):
//   byte 0  exclusive while a process initialises, checks or removes the sidecar;
//   byte 1  shared by every attached process. An opener that can take it exclusively is the
//           only user: it (re)builds the content from scratch, which also clears whatever a
//           crashed run left. A detaching process that can take it exclusively removes the
//           file. An opener checks that the path still names the file it locked (a removal
//           may have come between its open and its lock).
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>

#include "vfs/timing.h"
#include "vfs/xproc.h"

namespace safeconc {
namespace xproc {

bool RobustMutex::Init() {
  pthread_mutexattr_t a;
  if (pthread_mutexattr_init(&a) != 0) return false;
  bool ok = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0 &&
            pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0 &&
            pthread_mutex_init(&m_, &a) == 0;
  pthread_mutexattr_destroy(&a);
  return ok;
}

bool RobustMutex::Lock(std::chrono::nanoseconds wait, bool* owner_died) {
  *owner_died = false;
  int rc = pthread_mutex_trylock(&m_);
  if (rc == EBUSY) {
    // pthread_mutex_timedlock (CLOCK_REALTIME) rather than pthread_mutex_clocklock: the
    // sanitizers intercept only the former. A clock step can only lengthen or shorten this
    // bounded wait.
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const int64_t ns = ts.tv_nsec + wait.count();
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    rc = pthread_mutex_timedlock(&m_, &ts);
  }
  if (rc == EOWNERDEAD) {
    *owner_died = true;
    return true;
  }
  return rc == 0;
}

void RobustMutex::MarkConsistent() { pthread_mutex_consistent(&m_); }
void RobustMutex::Unlock() { pthread_mutex_unlock(&m_); }

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

namespace {

// Fields 3 (state) and 22 (starttime) of /proc/<pid>/stat; false if unreadable.
bool ProcStat(int32_t pid, char* state, uint64_t* start) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return false;
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name (field 2) is in parentheses and may contain anything: count fields
  // after the last ')'.
  const char* z = std::strrchr(buf, ')');
  if (z == nullptr || z[1] != ' ') return false;
  *state = z[2];
  int field = 2;
  for (++z; *z != '\0'; ++z) {
    if (*z == ' ' && ++field == 22) {
      *start = std::strtoull(z + 1, nullptr, 10);
      return true;
    }
  }
  return false;
}

uint64_t StartTimeOf(int32_t pid) {
  char state;
  uint64_t start = 0;
  return ProcStat(pid, &state, &start) ? start : 0;
}

}  // namespace

uint64_t SelfStart() {
  static std::atomic<int32_t> cached_pid{0};
  static std::atomic<uint64_t> cached{0};
  const int32_t pid = getpid();
  if (cached_pid.load(std::memory_order_acquire) == pid) return cached.load();
  const uint64_t v = StartTimeOf(pid);
  cached.store(v);
  cached_pid.store(pid, std::memory_order_release);
  return v;
}

bool ProcessAlive(int32_t pid, uint64_t pstart) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char state;
  uint64_t start = 0;
  if (!ProcStat(pid, &state, &start)) return true;  // unreadable (hidepid): assume alive
  // A zombie (killed, not yet reaped by its parent) holds nothing any more: its locks and
  // its robust mutexes were released when it died.
  if (state == 'Z' || state == 'X') return false;
  return pstart == 0 || start == pstart;  // another process with a reused pid: dead
}

uint64_t PidNamespace() {
  struct stat st;
  if (stat("/proc/self/ns/pid", &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace xproc

namespace {

using xproc::XShared;

// Magic numbers of file systems whose byte-range locks or shared mappings are not coherent
// between machines (statfs(2)): the sidecar is not used there.
bool NetworkFileSystem(const char* path) {
  struct statfs fs;
  if (statfs(path, &fs) != 0) return false;
  switch (static_cast<uint32_t>(fs.f_type)) {
    case 0x6969:      // NFS
    case 0x517B:      // SMB
    case 0xFF534D42:  // CIFS
    case 0xFE534D42:  // SMB2
    case 0x01021997:  // 9P (v9fs)
    case 0x00C36400:  // Ceph
    case 0x65735546:  // FUSE (sshfs, ...)
    case 0x5346414F:  // AFS
    case 0x73757245:  // Coda
    case 0x0BD00BD0:  // Lustre
    case 0x7461636F:  // OCFS2
    case 0x01161970:  // GFS2
      return true;
    default:
      return false;
  }
}

// Open-file-description lock on one byte. `type`: F_RDLCK, F_WRLCK or F_UNLCK.
bool OfdLock(int fd, off_t byte, short type, bool wait) {
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  for (;;) {
    if (fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0) return true;
    if (errno != EINTR) return false;
  }
}

std::string Errno(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

// Builds a fresh sidecar in `s` (this process is its only user).
bool Build(XShared* s) SC_NO_THREAD_SAFETY_ANALYSIS {
  std::memset(static_cast<void*>(s), 0, sizeof *s);
  if (!s->mu.Init()) return false;
  s->version = xproc::kVersion;
  s->size = sizeof(XShared);
  s->pidns = xproc::PidNamespace();
  s->reserved = -1;
  // Last: a sidecar with the magic is complete. Every other opener reads it only after it got
  // the init lock (byte 0) that this process holds now; fcntl orders the two.
  s->magic = xproc::kMagic;
  return true;
}

}  // namespace

void CrossProcess::Attach(const char* db_path, bool writable) {
  MutexLock l(&mu_);
  if (tried_) return;
  sidecar_ = std::string(db_path) + "-safeconc";
  auto fail = [&](const std::string& why) SC_REQUIRES(mu_) {
    reason_ = why;
    sqlite3_log(SQLITE_NOTICE,
                "safeconc: no cross-process coordination for %s (%s); other processes are "
                "polled as without the sidecar",
                db_path, why.c_str());
  };
  if (!writable) {
    // Never takes the turn: nothing to coordinate, no log; a writable open tries again.
    if (reason_.empty()) reason_ = "opened read-only";
    return;
  }
  tried_ = true;
  reason_.clear();
  const char* env = std::getenv("SAFECONC_SIDECAR");
  if (env != nullptr && std::strcmp(env, "0") == 0) return fail("SAFECONC_SIDECAR=0");
  struct stat db;
  if (stat(db_path, &db) != 0) return fail(Errno("cannot stat", db_path));
  if (NetworkFileSystem(db_path)) return fail("a network file system");
  // Only the database's owner uses the sidecar: a robust mutex in memory that another user
  // can write could be turned against the process (glibc follows pointers stored in it), and
  // a reader of another user could hold its locks. Others are polled, as before.
  if (db.st_uid != geteuid()) {
    return fail("the database is owned by uid " + std::to_string(db.st_uid) +
                ", this process runs as uid " + std::to_string(geteuid()));
  }
  const mode_t mode = 0600;
  for (int attempt = 0; attempt < 3; ++attempt) {
    int fd = open(sidecar_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd >= 0) {
      (void)fchmod(fd, mode);  // whatever the umask
    } else if (errno == EEXIST) {
      fd = open(sidecar_.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 && errno == ENOENT) continue;  // removed meanwhile
    }
    if (fd < 0) return fail(Errno("cannot open", sidecar_));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      close(fd);
      return fail(sidecar_ + " is not a regular file");
    }
    if (st.st_uid != db.st_uid) {
      close(fd);
      return fail(sidecar_ + " is owned by uid " + std::to_string(st.st_uid) +
                  ", the database by uid " + std::to_string(db.st_uid));
    }
    if (st.st_mode & 0077) {
      close(fd);
      return fail(sidecar_ + " is open to other users (mode " +
                  std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                  std::to_string(st.st_mode & 7) + ")");
    }
    // The init lock, waited for a bounded time: a process stopped while holding it must not
    // hang this open. Not had: no sidecar for now, the next open tries again.
    bool locked = false;
    for (int i = 0; i < 50 && !(locked = OfdLock(fd, 0, F_WRLCK, /*wait=*/false)); ++i) {
      usleep(1000);
    }
    if (!locked) {
      close(fd);
      tried_ = false;
      return fail(sidecar_ + " is busy (another process is setting it up or stopped doing so)");
    }
    struct stat now;
    if (lstat(sidecar_.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) {
      close(fd);  // removed (and maybe recreated) between our open and our lock: again
      continue;
    }
    const bool alone = OfdLock(fd, 1, F_WRLCK, /*wait=*/false);
    if (alone && (ftruncate(fd, 0) != 0 || ftruncate(fd, sizeof(XShared)) != 0)) {
      close(fd);
      return fail(Errno("cannot size", sidecar_));
    }
    if (!alone && (fstat(fd, &now) != 0 || now.st_size != static_cast<off_t>(sizeof(XShared)))) {
      close(fd);
      return fail(sidecar_ + " is in use by processes of another libsafeconc version");
    }
    void* m = mmap(nullptr, sizeof(XShared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      close(fd);
      return fail(Errno("cannot map", sidecar_));
    }
    auto* s = static_cast<XShared*>(m);
    std::string bad;
    if (alone) {
      if (!Build(s)) bad = "cannot initialise its mutex";
    } else if (s->magic != xproc::kMagic || s->version != xproc::kVersion ||
               s->size != sizeof(XShared)) {
      bad = " is in use and not one this version can read";
    } else if (s->pidns != xproc::PidNamespace()) {
      bad = " is in use by processes of another pid namespace";
    }
    // Attached: a shared lock on byte 1 (from the exclusive one if we built it).
    if (bad.empty() && !OfdLock(fd, 1, F_RDLCK, /*wait=*/false)) bad = " cannot be locked";
    OfdLock(fd, 0, F_UNLCK, false);
    if (!bad.empty()) {
      munmap(m, sizeof(XShared));
      close(fd);
      return fail(bad[0] == ' ' ? sidecar_ + bad : bad);
    }
    fd_ = fd;
    probe_fd_.store(fd, std::memory_order_relaxed);
    attached_pid_ = getpid();
    s->attached.fetch_add(1, std::memory_order_relaxed);
    shared_.store(s, std::memory_order_release);
    return;
  }
  fail(sidecar_ + " kept being removed and recreated");
}

void CrossProcess::RecountIfIdle(XShared* s) {
  const uint32_t n = s->attached.load(std::memory_order_relaxed);
  if (n <= 1 || s->waiting_hint.load(std::memory_order_relaxed) != 0 ||
      s->holder_hint.load(std::memory_order_relaxed) != 0) {
    return;
  }
  const int64_t now = xproc::NowNs();
  int64_t at = recount_at_ns_.load(std::memory_order_relaxed);
  if (now < at || !recount_at_ns_.compare_exchange_strong(
                      at, now + std::chrono::nanoseconds(timing::kXprocRecount).count(),
                      std::memory_order_relaxed)) {
    return;
  }
  // Would an exclusive lock on byte 1 conflict? Only another open file description's shared
  // lock can (ours never conflicts with itself): another attached process, alive (the kernel
  // dropped a dead one's locks), or a forked child sharing a description with one.
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 1;
  fl.l_len = 1;
  const int fd = probe_fd_.load(std::memory_order_relaxed);
  if (fd < 0 || fcntl(fd, F_OFD_GETLK, &fl) != 0 || fl.l_type != F_UNLCK) return;
  // Alone. A process attaching now locks byte 1 before it counts itself in: if it counted
  // since our look at `attached`, the exchange fails and the next probe sees it.
  uint32_t expected = n;
  if (s->attached.compare_exchange_strong(expected, 1, std::memory_order_relaxed)) {
    recounted_.fetch_add(n - 1, std::memory_order_relaxed);
  }
}

CrossProcess::~CrossProcess() {
  MutexLock l(&mu_);
  XShared* s = Shared();
  if (s == nullptr) return;
  shared_.store(nullptr, std::memory_order_release);
  if (attached_pid_ == getpid()) s->attached.fetch_sub(1, std::memory_order_relaxed);
  munmap(s, sizeof(XShared));
  // The last user removes it (no waits: if anyone is busy with it, it stays). A forked child
  // shares its parent's open file description, and so its locks: it leaves the file alone.
  if (attached_pid_ == getpid() && OfdLock(fd_, 0, F_WRLCK, false)) {
    struct stat a, b;
    if (OfdLock(fd_, 1, F_WRLCK, false) && fstat(fd_, &a) == 0 &&
        lstat(sidecar_.c_str(), &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
      unlink(sidecar_.c_str());
    }
  }
  close(fd_);  // drops our locks
  fd_ = -1;
}

}  // namespace safeconc
