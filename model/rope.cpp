// Rotary position tables (SPEC §4.1) and the rope_scaling family (SPEC §4.2).
//
// Everything is computed in double. Notation follows SPEC §4.2: D = rotary
// dim (head_dim), b = rope_theta, L = original_max_position_embeddings,
// s = factor, n = the global sequence length, i in [0, D/2).
// One small function per rope_type; each returns the scaled inv_freq, and
// rope_attention_factor gives the cos/sin multiplier (yarn, longrope).
#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "common/errors.h"

namespace rt {
namespace {

using Freqs = std::vector<double>;

// inv_i = 1 / (ext_i * b^(2i/D)); ext = 1 unless given (longrope).
Freqs base_inv_freq(int D, double b, const std::vector<double>* ext = nullptr) {
  Freqs inv(size_t(D / 2));
  for (int i = 0; i < D / 2; ++i) {
    const double e = ext ? (*ext)[size_t(i)] : 1.0;
    inv[size_t(i)] = 1.0 / (e * std::pow(b, double(2 * i) / double(D)));
  }
  return inv;
}

int64_t original_len(const RopeScalingConfig& r) {
  RT_CHECK(r.original_max_position_embeddings.has_value(),
           "rope_scaling.original_max_position_embeddings must be resolved by the config");
  return *r.original_max_position_embeddings;
}

// NTK-aware base for an effective factor: b * f^(D/(D-2)).
double ntk_base(double b, double f, int D) {
  RT_CHECK(D > 2, "rope_scaling ntk/dynamic need a rotary dim > 2");
  return b * std::pow(f, double(D) / double(D - 2));
}

// linear (Position Interpolation): inv_i / s.
Freqs linear(const ModelConfig& m, const RopeScalingConfig& r) {
  Freqs inv = base_inv_freq(m.head_dim, m.rope_theta);
  for (double& x : inv) x /= r.factor;
  return inv;
}

// ntk (static NTK-aware): base b' = b * s^(D/(D-2)).
Freqs ntk(const ModelConfig& m, const RopeScalingConfig& r) {
  return base_inv_freq(m.head_dim, ntk_base(m.rope_theta, r.factor, m.head_dim));
}

// dynamic NTK: for n > L, b' = b * ((s*n/L) - (s-1))^(D/(D-2)); else unchanged.
Freqs dynamic(const ModelConfig& m, const RopeScalingConfig& r, int64_t n) {
  const int64_t L = original_len(r);
  if (n <= L) return base_inv_freq(m.head_dim, m.rope_theta);
  const double s = r.factor;
  const double f = (s * double(n) / double(L)) - (s - 1.0);
  return base_inv_freq(m.head_dim, ntk_base(m.rope_theta, f, m.head_dim));
}

// yarn: per-dim blend of interpolation (inv/s) and extrapolation (inv),
// linear ramp between the correction dims of beta_fast and beta_slow.
Freqs yarn(const ModelConfig& m, const RopeScalingConfig& r) {
  const int D = m.head_dim;
  const double b = m.rope_theta, s = r.factor, L = double(original_len(r));
  const auto corr = [&](double rot) {
    return double(D) * std::log(L / (2.0 * std::numbers::pi * rot)) / (2.0 * std::log(b));
  };
  const double low = std::max(std::floor(corr(r.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(r.beta_slow)), double(D - 1));
  if (low == high) high += 0.001;  // prevent a zero-width ramp
  Freqs inv = base_inv_freq(D, b);
  for (int i = 0; i < D / 2; ++i) {
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double w = 1.0 - ramp;  // extrapolation weight
    double& x = inv[size_t(i)];
    x = (x / s) * (1.0 - w) + x * w;
  }
  return inv;
}

// llama3: long wavelengths interpolated (inv/s), short kept, smooth between.
Freqs llama3(const ModelConfig& m, const RopeScalingConfig& r) {
  const double s = r.factor, L = double(original_len(r));
  const double lo = r.low_freq_factor, hi = r.high_freq_factor;
  Freqs inv = base_inv_freq(m.head_dim, m.rope_theta);
  for (double& x : inv) {
    const double wavelen = 2.0 * std::numbers::pi / x;
    if (wavelen > L / lo) {
      x = x / s;
    } else if (wavelen >= L / hi) {
      const double smooth = (L / wavelen - lo) / (hi - lo);
      x = (1.0 - smooth) * x / s + smooth * x;
    }  // wavelen < L/hi: unchanged
  }
  return inv;
}

// longrope: inv_i = 1/(ext_i * b^(2i/D)), ext = long_factor if n > L else short_factor.
Freqs longrope(const ModelConfig& m, const RopeScalingConfig& r, int64_t n) {
  const std::vector<double>& ext = n > original_len(r) ? r.long_factor : r.short_factor;
  RT_CHECK(ext.size() == size_t(m.head_dim / 2),
           "rope_scaling longrope: short_factor/long_factor need head_dim/2 entries");
  return base_inv_freq(m.head_dim, m.rope_theta, &ext);
}

// YaRN's mscale(s, m) = 0.1*m*ln(s) + 1 for s > 1, else 1.
double yarn_mscale(double s, double m = 1.0) { return s <= 1.0 ? 1.0 : 0.1 * m * std::log(s) + 1.0; }

}  // namespace

std::vector<double> rope_inv_freq(const ModelConfig& m, int64_t seq_len) {
  RT_CHECK(m.head_dim > 0, "rope: head_dim must be resolved (> 0)");
  RT_CHECK(m.head_dim % 2 == 0, "rope: head_dim must be even");
  if (!m.rope_scaling) return base_inv_freq(m.head_dim, m.rope_theta);
  const RopeScalingConfig& r = *m.rope_scaling;
  const std::string& t = r.rope_type;
  if (t == "linear") return linear(m, r);
  if (t == "ntk") return ntk(m, r);
  if (t == "dynamic") return dynamic(m, r, seq_len);
  if (t == "yarn") return yarn(m, r);
  if (t == "llama3") return llama3(m, r);
  if (t == "longrope") return longrope(m, r, seq_len);
  throw UsageError("model.rope_scaling.rope_type: unknown type '" + t +
                   "' (linear | ntk | dynamic | yarn | llama3 | longrope)");
}

double rope_attention_factor(const ModelConfig& m) {
  if (!m.rope_scaling) return 1.0;
  const RopeScalingConfig& r = *m.rope_scaling;
  const double s = r.factor;
  if (r.rope_type == "yarn") {
    if (r.attention_factor) return *r.attention_factor;
    if (r.mscale && r.mscale_all_dim)
      return yarn_mscale(s, *r.mscale) / yarn_mscale(s, *r.mscale_all_dim);
    return yarn_mscale(s);
  }
  if (r.rope_type == "longrope") {
    if (r.attention_factor) return *r.attention_factor;
    if (s <= 1.0) return 1.0;
    const int64_t L = original_len(r);
    if (L <= 1)  // ln(L) = 0: the default factor is undefined
      throw UsageError("model.rope_scaling.original_max_position_embeddings(" + std::to_string(L) +
                       ") must be > 1 for longrope without attention_factor");
    return std::sqrt(1.0 + std::log(s) / std::log(double(L)));
  }
  return 1.0;  // linear, ntk, dynamic, llama3
}

RopeTables make_rope_tables(const ModelConfig& m, int64_t seq_len, int64_t pos_begin, int64_t n) {
  RT_CHECK(n >= 0 && pos_begin >= 0, "rope: bad position range");
  const std::vector<double> inv = rope_inv_freq(m, seq_len);
  const double af = rope_attention_factor(m);
  RopeTables t;
  t.half = int(inv.size());
  t.pos_begin = pos_begin;
  const size_t half = inv.size();
  t.cos.resize(size_t(n) * half);
  t.sin.resize(size_t(n) * half);
  for (int64_t i = 0; i < n; ++i) {
    const double pos = double(pos_begin + i);  // exact for positions < 2^53
    for (size_t j = 0; j < half; ++j) {
      const double angle = pos * inv[j];
      t.cos[size_t(i) * half + j] = float(std::cos(angle) * af);
      t.sin[size_t(i) * half + j] = float(std::sin(angle) * af);
    }
  }
  return t;
}

}  // namespace rt
