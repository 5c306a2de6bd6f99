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
    m_ = Arena(model.backend(), "optimizer exp_avg", model.params().specs());
    v_ = Arena(model.backend(), "optimizer exp_avg_sq", model.params().specs());
    m_.zero();
    v_.zero();
  } else if (cfg_.momentum > 0) {
    buf_ = Arena(model.backend(), "optimizer momentum_buffer", model.params().specs());
    buf_.zero();
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
  for (const TensorSpec& s : model_.params().specs()) {
    float* p = model_.params().base() + s.offset;
    const float* g = model_.grads().base() + s.offset;
    const float wd = decays(s.name) ? float(cfg_.weight_decay) : 0.f;
    if (cfg_.type == "adamw") {
      be.adamw_update(p, g, m_.base() + s.offset, v_.base() + s.offset, s.numel, lr,
                      float(cfg_.beta1), float(cfg_.beta2), float(cfg_.eps), wd, t_);
    } else if (cfg_.momentum > 0) {
      be.sgd_momentum_update(p, g, buf_.base() + s.offset, s.numel, lr, wd, float(cfg_.momentum));
    } else {
      be.sgd_update(p, g, s.numel, lr, wd);
    }
  }
}

double grad_global_norm(LlamaModel& model) {
  return std::sqrt(model.backend().sum_squares(model.grads().base(), model.grads().numel()));
}

float clip_grad_norm(LlamaModel& model, double norm, double max_norm) {
  if (max_norm <= 0) return 1.f;
  double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return 1.f;
  model.backend().scale(model.grads().base(), model.grads().numel(), float(coef));
  return float(coef);
}

}  // namespace rt
