// ringtrain: the command-line entry point (SPEC §1). Subcommands parse their
// options here and call into the trainer; every user error becomes a message
// and an exit code from common/errors.h.
#include <cblas.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <thread>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <new>
#include <sstream>

#include "common/errors.h"
#include "common/log.h"
#include "data/dataset.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "trainer/eval/ablate.h"
#include "trainer/checkpoint/checkpoint.h"
#include "common/command_name.h"
#include "trainer/config/config.h"
#include "trainer/eval/eval_command.h"
#include "trainer/eval/generate.h"
#include "trainer/train/memory_plan.h"
#include "trainer/eval/evaluate.h"
#include "trainer/config/extend.h"
#include "trainer/hf/hf_io.h"
#include "trainer/train/memory_check.h"
#include "parallel/comm.h"
#include "trainer/train/trainer.h"

namespace rt {
namespace {

using Clock = std::chrono::steady_clock;

Config load_validated(const std::string& path, const std::vector<std::string>& overrides) {
  Config cfg = load_config(path, overrides);
  validate_layout(cfg, parallel_runtime().world->size());
  check_model_state_fits(cfg, parallel_runtime().local_size);
  return cfg;
}

int cmd_train(const std::string& config, const std::vector<std::string>& overrides) {
  Config cfg = load_validated(config, overrides);
  Trainer trainer(cfg, {});
  install_stop_signal_handlers();
  trainer.fit();
  if (int sig = trainer.stopped_by_signal()) {
    // Like torchtitan: a requested stop that saved cleanly is a success.
    log_info("stopped by %s at step %lld; checkpoint saved in %s/checkpoints; run the same "
             "command again to resume",
             sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)trainer.step(),
             trainer.run_dir().c_str());
    return kExitOk;
  }
  log_info("done: %lld steps, %lld tokens; run dir %s", (long long)trainer.step(),
           (long long)trainer.tokens_seen(), trainer.run_dir().c_str());
  return kExitOk;
}

// Measured sgemm rate of this process (FLOP/s), for the bench's utilisation.
double measure_sgemm_flops() {
  const int n = 1024;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n,
              0.f, c.data(), n);  // warm-up
  const int reps = 5;
  auto t0 = Clock::now();
  for (int r = 0; r < reps; ++r)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, a.data(), n, b.data(),
                n, 0.f, c.data(), n);
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return 2.0 * n * n * double(n) * reps / s;
}

