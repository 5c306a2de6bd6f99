#include "trainer/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/errors.h"
#include "common/log.h"
#include "model/precision.h"
#include "trainer/checkpoint/checkpoint.h"

namespace rt {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {  // second Ctrl-C: stop now, the default way
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

// Model keys that set parameter shapes: a run resumes only with equal ones.
const std::vector<std::string> kShapeKeys = {
    "vocab_size",          "hidden_size",         "intermediate_size",   "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim",            "tie_word_embeddings",
    "memory"};
// Model keys a weights-only start (init_from) may change (SPEC §4.4).
const std::vector<std::string> kInitFromMayChange = {
    "max_position_embeddings", "rope_theta", "rope_scaling", "position", "memory"};
const char* const kInitFromMayChangeText =
    "max_position_embeddings, rope_theta, rope_scaling, position, memory";

bool in(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int stop_signal_received() { return int(g_stop_signal); }
void clear_stop_signal() { g_stop_signal = 0; }

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec)
    throw IoError("cannot create directory " + path + ": " + ec.message() +
                  " (set run.dir to a writable place)");
}

std::shared_ptr<const Tokenizer> config_tokenizer(const Config& cfg) {
  std::shared_ptr<const Tokenizer> tok;
  std::string where = "data.tokenizer";
  std::unique_ptr<Tokenizer> init_tok;  // init_from's, when it has one
  const std::string& from = cfg.checkpoint.init_from;
  std::error_code ec;
  if (!from.empty() && fs::is_regular_file(from, ec)) {
    init_tok = read_checkpoint_tokenizer(from);
  } else if (!from.empty() && fs::is_directory(from, ec) &&
             fs::exists(fs::path(from) / "tokenizer.model", ec)) {
    init_tok = load_tokenizer(from);  // a Hugging Face model directory
  }
  if (!cfg.data.tokenizer.empty()) {
    tok = load_tokenizer(cfg.data.tokenizer);
    if (init_tok && init_tok->id() != tok->id())
      throw UsageError("data.tokenizer " + tok->describe() + " is not the tokenizer of "
                       "checkpoint.init_from " + cfg.checkpoint.init_from + " (" +
                       init_tok->describe() + "): a model keeps its tokenizer; set "
                       "data.tokenizer to null (the checkpoint's) or to its tokenizer.model");
  } else if (init_tok) {
    tok = std::move(init_tok);
    where = "the tokenizer of checkpoint.init_from " + cfg.checkpoint.init_from;
  } else {
    tok = make_bytes_tokenizer();
  }
  if (tok->vocab_size() > cfg.model.vocab_size)
    throw UsageError(where + ": " + tok->describe() + " has " +
                     std::to_string(tok->vocab_size()) + " tokens > model.vocab_size " +
                     std::to_string(cfg.model.vocab_size) + ": raise model.vocab_size to at "
                     "least " + std::to_string(tok->vocab_size()));
  return tok;
}

Trainer::Trainer(const Config& cfg, Options opt) : cfg_(cfg), opt_(opt) {
  world_ = parallel_runtime().world.get();
  rank_ = world_->rank();
  dims_ = ParallelDims::build(world_->size(), cfg_.parallel.data_parallel,
                              cfg_.parallel.context_parallel);
  writer_ = opt_.write_outputs && rank_ == 0;
  // One training process per run dir (the writer's lock; other ranks follow
  // rank 0, whose failure aborts the job).
  if (writer_) run_lock_ = std::make_unique<RunLock>(cfg_.run.dir);
  groups_ = make_process_groups(*world_, dims_, parse_ring_layout(cfg_.parallel.ring_layout));
  rows_ = groups_.rows(cfg_.train.seq_len);
  device_ = resolve_device(cfg_, parallel_runtime().local_rank);
  backend_ = make_device_backend(device_);
  if (device_.device == Device::kCuda)
    log_info("device: %s (rank 0, local rank %d; rank r uses local device local_rank %% %d)",
             device_.describe().c_str(), parallel_runtime().local_rank, device_.count);
  // The groups that carry the backend's buffers (ring K/V, gradients): MPI,
  // NCCL or pinned-host staging, chosen and logged in one place.
  setup_device_groups(groups_, *backend_);
  tokenizer_ = config_tokenizer(cfg_);
  tokenizer_files_ = tokenizer_->files();
  if (std::error_code ec; fs::is_regular_file(cfg_.checkpoint.init_from, ec)) {
    auto files = read_checkpoint_tokenizer_files(cfg_.checkpoint.init_from);
    if (tokenizer_from_files(files, "", cfg_.checkpoint.init_from)->id() == tokenizer_->id())
      tokenizer_files_ = std::move(files);
  }
  train_data_ = make_source(cfg_.data.train, cfg_.run.seed, tokenizer_);
  if (cfg_.data.val) val_data_ = make_source(*cfg_.data.val, cfg_.run.seed, tokenizer_);
  if (train_data_->vocab_size() > cfg_.model.vocab_size)
    throw UsageError("data.train " + train_data_->describe() + " has vocab_size " +
                     std::to_string(train_data_->vocab_size()) + " > model.vocab_size " +
                     std::to_string(cfg_.model.vocab_size) + ": raise model.vocab_size");
  order_ = std::make_unique<SequenceOrder>(train_data_->num_sequences(cfg_.train.seq_len),
                                           cfg_.train.global_batch_size, cfg_.data.shuffle,
                                           cfg_.run.seed);

  const Precision prec = device_.precision;
  model_ = std::make_unique<LlamaModel>(cfg_.model, *backend_, prec);
  model_->init_weights(cfg_.run.seed);
  if (dims_.cp > 1) {
    if (cfg_.model.memory)
      throw UsageError(
          "model.memory (recurrent memory) with parallel.context_parallel(" +
          std::to_string(dims_.cp) +
          ") > 1 is not supported: a memory model attends only within one segment of "
          "model.memory.segment_length + 2*num_tokens rows, so one rank holds a segment "
          "comfortably and the segments must run one after another anyway; sharding a "
          "segment over a ring would add a ring exchange per layer per segment for no memory "
          "saving. Use parallel.context_parallel: 1 and scale out with data_parallel");
    ring_ = std::make_unique<RingAttention>(groups_.device_cp(), groups_.layout);
    model_->set_sequence_attention(ring_.get());
  }
  runner_ = make_sequence_runner(*model_);
  // Gradients are summed over the world in buckets; with a sharded
  // optimizer (ZeRO-1) reduce-scattered onto near-equal contiguous shards of
  // the flat arena, each rank updating its shard.
  const bool sharded = cfg_.shards_optimizer(dims_.world);
  reducer_ = std::make_unique<GradReducer>(
      groups_.device_world(), model_->grads(), size_t(cfg_.parallel.bucket_mb * 1024 * 1024), sharded);
  if (sharded)
    optimizer_ = std::make_unique<Optimizer>(
        cfg_.train.optimizer, *model_, OptimizerShard{reducer_->shard_lo(), reducer_->shard_hi()});
  else
    optimizer_ = std::make_unique<Optimizer>(cfg_.train.optimizer, *model_);
  // activations for one micro-batch: one segment of rows with memory
  model_->plan_activations(cfg_.train.micro_batch_size, activation_rows(cfg_, dims_),
                           cfg_.train.activation_checkpointing);
  if (!opt_.quiet) print_layout_table();
  log_info("precision: %s (train.precision %s on %s)", prec.name().c_str(),
           cfg_.train.precision.c_str(), device_name(backend_->device()));
  log_info("model: %lld parameters (%s), %sgradients %s, optimizer state %s, device %s",
           (long long)model_->num_params(), model_->params().describe().c_str(),
           prec.master_weights
               ? ("master weights " + model_->master().describe() + ", ").c_str()
               : "",
           model_->grads().describe().c_str(),
           format_bytes(double(optimizer_->state_bytes())).c_str(),
           device_name(backend_->device()));
  log_info("gradient reduction: %zu buckets of <= %g MiB over %d ranks, %s, %s%s",
           reducer_->num_buckets(), cfg_.parallel.bucket_mb, dims_.world,
           sharded ? "reduce-scatter (sharded optimizer, ZeRO-1)" : "all-reduce",
           cfg_.parallel.overlap_grad_reduce && runner_->single_backward()
               ? "overlapped with the backward"
               : "after the backward",
           cfg_.parallel.overlap_grad_reduce && !runner_->single_backward()
               ? " (memory models reduce after it)"
               : "");
  {
    // every rank's memory, printed by rank 0 (`ringtrain plan` prints the same lines)
    const RankMemory mine = rank_memory();
    const int64_t v[6] = {mine.params,      mine.master,      mine.grads,
                          mine.optimizer,   mine.activations, mine.workspace};
    std::vector<int64_t> all(size_t(6 * dims_.world));
    world_->allgather(v, sizeof v, all.data());
    for (int r = 0; r < dims_.world; ++r) {
      const int64_t* a = all.data() + 6 * r;
      log_info("%s", memory_line({r, a[0], a[1], a[2], a[3], a[4], a[5]}).c_str());
    }
  }
  if (optimizer_->owns_master()) model_->release_master();  // the optimizer holds its shard
  log_info("data: train %s, %lld sequences of %lld tokens%s", train_data_->describe().c_str(),
           (long long)order_->num_sequences(), (long long)cfg_.train.seq_len,
           cfg_.data.shuffle ? ", shuffled" : "");

  if (opt_.write_outputs) resume_or_init();  // every rank loads the same state
  if (writer_) {
    make_dirs(cfg_.run.dir);
    std::ofstream f(cfg_.run.dir + "/config.yaml");
    f << config_to_yaml(cfg_);
    if (!f) throw IoError("cannot write " + cfg_.run.dir + "/config.yaml");
    // The steps after the one (re)started from are about to be written again.
    const int64_t dropped = drop_metrics_after(cfg_.run.dir + "/metrics.jsonl", step_);
    if (dropped > 0)
      log_info("metrics.jsonl: dropped %lld records after step %lld (this run writes them again)",
               (long long)dropped, (long long)step_);
    metrics_ = std::make_unique<MetricsWriter>(cfg_.run.dir + "/metrics.jsonl");
    log_info("run dir: %s", cfg_.run.dir.c_str());
    if (!resumed_from_.empty())
      metrics_->write({{"type", "resume"},
                       {"step", step_},
                       {"checkpoint", resumed_from_},
                       {"dropped_records", dropped}});
  }
}

// ---- resume and init_from ----------------------------------------------------

void Trainer::resume_or_init() {
  // With the master weights sharded, loading fills a full master copy (the
  // current weights, all-gathered from the shards, so that tensors a file
  // may lack keep their values), and each rank then keeps its shard.
  struct Reshard {
    Trainer* t;
    ~Reshard() {
      if (!t->optimizer_->owns_master()) return;
      t->optimizer_->take_master_shard();
      t->model_->release_master();
    }
  } reshard{this};
  if (optimizer_->owns_master()) {
    model_->restore_master();
    float* full = model_->master().f32_base();
    backend_->copy(Buf(full + reducer_->shard_lo()), CBuf(optimizer_->master_shard()),
                   reducer_->shard_hi() - reducer_->shard_lo());
    reducer_->allgather_shards(full);
  }
  const auto found = list_checkpoints(cfg_.run.dir);
  if (found.empty()) {
    if (!cfg_.checkpoint.init_from.empty()) init_from(cfg_.checkpoint.init_from);
    return;
  }
  std::vector<std::string> unusable, problems;
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    const std::string& path = it->second;
    try {
      restore_from(path);
    } catch (const IoError& e) {
      // Corrupt, truncated or incomplete: loud, then the previous one.
      log_warn("checkpoint %s is unusable: %s", path.c_str(), e.what());
      unusable.push_back(path);
      problems.push_back(e.what());
      continue;
    }
    log_info("resuming from %s (step %lld)", path.c_str(), (long long)step_);
    resumed_from_ = path;
    // Out of the way, so that pruning and the next resume ignore them; the
    // bytes stay for a post-mortem.
    for (const std::string& bad : unusable) {
      std::error_code ec;
      fs::rename(bad, bad + ".corrupt", ec);
      log_warn("fell back past %s; %s", bad.c_str(),
               ec ? ("could not rename it: " + ec.message()).c_str()
                  : ("renamed it to " + bad + ".corrupt").c_str());
    }
    if (!cfg_.checkpoint.init_from.empty())
      log_info("checkpoint.init_from %s is not used: the run dir has its own checkpoints, and "
               "the run resumes from them",
               cfg_.checkpoint.init_from.c_str());
    if (step_ >= cfg_.train.max_steps)
      log_info("the checkpoint is at step %lld >= train.max_steps %lld: nothing to train (raise "
               "train.max_steps to continue)",
               (long long)step_, (long long)cfg_.train.max_steps);
    return;
  }
  std::string msg = "no usable checkpoint in " + cfg_.run.dir + "/checkpoints (" +
                    std::to_string(found.size()) + " found, all unusable):";
  for (const std::string& p : problems) msg += "\n  " + p;
  throw IoError(msg + "\nmove the files away (or set run.dir to a new directory) to start over");
}

