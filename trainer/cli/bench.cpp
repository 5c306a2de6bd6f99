// `ringtrain bench CONFIG.yaml [--steps N] [--warmup N]`: time training steps,
// print one JSON object.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/errors.h"
#include "common/log.h"
#include "parallel/comm.h"
#include "parallel/ring_attention.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/train/trainer.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/gemm_probe.h"
#endif

namespace rt::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string config;
  std::vector<std::string> overrides;
  int steps = 5, warmup = 1;
};

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
  const DeviceChoice& dev = trainer.device();
  const bool gpu = dev.device == Device::kCuda;
  constexpr int kF = 11;
  const int64_t mine[kF] = {
      // peak memory: the device allocator's high-water mark on the GPU, RSS on the CPU
      gpu ? int64_t(trainer.model().backend().peak_bytes()) : peak_rss_bytes(),
      (trainer.ring_bytes_sent() - ring_bytes0) / steps,
      (trainer.reduce_bytes_sent() - reduce_bytes0) / steps,
      int64_t((trainer.ring_wait_seconds() - ring_wait0) * 1e6 / steps),
      int64_t((trainer.reduce_wait_seconds() - reduce_wait0) * 1e6 / steps),
      mem.params,
      mem.master,
      mem.grads,
      mem.optimizer,
      mem.activations,
      peak_rss_bytes()};
  std::vector<int64_t> all(size_t(kF * world.size()));
  world.allgather(mine, sizeof mine, all.data());
  int64_t most[kF] = {};
  for (int r = 0; r < world.size(); ++r)
    for (int k = 0; k < kF; ++k) most[k] = std::max(most[k], all[size_t(kF * r + k)]);
  const int64_t max_peak = most[0], max_ring = most[1];
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
  // MFU (SPEC §11 FLOPs, causal attention counted as 6·L·d·T per token, i.e.
  // half of the full T×T score matrix) against the GPU's dense bf16 peak.
  nlohmann::json mfu = nullptr, gemm_tflops = nullptr;
  if (gpu && dev.peak_bf16_flops > 0) mfu = tps * fpt / (dev.peak_bf16_flops * world.size());
#ifdef RINGTRAIN_HAVE_CUDA
  if (gpu) {
    try {  // a failed probe (out of memory beside a large model) costs the number, not the run
      gemm_tflops = cuda::measure_gemm_bf16_tflops(dev.index);
    } catch (const Error& e) {
      log_warn("bench: no gemm_bf16_tflops: %s", e.what());
    }
  }
#endif
  nlohmann::json j = {{"tokens_per_s", tps},
                      {"step_ms", ms / steps},
                      {"flops_per_s", tps * fpt},
                      {"device", dev.name},
                      {"device_memory_bytes", dev.total_memory},
                      {"precision", trainer.model().precision().name()},
                      {"activation_checkpointing",
                       cfg.train.activation_checkpointing != Checkpointing::kOff},
                      {"activation_checkpointing_mode",
                       checkpointing_name(cfg.train.activation_checkpointing)},
                      {"mfu", mfu},
                      {"peak_bf16_flops_per_s", gpu && dev.peak_bf16_flops > 0
                                                    ? nlohmann::json(dev.peak_bf16_flops)
                                                    : nlohmann::json(nullptr)},
                      {"gemm_bf16_tflops", gemm_tflops},
                      {"peak_mem_bytes", max_peak},
                      {"host_peak_rss_bytes", most[10]},
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

}  // namespace

Command add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto* bench = app.add_subcommand(
      "bench",
      "Time N training steps after a warm-up; print one JSON object: tokens_per_s, step_ms, "
      "flops_per_s (SPEC §11 FLOPs per token = 6·non-embedding params + 6·layers·hidden·T: "
      "causal attention counted half of the full T×T), device (cpu or the GPU's name), mfu "
      "(flops_per_s over the GPU's dense bf16 peak from its name: H100 SXM/H200 989, H100/H200 "
      "NVL 835, H100 PCIe 756, A100 312 TFLOP/s; null on the CPU or an unknown GPU), peak_mem_bytes (the "
      "device allocator's high-water mark on a GPU, peak RSS on the CPU), gemm_bf16_tflops "
      "(a cuBLAS 8192^3 bf16 GEMM measured in the same run; null on the CPU), memory by kind, "
      "ring and reduction traffic");
  bench->add_option("config", a->config, "config YAML")->required();
  bench->add_option("--set", a->overrides, "override a config key")->take_all();
  bench->add_option("--steps", a->steps, "timed steps (default 5)");
  bench->add_option("--warmup", a->warmup, "untimed warm-up steps (default 1)");
  return {bench, [a] { return cmd_bench(a->config, a->overrides, a->steps, a->warmup); }};
}

}  // namespace rt::cli
