#include "trainer/train/metrics.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/errors.h"
#include "common/log.h"

namespace rt {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw IoError("cannot open metrics file " + path + ": " + std::strerror(errno) +
                  " (check that the run directory is writable)");
  // Repair a torn last line: keep everything up to the last newline.
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && st.st_size > 0) {
    off_t end = st.st_size;
    char c = 0;
    if (::pread(fd_, &c, 1, end - 1) == 1 && c != '\n') {
      off_t keep = 0;
      char buf[4096];
      for (off_t at = end; at > 0 && keep == 0;) {
        const off_t from = at > off_t(sizeof buf) ? at - off_t(sizeof buf) : 0;
        const ssize_t n = ::pread(fd_, buf, size_t(at - from), from);
        if (n <= 0) break;
        for (ssize_t i = n - 1; i >= 0; --i)
          if (buf[i] == '\n') {
            keep = from + i + 1;
            break;
          }
        at = from;
      }
      if (::ftruncate(fd_, keep) != 0)
        throw IoError("cannot repair the torn last line of " + path + ": " +
                      std::strerror(errno));
      log_warn("%s: removed a torn last line (%lld bytes, from an interrupted write)",
               path.c_str(), (long long)(end - keep));
    }
  }
}

MetricsWriter::~MetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (fd_ < 0) return;
  const std::string line = record.dump() + "\n";
  struct stat st {};
  const off_t before = ::fstat(fd_, &st) == 0 ? st.st_size : -1;
  size_t done = 0;
  int err = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
    done += size_t(n);
  }
  if (err == 0) return;
  if (done > 0 && before >= 0 && ::ftruncate(fd_, before) != 0)
    log_warn("%s: cannot remove a partly written line: %s", path_.c_str(), std::strerror(errno));
  throw IoError("cannot write " + path_ + ": " + std::strerror(err));
}

int64_t drop_metrics_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return 0;
  std::vector<std::string> keep;
  int64_t dropped = 0;
  bool unterminated = false;  // a last line without its '\n' would be glued to the next record
  for (std::string line; std::getline(in, line);) {
    if (in.eof()) unterminated = true;
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (in.eof() && !j.is_object()) {  // an interrupted write: not a record
      log_warn("%s: removed a torn last line (%lld bytes, from an interrupted write)",
               path.c_str(), (long long)line.size());
      continue;
    }
    if (!j.is_object() || (j.contains("step") && j["step"].is_number_integer() &&
                           j["step"].get<int64_t>() > step)) {
      ++dropped;
      continue;
    }
    keep.push_back(line);
  }
  in.close();
  if (dropped == 0 && !unterminated) return 0;
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw IoError("cannot rewrite " + path + ": " + std::strerror(errno));
  bool ok = true;
  for (const std::string& line : keep)
    ok = ok && std::fputs(line.c_str(), f) >= 0 && std::fputc('\n', f) != EOF;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0)
    throw IoError("cannot rewrite " + path + ": " + std::strerror(errno) +
                  " (check that the run directory is writable)");
  return dropped;
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  long t = long(s + 0.5);
  char buf[64];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string progress_line(int64_t step, int64_t total, double loss, double lr, double grad_norm,
                          double tokens_per_s, double step_ms, double eta_s) {
  char tps[32];
  if (tokens_per_s >= 1e6)
    std::snprintf(tps, sizeof tps, "%.2fM", tokens_per_s / 1e6);
  else if (tokens_per_s >= 1e3)
    std::snprintf(tps, sizeof tps, "%.1fk", tokens_per_s / 1e3);
  else
    std::snprintf(tps, sizeof tps, "%.0f", tokens_per_s);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "step %lld/%lld | loss %.4f | lr %.2e | grad %.3f | %s tok/s | %.1f ms | ETA %s",
                (long long)step, (long long)total, loss, lr, grad_norm, tps, step_ms,
                format_duration(eta_s).c_str());
  return buf;
}

}  // namespace rt
