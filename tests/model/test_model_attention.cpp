// Blocked CPU attention (model/cpu/attention.cpp) against a naive float64
// reference: forward out/lse, backward dq/dk/dv (analytic, checked itself by
// central finite differences), masking with block offsets, GQA, ALiBi, and
// the block-merge identities ring attention relies on (SPEC §6).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention_reference.h"
#include "model/cpu/attention.h"

namespace {

using rt::AttentionParams;
using std::vector;
using rt::testing::Ref;

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Case {
  std::string name;
  int B, Tq, Tk, H, G, hd;
  int64_t q_offset, k_offset;
  bool causal, alibi;
};

// Standard ALiBi-like slopes, 2^(-8(k+1)/H).
vector<float> slopes_for(int H) {
  vector<float> s(size_t(H), 0.f);
  for (int h = 0; h < H; ++h) s[size_t(h)] = float(std::pow(2.0, -8.0 * (h + 1) / H));
  return s;
}

AttentionParams params_of(const Case& c, const vector<float>& slopes) {
  AttentionParams p;
  p.B = c.B;
  p.Tq = c.Tq;
  p.Tk = c.Tk;
  p.H = c.H;
  p.G = c.G;
  p.hd = c.hd;
  p.q_offset = c.q_offset;
  p.k_offset = c.k_offset;
  p.causal = c.causal;
  p.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  p.scale = float(1.0 / std::sqrt(double(c.hd)));
  return p;
}

vector<float> rand_vec(size_t n, std::mt19937& rng, float lo = -1.5f, float hi = 1.5f) {
  std::uniform_real_distribution<float> u(lo, hi);
  vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

vector<double> to_d(const vector<float>& v) { return vector<double>(v.begin(), v.end()); }

double max_abs(const vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::abs(x));
  return m;
}

// max |got - want| / max(max|want|, floor)
double rel_err(const vector<float>& got, const vector<double>& want, double floor = 1e-3) {
  EXPECT_EQ(got.size(), want.size());
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::max(e, std::abs(double(got[i]) - want[i]));
  return e / std::max(max_abs(want), floor);
}

void expect_lse(const vector<float>& got, const vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (want[i] == -kInf) {
      ASSERT_EQ(double(got[i]), -kInf) << "lse[" << i << "] should be -inf";
    } else {
      ASSERT_TRUE(std::isfinite(got[i])) << "lse[" << i << "]";
      ASSERT_NEAR(double(got[i]), want[i], tol * std::max(1.0, std::abs(want[i]))) << i;
    }
  }
}

struct Data {
  vector<float> q, k, v, dout;
};

Data make_data(const AttentionParams& p, uint32_t seed) {
  std::mt19937 rng(seed);
  Data d;
  d.q = rand_vec(size_t(p.B) * p.Tq * p.H * p.hd, rng);
  d.k = rand_vec(size_t(p.B) * p.Tk * p.G * p.hd, rng);
  d.v = rand_vec(size_t(p.B) * p.Tk * p.G * p.hd, rng);
  d.dout = rand_vec(size_t(p.B) * p.Tq * p.H * p.hd, rng);
  return d;
}

// ---- forward + backward against the reference ----------------------------

class AttentionVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionVsReference, ForwardAndBackward) {
  const Case c = GetParam();
  const vector<float> slopes = slopes_for(c.H);
  const AttentionParams p = params_of(c, slopes);
  const Data d = make_data(p, 1234u + uint32_t(c.Tq * 7 + c.hd));
  const Ref ref{p};

  vector<double> rout, rlse;
  ref.forward(to_d(d.q), to_d(d.k), to_d(d.v), rout, rlse);

  vector<float> out(d.q.size(), 7.f), lse(size_t(p.B) * p.H * p.Tq, 7.f);
  rt::cpu::attention_forward(p, out.data(), lse.data(), d.q.data(), d.k.data(), d.v.data());
  EXPECT_LT(rel_err(out, rout), 2e-5) << c.name;
  expect_lse(lse, rlse, 2e-6);

  // Backward accumulates (+=) into non-zero buffers.
  std::mt19937 rng(99);
  const vector<float> dq0 = rand_vec(d.q.size(), rng), dk0 = rand_vec(d.k.size(), rng),
                      dv0 = rand_vec(d.v.size(), rng);
  vector<float> dq = dq0, dk = dk0, dv = dv0;
  rt::cpu::attention_backward(p, dq.data(), dk.data(), dv.data(), d.dout.data(), d.q.data(),
                              d.k.data(), d.v.data(), out.data(), lse.data());
  for (size_t i = 0; i < dq.size(); ++i) dq[i] -= dq0[i];
  for (size_t i = 0; i < dk.size(); ++i) dk[i] -= dk0[i];
  for (size_t i = 0; i < dv.size(); ++i) dv[i] -= dv0[i];

