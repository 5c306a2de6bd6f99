// The training loop: batches from the data order, gradient accumulation over
// micro-batches up to the global batch, clipping, the non-finite guard, the
// optimizer step, metrics, periodic evaluation and checkpoints.
//
// Start-up (when the trainer writes outputs): resume from the newest usable
// checkpoint in RUN_DIR/checkpoints (weights, AdamW moments, step,
// tokens_seen; the data order and learning rate are functions of the step),
// falling back past unusable ones with a warning; else, when
// checkpoint.init_from is set, start from that file's weights only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/backend.h"
#include "model/llama.h"
#include "model/memory/sequence_runner.h"
#include "parallel/comm.h"
#include "parallel/grad_reducer.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"
#include "parallel/ring_attention.h"
#include "trainer/config/config.h"
#include "trainer/eval/evaluate.h"
#include "trainer/train/device.h"
#include "trainer/train/memory_plan.h"
#include "trainer/train/metrics.h"
#include "trainer/train/optimizer.h"
#include "trainer/checkpoint/run_lock.h"

namespace rt {

struct StepStats {
  int64_t step = 0;        // 1-based: the number of optimizer steps done after this one
  double loss = 0;         // mean over the step's valid targets
  double grad_norm = 0;    // before clipping
  double lr = 0;
  int64_t tokens = 0;      // input tokens processed in the step (global)
  double step_ms = 0;
  bool skipped = false;    // non-finite loss or gradient: update skipped
  // A stop signal reached every rank between micro-batches: the step was
  // given up before the update (weights, moments, step and tokens are those
  // of the last completed step, a consistent state to save).
  bool abandoned = false;
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

  // Trains to max_steps: logs, evaluates and checkpoints on schedule. Returns
  // early, after saving a checkpoint, when a stop signal arrived (checked
  // between steps): see stopped_by_signal().
  void fit();
  // The signal number that stopped fit() early, 0 when it ran to max_steps.
  int stopped_by_signal() const { return stopped_by_signal_; }
  // Writes RUN_DIR/checkpoints/step_N.h5 now and prunes to keep_last.
  void save_checkpoint_now();
  // The checkpoint this run resumed from ("" for a fresh start).
  const std::string& resumed_from() const { return resumed_from_; }
  // One optimizer step over the global batch.
  StepStats train_step();
  // Perplexity at each length on the validation data (else training data).
  std::vector<PerplexityResult> evaluate(const std::vector<int64_t>& seq_lens,
                                         int64_t max_sequences);
  // The passkey grid of eval.passkey (SPEC §9) on this run's ranks, with
  // evaluation samples (seed run.seed + 7919, distinct from the data's).
  PasskeyResult evaluate_passkey(const PasskeyEvalConfig& pk);

  LlamaModel& model() { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Config& config() const { return cfg_; }
  int64_t step() const { return step_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  const std::string& run_dir() const { return cfg_.run.dir; }
  // Bytes this rank sent around its ring so far (0 when cp = 1).
  int64_t ring_bytes_sent() const { return ring_ ? ring_->bytes_sent() : 0; }
  DType ring_kv_dtype() const { return ring_ ? ring_->kv_dtype() : DType::kF32; }
  // Seconds this rank waited on ring transfers so far (exposed ring time).
  double ring_wait_seconds() const { return ring_ ? ring_->wait_seconds() : 0; }
  // Gradient reduction (and, when sharded, the weight all-gather): bytes
  // this rank sent and seconds it waited for them, so far.
  int64_t reduce_bytes_sent() const { return reducer_->bytes_sent(); }
  double reduce_wait_seconds() const { return reducer_->exposed_seconds(); }
  // This rank's memory as allocated (the start-up log's figures).
  RankMemory rank_memory() const;
  Comm& world() { return *world_; }
  // The device this rank trains on (resolve_device): name, memory, peak FLOP/s.
  const DeviceChoice& device() const { return device_; }
  SequenceRunner& runner() { return *runner_; }
  // The model's tokenizer (config_tokenizer): data, synthetic tasks, checkpoints.
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  void resume_or_init();
  void restore_from(const std::string& path);
  void init_from(const std::string& path);
  std::string trainer_state_json() const;
  // Whether any rank got a stop signal (collective when world > 1).
  bool stop_requested_everywhere();

  Config cfg_;
  Options opt_;
  // parallel geometry (SPEC §6): world = dp x cp, cp fastest. The groups come
  // from make_process_groups; world_, dims_ and rank_ are shorthands of them.
  ProcessGroups groups_;
  Comm* world_ = nullptr;
  ParallelDims dims_;
  int rank_ = 0;
  RowPositions rows_;  // this rank's rows of a training sequence
  bool writer_ = false;  // rank 0 of a run that writes outputs
  std::unique_ptr<RunLock> run_lock_;  // the writer's, for the trainer's lifetime
  void print_layout_table();

  DeviceChoice device_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<RingAttention> ring_;  // after backend_: freed through it first
  std::unique_ptr<SequenceRunner> runner_;  // how a sequence is read (model.memory.type)
  std::vector<std::vector<int64_t>> doc_starts_;  // per sequence of the step (memory models)
  std::unique_ptr<Optimizer> optimizer_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  // What checkpoints store under /tokenizer: init_from's files when the
  // model kept its tokenizer (all of them, e.g. an imported model's
  // tokenizer_config.json too), else the tokenizer's own.
  std::vector<std::pair<std::string, std::string>> tokenizer_files_;
  std::unique_ptr<GradReducer> reducer_;  // over the world; shards when sharded
  std::unique_ptr<SequenceSource> train_data_;
  std::unique_ptr<SequenceSource> val_data_;
  std::unique_ptr<SequenceOrder> order_;
  std::unique_ptr<MetricsWriter> metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  int nonfinite_streak_ = 0;
  int64_t last_saved_step_ = -1;
  int stopped_by_signal_ = 0;
  std::string resumed_from_;
  std::vector<int32_t> inputs_, targets_;
};

// SIGINT/SIGTERM handlers that only record the signal (a second one kills
// the process the default way). fit() checks between steps, saves and
// returns; single process for now (MPI ranks will agree on it later).
void install_stop_signal_handlers();
int stop_signal_received();  // 0, or the signal number
void clear_stop_signal();    // tests

// Creates the run dir (and parents); throws IoError when that fails.
void make_dirs(const std::string& path);

// The tokenizer of a config (SPEC §7): data.tokenizer ("bytes" or a
// tokenizer.model path), else checkpoint.init_from's recorded tokenizer, else
// bytes. A missing file is an IoError (exit 3); a tokenizer whose vocab
// exceeds model.vocab_size, or one that differs from init_from's, is a
// UsageError (exit 2) naming both.
std::shared_ptr<const Tokenizer> config_tokenizer(const Config& cfg);


}  // namespace rt