// Restores everything resume needs from one checkpoint. IoError when the
// file is unusable (the caller falls back); UsageError when the config does
// not fit it (the user must fix the config).
void Trainer::restore_from(const std::string& path) {
  CheckpointMeta meta = read_checkpoint_meta(path);
  ModelConfig saved;
  try {
    saved = parse_model_config(meta.config_yaml, path + ":config");
  } catch (const UsageError& e) {
    throw IoError("checkpoint " + path + ": its config attribute does not parse: " + e.what());
  }
  std::string shape_diffs;
  for (const ModelKeyDifference& d : model_config_differences(saved, cfg_.model)) {
    if (in(kShapeKeys, d.key))
      shape_diffs += (shape_diffs.empty() ? "" : "; ") + ("model." + d.key + " is " + d.a +
                                                          " in the checkpoint but " + d.b +
                                                          " in the config");
    else
      log_warn("resuming with model.%s changed from %s (checkpoint) to %s (config)",
               d.key.c_str(), d.a.c_str(), d.b.c_str());
  }
  if (!shape_diffs.empty())
    throw UsageError("cannot resume from " + path + ": " + shape_diffs +
                     ". A run resumes only with the model shape it was trained with: restore "
                     "those keys, or train in a new run.dir (checkpoint.init_from starts a new "
                     "run from a checkpoint's weights)");
  if (const std::string saved_tok = meta.tokenizer.empty() ? "bytes" : meta.tokenizer;
      saved_tok != tokenizer_->id())
    throw UsageError("cannot resume from " + path + ": it was trained with tokenizer " +
                     describe_tokenizer_id(saved_tok) + " but the config's is " +
                     tokenizer_->describe() + "; restore data.tokenizer, or train in a new "
                     "run.dir");
  if (!meta.has_optimizer)
    throw IoError("checkpoint " + path +
                  ": no /optimizer group, so it cannot resume training (a weights-only file "
                  "belongs in checkpoint.init_from, not in the run's checkpoints directory)");
  if (!meta.optimizer_type.empty() && meta.optimizer_type != cfg_.train.optimizer.type)
    throw UsageError("cannot resume from " + path + ": it was trained with train.optimizer.type " +
                     meta.optimizer_type + " but the config says " +
                     cfg_.train.optimizer.type + "; restore the optimizer type, or train in a "
                     "new run.dir with checkpoint.init_from: " + path);

  // Verifies every checksum while reading: corruption is an IoError here.
  load_model_weights(path, *model_);
  if (optimizer_->sharded()) {
    // every rank reads the whole moments and keeps its shard
    optimizer_->allocate_full_state();
    try {
      load_optimizer_state(path, *model_, *optimizer_);
    } catch (...) {
      optimizer_->release_full_state();
      throw;
    }
    optimizer_->copy_full_state_to_shard();
    optimizer_->release_full_state();
  } else {
    load_optimizer_state(path, *model_, *optimizer_);
  }

  // The data order is stateless (a function of seed, step and the data's
  // sequence count): warn when what it depends on changed.
  if (!meta.trainer_state_json.empty()) {
    nlohmann::json st = nlohmann::json::parse(meta.trainer_state_json, nullptr, false);
    if (st.is_discarded() || !st.is_object())
      throw IoError("checkpoint " + path + ": /trainer attribute 'state' is not valid JSON");
    const nlohmann::json d = st.value("data_order", nlohmann::json::object());
    const nlohmann::json now = {{"num_sequences", order_->num_sequences()},
                                {"global_batch_size", cfg_.train.global_batch_size},
                                {"shuffle", cfg_.data.shuffle},
                                {"seed", cfg_.run.seed}};
    for (const auto& [k, v] : now.items())
      if (d.contains(k) && d[k] != v)
        log_warn("resuming with data order key %s changed from %s to %s: the run will not see "
                 "the sequences an uninterrupted run would",
                 k.c_str(), d[k].dump().c_str(), v.dump().c_str());
  }
  step_ = meta.step;
  tokens_seen_ = meta.tokens_seen;
  last_saved_step_ = step_;
  // The non-finite streak continues across a resume: a run that diverged
  // must not get a fresh tolerance from every restart.
  nonfinite_streak_ = 0;
  if (!meta.trainer_state_json.empty()) {
    const nlohmann::json st = nlohmann::json::parse(meta.trainer_state_json, nullptr, false);
    if (st.is_object() && st.contains("nonfinite_streak")) {
      if (!st["nonfinite_streak"].is_number_integer() || st["nonfinite_streak"].get<int64_t>() < 0)
        throw IoError("checkpoint " + path + ": /trainer state 'nonfinite_streak' is " +
                      st["nonfinite_streak"].dump() + ", expected a count >= 0");
      nonfinite_streak_ = int(std::min<int64_t>(st["nonfinite_streak"].get<int64_t>(), 1 << 30));
    }
  }
}

