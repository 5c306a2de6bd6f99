// The fused attention kernels of model/cuda/attention.cu (the mma.sync family:
// every head_dim-64 kernel and the pre-Hopper head_dim-128 ones) run on the
// CPU fiber emulator (model/cuda/emu/) against the CPU block attention, with
// the GPU test's check (tests/attention_kernel_check.h). The emulator runs the
// kernels' own index arithmetic, tiling, masking, swizzles, barriers and
// fragment layouts (ldmatrix and mma.sync as warp collectives); it says
// nothing about speed, the hardware's ex2.approx, or races between blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "attention_kernel_check.h"
#include "common/errors.h"
#include "model/backend.h"
// The emulator's build of the kernels: their declarations in rt::cuda_emu.
#define RT_CUDA_EMULATE 1
#include "model/cuda/attention.h"
#include "model/cuda/attention_ops.h"

namespace {

using rt::AttentionParams;
using rt::Buf;
using rt::CBuf;
using rt::DType;
using rt_test::AttnCase;
using rt_test::params_of;
using std::vector;
namespace emu_attn = rt::cuda_emu;

// The kernels on the emulator: device memory is host memory.
class EmuRunner final : public rt_test::KernelRunner {
 public:
  void forward(const AttentionParams& p, const vector<uint16_t>& q, const vector<uint16_t>& k,
               const vector<uint16_t>& v, vector<uint16_t>* out, vector<float>* lse,
               bool via_op) override {
    const DType bf = DType::kBF16;
    if (via_op)
      emu_attn::attention_forward_op(p, Buf(out->data(), bf), lse->data(), CBuf(q.data(), bf),
                                     CBuf(k.data(), bf), CBuf(v.data(), bf), nullptr,
                                     emu_attn::AttentionImpl::kMma);
    else
      emu_attn::attention_forward_bf16(p, out->data(), lse->data(), q.data(), k.data(), v.data(),
                                       nullptr, emu_attn::AttentionImpl::kMma);
  }
  void backward(const AttentionParams& p, vector<float>* dq, vector<float>* dk, vector<float>* dv,
                const vector<uint16_t>& dout, const vector<uint16_t>& q, const vector<uint16_t>& k,
                const vector<uint16_t>& v, const vector<uint16_t>& out, const vector<float>& lse,
                bool via_op) override {
    // NaN: a head-split part the kernel leaves unwritten poisons dk / dv.
    vector<float> work(emu_attn::attention_backward_workspace_floats(p),
                       std::numeric_limits<float>::quiet_NaN());
    const DType bf = DType::kBF16;
    if (via_op)
      emu_attn::attention_backward_op(p, dq->data(), dk->data(), dv->data(), CBuf(dout.data(), bf),
                                      CBuf(q.data(), bf), CBuf(k.data(), bf), CBuf(v.data(), bf),
                                      CBuf(out.data(), bf), lse.data(), work.data(), nullptr,
                                      emu_attn::AttentionImpl::kMma);
    else
      emu_attn::attention_backward_bf16(p, dq->data(), dk->data(), dv->data(), dout.data(),
                                        q.data(), k.data(), v.data(), out.data(), lse.data(),
                                        work.data(), nullptr, emu_attn::AttentionImpl::kMma);
  }
};

class EmuAttention : public ::testing::TestWithParam<AttnCase> {};

// Restores the automatic head split when a test ends (also on failure).
struct ForcedSplit {
  explicit ForcedSplit(int s) { emu_attn::force_attention_backward_head_split(s); }
  ~ForcedSplit() { emu_attn::force_attention_backward_head_split(0); }
};

// Every shape with the automatic head split (these small grids split every
// GQA / MQA group: s = H / G) and, where that splits, again without.
TEST_P(EmuAttention, MatchesCpuForwardAndBackward) {
  const AttnCase& c = GetParam();
  EmuRunner run;
  const int split = emu_attn::attention_backward_head_split(params_of(c));
  EXPECT_EQ(split, c.H / c.G) << "a small grid splits its groups fully";
  const std::string label = "mma on the emulator, head split " + std::to_string(split);
  rt_test::check_attention_case(c, run, label.c_str());
  if (split > 1) {
    ForcedSplit one(1);
    rt_test::check_attention_case(c, run, "mma on the emulator, head split 1");
  }
}

// The split only reorders the sum over a group's query heads: dk, dv (and dq)
// for s = 1, 2, 4 agree to fp32 rounding, on one set of inputs.
TEST(EmuAttentionHeadSplit, SplitsAgreeToRounding) {
  const AttnCase c{"gqa4", 1, 100, 300, 8, 2, 64, 0, 0, true, false};
  const AttentionParams p = params_of(c);
  std::mt19937 rng(11);
  vector<float> f;
  vector<uint16_t> q, k, v, dout, out;
  rt_test::rand_bf16(size_t(c.Tq) * c.H * c.hd, rng, 1.f, &f, &q);
  rt_test::rand_bf16(size_t(c.Tk) * c.G * c.hd, rng, 1.f, &f, &k);
  rt_test::rand_bf16(size_t(c.Tk) * c.G * c.hd, rng, 1.f, &f, &v);
  rt_test::rand_bf16(size_t(c.Tq) * c.H * c.hd, rng, 1.f, &f, &dout);
  vector<float> lse(size_t(c.H) * c.Tq);
  out.assign(q.size(), 0);
  EmuRunner run;
  run.forward(p, q, k, v, &out, &lse, false);
  vector<float> ref_q, ref_k, ref_v;
  for (int s : {1, 2, 4}) {
    ForcedSplit forced(s);
    ASSERT_EQ(emu_attn::attention_backward_head_split(p), s);
    vector<float> gq(q.size(), 0.f), gk(k.size(), 0.f), gv(v.size(), 0.f);
    run.backward(p, &gq, &gk, &gv, dout, q, k, v, out, lse, false);
    EXPECT_EQ(rt_test::count_nonfinite(gk) + rt_test::count_nonfinite(gv), 0u) << "split " << s;
    if (s == 1) {
      ref_q = gq, ref_k = gk, ref_v = gv;
      continue;
    }
    EXPECT_LT(rt_test::rel_err(gk, ref_k, nullptr), 1e-6) << "dk, split " << s << " vs 1";
    EXPECT_LT(rt_test::rel_err(gv, ref_v, nullptr), 1e-6) << "dv, split " << s << " vs 1";
    EXPECT_LT(rt_test::rel_err(gq, ref_q, nullptr), 1e-6) << "dq, split " << s << " vs 1";
  }
  // A split that does not divide the group is refused with the reason.
  ForcedSplit bad(3);
  try {
    emu_attn::attention_backward_head_split(p);
    ADD_FAILURE() << "split 3 of 4 heads accepted";
  } catch (const rt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide"), std::string::npos) << e.what();
  }
}

// On the GPU's grid sizes: TinyLlama's shape (32 heads, 4 kv heads, hd 64)
// splits at short sequences only. (The emulator has no wgmma kernels; their
// automatic split is 1 until verified on a GPU.)
TEST(EmuAttentionHeadSplit, AutomaticChoice) {
  AttentionParams p;
  p.B = 1, p.H = 32, p.G = 4, p.hd = 64, p.causal = true, p.scale = 0.125f;
  auto split_at = [&](int T) {
    p.Tq = p.Tk = T;
    return emu_attn::attention_backward_head_split(p);
  };
  EXPECT_EQ(split_at(4096), 8);    // 32 key tiles x 4 = 128 blocks -> 1024
  EXPECT_EQ(split_at(16384), 2);   // 512 -> 1024
  EXPECT_EQ(split_at(65536), 1);   // 2048 blocks already
  EXPECT_EQ(split_at(131072), 1);
  p.H = 12, p.G = 4;  // 3 key tiles x 4 kv heads = 12 blocks; 3 heads per group: at most 3
  EXPECT_EQ(split_at(300), 3);
  // The workspace holds D and the parts: 2 s B Tk G hd floats.
  p.H = 32, p.G = 4, p.Tq = p.Tk = 4096;
  EXPECT_EQ(emu_attn::attention_backward_workspace_floats(p),
            size_t(32) * 4096 + 2 * size_t(8) * 4096 * 4 * 64);
  // A negative forced split is refused.
  EXPECT_THROW(emu_attn::force_attention_backward_head_split(-1), rt::UsageError);
  EXPECT_EQ(split_at(4096), 8);
  // kAuto runs the emulator's mma.sync kernels.
  EXPECT_EQ(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto),
            emu_attn::AttentionImpl::kMma);
  // RINGTRAIN_CUDA_ATTENTION picks what kAuto runs: mma here; wgmma is
  // refused where there is no Hopper GPU (the emulator), as kWgmma is; a
  // value it does not know is a UsageError naming the variable.
  ::setenv("RINGTRAIN_CUDA_ATTENTION", "mma", 1);
  EXPECT_EQ(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto),
            emu_attn::AttentionImpl::kMma);
  ::setenv("RINGTRAIN_CUDA_ATTENTION", "wgmma", 1);
  EXPECT_THROW(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto),
               rt::UsageError);
  EXPECT_EQ(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kMma),
            emu_attn::AttentionImpl::kMma);
  ::setenv("RINGTRAIN_CUDA_ATTENTION", "wgmma-dqx", 1);
  EXPECT_THROW(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto),
               rt::UsageError);
  ::setenv("RINGTRAIN_CUDA_ATTENTION", "fast", 1);
  try {
    emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto);
    ADD_FAILURE() << "RINGTRAIN_CUDA_ATTENTION=fast was accepted";
  } catch (const rt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("RINGTRAIN_CUDA_ATTENTION=fast"), std::string::npos);
  }
  ::unsetenv("RINGTRAIN_CUDA_ATTENTION");
  EXPECT_EQ(emu_attn::resolve_attention_impl(emu_attn::AttentionImpl::kAuto),
            emu_attn::AttentionImpl::kMma);
}

