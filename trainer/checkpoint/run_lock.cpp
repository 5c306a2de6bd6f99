#include "trainer/checkpoint/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/errors.h"
#include "common/log.h"

namespace rt {
namespace {

std::string read_all(int fd) {
  std::string s;
  char buf[512];
  for (off_t at = 0;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n <= 0) break;
    s.append(buf, size_t(n));
    at += n;
    if (s.size() > 4096) break;
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

// "pid 123 on host h (since 2026-11-28 08:00:00 UTC)" from "123 h 1764316800".
std::string describe_holder(const std::string& content) {
  long long pid = 0, since = 0;
  char host[256] = {};
  if (std::sscanf(content.c_str(), "%lld %255s %lld", &pid, host, &since) < 2)
    return content.empty() ? "an unknown process" : "'" + content + "'";
  std::string s = "PID " + std::to_string(pid) + " on host " + host;
  if (since > 0) {
    std::time_t t = std::time_t(since);
    char when[64];
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    s += std::string(" (since ") + when + ")";
  }
  return s;
}

}  // namespace

RunLock::RunLock(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec)
    throw IoError("cannot create directory " + run_dir + ": " + ec.message() +
                  " (set run.dir to a writable place)");
  path_ = (std::filesystem::path(run_dir) / ".lock").string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw IoError("cannot create the run-dir lock " + path_ + ": " + std::strerror(errno));
  int r;
  while ((r = ::flock(fd_, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
  }
  if (r != 0) {
    const int err = errno;
    const std::string holder = describe_holder(read_all(fd_));
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw UsageError("run dir " + run_dir + " is in use by another training process: " +
                       holder + " holds " + path_ +
                       ". Wait for it to finish or stop it (SIGTERM saves a checkpoint), or "
                       "train in another run dir (run.name or run.dir)");
    throw IoError("cannot lock " + path_ + ": " + std::strerror(err));
  }
  const std::string previous = read_all(fd_);
  if (!previous.empty())
    log_warn("run dir %s: took over the lock left by %s, which is no longer running",
             run_dir.c_str(), describe_holder(previous).c_str());
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  for (char& c : host)
    if (c == ' ') c = '_';
  const std::string mine = std::to_string(::getpid()) + " " + (host[0] ? host : "unknown") +
                           " " + std::to_string(static_cast<long long>(std::time(nullptr))) +
                           "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, mine.data(), mine.size(), 0) != ssize_t(mine.size()))
    log_warn("run dir lock %s: cannot record this process in it: %s", path_.c_str(),
             std::strerror(errno));
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  if (::ftruncate(fd_, 0) != 0) {
    // The next run will report a stale lock; harmless.
  }
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

}  // namespace rt
