#include "trainer/metrics.h"

#include <cerrno>
#include <cstring>

#include "common/errors.h"

namespace rt {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "a");
  if (!f_)
    throw IoError("cannot open metrics file " + path + ": " + std::strerror(errno) +
                  " (check that the run directory is writable)");
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (!f_) return;
  std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw IoError("cannot write " + path_ + ": " + std::strerror(errno));
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
