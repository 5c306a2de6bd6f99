#include "trainer/train/memory_plan.h"

#include <cctype>
#include <cstdio>
#include <fstream>

#include "common/errors.h"
#include "common/log.h"
#include "model/arena.h"
#include "model/llama.h"
#include "parallel/grad_reducer.h"

namespace rt {

std::string memory_line(const RankMemory& m) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "memory rank %d: parameters %lld B, master weights %lld B, gradients %lld B, "
                "optimizer state %lld B, activations %lld B, workspace %lld B, total %lld B (%s)",
                m.rank, (long long)m.params, (long long)m.master, (long long)m.grads,
                (long long)m.optimizer, (long long)m.activations, (long long)m.workspace,
                (long long)m.total(), format_bytes(double(m.total())).c_str());
  return buf;
}

const char* checkpointing_label(Checkpointing c) {
  return c == Checkpointing::kFull ? "on" : checkpointing_name(c);
}

int activation_rows(const Config& cfg, const ParallelDims& dims) {
  const auto& mem = cfg.model.memory;
  if (!mem) return int(cfg.train.seq_len / dims.cp);
  // one segment: rmt adds its read and write memory rows
  return mem->segment_length + (mem->type == "rmt" ? 2 * mem->num_tokens : 0);
}

MemoryPlan plan_memory(const Config& cfg, int world, Device device) {
  MemoryPlan p;
  p.dims = ParallelDims::build(world, cfg.parallel.data_parallel, cfg.parallel.context_parallel);
  p.prec = resolve_precision(cfg.train.precision, device);
  p.sharded = cfg.shards_optimizer(world);
  const std::vector<TensorSpec> specs = llama_param_specs(cfg.model);
  const int64_t params = int64_t(layout_bytes(with_dtype(specs, p.prec.param)));
  const int64_t master =
      p.prec.master_weights ? int64_t(layout_bytes(with_dtype(specs, DType::kF32))) : 0;
  const size_t grads = layout_bytes(with_dtype(specs, p.prec.grad));
  const size_t grad_floats = grads / sizeof(float);
  const bool adamw = cfg.train.optimizer.type == "adamw";
  const int rows = activation_rows(cfg, p.dims);
  const int B = cfg.train.micro_batch_size;
  const Checkpointing ckpt = cfg.train.activation_checkpointing;
  auto act_bytes = [&](Checkpointing c) {
    ActivationSpecs a = activation_specs(cfg.model, p.prec, B, rows, c);
    return std::make_pair(int64_t(layout_bytes(a.acts)), int64_t(layout_bytes(a.scratch)));
  };
  const auto [acts, scratch] = act_bytes(ckpt);
  for (Checkpointing c : {Checkpointing::kOff, Checkpointing::kFull, Checkpointing::kSelective})
    if (c != ckpt) {
      const auto [a, s] = act_bytes(c);
      p.other_checkpointing.push_back({c, a, s});
    }
  for (int r = 0; r < world; ++r) {
    RankMemory m;
    m.rank = r;
    m.params = params;
    m.master = master;
    m.grads = int64_t(grads);
    m.activations = acts;
    m.workspace = scratch;
    if (p.sharded) {
      const auto [lo, hi] = shard_range(grad_floats, world, r);
      if (p.prec.master_weights)  // held by the optimizer, as its shard
        m.master = int64_t(layout_bytes({{"shard", {int64_t(hi - lo)}, DType::kF32}}));
      if (adamw)
        m.optimizer =
            2 * int64_t(layout_bytes({{"shard", {int64_t(hi - lo)}, DType::kF32}}));
    } else if (adamw) {
      m.optimizer = 2 * int64_t(layout_bytes(with_dtype(specs, DType::kF32)));
    }
    p.ranks.push_back(m);
  }
  return p;
}

int64_t parse_bytes(const std::string& text, const std::string& what) {
  size_t i = 0;
  double v = 0;
  try {
    v = std::stod(text, &i);
  } catch (const std::exception&) {
    i = 0;
  }
  std::string unit;
  for (size_t k = i; k < text.size(); ++k)
    if (!std::isspace(static_cast<unsigned char>(text[k]))) unit += char(std::tolower(text[k]));
  double mult = -1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "kb") mult = 1e3;
  else if (unit == "mb") mult = 1e6;
  else if (unit == "gb") mult = 1e9;
  else if (unit == "tb") mult = 1e12;
  else if (unit == "kib") mult = 1024.0;
  else if (unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  if (i == 0 || mult < 0 || !(v > 0))
    throw UsageError(what + ": expected a positive size such as 80GiB, 80GB or 512MiB, got '" +
                     text + "'");
  return int64_t(v * mult);
}

int64_t available_ram_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

}  // namespace rt