// Weights only: optimizer, step and data position start fresh (SPEC §4.4).
void Trainer::init_from(const std::string& path) {
  const std::string what = "checkpoint.init_from " + path;
  CheckpointMeta meta = read_checkpoint_meta(path);
  ModelConfig saved;
  try {
    saved = parse_model_config(meta.config_yaml, path + ":config");
  } catch (const UsageError& e) {
    throw UsageError(what + ": the checkpoint's config attribute is not a valid model "
                            "section: " + e.what());
  }
  std::string diffs;
  for (const ModelKeyDifference& d : model_config_differences(saved, cfg_.model))
    if (!in(kInitFromMayChange, d.key))
      diffs += (diffs.empty() ? "" : "; ") +
               ("model." + d.key + " is " + d.a + " in the checkpoint but " + d.b +
                " in the config");
  if (!diffs.empty())
    throw UsageError(what + ": " + diffs + "; the config may change only " +
                     kInitFromMayChangeText);
  // memory parameters (RMT embeddings, knn gates, compression weights) may be
  // added or dropped: new ones keep their initialisation
  std::vector<std::string> optional;
  for (const ModelConfig* m : {&saved, &cfg_.model})
    for (const TensorSpec& t : llama_param_specs(*m))
      if (param_kind(t.name) == ParamKind::kMemory ||
          param_kind(t.name) == ParamKind::kMemoryLayer)
        optional.push_back(t.name);
  load_model_weights(path, *model_, optional);
  log_info("init_from %s: loaded weights (step %lld of that run); optimizer, step and data "
           "position start fresh",
           path.c_str(), (long long)meta.step);
}