  vector<double> rdq, rdk, rdv;
  ref.backward(to_d(d.dout), to_d(d.q), to_d(d.k), to_d(d.v), rout, rlse, rdq, rdk, rdv);
  // Gradients are O(0.1..1) here; the floor covers cases whose exact dq/dk
  // vanish (a single visible key) and the rounding of the += into dq0.
  const double ef = rel_err(out, rout), eq = rel_err(dq, rdq, 1e-2), ek = rel_err(dk, rdk, 1e-2),
               ev = rel_err(dv, rdv, 1e-2);
  if (std::getenv("RT_ATTN_VERBOSE"))
    std::printf("%s: out %.2e dq %.2e dk %.2e dv %.2e\n", c.name.c_str(), ef, eq, ek, ev);
  EXPECT_LT(eq, 1e-4) << c.name << " dq";
  EXPECT_LT(ek, 1e-4) << c.name << " dk";
  EXPECT_LT(ev, 1e-4) << c.name << " dv";
}

const Case kCases[] = {
    // name, B, Tq, Tk, H, G, hd, q_off, k_off, causal, alibi
    {"mha_causal_T67_hd16", 2, 67, 67, 4, 4, 16, 0, 0, true, false},
    {"gqa2_causal_T130_hd32", 2, 130, 130, 4, 2, 32, 0, 0, true, false},
    {"mqa_causal_T257_hd64", 1, 257, 257, 4, 1, 64, 0, 0, true, false},
    {"gqa2_noncausal_T130_hd32", 2, 130, 130, 4, 2, 32, 0, 0, false, false},
    {"mqa_noncausal_T67_hd64", 1, 67, 67, 4, 1, 64, 0, 0, false, false},
    {"alibi_causal_T130_hd16", 2, 130, 130, 4, 2, 16, 0, 0, true, true},
    {"alibi_noncausal_T67_hd32", 1, 67, 67, 4, 4, 32, 0, 0, false, true},
    {"alibi_mqa_causal_T257_hd64", 1, 257, 257, 4, 1, 64, 0, 0, true, true},
    // ring blocks: queries after keys -> everything visible
    {"block_q_after_k", 2, 70, 130, 4, 2, 32, 130, 0, true, true},
    // keys after queries -> fully masked: out 0, lse -inf, no gradient
    {"block_k_after_q", 2, 64, 67, 4, 2, 16, 0, 64, true, false},
    // diagonal block far into the sequence
    {"block_diag_offset", 1, 100, 100, 4, 2, 32, 1000, 1000, true, true},
    // partial overlap: keys extend past the last query
    {"block_partial_keys_past", 1, 90, 130, 4, 4, 16, 50, 0, true, false},
    // first 30 queries see nothing, rest partially
    {"block_partial_leading_masked", 2, 130, 67, 4, 1, 32, 0, 30, true, true},
    // hd 128: smaller query tiles
    {"gqa2_causal_T100_hd128", 1, 100, 100, 4, 2, 128, 0, 0, true, true},
    // tiny and odd shapes
    {"tiny_T1", 1, 1, 1, 2, 1, 16, 0, 0, true, false},
    {"T_q_not_k_noncausal", 1, 33, 200, 4, 2, 16, 5, 900, false, true},
};

INSTANTIATE_TEST_SUITE_P(Cases, AttentionVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& tp) { return tp.param.name; });

TEST(Attention, FullyMaskedBlockLeavesGradientsAndZeroesOutput) {
  const Case c{"m", 1, 40, 50, 2, 1, 16, 0, 40, true, false};
  const vector<float> slopes = slopes_for(c.H);
  const AttentionParams p = params_of(c, slopes);
  const Data d = make_data(p, 5);
  vector<float> out(d.q.size(), 3.f), lse(size_t(p.H) * p.Tq, 3.f);
  rt::cpu::attention_forward(p, out.data(), lse.data(), d.q.data(), d.k.data(), d.v.data());
  for (float x : out) ASSERT_EQ(x, 0.f);
  for (float x : lse) ASSERT_EQ(x, -std::numeric_limits<float>::infinity());
  vector<float> dq(d.q.size(), 1.f), dk(d.k.size(), 2.f), dv(d.v.size(), 3.f);
  rt::cpu::attention_backward(p, dq.data(), dk.data(), dv.data(), d.dout.data(), d.q.data(),
                              d.k.data(), d.v.data(), out.data(), lse.data());
  for (float x : dq) ASSERT_EQ(x, 1.f);
  for (float x : dk) ASSERT_EQ(x, 2.f);
  for (float x : dv) ASSERT_EQ(x, 3.f);
}

