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
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/eval_command.h"
#include "trainer/generate.h"
#include "trainer/evaluate.h"
#include "trainer/extend.h"
#include "parallel/comm.h"
#include "trainer/trainer.h"

namespace rt {
namespace {

using Clock = std::chrono::steady_clock;

Config load_validated(const std::string& path, const std::vector<std::string>& overrides) {
  Config cfg = load_config(path, overrides);
  validate_layout(cfg, parallel_runtime().world->size());
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
  const int64_t mine[2] = {peak_rss_bytes(), (trainer.ring_bytes_sent() - ring_bytes0) / steps};
  std::vector<int64_t> all(size_t(2 * world.size()));
  world.allgather(mine, sizeof mine, all.data());
  int64_t max_rss = 0, max_ring = 0;
  for (int r = 0; r < world.size(); ++r) {
    max_rss = std::max(max_rss, all[2 * r]);
    max_ring = std::max(max_ring, all[2 * r + 1]);
  }
  // Theoretical ring volume per rank and step: K,V (fp32, kv heads only) go
  // cp-1 hops forward and cp-1 backward, dK,dV make a full turn of cp hops.
  const int64_t cp = cfg.parallel.context_parallel;
  const int64_t kv_bytes = 2 * int64_t(cfg.train.micro_batch_size) * (cfg.train.seq_len / cp) *
                           cfg.model.num_key_value_heads * cfg.model.head_dim * 4;
  const int64_t micro_steps = cfg.train.global_batch_size / (cfg.train.micro_batch_size *
                                                             (world.size() / cp));
  const int64_t ring_theory =
      cp > 1 ? kv_bytes * (2 * (cp - 1) + cp) * cfg.model.num_hidden_layers * micro_steps : 0;
  const double fpt = train_flops_per_token(cfg.model, cfg.train.seq_len);
  const double sgemm = measure_sgemm_flops();
  nlohmann::json j = {{"tokens_per_s", tps},
                      {"step_ms", ms / steps},
                      {"flops_per_s", tps * fpt},
                      {"peak_mem_bytes", max_rss},
                      {"ring_bytes_sent_per_step", max_ring},
                      {"ring_bytes_theoretical_per_step", ring_theory},
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
    std::printf("optimizer state: none (weights only: usable for eval and init_from, not for "
                "resuming)\n");
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
  std::printf("checksums: ok\n");
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
      "Launch multi-process runs with mpirun; see README.md and SPEC."};
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
      "checkpoint; writes "
      "JSON and PNG plots beside it. Shard long sequences over a ring with mpirun -np N "
      "... --context-parallel N");
  eval->add_option("target", eo.target,
                   "CKPT.h5, or CONFIG.yaml (uses the newest checkpoint in its run dir)")
      ->required();
  eval->add_option("--set", eo.overrides, "override a config key")->take_all();
  eval->add_option("--data", eo.data, "token file (.h5/.bin/.txt); default: val, else train data");
  eval->add_option("--seq-len", eo.seq_len, "one evaluation length");
  eval->add_option("--seq-lens", eo.seq_lens, "several lengths, e.g. 256,512,1024");
  eval->add_option("--max-sequences", eo.max_sequences,
                   "sequences per length, from the start of the data (default 64)");
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
  eval->add_option("--json", eo.json, "output JSON (default RUN_DIR/eval/step_N.json)");
  eval->add_flag("!--no-plots", eo.plots, "skip the PNG plots (launch/plot_eval.py)");
  eval->add_flag("--memory-reset", eo.memory_reset,
                 "memory models: start every segment from the learned initial memory, so "
                 "nothing crosses a segment boundary (the same model without memory)");

  int steps = 5, warmup = 1;
  auto* bench = app.add_subcommand(
      "bench", "Time N training steps after a warm-up; print one JSON object");
  bench->add_option("config", config, "config YAML")->required();
  bench->add_option("--set", overrides, "override a config key")->take_all();
  bench->add_option("--steps", steps, "timed steps (default 5)");
  bench->add_option("--warmup", warmup, "untimed warm-up steps (default 1)");

  std::string inspect_path;
  auto* inspect = app.add_subcommand(
      "inspect",
      "Print a checkpoint's step, tokens seen, parameter table, optimizer state, file size and "
      "config; verifies every checksum (exit 3 naming the dataset if one fails)");
  inspect->add_option("checkpoint", inspect_path, "CKPT.h5")->required();

  GenerateOptions go;
  auto* generate = app.add_subcommand(
      "generate",
      "Sample text from a checkpoint (byte tokens; KV cache, or segment by segment through the "
      "memory of a model.memory checkpoint); prints the prompt and its continuation");
  generate->add_option("checkpoint", go.checkpoint, "CKPT.h5")->required();
  generate->add_option("--prompt", go.prompt, "text to continue")->required();
  generate->add_option("--max-new", go.max_new, "tokens to generate (default 64)");
  generate->add_option("--temperature", go.temperature, "0 = greedy (default), else sampling");
  generate->add_option("--top-k", go.top_k, "sample among the k most likely tokens (0 = all)");
  generate->add_option("--seed", go.seed, "sampling seed (default: the run's seed)");

  ExtendOptions xo;
  auto* extend = app.add_subcommand(
      "extend", "Write a fine-tune config that extends a checkpoint's context (RoPE scaling)");
  extend->add_option("checkpoint", xo.checkpoint, "CKPT.h5 trained with position: rope")
      ->required();
  extend->add_option("--to", xo.to, "new context length (tokens)")->required();
  extend->add_option("--method", xo.method, "linear | ntk | dynamic | yarn | llama3")
      ->required();
  extend->add_option("--out", xo.out, "config to write (default: <run>-<method>-<to>.yaml)");

  auto* data = app.add_subcommand("data", "Data tools");
  data->require_subcommand(1);
  std::vector<std::string> inputs;
  std::string out, tokenizer = "bytes";
  auto* prepare = data->add_subcommand("prepare", "Tokenize text files into a .h5 or .bin file");
  prepare->add_option("inputs", inputs, "input text files")->required();
  prepare->add_option("--out", out, "output token file (.h5 or .bin)")->required();
  prepare->add_option("--tokenizer", tokenizer, "tokenizer (bytes)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (train->parsed()) return cmd_train(config, overrides);
  if (eval->parsed()) return run_eval_command(eo);
  if (bench->parsed()) return cmd_bench(config, overrides, steps, warmup);
  if (inspect->parsed()) return cmd_inspect(inspect_path);
  if (generate->parsed()) return run_generate_command(go);
  if (extend->parsed()) return run_extend_command(xo);
  if (prepare->parsed()) {
    prepare_token_file(inputs, out, tokenizer);
    TokenData d = read_token_file(out);
    std::cout << "wrote " << out << ": " << d.tokens.size() << " tokens, vocab " << d.vocab_size
              << ", tokenizer " << d.tokenizer << "\n";
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
    std::fprintf(stderr,
                 "%serror: out of memory: lower train.seq_len or train.micro_batch_size, raise "
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
