// The check of the fused attention kernels (model/cuda/attention.cu) against
// the CPU block attention (model/cpu/attention.cpp, itself checked against
// float64 naive attention in test_model_attention), shared by the GPU test
// (test_model_cuda_attention: the kernels on a CUDA device) and the emulator
// test (test_model_cuda_emu_attention: the same source on the CPU fiber
// emulator, model/cuda/emu/). A KernelRunner moves host vectors to wherever
// the kernels run and back.
//
// Both sides see the same values: inputs are drawn fresh on every run (never
// zeros; the seed is printed with any failure; RT_TEST_SEED=<seed> replays
// one), rounded to bf16, and the CPU runs in fp32 on the rounded values.
// Forward outputs are poisoned (bf16 NaN, fp32 NaN) before the kernel runs, so
// an unwritten element fails the finiteness check. The backward accumulates
// into buffers pre-filled with random values on both sides; the increments
// are compared, so a gradient that is never written shows as error 1.
//
// Tolerances (bf16 operands, fp32 accumulation):
//   out      ||gpu - cpu|| / ||cpu|| < 1e-2, and |gpu - cpu| <= 0.03 + 0.02|cpu|
//            per element (out is rounded to bf16: 2^-9 relative);
//   lse      |gpu - cpu| <= 2e-3 (fp32 statistics; -inf exactly where the CPU has it);
//   dq,dk,dv ||gpu - cpu|| / ||cpu|| < 2e-2 (P and dS are rounded to bf16 before
//            the second products, as in FlashAttention-2).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/tensor.h"