// The reference backward (and the kernel) against central finite differences
// of loss = sum(out * W), all in double.
TEST(Attention, GradientsMatchFiniteDifferences) {
  const Case c{"fd", 1, 21, 21, 4, 2, 8, 3, 0, true, true};
  const vector<float> slopes = slopes_for(c.H);
  const AttentionParams p = params_of(c, slopes);
  const Data d = make_data(p, 77);
  const Ref ref{p};
  const vector<double> W = to_d(d.dout);
  vector<double> q = to_d(d.q), k = to_d(d.k), v = to_d(d.v);
  auto loss = [&]() {
    vector<double> o, l;
    ref.forward(q, k, v, o, l);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * W[i];
    return s;
  };
  vector<double> rout, rlse, rdq, rdk, rdv;
  ref.forward(q, k, v, rout, rlse);
  ref.backward(W, q, k, v, rout, rlse, rdq, rdk, rdv);

  vector<float> out(d.q.size()), lse(size_t(p.H) * p.Tq);
  rt::cpu::attention_forward(p, out.data(), lse.data(), d.q.data(), d.k.data(), d.v.data());
  vector<float> dq(d.q.size(), 0.f), dk(d.k.size(), 0.f), dv(d.v.size(), 0.f);
  rt::cpu::attention_backward(p, dq.data(), dk.data(), dv.data(), d.dout.data(), d.q.data(),
                              d.k.data(), d.v.data(), out.data(), lse.data());

  const double h = 1e-5;
  std::mt19937 rng(3);
  auto check = [&](vector<double>& x, const vector<double>& rg, const vector<float>& kg,
                   const char* what) {
    std::uniform_int_distribution<size_t> pick(0, x.size() - 1);
    for (int n = 0; n < 12; ++n) {
      const size_t i = pick(rng);
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = loss();
      x[i] = x0 - h;
      const double lm = loss();
      x[i] = x0;
      const double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(rg[i], fd, 1e-7 + 1e-6 * std::abs(fd)) << what << "[" << i << "] reference";
      EXPECT_NEAR(double(kg[i]), fd, 2e-5 * std::max(1.0, std::abs(fd))) << what << "[" << i << "]";
    }
  };
  check(q, rdq, dq, "dq");
  check(k, rdk, dk, "dk");
  check(v, rdv, dv, "dv");
}

