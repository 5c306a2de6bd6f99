// `ringtrain plan CONFIG.yaml --world N`: validate a layout and print each
// rank's memory without training.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/log.h"
#include "parallel/comm_path.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/train/device.h"
#include "trainer/train/memory_plan.h"

namespace rt::cli {
namespace {

struct PlanArgs {
  std::string config;
  std::vector<std::string> overrides;
  int world = 1;
  std::string device, gpu_memory;
  int ranks_per_node = 0, gpus_per_node = 0;  // 0: all ranks on one node, one GPU each
};

// Which transport would carry the device buffers (parallel/comm_path.h's
// choice, for this build's NCCL and the given node shape).
std::string plan_comm_line(Device dev, int world, int ranks_per_node, int gpus_per_node) {
  if (ranks_per_node < 0 || gpus_per_node < 0)
    throw UsageError("--ranks-per-node and --gpus-per-node must be >= 1 (or 0, the default: "
                     "all ranks on one node, one GPU each)");
  if (dev != Device::kCuda && gpus_per_node > 0)
    throw UsageError("--gpus-per-node applies to --device cuda only");
  CommSituation s;
  s.device_buffers = dev == Device::kCuda;
  s.have_nccl = nccl_compiled_in();
  s.world = world;
  s.local_size = ranks_per_node > 0 ? std::min(ranks_per_node, world) : world;
  s.device_count = gpus_per_node > 0 ? gpus_per_node : s.local_size;
  s.force_staging = comm_staging_forced();
  const CommChoice c = choose_comm_path(s);
  std::string why = c.why.rfind("comm: ", 0) == 0 ? c.why.substr(6) : c.why;
  return std::string("communication: ") + comm_path_name(c.path) + ": " + why;
}

// Validates the config and layout for a world size and prints every rank's
// memory without training: the figures come from the functions that size a
// real run's arenas (trainer/train/memory_plan.h), so they equal its start-up log.
int cmd_plan(const std::string& config, const std::vector<std::string>& overrides, int world,
             const std::string& device_opt, const std::string& gpu_memory, int ranks_per_node,
             int gpus_per_node) {
  if (world < 1) throw UsageError("--world must be >= 1, got " + std::to_string(world));
  Config cfg = load_config(config, overrides);
  validate_layout(cfg, world);
  std::string device = device_opt;
  if (device.empty())  // what training would choose (trainer/train/device.h)
    device = wants_cuda(cfg.parallel.device, this_device_environment()) ? "cuda" : "cpu";
  if (device != "cpu" && device != "cuda")
    throw UsageError("--device must be cpu or cuda, got '" + device + "'");
  const Device dev = device == "cuda" ? Device::kCuda : Device::kCpu;
  if (!gpu_memory.empty() && dev != Device::kCuda)
    throw UsageError("--gpu-memory applies to --device cuda only");
  const int64_t gpu_bytes =
      dev == Device::kCuda ? parse_bytes(gpu_memory.empty() ? "80GiB" : gpu_memory,
                                         "--gpu-memory")
                           : 0;
  // What `train` would refuse on this device today (exit 2 there); plan still
  // prints the memory, e.g. for multi-GPU context-parallel layouts.
  std::string refusal;
  try {
    check_device_config(cfg, dev);
  } catch (const UsageError& e) {
    refusal = e.what();
  }
  const MemoryPlan p = plan_memory(cfg, world, dev);
  std::printf("config: %s (valid)\n", config.c_str());
  std::printf("layout: %s, ring layout %s, %lld tokens per rank per sequence\n",
              p.dims.describe().c_str(), cfg.parallel.ring_layout.c_str(),
              (long long)(cfg.train.seq_len / p.dims.cp));
  std::printf("device: %s, precision: %s\n", device.c_str(), p.prec.name().c_str());
  std::printf("%s\n", plan_comm_line(dev, world, ranks_per_node, gpus_per_node).c_str());
  if (!refusal.empty())
    std::printf("trains on this device today: no (train exits 2): %s\n", refusal.c_str());
  std::printf("optimizer: %s, %s\n", cfg.train.optimizer.type.c_str(),
              p.sharded ? ("sharded over " + std::to_string(world) + " ranks (ZeRO-1)").c_str()
                        : "not sharded (every rank holds all of its state)");
  std::printf("activations: micro-batch %d x %d rows, activation checkpointing %s\n",
              cfg.train.micro_batch_size, activation_rows(cfg, p.dims),
              checkpointing_label(cfg.train.activation_checkpointing));
  int64_t most = 0, sum = 0;
  for (const RankMemory& m : p.ranks) {
    std::printf("%s\n", memory_line(m).c_str());
    most = std::max(most, m.total());
    sum += m.total();
  }
  const RankMemory& r0 = p.ranks[0];
  for (const MemoryPlan::Alternative& o : p.other_checkpointing) {
    const int64_t total = r0.total() - r0.activations - r0.workspace + o.activations + o.workspace;
    std::printf("with activation checkpointing %s: activations %lld B, workspace %lld B, rank 0 "
                "total %lld B (%s)\n",
                checkpointing_label(o.checkpointing), (long long)o.activations,
                (long long)o.workspace, (long long)total, format_bytes(double(total)).c_str());
  }
  std::printf("not counted: ring attention's travelling K/V buffers (context_parallel > 1), "
              "the checkpoint writer's temporary copy, allocator and library overheads\n");
  if (dev == Device::kCuda) {
    // CudaBackend::scratch: the largest fp32 GEMM operand rounded to bf16
    // (the MLP's activation gradient, rows x intermediate) plus cuBLASLt's
    // workspace
    const int64_t rows = int64_t(cfg.train.micro_batch_size) * activation_rows(cfg, p.dims);
    const int64_t widest = std::max<int64_t>(
        cfg.model.intermediate_size, int64_t(cfg.model.num_attention_heads) * cfg.model.head_dim);
    const int64_t scratch = rows * widest * 2 + (int64_t(32) << 20);
    std::printf("also not counted on CUDA: the backend's scratch, about %s (bf16 copies of the "
                "fp32 activation gradients that GEMMs read, and cuBLASLt's 32 MiB workspace)\n",
                format_bytes(double(scratch)).c_str());
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

}  // namespace

Command add_plan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* plan = app.add_subcommand(
      "plan",
      "Validate a config and layout for --world ranks without training, and print each "
      "rank's bytes for parameters, master weights, gradients, optimizer state, activations "
      "(with activation checkpointing off, on and selective) and workspace, and whether they "
      "fit");
  plan->add_option("config", a->config, "config YAML")->required();
  plan->add_option("--set", a->overrides, "override a config key")->take_all();
  plan->add_option("--world", a->world, "number of ranks (default 1)");
  plan->add_option("--device", a->device,
                   "cpu | cuda (default: parallel.device; auto is cuda when this build has "
                   "CUDA and a GPU is visible, else cpu); sets what train.precision auto "
                   "means; says what train would refuse on it (on cuda: fp32, head_dim "
                   "other than 64/128)");
  plan->add_option("--gpu-memory", a->gpu_memory,
                   "GPU memory per rank for the fit check with --device cuda (default 80GiB)");
  plan->add_option("--ranks-per-node", a->ranks_per_node,
                   "ranks launched on each node, for the communication line (default: all "
                   "--world ranks on one node)");
  plan->add_option("--gpus-per-node", a->gpus_per_node,
                   "GPUs on each node with --device cuda (default: one per rank); fewer GPUs "
                   "than ranks per node means ranks share a GPU and device buffers travel "
                   "through pinned host memory over MPI instead of NCCL");
  return {plan, [a] {
            return cmd_plan(a->config, a->overrides, a->world, a->device, a->gpu_memory,
                            a->ranks_per_node, a->gpus_per_node);
          }};
}

}  // namespace rt::cli
