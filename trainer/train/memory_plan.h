// Per-rank memory of a training run, from the config alone (`ringtrain
// plan`) and from the arenas of a running trainer (its start-up log). Both
// size arenas with the one rule (layout_specs) over the same tensor tables
// (llama_param_specs, activation_specs) and the same optimizer shards
// (shard_range), so the plan's lines equal the run's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/precision.h"
#include "parallel/parallel_dims.h"
#include "trainer/config/config.h"

namespace rt {

struct RankMemory {
  int rank = 0;
  int64_t params = 0;       // compute weights
  int64_t master = 0;       // fp32 master weights (0 when the compute weights are fp32)
  int64_t grads = 0;        // fp32 gradients (whole model: the backward writes them all)
  int64_t optimizer = 0;    // AdamW moments (this rank's shard when sharded)
  int64_t activations = 0;  // activation arena for one micro-batch
  int64_t workspace = 0;    // backward scratch
  int64_t total() const { return params + master + grads + optimizer + activations + workspace; }
};

// "memory rank R: parameters P B, master weights M B, ..." (exact bytes).
std::string memory_line(const RankMemory& m);

// "off", "on" (true, full) or "selective", as plans and logs say it.
const char* checkpointing_label(Checkpointing c);

// Rows of one micro-batch's activations per rank: seq_len / cp, or one RMT
// segment with its memory rows.
int activation_rows(const Config& cfg, const ParallelDims& dims);

struct MemoryPlan {
  ParallelDims dims;
  Precision prec;
  bool sharded = false;
  std::vector<RankMemory> ranks;
  // activations and backward scratch with each other activation_checkpointing
  // setting (off, on, selective, less the config's own)
  struct Alternative {
    Checkpointing checkpointing;
    int64_t activations, workspace;
  };
  std::vector<Alternative> other_checkpointing;
};

// cfg validated for world (validate_layout). device: cpu or cuda.
MemoryPlan plan_memory(const Config& cfg, int world, Device device);

// Bytes given as "80GiB", "80 GB", "512MiB", "1.5TiB" or a plain number.
// UsageError naming `what` otherwise.
int64_t parse_bytes(const std::string& text, const std::string& what);

// MemAvailable of this machine (bytes), 0 when unknown.
int64_t available_ram_bytes();

}  // namespace rt