std::string Trainer::trainer_state_json() const {
  // Everything resume needs beyond the weights and moments. No RNG stream is
  // consumed while training (weights come from run.seed at start, the data
  // order and synthetic data are functions of (seed, step)), so the RNG state
  // is the seed.
  nlohmann::json st = {
      {"step", step_},
      {"tokens_seen", tokens_seen_},
      {"data_order",
       {{"kind", "stateless"},
        {"next_step", step_},
        {"num_sequences", order_->num_sequences()},
        {"global_batch_size", cfg_.train.global_batch_size},
        {"shuffle", cfg_.data.shuffle},
        {"seed", cfg_.run.seed}}},
      {"rng", {{"kind", "stateless"}, {"seed", cfg_.run.seed}}},
      {"nonfinite_streak", nonfinite_streak_}};
  return st.dump();
}

Trainer::~Trainer() = default;

// Test-only fault injection for the launch tests: RINGTRAIN_TEST_THROW_RANK=r
// and RINGTRAIN_TEST_THROW_STEP=s make rank r throw at the start of step s.
static void maybe_inject_test_failure(int rank, int64_t step) {
  static const char* r = std::getenv("RINGTRAIN_TEST_THROW_RANK");
  static const char* s = std::getenv("RINGTRAIN_TEST_THROW_STEP");
  if (r && s && std::atoi(r) == rank && std::atoll(s) == step)
    throw std::runtime_error("injected failure (RINGTRAIN_TEST_THROW_RANK/STEP) on rank " +
                             std::to_string(rank) + " at step " + std::to_string(step));
}

