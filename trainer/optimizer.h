// AdamW (decoupled weight decay) and SGD over the parameter arena, the
// learning-rate schedule, and global-norm clipping.
#pragma once

#include <cstdint>
#include <string>

#include "model/arena.h"
#include "model/llama.h"
#include "trainer/config.h"

namespace rt {

// lr at 0-based step: linear warm-up over warmup_steps to optimizer.lr, then
// constant, linear or cosine decay to schedule.min_lr at max_steps.
double learning_rate_at(const TrainConfig& t, int64_t step);

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& cfg, LlamaModel& model);

  // One update with the model's gradients (already clipped). Counts steps.
  void step(float lr);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // AdamW moments (same layout as the parameters); empty arenas for SGD.
  Arena& exp_avg() { return m_; }
  Arena& exp_avg_sq() { return v_; }
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
};

// sqrt(sum of squares) over all gradients.
double grad_global_norm(LlamaModel& model);
// torch.nn.utils.clip_grad_norm_ semantics: scale by max_norm/(norm+1e-6) when
// that is < 1. Returns the scale applied (1 when not clipped).
float clip_grad_norm(LlamaModel& model, double norm, double max_norm);

}  // namespace rt
