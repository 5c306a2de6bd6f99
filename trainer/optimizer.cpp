#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>

namespace rt {

double learning_rate_at(const TrainConfig& t, int64_t step) {
  const ScheduleConfig& s = t.schedule;
  const double lr = t.optimizer.lr;
  if (step < s.warmup_steps) return lr * double(step + 1) / double(s.warmup_steps);
  if (s.type == "constant") return lr;
  const int64_t decay_steps = std::max<int64_t>(1, t.max_steps - s.warmup_steps);
  const double progress = std::min(1.0, double(step - s.warmup_steps) / double(decay_steps));
  if (s.type == "linear") return lr - (lr - s.min_lr) * progress;
  // cosine
  return s.min_lr + 0.5 * (lr - s.min_lr) * (1.0 + std::cos(M_PI * progress));
}

Optimizer::Optimizer(const OptimizerConfig& cfg, LlamaModel& model) : cfg_(cfg), model_(model) {
  if (cfg_.type == "adamw") {
    const std::vector<TensorSpec> specs = with_dtype(model.master().specs(), DType::kF32);
    m_ = Arena(model.backend(), "optimizer exp_avg", specs);
    v_ = Arena(model.backend(), "optimizer exp_avg_sq", specs);
    m_.zero();
    v_.zero();
  }
}

bool Optimizer::decays(const std::string& name) const {
  auto excluded = [&](const char* group) {
    return std::find(cfg_.no_decay.begin(), cfg_.no_decay.end(), group) != cfg_.no_decay.end();
  };
  switch (param_kind(name)) {
    case ParamKind::kNorm: return !excluded("norms");
    case ParamKind::kEmbedding: return !excluded("embeddings");
    default: return true;
  }
}

void Optimizer::step(float lr) {
  ++t_;
  Backend& be = model_.backend();
  // The fp32 master is updated; the compute copy (when it is another
  // arena) is written from it, rounded to its dtype, by the same op.
  Arena& master = model_.master();
  for (const TensorSpec& s : master.specs()) {
    float* p = master.f32(s);
    const Buf compute = model_.params().buf(s.name);
    const float* g = model_.grads().f32(s.name);
    const float wd = decays(s.name) ? float(cfg_.weight_decay) : 0.f;
    if (cfg_.type == "adamw") {
      AdamWStep h;
      h.lr = lr;
      h.beta1 = float(cfg_.beta1);
      h.beta2 = float(cfg_.beta2);
      h.eps = float(cfg_.eps);
      h.weight_decay = wd;
      h.step = t_;
      be.adamw_update(p, compute, g, m_.f32(s.name), v_.f32(s.name), s.numel, h);
    } else {
      be.sgd_update(p, compute, g, s.numel, lr, wd);
    }
  }
}

double grad_global_norm(LlamaModel& model) {
  return std::sqrt(
      model.backend().sum_squares(model.grads().f32_base(), model.grads().f32_numel()));
}

float clip_grad_norm(LlamaModel& model, double norm, double max_norm) {
  if (max_norm <= 0) return 1.f;
  double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return 1.f;
  model.backend().scale(model.grads().f32_base(), model.grads().f32_numel(), float(coef));
  return float(coef);
}

}  // namespace rt