namespace rt_test {

using rt::AttentionParams;
using std::vector;

struct AttnCase {
  std::string name;
  int B, Tq, Tk, H, G, hd;
  int64_t q_offset, k_offset;
  bool causal, alibi;
  float q_gain = 1.f;  // > 1: peakier softmax
};
inline std::ostream& operator<<(std::ostream& os, const AttnCase& c) { return os << c.name; }

inline vector<float> slopes_for(int H) {
  vector<float> s(static_cast<size_t>(H));
  for (int h = 0; h < H; ++h) s[size_t(h)] = float(std::pow(2.0, -8.0 * (h + 1) / H));
  return s;
}

// The kernels' parameters for c (its ALiBi slopes aside).
inline AttentionParams params_of(const AttnCase& c) {
  AttentionParams p;
  p.B = c.B, p.Tq = c.Tq, p.Tk = c.Tk, p.H = c.H, p.G = c.G, p.hd = c.hd;
  p.q_offset = c.q_offset, p.k_offset = c.k_offset, p.causal = c.causal;
  p.scale = float(1.0 / std::sqrt(double(c.hd)));
  return p;
}

// Random values already representable in bf16: (float copy, bf16 bits).
inline void rand_bf16(size_t n, std::mt19937& rng, float gain, vector<float>* f,
                      vector<uint16_t>* b) {
  std::normal_distribution<float> nd(0.f, gain);
  f->resize(n);
  b->resize(n);
  for (size_t i = 0; i < n; ++i) {
    float x = nd(rng);
    if (x == 0.f) x = 0.5f;
    (*b)[i] = rt::f32_to_bf16(x);
    (*f)[i] = rt::bf16_to_f32((*b)[i]);
  }
}

inline double rel_err(const vector<float>& a, const vector<float>& ref, const vector<float>* base) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double r = base ? double(ref[i]) - (*base)[i] : ref[i];
    const double x = base ? double(a[i]) - (*base)[i] : a[i];
    num += (x - r) * (x - r);
    den += r * r;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline size_t count_nonfinite(const vector<float>& a) {
  size_t n = 0;
  for (float x : a) n += !std::isfinite(x);
  return n;
}

// Runs the kernels on host vectors (p.alibi_slopes is a host pointer or null;
// the runner passes the kernels its own copy). via_op: through the typed op
// contract (attention_forward_op / attention_backward_op) instead of the
// bf16 entry points: the same kernels.
class KernelRunner {
 public:
  virtual ~KernelRunner() = default;
  virtual void forward(const AttentionParams& p, const vector<uint16_t>& q,
                       const vector<uint16_t>& k, const vector<uint16_t>& v,
                       vector<uint16_t>* out, vector<float>* lse, bool via_op) = 0;
  // dq, dk, dv are accumulated into (+=).
  virtual void backward(const AttentionParams& p, vector<float>* dq, vector<float>* dk,
                        vector<float>* dv, const vector<uint16_t>& dout, const vector<uint16_t>& q,
                        const vector<uint16_t>& k, const vector<uint16_t>& v,
                        const vector<uint16_t>& out, const vector<float>& lse, bool via_op) = 0;
};

// The whole check of one case; `label` names the kernel family in the output.
inline void check_attention_case(const AttnCase& c, KernelRunner& run, const char* label) {
  const char* env_seed = std::getenv("RT_TEST_SEED");
  const uint32_t seed =
      env_seed ? uint32_t(std::strtoul(env_seed, nullptr, 10)) : std::random_device{}();
  SCOPED_TRACE("RT_TEST_SEED=" + std::to_string(seed));
  std::mt19937 rng(seed);
  const size_t nq = size_t(c.B) * c.Tq * c.H * c.hd, nk = size_t(c.B) * c.Tk * c.G * c.hd;
  const size_t nl = size_t(c.B) * c.H * c.Tq;
  vector<float> qf, kf, vf, dof;
  vector<uint16_t> qb, kb, vb, dob;
  rand_bf16(nq, rng, c.q_gain, &qf, &qb);
  rand_bf16(nk, rng, 1.f, &kf, &kb);
  rand_bf16(nk, rng, 1.f, &vf, &vb);
  rand_bf16(nq, rng, 1.f, &dof, &dob);
  const vector<float> slopes = slopes_for(c.H);

  AttentionParams p = params_of(c);
  p.alibi_slopes = c.alibi ? slopes.data() : nullptr;

  // CPU oracle, fp32 on the bf16-rounded values.
  auto cpu = rt::make_cpu_backend();
  vector<float> out_ref(nq), lse_ref(nl);
  cpu->attention_forward(p, out_ref.data(), lse_ref.data(), qf.data(), kf.data(), vf.data());

  // Kernel forward into poisoned buffers.
  vector<uint16_t> ob(nq, 0xFFFFu);                                    // bf16 NaN
  vector<float> lse(nl, std::numeric_limits<float>::quiet_NaN());  // fp32 NaN
  run.forward(p, qb, kb, vb, &ob, &lse, false);
  vector<float> out(nq);
  for (size_t i = 0; i < nq; ++i) out[i] = rt::bf16_to_f32(ob[i]);

  EXPECT_EQ(count_nonfinite(out), 0u) << "unwritten or non-finite out elements";
  size_t lse_bad = 0, lse_inf_mismatch = 0, out_bad = 0;
  for (size_t i = 0; i < nl; ++i) {
    if (std::isnan(lse[i])) ++lse_bad;
    else if (std::isinf(lse_ref[i]) || std::isinf(lse[i])) lse_inf_mismatch += lse[i] != lse_ref[i];
    else lse_bad += std::fabs(lse[i] - lse_ref[i]) > 2e-3f;
  }
  for (size_t i = 0; i < nq; ++i)
    out_bad += !(std::fabs(out[i] - out_ref[i]) <= 0.03f + 0.02f * std::fabs(out_ref[i]));
  EXPECT_EQ(lse_bad, 0u) << "lse off by more than 2e-3 (or NaN)";
  EXPECT_EQ(lse_inf_mismatch, 0u) << "-inf lse rows differ from the CPU";
  EXPECT_EQ(out_bad, 0u) << "out elements outside 0.03 + 0.02|ref|";
  const double e_out = rel_err(out, out_ref, nullptr);
  EXPECT_LT(e_out, 1e-2) << "out relative error";

  // Forward is deterministic (a race would show here). This run goes through
  // the typed op contract (the CUDA backend's call): the same kernel.
  vector<uint16_t> ob2(nq, 0xFFFFu);
  vector<float> lse2(nl, std::numeric_limits<float>::quiet_NaN());
  run.forward(p, qb, kb, vb, &ob2, &lse2, true);
  EXPECT_TRUE(ob2 == ob) << "forward not reproducible";

  // Backward: both sides get the same final out (bf16) and lse, and
  // accumulate into the same random initial gradients.
  vector<float> outq(nq);
  vector<uint16_t> outb(nq);
  for (size_t i = 0; i < nq; ++i) {
    outb[i] = rt::f32_to_bf16(out_ref[i]);
    outq[i] = rt::bf16_to_f32(outb[i]);
  }
  std::normal_distribution<float> nd(0.f, 1.f);
  vector<float> gq0(nq), gk0(nk), gv0(nk);
  for (auto* g : {&gq0, &gk0, &gv0})
    for (float& x : *g) x = nd(rng);
  vector<float> gq = gq0, gk = gk0, gv = gv0;
  cpu->attention_backward(p, gq.data(), gk.data(), gv.data(), dof.data(), qf.data(), kf.data(),
                          vf.data(), outq.data(), lse_ref.data());

  vector<float> hq = gq0, hk = gk0, hv = gv0;
  run.backward(p, &hq, &hk, &hv, dob, qb, kb, vb, outb, lse_ref, false);
  EXPECT_EQ(count_nonfinite(hq) + count_nonfinite(hk) + count_nonfinite(hv), 0u);
  const double eq = rel_err(hq, gq, &gq0), ek = rel_err(hk, gk, &gk0), ev = rel_err(hv, gv, &gv0);
  EXPECT_LT(eq, 2e-2) << "dq relative error";
  EXPECT_LT(ek, 2e-2) << "dk relative error";
  EXPECT_LT(ev, 2e-2) << "dv relative error";

  // dk, dv are deterministic; run again from the same initial values.
  vector<float> hq2 = gq0, hk2 = gk0, hv2 = gv0;
  run.backward(p, &hq2, &hk2, &hv2, dob, qb, kb, vb, outb, lse_ref, true);
  EXPECT_TRUE(hk2 == hk) << "dk not reproducible";
  EXPECT_TRUE(hv2 == hv) << "dv not reproducible";
  const double eq2 = rel_err(hq2, hq, &gq0);
  EXPECT_LT(eq2, 1e-5) << "dq varies between runs by more than atomic-order rounding";

  std::printf("[%s %s] rel err out %.2e  dq %.2e  dk %.2e  dv %.2e\n", c.name.c_str(), label, e_out,
              eq, ek, ev);
}

}  // namespace rt_test
