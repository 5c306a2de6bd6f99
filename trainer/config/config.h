// The typed configuration (SPEC §2). Every field is documented here, in one
// place; config.cpp parses YAML into it strictly (unknown keys, wrong types
// and out-of-range values are errors with file:line), fills defaults and runs
// the cross-field checks. Names follow HF LlamaConfig where one exists.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "model/model_config.h"

namespace rt {

struct DataConfig {
  DataSourceConfig train;
  std::optional<DataSourceConfig> val;
  bool shuffle = true;
  // "bytes" | path of a SentencePiece tokenizer.model (or a directory holding
  // one). Empty (YAML null, the default) = checkpoint.init_from's tokenizer
  // when it records one, else bytes. Loaded and checked by the trainer.
  std::string tokenizer;
};

struct OptimizerConfig {
  std::string type = "adamw";  // adamw | sgd
  double lr = 3e-4;
  double beta1 = 0.9;   // adamw; YAML: betas: [beta1, beta2]
  double beta2 = 0.95;  // adamw
  double eps = 1e-8;    // adamw
  double momentum = 0;  // sgd (torch semantics: buf = momentum * buf + g; p -= lr * buf)
  // adamw: decoupled, default 0.1; sgd: added to the gradient (torch's L2),
  // default 0 (torch's). The reader resolves the default by type.
  double weight_decay = 0.1;
  // Parameter groups excluded from weight decay: subset of {norms, embeddings}.
  std::vector<std::string> no_decay = {"norms"};
};

struct ScheduleConfig {
  std::string type = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 100;
  double min_lr = 3e-5;  // linear and cosine decay to this
};

struct TrainConfig {
  int64_t seq_len = 1024;
  int micro_batch_size = 1;
  int global_batch_size = 8;
  int64_t max_steps = 1000;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double grad_clip = 1.0;         // 0 disables
  // auto | fp32 | bf16 (SPEC §12), resolved by model/precision.h: bf16 =
  // bf16 compute weights and activations, fp32 master weights, gradients,
  // optimizer state, statistics and reductions (CPU: storage emulation);
  // auto = fp32 on the CPU, bf16 on CUDA.
  std::string precision = "auto";
  // false (kOff) | true, full (kFull: the backward recomputes each layer from
  // its input) | selective (kSelective: every layer's attention output and
  // LSE kept, so the recompute skips the attention)
  Checkpointing activation_checkpointing = Checkpointing::kOff;
  int nonfinite_tolerance = 0;
};

struct ParallelConfig {
  int context_parallel = 1;
  int data_parallel = 0;  // 0 = auto (world / context_parallel); resolved by validate_layout
  std::string ring_layout = "zigzag";  // zigzag | contiguous
  std::string device = "auto";         // auto | cpu | cuda
  // Sharded optimizer (ZeRO-1): auto | true | false; auto = on when world > 1.
  std::string shard_optimizer = "auto";
  // Gradient-reduction bucket size in MiB (DDP's 25 MB default).
  double bucket_mb = 25.0;
  // Start each bucket's reduction during the backward (false: after it).
  bool overlap_grad_reduce = true;
  // shard_optimizer resolved for a world size.
  bool shards_optimizer(int world_size) const {
    return shard_optimizer == "true" || (shard_optimizer == "auto" && world_size > 1);
  }
};

struct CheckpointConfig {
  int64_t every_steps = 500;
  int keep_last = 3;
  std::string init_from;  // empty = none
};

struct PasskeyEvalConfig {
  std::vector<int64_t> seq_lens;
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  int trials = 10;
};

struct EvalConfig {
  int64_t every_steps = 0;
  std::vector<int64_t> seq_lens;
  std::optional<PasskeyEvalConfig> passkey;
  int64_t max_sequences = 16;  // per perplexity length during training-time eval
};

struct LogConfig {
  int64_t every_steps = 10;
};

struct RunConfig {
  std::string name = "run";
  std::string dir;  // resolved: runs/<name> when null
  uint64_t seed = 1234;
};

struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  EvalConfig eval;
  LogConfig log;
  std::string source_path;  // the YAML file this came from (for messages)
  // parallel.shard_optimizer resolved for a world size: `auto` is on when
  // world > 1, except for SGD with momentum (its buffer is not sharded yet).
  bool shards_optimizer(int world_size) const {
    if (parallel.shard_optimizer == "auto" && train.optimizer.type == "sgd" &&
        train.optimizer.momentum > 0)
      return false;
    return parallel.shards_optimizer(world_size);
  }
};

// What a config is read for. kTrain requires data.train; kNoTraining (eval,
// generate, extend: commands that only run a model) accepts a config without
// training data, such as a weights-only checkpoint's `model:`-only config.
enum class ConfigUse { kTrain, kNoTraining };

// The candidate nearest to `word` by edit distance (first of equals): the
// "did you mean" of config keys, sweep keys and command names.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// Parse a YAML file strictly, apply `--set a.b=c` overrides (each validated as
// if it were in the file), fill defaults, run the single-process cross-field
// checks. Throws UsageError (exit 2) with file:line, the key and what is valid.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {},
                   ConfigUse use = ConfigUse::kTrain);

// Same, from YAML text (path used only in messages). For tests.
Config parse_config(const std::string& yaml_text, const std::string& path,
                    const std::vector<std::string>& overrides = {},
                    ConfigUse use = ConfigUse::kTrain);

// Whether a data source is set (a kNoTraining config may have no data.train).
inline bool has_data(const DataSourceConfig& s) { return s.is_synthetic() || !s.path.empty(); }

// Checks that need the world size: data_parallel * context_parallel == world,
// global batch divisible by dp * micro batch, seq_len divisible for the ring
// layout. Resolves data_parallel = auto. Throws UsageError naming every factor.
void validate_layout(Config& cfg, int world_size);

// The fully resolved config as YAML (every key, defaults filled), in the same
// schema the parser accepts: parse_config(to_yaml(c)) == c.
std::string config_to_yaml(const Config& cfg);

// Every key the parser accepts, dotted, from the schema tables of config.cpp:
// the keys of every section (those of every optimizer and memory type, of a
// synthetic data source under data.train and data.val) and the optional
// mappings (model.rope_scaling, eval.passkey, ...); the sections themselves
// (run, train.optimizer, ...) are headings, not keys. tests/trainer/config/test_config_docs.cpp
// checks docs/config.md against it.
std::vector<std::string> config_keys();

// Model section only, resolved (stored in checkpoints, used by init_from).
std::string model_config_to_yaml(const ModelConfig& m);

// The `model:` section of a config text (a checkpoint's `config` attribute),
// validated like a file's; other sections are ignored, a missing one means
// all defaults. UsageError names `path` and the key.
ModelConfig parse_model_config(const std::string& yaml_text, const std::string& path);

// One model key whose resolved values differ ("hidden_size", "256", "128");
// nested sections (rope_scaling, memory) compare as a whole, in flow YAML.
struct ModelKeyDifference {
  std::string key;
  std::string a, b;
};
std::vector<ModelKeyDifference> model_config_differences(const ModelConfig& a,
                                                         const ModelConfig& b);

}  // namespace rt
