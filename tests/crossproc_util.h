// crossproc_util.h - forked children for the cross-process tests: a child runs a function and
// reports through a pipe; the parent reads the report and the exit status.
#ifndef SAFECONC_TESTS_CROSSPROC_UTIL_H
#define SAFECONC_TESTS_CROSSPROC_UTIL_H

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>

namespace xptest {

struct Child {
  pid_t pid = -1;
  int out = -1;  // the read end of the child's report pipe
  // The exit status (128 + signal if killed); closes the pipe.
  int Wait() {
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    pid = -1;
    if (out >= 0) close(out);
    out = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

// Runs fn(report_fd) in a forked child, which exits with its result (no destructors, no
// atexit: the parent's test state is not the child's to tear down).
inline Child ForkChild(const std::function<int(int)>& fn) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  const pid_t pid = fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    close(fds[0]);
    const int rc = fn(fds[1]);
    close(fds[1]);
    _exit(rc);
  }
  close(fds[1]);
  return Child{pid, fds[0]};
}

// Everything until EOF.
inline std::string ReadAll(int fd) {
  std::string s;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    s.append(buf, static_cast<size_t>(n));
  }
  return s;
}

// The integer value of the first "key": at or after `from` in a JSON text; -1 if none.
inline int64_t JsonInt(const std::string& json, const std::string& key, size_t from = 0) {
  const std::string k = "\"" + key + "\":";
  const size_t at = json.find(k, from);
  if (at == std::string::npos) return -1;
  return std::strtoll(json.c_str() + at + k.size(), nullptr, 10);
}

}  // namespace xptest

#endif  // SAFECONC_TESTS_CROSSPROC_UTIL_H