// Test hook for the stop tests: RINGTRAIN_TEST_STEP_SLEEP_MS=N spends N ms
// (not interruptible by signals, like a long computation) in every
// micro-batch of a step.
static void sleep_in_step_if_testing() {
  static const char* v = std::getenv("RINGTRAIN_TEST_STEP_SLEEP_MS");
  if (!v) return;
  const auto until = Clock::now() + std::chrono::milliseconds(std::atoll(v));
  while (Clock::now() < until) std::this_thread::sleep_until(until);  // resumes after EINTR
}

bool Trainer::stop_requested_everywhere() {
  int64_t any = stop_signal_received() != 0;
  if (dims_.world > 1) world_->allreduce_sum(&any, 1);
  return any != 0;
}

StepStats Trainer::train_step() {
  maybe_inject_test_failure(rank_, step_ + 1);
  const auto t0 = Clock::now();
  const TrainConfig& tc = cfg_.train;
  const int64_t T = tc.seq_len;
  const int G = tc.global_batch_size, mb = tc.micro_batch_size;

  // This rank's share: dp rank d takes sequences [d*G/dp, (d+1)*G/dp) of the
  // step's global batch, and of each sequence only its ring rows. The whole
  // share is read first: the loss is normalised by the step's global count
  // of valid targets, known only once every rank has read its rows.
  const int64_t Tl = T / dims_.cp;
  const int per_dp = G / dims_.dp;
  const int first = dims_.dp_index(rank_) * per_dp;
  inputs_.resize(size_t(per_dp) * Tl);
  targets_.resize(size_t(per_dp) * Tl);
  doc_starts_.assign(size_t(per_dp), {});
  int64_t n_valid = 0;
  for (int j = 0; j < per_dp; ++j) {
    int32_t* in = inputs_.data() + size_t(j) * Tl;
    int32_t* tg = targets_.data() + size_t(j) * Tl;
    const int64_t index = order_->index(step_, first + j);
    if (cfg_.model.memory) doc_starts_[size_t(j)] = train_data_->doc_starts(index, T);
    int64_t row = 0;
    for (auto [begin, len] : rows_.chunks) {
      train_data_->read(index, T, begin, begin + len, in + row, tg + row);
      row += len;
    }
    for (int64_t t = 0; t < Tl; ++t) n_valid += tg[t] >= 0;
  }
  world_->allreduce_sum(&n_valid, 1);
  const float scale = n_valid ? 1.f / float(n_valid) : 0.f;

  // Gradient buckets start their reduction during the last micro-batch's
  // backward, as soon as the backward completes them (earlier micro-batches
  // only accumulate).
  const bool overlap =
      cfg_.parallel.overlap_grad_reduce && runner_->single_backward() && dims_.world > 1;
  reducer_->begin();
  // the step's loss is summed on the device and read once, after its
  // micro-batches (evaluation reads each forward's)
  model_->set_defer_loss(true);
  for (int j = 0; j < per_dp; j += mb) {
    // A stop (SIGTERM/SIGINT) abandons the step between micro-batches, so that
    // a preempted job saves within one micro-batch rather than one step; all
    // ranks agree (one small allreduce per micro-batch) and leave together.
    if (j > 0 && stop_requested_everywhere()) {
      model_->grads().zero();
      model_->take_loss_sum();
      model_->set_defer_loss(false);
      StepStats s;
      s.step = step_;
      s.abandoned = true;
      return s;
    }
    sleep_in_step_if_testing();
    if (overlap && j + mb >= per_dp)
      model_->set_grad_ready_hook([this](size_t from) { reducer_->ready_from(from); });
    SequenceBatch batch;
    batch.inputs = inputs_.data() + size_t(j) * Tl;
    batch.targets = targets_.data() + size_t(j) * Tl;
    batch.B = mb;
    batch.T = Tl;
    batch.rows = &rows_;
    batch.doc_starts = doc_starts_.data() + j;
    runner_->forward_backward(batch, scale, nullptr);
  }
  // Global loss and gradients: each rank's gradient is already scaled by
  // 1/(global target count), so the sum over all ranks is the gradient of
  // the global mean loss.
  model_->set_grad_ready_hook({});
  double loss_sum = model_->take_loss_sum();
  model_->set_defer_loss(false);
  world_->allreduce_sum(&loss_sum, 1);
  reducer_->finish();
  const bool sharded = optimizer_->sharded();
  const size_t lo = reducer_->shard_lo(), hi = reducer_->shard_hi();

  StepStats s;
  s.loss = n_valid ? loss_sum / double(n_valid) : 0.0;
  if (sharded) {  // the global norm: sums of squares over the shards
    double ss = grad_sum_squares(*model_, lo, hi);
    world_->allreduce_sum(&ss, 1);
    s.grad_norm = std::sqrt(ss);
  } else {
    s.grad_norm = grad_global_norm(*model_);
  }
  s.lr = learning_rate_at(tc, step_);
  s.tokens = int64_t(G) * T;
  if (!std::isfinite(s.loss) || !std::isfinite(s.grad_norm)) {
    s.skipped = true;
    ++nonfinite_streak_;
    log_warn("step %lld: non-finite %s (loss %g, grad norm %g); update skipped (%d in a row, "
             "tolerance %d)",
             (long long)step_ + 1, std::isfinite(s.loss) ? "gradient" : "loss", s.loss,
             s.grad_norm, nonfinite_streak_, tc.nonfinite_tolerance);
    if (nonfinite_streak_ > tc.nonfinite_tolerance)
      throw NumericalError(
          "training diverged: " + std::to_string(nonfinite_streak_) +
          " consecutive non-finite steps at step " + std::to_string(step_ + 1) +
          " (train.nonfinite_tolerance is " + std::to_string(tc.nonfinite_tolerance) +
          "); lower train.optimizer.lr, enable train.grad_clip, or raise the tolerance");
  } else {
    nonfinite_streak_ = 0;
    // Clipping rides on the update (Optimizer::step's grad_scale): AdamW reads
    // each gradient times the coefficient instead of a pass rescaling them.
    const float clip = clip_coefficient(s.grad_norm, tc.grad_clip);
    if (sharded) {
      optimizer_->step(float(s.lr), clip);
      // every rank's updated shard into every rank's weights: the compute
      // copy (written, rounded, by the update) when the optimizer holds the
      // master shard, else the fp32 weights themselves
      if (optimizer_->owns_master())
        reducer_->allgather_shards(model_->params());
      else
        reducer_->allgather_shards(model_->master().f32_base());
    } else {
      optimizer_->step(float(s.lr), clip);
    }
  }
  model_->grads().zero();
  ++step_;
  tokens_seen_ += s.tokens;
  s.step = step_;
  s.step_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return s;
}