int cmd_bench(const std::string& config, const std::vector<std::string>& overrides, int steps,
              int warmup) {
  if (steps < 1) throw UsageError("--steps must be >= 1, got " + std::to_string(steps));
  Config cfg = load_validated(config, overrides);
  Trainer trainer(cfg, {.write_outputs = false, .quiet = true});
  for (int i = 0; i < warmup; ++i) trainer.train_step();
  const int64_t ring_bytes0 = trainer.ring_bytes_sent();
  const int64_t reduce_bytes0 = trainer.reduce_bytes_sent();
  const double ring_wait0 = trainer.ring_wait_seconds();
  const double reduce_wait0 = trainer.reduce_wait_seconds();
  double ms = 0;
  int64_t tokens = 0;
  double last_loss = 0;
  for (int i = 0; i < steps; ++i) {
    StepStats s = trainer.train_step();
    ms += s.step_ms;
    tokens += s.tokens;
    last_loss = s.loss;
  }
  const double tps = double(tokens) / (ms / 1000.0);
  // Per-rank figures, gathered so that rank 0 reports the largest.
  Comm& world = trainer.world();
  // exposed (waited-for) communication in microseconds per step
  const RankMemory mem = trainer.rank_memory();
  constexpr int kF = 10;
  const int64_t mine[kF] = {
      peak_rss_bytes(),
      (trainer.ring_bytes_sent() - ring_bytes0) / steps,
      (trainer.reduce_bytes_sent() - reduce_bytes0) / steps,
      int64_t((trainer.ring_wait_seconds() - ring_wait0) * 1e6 / steps),
      int64_t((trainer.reduce_wait_seconds() - reduce_wait0) * 1e6 / steps),
      mem.params,
      mem.master,
      mem.grads,
      mem.optimizer,
      mem.activations};
  std::vector<int64_t> all(size_t(kF * world.size()));
  world.allgather(mine, sizeof mine, all.data());
  int64_t most[kF] = {};
  for (int r = 0; r < world.size(); ++r)
    for (int k = 0; k < kF; ++k) most[k] = std::max(most[k], all[size_t(kF * r + k)]);
  const int64_t max_rss = most[0], max_ring = most[1];
  // Theoretical ring volume per rank and step: K,V (activation dtype, kv heads
  // only) go cp-1 hops forward and cp-1 backward, dK,dV (fp32) make a full
  // turn of cp hops.
  const int64_t cp = cfg.parallel.context_parallel;
  const size_t kv_elems = size_t(cfg.train.micro_batch_size) * size_t(cfg.train.seq_len / cp) *
                          size_t(cfg.model.num_key_value_heads) * size_t(cfg.model.head_dim);
  const int64_t micro_steps = cfg.train.global_batch_size / (cfg.train.micro_batch_size *
                                                             (world.size() / cp));
  const int64_t ring_theory = ring_bytes_per_layer(int(cp), kv_elems, trainer.ring_kv_dtype()) *
                              cfg.model.num_hidden_layers * micro_steps;
  const double fpt = train_flops_per_token(cfg.model, cfg.train.seq_len);
  const double sgemm = measure_sgemm_flops();
  nlohmann::json j = {{"tokens_per_s", tps},
                      {"step_ms", ms / steps},
                      {"flops_per_s", tps * fpt},
                      {"peak_mem_bytes", max_rss},
                      {"ring_bytes_sent_per_step", max_ring},
                      {"ring_bytes_theoretical_per_step", ring_theory},
                      {"reduce_bytes_sent_per_step", most[2]},
                      {"ring_exposed_ms_per_step", double(most[3]) / 1e3},
                      {"reduce_exposed_ms_per_step", double(most[4]) / 1e3},
                      {"param_bytes_per_rank", most[5]},
                      {"master_bytes_per_rank", most[6]},
                      {"grad_bytes_per_rank", most[7]},
                      {"optimizer_bytes_per_rank", most[8]},
                      {"activation_bytes_per_rank", most[9]},
                      {"shard_optimizer", cfg.shards_optimizer(world.size())},
                      {"overlap_grad_reduce", cfg.parallel.overlap_grad_reduce},
                      {"seq_len", cfg.train.seq_len},
                      {"world_size", parallel_runtime().world->size()},
                      {"context_parallel", cfg.parallel.context_parallel},
                      {"global_batch_size", cfg.train.global_batch_size},
                      {"micro_batch_size", cfg.train.micro_batch_size},
                      {"threads", omp_get_max_threads()},
                      {"params", trainer.model().num_params()},
                      {"flops_per_token", fpt},
                      {"sgemm_flops_per_s", sgemm},
                      {"fraction_of_sgemm", tps * fpt / (sgemm * world.size())},
                      {"steps", steps},
                      {"warmup", warmup},
                      {"final_loss", last_loss}};
  if (parallel_runtime().world->rank() == 0) std::cout << j.dump() << std::endl;
  return kExitOk;
}

