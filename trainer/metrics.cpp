#include "trainer/metrics.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

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
