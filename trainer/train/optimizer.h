// AdamW (decoupled weight decay) and SGD over the parameter arena, the
// learning-rate schedule, and global-norm clipping.
#pragma once

#include <cstdint>
#include <string>

#include "model/arena.h"
#include "model/llama.h"
#include "trainer/config/config.h"

namespace rt {

// lr at 0-based step: linear warm-up over warmup_steps to optimizer.lr, then
// constant, linear or cosine decay to schedule.min_lr at max_steps.
double learning_rate_at(const TrainConfig& t, int64_t step);

// The part of the flat fp32 master arena (element range [lo, hi), laid out
// like the gradients) one rank updates with a sharded optimizer (ZeRO-1).
struct OptimizerShard {
  size_t lo = 0, hi = 0;
};

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& cfg, LlamaModel& model);
  // Sharded: the moments hold only [shard.lo, shard.hi) and step() updates
  // only the master weights (and compute copy) in that range, from the
  // gradients in that range; the caller all-gathers the weights.
  Optimizer(const OptimizerConfig& cfg, LlamaModel& model, OptimizerShard shard);

  // One update with the model's gradients times grad_scale (the clipping
  // coefficient, clip_coefficient): AdamW folds it into its update (no pass
  // over the gradients; the same fp32 product a scale pass would store), SGD
  // scales the gradients first. The gradients themselves are left unscaled
  // under AdamW. Counts steps.
  void step(float lr, float grad_scale = 1.f);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // AdamW moments (same layout as the parameters); empty arenas for SGD.
  // Sharded: the full moments, allocated only between allocate_full_state()
  // and release_full_state() (checkpoint save and load).
  Arena& exp_avg() { return sharded_ ? full_m_ : m_; }
  Arena& exp_avg_sq() { return sharded_ ? full_v_ : v_; }
  bool sharded() const { return sharded_; }
  const OptimizerShard& shard() const { return shard_; }
  // Bytes of optimizer state this rank holds (the shard when sharded).
  size_t state_bytes() const { return m_.bytes() + v_.bytes() + buf_.bytes(); }
  // Sharded AdamW: this rank's moments (shard().hi - shard().lo floats),
  // k = 0 exp_avg, 1 exp_avg_sq.
  float* shard_state(int k) { return (k == 0 ? m_ : v_).f32_base(); }
  // Sharded with fp32 master weights beside the compute copy: the optimizer
  // holds this rank's shard of them (the model's full copy is released).
  bool owns_master() const { return master_shard_.allocated(); }
  float* master_shard() { return master_shard_.f32_base(); }
  size_t master_bytes() const { return master_shard_.bytes(); }
  // model.master()'s shard -> the optimizer's master shard.
  void take_master_shard();
  void allocate_full_state();
  void release_full_state();
  // The full moments' shard -> this rank's moments.
  void copy_full_state_to_shard();
  // SGD with momentum > 0: torch's momentum_buffer (zero before the first
  // step, which makes torch's "buf = g on the first step" the same update);
  // an empty arena otherwise.
  Arena& momentum_buffer() { return buf_; }
  const OptimizerConfig& config() const { return cfg_; }
  bool decays(const std::string& param_name) const;

 private:
  OptimizerConfig cfg_;
  LlamaModel& model_;
  Arena m_, v_, buf_;
  int64_t t_ = 0;
  bool sharded_ = false;
  OptimizerShard shard_;
  Arena full_m_, full_v_;
  Arena master_shard_;
};

// sqrt(sum of squares) over all gradients.
double grad_global_norm(LlamaModel& model);
// Sum of squares of the gradients in the flat range [lo, hi) (a shard).
double grad_sum_squares(LlamaModel& model, size_t lo, size_t hi);
// torch.nn.utils.clip_grad_norm_'s coefficient for a global norm: max_norm /
// (norm + 1e-6) when that is < 1 (and max_norm > 0), else 1 (no clipping).
float clip_coefficient(double norm, double max_norm);

}  // namespace rt
