#include "trainer/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/errors.h"

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
  } else if (cfg_.momentum > 0) {
    buf_ = Arena(model.backend(), "optimizer momentum_buffer",
                 with_dtype(model.master().specs(), DType::kF32));
    buf_.zero();
  }
}

Optimizer::Optimizer(const OptimizerConfig& cfg, LlamaModel& model, OptimizerShard shard)
    : cfg_(cfg), model_(model), sharded_(true), shard_(shard) {
  RT_CHECK(shard.lo <= shard.hi && shard.hi <= model.master().f32_numel(),
           "optimizer shard outside the master arena");
  RT_CHECK(model.master().f32_numel() == model.grads().f32_numel(),
           "master weights and gradients must share one flat layout");
  if (cfg_.type == "sgd" && cfg_.momentum > 0)
    throw UsageError("train.optimizer.momentum with a sharded optimizer is not supported yet (the "
                     "momentum buffer is not sharded): set parallel.shard_optimizer: false");
  if (cfg_.type == "adamw") {
    const std::vector<TensorSpec> specs = {
        {"shard", {int64_t(shard.hi - shard.lo)}, DType::kF32}};
    m_ = Arena(model.backend(), "optimizer exp_avg shard", specs);
    v_ = Arena(model.backend(), "optimizer exp_avg_sq shard", specs);
    m_.zero();
    v_.zero();
  }
  if (model.precision().master_weights) {
    master_shard_ = Arena(model.backend(), "master weights shard",
                          {{"shard", {int64_t(shard.hi - shard.lo)}, DType::kF32}});
    take_master_shard();
  }
}

void Optimizer::take_master_shard() {
  if (!owns_master()) return;
  model_.backend().copy(Buf(master_shard_.f32_base()),
                        CBuf(model_.master().f32_base() + shard_.lo), shard_.hi - shard_.lo);
}

void Optimizer::allocate_full_state() {
  if (!sharded_ || cfg_.type != "adamw") return;
  const std::vector<TensorSpec> specs = with_dtype(model_.grads().specs(), DType::kF32);
  full_m_ = Arena(model_.backend(), "optimizer exp_avg (gathered)", specs);
  full_v_ = Arena(model_.backend(), "optimizer exp_avg_sq (gathered)", specs);
  full_m_.zero();
  full_v_.zero();
}

void Optimizer::release_full_state() {
  full_m_ = Arena();
  full_v_ = Arena();
}

void Optimizer::copy_full_state_to_shard() {
  if (!sharded_ || cfg_.type != "adamw") return;
  const size_t n = shard_.hi - shard_.lo;
  Backend& be = model_.backend();
  be.copy(Buf(m_.f32_base()), CBuf(full_m_.f32_base() + shard_.lo), n);
  be.copy(Buf(v_.f32_base()), CBuf(full_v_.f32_base() + shard_.lo), n);
}

bool Optimizer::decays(const std::string& name) const {
  auto excluded = [&](const char* group) {
    return std::find(cfg_.no_decay.begin(), cfg_.no_decay.end(), group) != cfg_.no_decay.end();
  };
  switch (param_kind(name)) {
    case ParamKind::kNorm: return !excluded("norms");
    case ParamKind::kEmbedding: return !excluded("embeddings");
    case ParamKind::kMemoryLayer: return false;  // gates, compression (docs/memory.md)
    default: return true;
  }
}

void Optimizer::step(float lr, float grad_scale) {
  ++t_;
  Backend& be = model_.backend();
  // The fp32 master is updated; the compute copy (when it is another
  // arena) is written from it, rounded to its dtype, by the same op.
  // Sharded: only the part of each tensor inside the shard (elements of the
  // flat arena; the moments are indexed from the shard's start).
  // (The gradient arena's table: the master's fp32 layout, also when the
  // optimizer holds the master shard and the model's copy is released.)
  Arena& master = model_.master();
  std::vector<AdamWSegment> segments;  // AdamW: every tensor in one call
  for (const TensorSpec& s : model_.grads().specs()) {
    size_t a = 0, b = s.numel;
    float *m = nullptr, *v = nullptr;
    if (sharded_) {
      const size_t base = s.offset_bytes / sizeof(float);
      a = std::max(base, shard_.lo) - base;
      b = std::min(base + s.numel, shard_.hi);
      if (b <= base + a) continue;
      b -= base;
      if (cfg_.type == "adamw") {
        m = m_.f32_base() + (base + a - shard_.lo);
        v = v_.f32_base() + (base + a - shard_.lo);
      }
    } else if (cfg_.type == "adamw") {
      m = m_.f32(s.name);
      v = v_.f32(s.name);
    }
    float* p = owns_master()
                   ? master_shard_.f32_base() + (s.offset_bytes / sizeof(float) + a - shard_.lo)
                   : master.f32(s.name) + a;
    const Buf compute = at(model_.params().buf(s.name), a);
    float* g = model_.grads().f32(s.name) + a;
    if (cfg_.type != "adamw" && grad_scale != 1.f) be.scale(g, b - a, grad_scale);
    const float wd = decays(s.name) ? float(cfg_.weight_decay) : 0.f;
    if (cfg_.type == "adamw") {
      segments.push_back({p, compute, g, m, v, b - a, wd});
    } else if (cfg_.momentum > 0) {  // unsharded only (the constructor refuses sharding)
      be.sgd_momentum_update(p, compute, g, buf_.f32(s.name) + a, b - a, lr, wd,
                             float(cfg_.momentum));
    } else {
      be.sgd_update(p, compute, g, b - a, lr, wd);
    }
  }
  if (!segments.empty()) {
    AdamWStep h;
    h.lr = lr;
    h.beta1 = float(cfg_.beta1);
    h.beta2 = float(cfg_.beta2);
    h.eps = float(cfg_.eps);
    h.step = t_;
    h.grad_scale = grad_scale;
    be.adamw_update_segments(segments.data(), int(segments.size()), h);
  }
}

double grad_global_norm(LlamaModel& model) {
  return std::sqrt(
      model.backend().sum_squares(model.grads().f32_base(), model.grads().f32_numel()));
}

float clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0) return 1.f;
  const double coef = max_norm / (norm + 1e-6);
  return coef >= 1.0 ? 1.f : float(coef);
}

double grad_sum_squares(LlamaModel& model, size_t lo, size_t hi) {
  return hi > lo ? model.backend().sum_squares(model.grads().f32_base() + lo, hi - lo) : 0.0;
}

}  // namespace rt