// The GPU test's shapes, smaller where the emulator would be slow: tails that
// are not tile multiples, GQA and MQA, both head dims, ring-block offsets
// (fully visible, diagonal, partly and fully masked), ALiBi, peaked softmax.
INSTANTIATE_TEST_SUITE_P(
    Shapes, EmuAttention,
    ::testing::Values(AttnCase{"hd64_causal_T200_B2", 2, 200, 200, 4, 4, 64, 0, 0, true, false},
                      AttnCase{"hd128_causal_gqa_T150", 1, 150, 150, 4, 2, 128, 0, 0, true, false},
                      AttnCase{"hd128_full_mqa_130x77", 1, 130, 77, 3, 1, 128, 0, 0, false, false},
                      AttnCase{"hd64_full_130x300", 1, 130, 300, 2, 2, 64, 0, 0, false, false},
                      AttnCase{"hd64_alibi_causal_gqa_T257", 1, 257, 257, 4, 2, 64, 0, 0, true,
                               true},
                      AttnCase{"hd64_ring_fully_masked", 1, 64, 64, 2, 2, 64, 100, 300, true,
                               false},
                      AttnCase{"hd128_ring_future_partial", 1, 160, 96, 2, 1, 128, 0, 64, true,
                               false},
                      AttnCase{"hd64_ring_zigzag_offsets", 1, 100, 100, 2, 1, 64, 700, 500, true,
                               true},
                      AttnCase{"hd64_peaked_T192", 1, 192, 192, 2, 2, 64, 0, 0, true, false,
                               4.f},
                      // key tiles past the last query: blocks with no work still write
                      // their (zero) head-split parts
                      AttnCase{"hd64_mqa_causal_keys_past_queries", 1, 100, 300, 4, 1, 64, 0, 0,
                               true, false}),
    [](const ::testing::TestParamInfo<AttnCase>& i) { return i.param.name; });

}  // namespace
