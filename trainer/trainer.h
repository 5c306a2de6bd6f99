// The training loop: batches from the data order, gradient accumulation over
// micro-batches up to the global batch, clipping, the non-finite guard, the
// optimizer step, metrics, periodic evaluation and checkpoints.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/backend.h"
#include "model/llama.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"

namespace rt {

struct StepStats {
  int64_t step = 0;        // 1-based: the number of optimizer steps done after this one
  double loss = 0;         // mean over the step's valid targets
  double grad_norm = 0;    // before clipping
  double lr = 0;
  int64_t tokens = 0;      // input tokens processed in the step (global)
  double step_ms = 0;
  bool skipped = false;    // non-finite loss or gradient: update skipped
};

class Trainer {
 public:
  struct Options {
    bool write_outputs = true;  // run dir, config.yaml, metrics.jsonl, checkpoints
    bool quiet = false;         // no progress lines (bench)
  };

  // cfg must be fully validated (load_config + validate_layout).
  Trainer(const Config& cfg, Options opt);
  ~Trainer();

  // Trains to max_steps: logs, evaluates and checkpoints on schedule.
  void fit();
  // One optimizer step over the global batch.
  StepStats train_step();
  // Perplexity at each length on the validation data (else training data).
  std::vector<PerplexityResult> evaluate(const std::vector<int64_t>& seq_lens,
                                         int64_t max_sequences);

  LlamaModel& model() { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Config& config() const { return cfg_; }
  int64_t step() const { return step_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  const std::string& run_dir() const { return cfg_.run.dir; }

 private:
  void save_checkpoint_now();

  Config cfg_;
  Options opt_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<SequenceSource> train_data_;
  std::unique_ptr<SequenceSource> val_data_;
  std::unique_ptr<SequenceOrder> order_;
  std::unique_ptr<MetricsWriter> metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  int nonfinite_streak_ = 0;
  std::vector<int32_t> inputs_, targets_;
};

// Creates the run dir (and parents); throws IoError when that fails.
void make_dirs(const std::string& path);

// The backend for parallel.device (auto -> cpu until CUDA lands).
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace rt