// Validates the config and layout for a world size and prints every rank's
// memory without training: the figures come from the functions that size a
// real run's arenas (trainer/train/memory_plan.h), so they equal its start-up log.
int cmd_plan(const std::string& config, const std::vector<std::string>& overrides, int world,
             const std::string& device_opt, const std::string& gpu_memory) {
  if (world < 1) throw UsageError("--world must be >= 1, got " + std::to_string(world));
  Config cfg = load_config(config, overrides);
  validate_layout(cfg, world);
  std::string device = device_opt;
  if (device.empty()) device = cfg.parallel.device == "cuda" ? "cuda" : "cpu";
  if (device != "cpu" && device != "cuda")
    throw UsageError("--device must be cpu or cuda, got '" + device + "'");
  const Device dev = device == "cuda" ? Device::kCuda : Device::kCpu;
  if (!gpu_memory.empty() && dev != Device::kCuda)
    throw UsageError("--gpu-memory applies to --device cuda only");
  const int64_t gpu_bytes =
      dev == Device::kCuda ? parse_bytes(gpu_memory.empty() ? "80GiB" : gpu_memory,
                                         "--gpu-memory")
                           : 0;
  const MemoryPlan p = plan_memory(cfg, world, dev);
  const bool ckpt = cfg.train.activation_checkpointing;
  std::printf("config: %s (valid)\n", config.c_str());
  std::printf("layout: %s, ring layout %s, %lld tokens per rank per sequence\n",
              p.dims.describe().c_str(), cfg.parallel.ring_layout.c_str(),
              (long long)(cfg.train.seq_len / p.dims.cp));
  std::printf("device: %s, precision: %s\n", device.c_str(), p.prec.name().c_str());
  std::printf("optimizer: %s, %s\n", cfg.train.optimizer.type.c_str(),
              p.sharded ? ("sharded over " + std::to_string(world) + " ranks (ZeRO-1)").c_str()
                        : "not sharded (every rank holds all of its state)");
  std::printf("activations: micro-batch %d x %d rows, activation checkpointing %s\n",
              cfg.train.micro_batch_size, activation_rows(cfg, p.dims), ckpt ? "on" : "off");
  int64_t most = 0, sum = 0;
  for (const RankMemory& m : p.ranks) {
    std::printf("%s\n", memory_line(m).c_str());
    most = std::max(most, m.total());
    sum += m.total();
  }
  const RankMemory& r0 = p.ranks[0];
  const int64_t other_total =
      r0.total() - r0.activations - r0.workspace + p.activations_other + p.workspace_other;
  std::printf("with activation checkpointing %s: activations %lld B, workspace %lld B, rank 0 "
              "total %lld B (%s)\n",
              ckpt ? "off" : "on", (long long)p.activations_other, (long long)p.workspace_other,
              (long long)other_total, format_bytes(double(other_total)).c_str());
  std::printf("not counted: ring attention's travelling K/V buffers (context_parallel > 1), "
              "the checkpoint writer's temporary copy, allocator and library overheads\n");
  if (dev == Device::kCuda) {
    const bool fits = most <= gpu_bytes;
    std::printf("fits: %s (largest rank %s of %s GPU memory)\n", fits ? "yes" : "no",
                format_bytes(double(most)).c_str(), format_bytes(double(gpu_bytes)).c_str());
  } else {
    const int64_t avail = available_ram_bytes();
    if (avail <= 0)
      std::printf("fits: unknown (no MemAvailable in /proc/meminfo)\n");
    else
      std::printf("fits: %s (all %d ranks on this machine: %s of %s available RAM)\n",
                  sum <= avail ? "yes" : "no", world, format_bytes(double(sum)).c_str(),
                  format_bytes(double(avail)).c_str());
  }
  return kExitOk;
}

