// RoPE tables (model/rope.cpp, SPEC §4.1): inv_freq formula, precision at
// 1M-token positions, the relative-position property. The rope_scaling
// family (SPEC §4.2) is tested in test_model_rope_scaling.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "model/rope.h"

namespace {

rt::ModelConfig cfg(int head_dim, double theta = 10000.0) {
  rt::ModelConfig m;
  m.head_dim = head_dim;
  m.rope_theta = theta;
  return m;
}

TEST(Rope, InvFreqMatchesFormula) {
  for (int hd : {8, 64, 128}) {
    for (double theta : {10000.0, 500000.0}) {
      const auto inv = rt::rope_inv_freq(cfg(hd, theta), 4096);
      ASSERT_EQ(inv.size(), size_t(hd / 2));
      EXPECT_EQ(inv[0], 1.0);
      for (int j = 0; j < hd / 2; ++j) {
        const double want = 1.0 / std::pow(theta, 2.0 * j / hd);
        EXPECT_NEAR(inv[size_t(j)], want, 1e-15 * want) << hd << " " << j;
      }
    }
  }
  EXPECT_EQ(rt::rope_attention_factor(cfg(64)), 1.0);
}

TEST(Rope, TablesShapeAndOrigin) {
  const auto t = rt::make_rope_tables(cfg(16), 100, 5, 7);
  EXPECT_EQ(t.half, 8);
  EXPECT_EQ(t.pos_begin, 5);
  ASSERT_EQ(t.cos.size(), size_t(7 * 8));
  ASSERT_EQ(t.sin.size(), size_t(7 * 8));
  const auto t0 = rt::make_rope_tables(cfg(16), 100, 0, 1);
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(t0.cos[size_t(j)], 1.0f);
    EXPECT_EQ(t0.sin[size_t(j)], 0.0f);
  }
}

// Angles are formed in double from the exact integer position: at 1M tokens
// the fp32 tables agree with cos/sin evaluated in double to fp32 rounding.
TEST(Rope, PrecisionAtOneMillion) {
  const int hd = 128;
  const int64_t begin = 1000000 - 3, n = 8;
  const auto m = cfg(hd, 500000.0);
  const auto t = rt::make_rope_tables(m, 2000000, begin, n);
  double err = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < hd / 2; ++j) {
      const double inv = 1.0 / std::pow(500000.0, 2.0 * j / hd);
      const double a = double(begin + i) * inv;
      err = std::max(err, std::abs(double(t.cos[size_t(i * (hd / 2) + j)]) - std::cos(a)));
      err = std::max(err, std::abs(double(t.sin[size_t(i * (hd / 2) + j)]) - std::sin(a)));
    }
  EXPECT_LT(err, 1e-6);
}

// q' = q*cos + rotate_half(q)*sin, rotate_half(x) = cat(-x[h/2:], x[:h/2]).
std::vector<double> rotate(const std::vector<double>& x, const rt::RopeTables& t, int64_t pos) {
  const int half = t.half;
  const size_t row = size_t(pos - t.pos_begin) * size_t(half);
  std::vector<double> y(x.size());
  for (int j = 0; j < half; ++j) {
    const double c = t.cos[row + size_t(j)], s = t.sin[row + size_t(j)];
    y[size_t(j)] = x[size_t(j)] * c - x[size_t(j + half)] * s;
    y[size_t(j + half)] = x[size_t(j + half)] * c + x[size_t(j)] * s;
  }
  return y;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(Rope, ScoresDependOnlyOnRelativePosition) {
  const int hd = 64;
  const auto t = rt::make_rope_tables(cfg(hd), 1 << 20, 0, 5000);
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> q(hd), k(hd);
  for (auto& x : q) x = u(rng);
  for (auto& x : k) x = u(rng);
  const struct {
    int64_t m, n, c;
  } cases[] = {{10, 3, 100}, {0, 0, 4000}, {17, 40, 2500}, {4000, 1, 990}, {123, 123, 7}};
  for (const auto& cs : cases) {
    const double a = dot(rotate(q, t, cs.m), rotate(k, t, cs.n));
    const double b = dot(rotate(q, t, cs.m + cs.c), rotate(k, t, cs.n + cs.c));
    EXPECT_NEAR(a, b, 1e-5) << cs.m << " " << cs.n << " " << cs.c;
  }
  // and the rotation preserves norms (cos^2 + sin^2 = 1 in fp32)
  EXPECT_NEAR(dot(rotate(q, t, 4321), rotate(q, t, 4321)), dot(q, q), 1e-5);
}

}  // namespace