std::vector<PerplexityResult> Trainer::evaluate(const std::vector<int64_t>& seq_lens,
                                                int64_t max_sequences) {
  const SequenceSource& data = val_data_ ? *val_data_ : *train_data_;
  std::vector<PerplexityResult> out;
  for (int64_t T : seq_lens)
    out.push_back(evaluate_perplexity(*model_, data, T, max_sequences, &groups_));
  return out;
}

PasskeyResult Trainer::evaluate_passkey(const PasskeyEvalConfig& pk) {
  return rt::evaluate_passkey(*model_, pk.seq_lens, pk.depths, pk.trials,
                              passkey_eval_seed(cfg_.run.seed), &groups_, false,
                              tokenizer_.get());
}

RankMemory Trainer::rank_memory() const {
  RankMemory m;
  m.rank = rank_;
  m.params = int64_t(model_->params().bytes());
  m.master = optimizer_->owns_master()            ? int64_t(optimizer_->master_bytes())
             : model_->precision().master_weights ? int64_t(model_->master().bytes())
                                                  : 0;
  m.grads = int64_t(model_->grads().bytes());
  m.optimizer = int64_t(optimizer_->state_bytes());
  m.activations = int64_t(model_->activations().bytes());
  m.workspace = int64_t(model_->backward_scratch().bytes());
  return m;
}

