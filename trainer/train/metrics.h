// metrics.jsonl (SPEC §11) and the console progress line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace rt {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Appends to path (created if missing). Throws IoError when unwritable. A
  // torn last line (a crash or a full disk in the middle of a write) is cut
  // off first, with a warning, so the next record starts on its own line.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // One whole line, in one write(2): on a short write (full disk) the partial
  // line is truncated away again before the IoError, so the file never keeps
  // a torn line.
  void write(const nlohmann::json& record);

 private:
  int fd_ = -1;
  std::string path_;
};

// Before a run (re)starts at `step` (0 for a fresh start): removes from the
// metrics file the records of steps after `step`, which the new run is about
// to write again (a resumed run replays them), and any line that is not a
// whole JSON object (a torn write). Rewrites to a temporary file and renames.
// Returns the number of lines dropped; 0 when the file does not exist.
int64_t drop_metrics_after(const std::string& path, int64_t step);

// "step 12/200 | loss 2.3456 | lr 3.00e-04 | grad 1.23 | 12.3k tok/s | 45.6 ms | ETA 1m23s"
std::string progress_line(int64_t step, int64_t total, double loss, double lr, double grad_norm,
                          double tokens_per_s, double step_ms, double eta_s);
std::string format_duration(double seconds);

}  // namespace rt