std::string join_words(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Prints what a checkpoint holds; reading it verifies every checksum.
int cmd_inspect(const std::string& path) {
  CheckpointContents c = inspect_checkpoint(path);
  std::printf("checkpoint: %s\n", path.c_str());
  std::printf("file size: %lld bytes (%s)\n", (long long)c.file_bytes,
              format_bytes(double(c.file_bytes)).c_str());
  std::printf("format_version: %d\n", c.meta.format_version);
  std::printf("step: %lld\n", (long long)c.meta.step);
  std::printf("tokens seen: %lld\n", (long long)c.meta.tokens_seen);
  if (c.optimizer_type.empty())
    std::printf("optimizer state: none (weights only: usable for eval, generate, extend and "
                "init_from, not for resuming)\n");
  else
    std::printf("optimizer state: %s, step %lld, %lld moment tensors\n",
                c.optimizer_type.c_str(), (long long)c.optimizer_step,
                (long long)c.optimizer_tensors);
  size_t width = 4;
  for (const auto& t : c.model) width = std::max(width, t.name.size());
  std::printf("\nparameters:\n%-*s  %-16s  %12s\n", int(width), "name", "shape", "numel");
  int64_t total = 0;
  for (const auto& t : c.model) {
    std::printf("%-*s  %-16s  %12lld\n", int(width), t.name.c_str(), shape_text(t.shape).c_str(),
                (long long)t.numel);
    total += t.numel;
  }
  std::printf("total parameters: %lld (%lld tensors, %s as float32)\n", (long long)total,
              (long long)c.model.size(), format_bytes(double(total) * 4).c_str());
  std::printf(is_hf_dir(path) ? "data: every tensor read (safetensors has no checksums)\n"
                              : "checksums: ok\n");
  std::string tokenizer;
  try {
    tokenizer = read_checkpoint_tokenizer(path)->describe();
  } catch (const UsageError& e) {  // e.g. only a tokenizer.json: shown, not fatal here
    tokenizer = std::string("not supported: ") + e.what();
  }
  std::printf("tokenizer: %s\n", tokenizer.c_str());
  std::printf("integrity: %s\n", c.integrity.c_str());
  std::printf("\nconfig:\n%s", c.meta.config_yaml.c_str());
  if (!c.meta.config_yaml.empty() && c.meta.config_yaml.back() != '\n') std::printf("\n");
  if (!c.meta.trainer_state_json.empty())
    std::printf("\ntrainer state: %s\n", c.meta.trainer_state_json.c_str());
  return kExitOk;
}

int run(int argc, char** argv) {
  CLI::App app{
      "ringtrain: train and fine-tune long-context transformers.\n"
      "Launch multi-process runs with mpirun; see README.md and docs/cli.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ringtrain 0.1.0");

  std::vector<std::string> overrides;
  std::string config;

  auto* train = app.add_subcommand(
      "train",
      "Train or fine-tune from a YAML config. Resumes from the newest usable checkpoint in the "
      "run dir (else starts from checkpoint.init_from's weights, if set); one train per run dir "
      "(RUN_DIR/.lock). SIGINT/SIGTERM: stop at the next micro-batch boundary, save the last "
      "completed step, exit 0 (under MPI signal launch/local.sh, not mpirun)");
  train->add_option("config", config, "config YAML")->required();
  train->add_option("--set", overrides, "override a config key: --set train.optimizer.lr=1e-4")
      ->take_all();

  EvalOptions eo;
  auto* eval = app.add_subcommand(
      "eval",
      "Perplexity by length, loss by position, the passkey grid and associative recall of a "
      "checkpoint; prints the tables (stdout) and writes JSON and PNG plots into the "
      "checkpoint's run dir (RUN_DIR/eval/step_N.json, RUN_DIR = the folder holding its "
      "checkpoints/ folder; with --data, --set or --memory-reset the name gets a hash of them: "
      "step_N_HASH.json). Shard long sequences over a ring with mpirun -np N ... "
      "--context-parallel N");
  eval->add_option("target", eo.target,
                   "CKPT.h5, a Hugging Face model directory, or CONFIG.yaml (uses the newest checkpoint in "
                   "its run dir)")
      ->required();
  eval->add_option("--set", eo.overrides, "override a config key")->take_all();
  eval->add_option("--data", eo.data,
                   "token file (.h5/.bin, or .txt encoded with the model's tokenizer); default: "
                   "val, else train data");
  eval->add_option("--seq-len", eo.seq_len, "one evaluation length");
  eval->add_option("--seq-lens", eo.seq_lens, "several lengths, e.g. 256,512,1024");
  eval->add_option("--max-sequences", eo.max_sequences,
                   "sequences per length, from the start of the data (default: the config's "
                   "eval.max_sequences, 16 unless set)");
  eval->add_option("--bucket", eo.bucket,
                   "loss-by-position bucket in tokens, at the longest length (default "
                   "seq_len/16, at most 512)");
  eval->add_option("--passkey-seq-lens", eo.passkey_seq_lens,
                   "passkey grid lengths, e.g. 256,512,1024 (default: eval.passkey of the config)");
  eval->add_option("--passkey-depths", eo.passkey_depths,
                   "needle depths in [0,1], e.g. 0,0.5,1 (default 0,0.25,0.5,0.75,1)");
  eval->add_option("--passkey-trials", eo.passkey_trials, "samples per grid cell (default 10)");
  eval->add_option("--recall-seq-lens", eo.recall_seq_lens,
                   "associative-recall accuracy at these lengths, e.g. 256,512 (overall and by "
                   "the asked pair)");
  eval->add_option("--recall-pairs", eo.recall_pairs,
                   "key-value pairs per recall sample, 1-26 (default: the config's recall data, "
                   "else 4)");
  eval->add_option("--recall-trials", eo.recall_trials, "recall samples per length (default 20)");
  eval->add_option("--context-parallel", eo.context_parallel,
                   "ring size: ranks sharing one sequence (world / it = data parallel)");
  eval->add_option("--json", eo.json,
                   "output JSON (default RUN_DIR/eval/step_N.json, or step_N_HASH.json with "
                   "--data/--set/--memory-reset); the plots go beside it");
  eval->add_flag("--allow-random-init", eo.allow_random_init,
                 "CONFIG.yaml whose run has no checkpoint yet: evaluate the randomly initialised "
                 "model (without this flag that is exit 3)");
  eval->add_flag("!--no-plots", eo.plots, "skip the PNG plots (launch/plot_eval.py)");
  eval->add_flag("--memory-reset", eo.memory_reset,
                 "memory models: nothing crosses a segment boundary (rmt: every segment "
                 "starts from the learned initial memory; knn, compressive: the store stays "
                 "empty): the same model without memory");

  int steps = 5, warmup = 1;
  auto* bench = app.add_subcommand(
      "bench", "Time N training steps after a warm-up; print one JSON object");
  bench->add_option("config", config, "config YAML")->required();
  bench->add_option("--set", overrides, "override a config key")->take_all();
  bench->add_option("--steps", steps, "timed steps (default 5)");
  bench->add_option("--warmup", warmup, "untimed warm-up steps (default 1)");

  std::string inspect_path;
  int plan_world = 1;
  std::string plan_device, plan_gpu_memory;
  auto* plan = app.add_subcommand(
      "plan",
      "Validate a config and layout for --world ranks without training, and print each "
      "rank's bytes for parameters, master weights, gradients, optimizer state, activations "
      "(with and without activation checkpointing) and workspace, and whether they fit");
  plan->add_option("config", config, "config YAML")->required();
  plan->add_option("--set", overrides, "override a config key")->take_all();
  plan->add_option("--world", plan_world, "number of ranks (default 1)");
  plan->add_option("--device", plan_device,
                   "cpu | cuda (default: parallel.device, cpu for auto); sets what "
                   "train.precision auto means");
  plan->add_option("--gpu-memory", plan_gpu_memory,
                   "GPU memory per rank for the fit check with --device cuda (default 80GiB)");

  auto* inspect = app.add_subcommand(
      "inspect",
      "Print a checkpoint's step, tokens seen, parameter table, optimizer state, file size and "
      "config; verifies every checksum (exit 3 naming the dataset if one fails)");
  inspect->add_option("checkpoint", inspect_path, "CKPT.h5 or a Hugging Face model directory")
      ->required();

  GenerateOptions go;
  auto* generate = app.add_subcommand(
      "generate",
      "Sample text from a checkpoint (through its tokenizer: bytes or the SentencePiece model "
      "stored in it; KV cache, or segment by segment through the memory of a model.memory "
      "checkpoint); prints the prompt and its continuation");
  generate->add_option("checkpoint", go.checkpoint, "CKPT.h5 or a Hugging Face model directory")
      ->required();
  generate->add_option("--prompt", go.prompt, "text to continue")->required();
  generate->add_option("--max-new", go.max_new, "tokens to generate (default 64)");
  generate->add_option("--temperature", go.temperature, "0 = greedy (default), else sampling");
  generate->add_option("--top-k", go.top_k, "sample among the k most likely tokens (0 = all)");
  generate->add_option("--seed", go.seed, "sampling seed (default: the run's seed)");
  generate->add_flag("--bos", go.bos, "prepend the tokenizer's BOS token to the prompt");
  generate->add_flag("--stop-at-eos", go.stop_at_eos,
                     "stop when the model emits the tokenizer's EOS token");

  ExtendOptions xo;
  auto* extend = app.add_subcommand(
      "extend", "Write a fine-tune config that extends a checkpoint's context (RoPE scaling)");
  extend->add_option("checkpoint", xo.checkpoint,
                     "CKPT.h5 trained with position: rope, or a Hugging Face Llama directory")
      ->required();
  extend->add_option("--to", xo.to, "new context length (tokens)")->required();
  extend->add_option("--method", xo.method, "linear | ntk | dynamic | yarn | llama3")
      ->required();
  extend->add_option("--out", xo.out, "config to write (default: <run>-<method>-<to>.yaml)");

  ImportOptions io;
  auto* import_cmd = app.add_subcommand(
      "import",
      "Convert a Hugging Face Llama directory (config.json + model.safetensors or shards listed "
      "in model.safetensors.index.json; BF16/F16/F32) into a ringtrain checkpoint with float32 "
      "weights. Keeps config.json, generation_config.json and the tokenizer files inside it "
      "(/files) for export. Refuses (exit 2, naming the key) what ringtrain cannot compute: "
      "biases, sliding window, MoE, other architectures");
  import_cmd->add_option("dir", io.dir, "HF_DIR: a directory with config.json")->required();
  import_cmd->add_option("--out", io.out, "CKPT.h5 to write")->required();

  ExportOptions eo2;
  auto* export_cmd = app.add_subcommand(
      "export",
      "Write a ringtrain checkpoint as a Hugging Face LlamaForCausalLM directory: config.json "
      "(with the checkpoint's rope_scaling), generation_config.json, safetensors (sharded with "
      "model.safetensors.index.json past --max-shard-size) and the tokenizer files the model "
      "came with (from the checkpoint, else its checkpoint.init_from chain). Refuses position "
      "alibi/none and memory models (exit 2)");
  export_cmd->add_option("checkpoint", eo2.checkpoint, "CKPT.h5")->required();
  export_cmd->add_option("--out", eo2.out, "HF_DIR to create (new or empty)")->required();
  export_cmd->add_option("--dtype", eo2.dtype,
                         "bf16 | fp32 (default: the imported model's dtype, else bf16)");
  export_cmd->add_option("--max-shard-size", eo2.max_shard_size,
                         "largest safetensors file, e.g. 5GB (default), 500MB, 2GiB");
  export_cmd->add_option("--tokenizer-from", eo2.tokenizer_from,
                         "HF_DIR or imported CKPT.h5 whose tokenizer files to copy (default: "
                         "found from the checkpoint)");

  AblateOptions ao;
  auto* ablate = app.add_subcommand(
      "ablate",
      "Run a sweep of variants: grid, named, eval-only (from:) and follow-up "
      "(init_from:) variants, seeds; each as its own train + eval process in "
      "runs/<sweep>/<variant>/, resumable; writes summary.md, summary.csv and plots. Exit 0 all "
      "complete, 1 some failed or interrupted, 2 invalid sweep (nothing runs)");
  ablate->add_option("sweep", ao.sweep, "SWEEP.yaml")->required();
  ablate->add_flag("--dry-run", ao.dry_run,
                   "validate every variant and print what would run; run nothing");
  ablate->add_flag("!--no-plots", ao.plots,
                   "skip the PNG plots (launch/plot_ablation.py); the CSV and markdown are "
                   "written");
  ablate->add_option("--only", ao.only, "run only these variants (and those they need)")
      ->take_all();
  ablate->add_option("--set", ao.sets,
                     "override a config key in every training variant (applied after the "
                     "variant's own set:), e.g. --set data.train=PATH")
      ->take_all();

  auto* data = app.add_subcommand("data", "Data tools");
  data->require_subcommand(1);
  std::vector<std::string> inputs;
  std::string out, tokenizer = "bytes";
  double val_fraction = 0.0;
  auto* prepare = data->add_subcommand(
      "prepare", "Tokenize text files into a .h5 or .bin file (the .h5 records the tokenizer)");
  prepare->add_option("inputs", inputs, "input text files")->required();
  prepare->add_option("--out", out, "output token file (.h5 or .bin)")->required();
  prepare->add_option("--tokenizer", tokenizer,
                      std::string("bytes (default), or the path of a SentencePiece model "
                                  "(tokenizer.model, or a directory holding one). Supported: ") +
                          kTokenizersSupported);
  prepare->add_option("--val-fraction", val_fraction,
                      "hold out the last fraction of the tokens, e.g. 0.1: writes OUT (the "
                      "first 90%) and OUT with .val before its extension (the last 10%, for "
                      "data.val)");

  if (argc > 1 && argv[1][0] != '-') {
    const std::string word = argv[1];
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands({})) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), word) == names.end())
      throw UsageError("unknown command '" + word + "'; did you mean '" + closest_match(word, names) +
                       "'? (commands: " + join_words(names) + "; see " + ringtrain_command() +
                       " --help)");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (train->parsed()) return cmd_train(config, overrides);
  if (eval->parsed()) return run_eval_command(eo);
  if (bench->parsed()) return cmd_bench(config, overrides, steps, warmup);
  if (plan->parsed())
    return cmd_plan(config, overrides, plan_world, plan_device, plan_gpu_memory);
  // Commands without collectives run on rank 0 only under mpirun (one
  // printout, one writer of each file); the other ranks wait for it.
  const bool rank0 = parallel_runtime().world->rank() == 0;
  if (inspect->parsed()) return rank0 ? cmd_inspect(inspect_path) : kExitOk;
  if (generate->parsed()) return rank0 ? run_generate_command(go) : kExitOk;
  if (extend->parsed()) return rank0 ? run_extend_command(xo) : kExitOk;
  if (import_cmd->parsed()) return rank0 ? run_import_command(io) : kExitOk;
  if (export_cmd->parsed()) return rank0 ? run_export_command(eo2) : kExitOk;
  if (prepare->parsed() && !rank0) return kExitOk;
  if (ablate->parsed()) return run_ablate_command(ao);
  if (prepare->parsed()) {
    const std::string described = load_tokenizer(tokenizer)->describe();
    for (const std::string& path : prepare_token_file(inputs, out, tokenizer, val_fraction)) {
      TokenData d = read_token_file(path);
      std::cout << "wrote " << path << ": " << d.tokens.size() << " tokens, vocab "
                << d.vocab_size << ", tokenizer " << described << "\n";
    }
    return kExitOk;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace rt

// Threads per rank default to this node's cores divided by its ranks
// (SPEC §12), so that `mpirun -np 4` on 2 cores does not thrash;
// OMP_NUM_THREADS overrides.
static void set_default_threads(const rt::ParallelRuntime& prt) {
  if (std::getenv("OMP_NUM_THREADS")) return;
  const int cores = int(std::thread::hardware_concurrency());
  omp_set_num_threads(std::max(1, cores / std::max(1, prt.local_size)));
}

int main(int argc, char** argv) {
  rt::ParallelRuntime& prt = rt::init_parallel_runtime(&argc, &argv);
  rt::set_log_rank(prt.world->rank());
  set_default_threads(prt);
  const bool many = prt.world->size() > 1;
  const std::string who = many ? "[rank " + std::to_string(prt.world->rank()) + "] " : "";
  int code = rt::kExitOk;
  try {
    code = rt::run(argc, argv);
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "%serror: %s\n", who.c_str(), e.what());
    code = e.code();
  } catch (const std::bad_alloc&) {
    // Parameters and optimizer state were checked to fit before allocating
    // (memory_check.h), so what did not fit is the activations.
    std::fprintf(stderr,
                 "%serror: out of memory (the parameters and optimizer state fit; the "
                 "activations did not): lower train.seq_len or train.micro_batch_size, raise "
                 "parallel.context_parallel, or enable train.activation_checkpointing\n",
                 who.c_str());
    code = rt::kExitOther;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%serror: %s\n", who.c_str(), e.what());
    code = rt::kExitOther;
  }
  // A failing rank brings the whole job down at once (SPEC §1): the others
  // may be waiting for it inside a collective.
  if (code != rt::kExitOk && many) {
    std::fflush(stderr);
    prt.world->abort(code);
  }
  rt::finalize_parallel_runtime();
  return code;
}