// Ring attention: the keys split into two blocks, each call's (out, lse)
// merged by log-sum-exp equals the single call; the backward of the blocks
// with the global out/lse adds up to the single-call backward.
TEST(Attention, TwoKeyBlocksMergeToSingleCall) {
  for (bool alibi : {false, true}) {
    const int B = 2, T = 150, H = 4, G = 2, hd = 32, split = 70;
    const int64_t qoff = 40;  // queries are rows [40, 150) of the sequence
    const Case whole{"whole", B, T - int(qoff), T, H, G, hd, qoff, 0, true, alibi};
    const vector<float> slopes = slopes_for(H);
    const AttentionParams p = params_of(whole, slopes);
    const Data d = make_data(p, 11);
    const size_t nq = d.q.size(), nl = size_t(B) * H * p.Tq;

    vector<float> out(nq), lse(nl);
    rt::cpu::attention_forward(p, out.data(), lse.data(), d.q.data(), d.k.data(), d.v.data());

    // Key blocks [0, split) and [split, T), as contiguous (B, Tk_i, G, hd) tensors.
    auto slice = [&](const vector<float>& x, int j0, int j1) {
      vector<float> s;
      for (int b = 0; b < B; ++b)
        s.insert(s.end(), x.begin() + ((size_t(b) * T + size_t(j0)) * G * hd),
                 x.begin() + ((size_t(b) * T + size_t(j1)) * G * hd));
      return s;
    };
    AttentionParams p1 = p, p2 = p;
    p1.Tk = split;
    p1.k_offset = 0;
    p2.Tk = T - split;
    p2.k_offset = split;
    const vector<float> k1 = slice(d.k, 0, split), v1 = slice(d.v, 0, split);
    const vector<float> k2 = slice(d.k, split, T), v2 = slice(d.v, split, T);
    vector<float> o1(nq), l1(nl), o2(nq), l2(nl);
    rt::cpu::attention_forward(p1, o1.data(), l1.data(), d.q.data(), k1.data(), v1.data());
    rt::cpu::attention_forward(p2, o2.data(), l2.data(), d.q.data(), k2.data(), v2.data());

    // Some rows of block 2 are fully masked (queries 40..69 see no key >= 70).
    int masked = 0;
    for (float x : l2) masked += (x == -std::numeric_limits<float>::infinity());
    EXPECT_EQ(masked, B * H * (split - int(qoff)));

    double err_o = 0, err_l = 0;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < p.Tq; ++i) {
          const size_t li = (size_t(b) * H + size_t(h)) * p.Tq + size_t(i);
          const float a = l1[li], c = l2[li];
          const float m = std::max(a, c);
          const float lm = m + std::log(std::exp(a - m) + std::exp(c - m));
          const float w1 = std::exp(a - lm), w2 = std::exp(c - lm);
          err_l = std::max(err_l, double(std::abs(lm - lse[li])));
          for (int e = 0; e < hd; ++e) {
            const size_t oi = ((size_t(b) * p.Tq + size_t(i)) * H + size_t(h)) * hd + size_t(e);
            err_o = std::max(err_o, double(std::abs(w1 * o1[oi] + w2 * o2[oi] - out[oi])));
          }
        }
    EXPECT_LT(err_o, 2e-6);
    EXPECT_LT(err_l, 2e-6);

    // Backward.
    vector<float> dq(nq, 0.f), dk(d.k.size(), 0.f), dv(d.v.size(), 0.f);
    rt::cpu::attention_backward(p, dq.data(), dk.data(), dv.data(), d.dout.data(), d.q.data(),
                                d.k.data(), d.v.data(), out.data(), lse.data());
    vector<float> dqs(nq, 0.f), dk1(k1.size(), 0.f), dv1(v1.size(), 0.f), dk2(k2.size(), 0.f),
        dv2(v2.size(), 0.f);
    rt::cpu::attention_backward(p1, dqs.data(), dk1.data(), dv1.data(), d.dout.data(), d.q.data(),
                                k1.data(), v1.data(), out.data(), lse.data());
    rt::cpu::attention_backward(p2, dqs.data(), dk2.data(), dv2.data(), d.dout.data(), d.q.data(),
                                k2.data(), v2.data(), out.data(), lse.data());
    auto max_diff = [](const vector<float>& a, const vector<float>& b) {
      double m = 0, s = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        m = std::max(m, double(std::abs(a[i] - b[i])));
        s = std::max(s, double(std::abs(b[i])));
      }
      return m / std::max(s, 1e-3);
    };
    EXPECT_LT(max_diff(dqs, dq), 1e-5);
    EXPECT_LT(max_diff(dk1, slice(dk, 0, split)), 1e-6);
    EXPECT_LT(max_diff(dk2, slice(dk, split, T)), 1e-6);
    EXPECT_LT(max_diff(dv1, slice(dv, 0, split)), 1e-6);
    EXPECT_LT(max_diff(dv2, slice(dv, split, T)), 1e-6);
  }
}

// Every output element is computed by the same float operations whatever the
// thread count: results are bitwise identical for 1 and 2 threads.
TEST(Attention, BitwiseIdenticalAcrossThreadCounts) {
  const Case c{"thr", 2, 300, 300, 4, 2, 32, 0, 0, true, true};
  const vector<float> slopes = slopes_for(c.H);
  const AttentionParams p = params_of(c, slopes);
  const Data d = make_data(p, 21);
  auto run = [&](int threads, vector<float>& out, vector<float>& lse, vector<float>& dq,
                 vector<float>& dk, vector<float>& dv) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    out.assign(d.q.size(), 0.f);
    lse.assign(size_t(p.B) * p.H * p.Tq, 0.f);
    dq.assign(d.q.size(), 0.f);
    dk.assign(d.k.size(), 0.f);
    dv.assign(d.v.size(), 0.f);
    rt::cpu::attention_forward(p, out.data(), lse.data(), d.q.data(), d.k.data(), d.v.data());
    rt::cpu::attention_backward(p, dq.data(), dk.data(), dv.data(), d.dout.data(), d.q.data(),
                                d.k.data(), d.v.data(), out.data(), lse.data());
    omp_set_num_threads(saved);
  };
  vector<float> o1, l1, q1, k1, v1, o2, l2, q2, k2, v2;
  run(1, o1, l1, q1, k1, v1);
  run(2, o2, l2, q2, k2, v2);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(v1, v2);
}

}  // namespace
