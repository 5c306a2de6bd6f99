// Rotary position tables (SPEC §4.1). The scaling family (SPEC §4.2) lands
// in rope_inv_freq / rope_attention_factor; until then a configured
// rope_scaling is rejected with a usage error.
#include "model/rope.h"

#include <cmath>
#include <string>

#include "common/errors.h"

namespace rt {

static void check_scaling_supported(const ModelConfig& m) {
  if (m.rope_scaling) {
    throw UsageError("model.rope_scaling: rope_type '" + m.rope_scaling->rope_type +
                     "' is not implemented yet");
  }
}

std::vector<double> rope_inv_freq(const ModelConfig& m, int64_t seq_len) {
  (void)seq_len;  // only dynamic scaling depends on it
  RT_CHECK(m.head_dim > 0, "rope: head_dim must be resolved (> 0)");
  RT_CHECK(m.head_dim % 2 == 0, "rope: head_dim must be even");
  check_scaling_supported(m);
  const int half = m.head_dim / 2;
  const double D = double(m.head_dim);
  std::vector<double> inv(size_t(half), 0.0);
  for (int j = 0; j < half; ++j) inv[size_t(j)] = 1.0 / std::pow(m.rope_theta, double(2 * j) / D);
  return inv;
}

double rope_attention_factor(const ModelConfig& m) {
  check_scaling_supported(m);
  return 1.0;
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
