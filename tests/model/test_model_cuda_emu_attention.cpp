// The fused attention kernels of model/cuda/attention.cu (the mma.sync family:
// every head_dim-64 kernel and the pre-Hopper head_dim-128 ones) run on the
// CPU fiber emulator (model/cuda/emu/) against the CPU block attention, with
// the GPU test's check (tests/attention_kernel_check.h). The emulator runs the
// kernels' own index arithmetic, tiling, masking, swizzles, barriers and
// fragment layouts (ldmatrix and mma.sync as warp collectives); it says
// nothing about speed, the hardware's ex2.approx, or races between blocks.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "attention_kernel_check.h"
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
    vector<float> work(emu_attn::attention_backward_workspace_floats(p), -1.f);
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

TEST_P(EmuAttention, MatchesCpuForwardAndBackward) {
  EmuRunner run;
  rt_test::check_attention_case(GetParam(), run, "mma on the emulator");
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
                               4.f}),
    [](const ::testing::TestParamInfo<AttnCase>& i) { return i.param.name; });

}  // namespace