void Trainer::save_checkpoint_now() {
  // Sharded moments reach the file through rank 0: each is gathered whole
  // (MPI_Gatherv of the shards) into a temporary arena there, written by
  // the one checkpoint writer, and freed.
  const bool gather = opt_.write_outputs && optimizer_->sharded() &&
                      cfg_.train.optimizer.type == "adamw";
  struct Release {
    Trainer* t;
    ~Release() {
      t->optimizer_->release_full_state();
      if (t->optimizer_->owns_master()) t->model_->release_master();
    }
  } release{this};
  if (opt_.write_outputs && optimizer_->owns_master()) {  // master weights the same way
    if (writer_) model_->restore_master();
    reducer_->gather_to_root(optimizer_->master_shard(),
                             writer_ ? model_->master().f32_base() : nullptr, 0);
  }
  if (gather) {
    if (writer_) optimizer_->allocate_full_state();
    reducer_->gather_to_root(optimizer_->shard_state(0),
                             writer_ ? optimizer_->exp_avg().f32_base() : nullptr, 0);
    reducer_->gather_to_root(optimizer_->shard_state(1),
                             writer_ ? optimizer_->exp_avg_sq().f32_base() : nullptr, 0);
  }
  if (!writer_) {  // rank 0 writes; checkpoints hold the full, unsharded state
    // Every rank records the save: with a sharded optimizer a save is a
    // collective (the gathers above), so all ranks must agree on whether the
    // current step still needs one (a stop right after a periodic save).
    last_saved_step_ = step_;
    return;
  }
  make_dirs(cfg_.run.dir + "/checkpoints");
  CheckpointMeta meta;
  meta.step = step_;
  meta.tokens_seen = tokens_seen_;
  meta.config_yaml = config_to_yaml(cfg_);
  meta.trainer_state_json = trainer_state_json();
  meta.tokenizer = tokenizer_->id();
  meta.tokenizer_files = tokenizer_files_;
  const std::string path = checkpoint_path(cfg_.run.dir, step_);
  const auto t0 = Clock::now();
  save_checkpoint(path, *model_, optimizer_.get(), meta);
  last_saved_step_ = step_;
  // Only after the save succeeded; the newest (this one) is always kept.
  prune_checkpoints(cfg_.run.dir, cfg_.checkpoint.keep_last);
  log_info("checkpoint: %s (%.2f s)", path.c_str(),
           std::chrono::duration<double>(Clock::now() - t0).count());
}

void Trainer::print_layout_table() {
  // rank -> dp, cp, host, device; gathered so that rank 0 prints them all
  char host[64] = {};
  std::snprintf(host, sizeof host, "%s", parallel_runtime().host.c_str());
  std::vector<char> hosts(size_t(dims_.world) * sizeof host);
  world_->allgather(host, sizeof host, hosts.data());
  char dev[32] = {};
  if (device_.device == Device::kCuda)
    std::snprintf(dev, sizeof dev, "cuda:%d", device_.index);
  else
    std::snprintf(dev, sizeof dev, "cpu");
  std::vector<char> devs(size_t(dims_.world) * sizeof dev);
  world_->allgather(dev, sizeof dev, devs.data());
  log_info("layout: %s, ring layout %s, %lld tokens per rank per sequence",
           dims_.describe().c_str(), cfg_.parallel.ring_layout.c_str(),
           (long long)(cfg_.train.seq_len / dims_.cp));
  if (dims_.world == 1) return;
  log_info("  rank   dp   cp  host                 device");
  for (int r = 0; r < dims_.world; ++r)
    log_info("  %4d %4d %4d  %-20s %s", r, dims_.dp_index(r), dims_.cp_index(r),
             hosts.data() + size_t(r) * sizeof host, devs.data() + size_t(r) * sizeof dev);
}

void Trainer::fit() {
  const TrainConfig& tc = cfg_.train;
  const double flops_per_token = train_flops_per_token(cfg_.model, tc.seq_len);
  const auto start = Clock::now();
  double window_ms = 0, window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0;
  const int64_t eval_lens_max = cfg_.eval.max_sequences;

  // Problems with the eval lengths show now, not after hours of training.
  if (const auto& pk = cfg_.eval.passkey) {
    try {
      check_passkey_grid(pk->seq_lens, pk->depths, pk->trials, cfg_.model.vocab_size,
                         &groups_, tokenizer_.get());
    } catch (const UsageError& e) {
      throw UsageError("eval.passkey: " + std::string(e.what()));
    }
  }

  // Periodic evaluations are progress (stderr); the final one is the run's
  // result (stdout).
  auto run_eval = [&](bool final_eval) {
    const auto& pk = cfg_.eval.passkey;
    if (cfg_.eval.seq_lens.empty() && !pk) return;
    std::vector<PerplexityResult> r = evaluate(cfg_.eval.seq_lens, eval_lens_max);
    nlohmann::json rec = {{"type", "eval"}, {"step", step_}, {"perplexity", perplexity_to_json(r)}};
    PasskeyResult p;
    if (pk) {
      p = evaluate_passkey(*pk);
      rec["passkey"] = passkey_to_json(p);
    }
    if (!opt_.quiet && rank_ == 0) {
      std::FILE* out = final_eval ? stdout : stderr;
      std::fflush(stderr);
      std::fprintf(out, "%s at step %lld (%s):\n", final_eval ? "final evaluation" : "eval",
                   (long long)step_, val_data_ ? "validation data" : "training data");
      if (!r.empty()) std::fprintf(out, "%s", perplexity_table(r).c_str());
      if (pk)
        std::fprintf(out, "passkey accuracy (%d trials per cell):\n%s", pk->trials,
                     passkey_table(p).c_str());
      std::fflush(out);
    }
    if (metrics_) metrics_->write(rec);
  };

  while (step_ < tc.max_steps) {
    StepStats s = train_step();
    if (s.abandoned) {
      const int sig = stop_signal_received() ? stop_signal_received() : SIGTERM;
      log_info("received %s during step %lld: abandoned it; saving step %lld, the last "
               "completed one",
               sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)step_ + 1, (long long)step_);
      if (last_saved_step_ != step_) save_checkpoint_now();
      stopped_by_signal_ = sig;
      return;
    }
    window_ms += s.step_ms;
    window_loss += s.loss;
    window_tokens += s.tokens;
    ++window_steps;
    const bool last = step_ == tc.max_steps;
    if (step_ % cfg_.log.every_steps == 0 || last || step_ == 1) {
      const double tps = window_tokens / (window_ms / 1000.0);
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const double eta = elapsed / double(step_) * double(tc.max_steps - step_);
      const double loss = window_loss / double(window_steps);
      if (!opt_.quiet)
        log_info("%s", progress_line(step_, tc.max_steps, loss, s.lr, s.grad_norm, tps,
                                     window_ms / window_steps, eta)
                           .c_str());
      if (metrics_) {
        // On the GPU: peak device memory (the backend allocator's high-water
        // mark) and MFU against the device's dense bf16 peak (SPEC §11).
        const bool gpu = device_.device == Device::kCuda;
        nlohmann::json rec = {{"step", step_},
                              {"loss", loss},
                              {"grad_norm", s.grad_norm},
                              {"lr", s.lr},
                              {"tokens_seen", tokens_seen_},
                              {"tokens_per_s", tps},
                              {"flops_per_s", tps * flops_per_token},
                              {"step_ms", window_ms / window_steps},
                              {"peak_mem_bytes", gpu ? int64_t(backend_->peak_bytes())
                                                     : peak_rss_bytes()}};
        if (gpu)
          rec["mfu"] = device_.peak_bf16_flops > 0
                           ? nlohmann::json(tps * flops_per_token /
                                            (device_.peak_bf16_flops * dims_.world))
                           : nlohmann::json(nullptr);
        metrics_->write(rec);
      }
      window_ms = window_loss = 0;
      window_steps = window_tokens = 0;
    }
    if (cfg_.eval.every_steps > 0 && step_ % cfg_.eval.every_steps == 0 && !last) run_eval(false);
    if ((cfg_.checkpoint.every_steps > 0 && step_ % cfg_.checkpoint.every_steps == 0) || last)
      save_checkpoint_now();
    // every rank stops at the same step when any one of them got the signal
    int sig = stop_signal_received();
    if (dims_.world > 1) {
      int64_t any = sig;
      world_->allreduce_sum(&any, 1);
      if (any != 0 && sig == 0) sig = SIGTERM;  // another rank was signalled
    }
    if (sig != 0 && !last) {
      log_info("received %s: stopping after step %lld", sig == SIGINT ? "SIGINT" : "SIGTERM",
               (long long)step_);
      if (last_saved_step_ != step_) save_checkpoint_now();
      stopped_by_signal_ = sig;
      return;
    }
  }
  run_eval(true);
}

}  // namespace rt
