// CUDA fused attention (model/cuda/attention.cu) on a CUDA device against the
// CPU block attention: the check (inputs, poisoning, tolerances) is
// tests/attention_kernel_check.h, shared with the emulator's run of the same
// kernels (test_model_cuda_emu_attention).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"

#ifdef RINGTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "model/cuda/attention.h"
#include "model/cuda/attention_ops.h"
#include "model/cuda/device_info.h"
#endif
#include "attention_kernel_check.h"

namespace {

using rt::AttentionParams;
using std::vector;

#ifdef RINGTRAIN_HAVE_CUDA

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x << ": " << cudaGetErrorString(x)

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  explicit DevBuf(const vector<T>& h) : DevBuf(h.size()) { put(h); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void put(const vector<T>& h) {
    ASSERT_NE(p, nullptr) << "cudaMalloc failed";
    ASSERT_EQ(h.size(), n);
    ASSERT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  void get(vector<T>* h) const {
    h->resize(n);
    EXPECT_EQ(cudaMemcpy(h->data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  }
};

bool have_device() { return rt::cuda::device_count() > 0; }

using rt::Buf;
using rt::CBuf;
using rt::DType;
using rt::cuda::AttentionImpl;

// The kernels on the current CUDA device: host vectors in, results back.
class CudaRunner final : public rt_test::KernelRunner {
 public:
  explicit CudaRunner(AttentionImpl impl) : impl_(impl) {}
  void forward(const AttentionParams& p, const vector<uint16_t>& q, const vector<uint16_t>& k,
               const vector<uint16_t>& v, vector<uint16_t>* out, vector<float>* lse,
               bool via_op) override {
    DevBuf<uint16_t> dq(q), dk(k), dv(v), dout(*out);
    DevBuf<float> dlse(*lse);
    DevBuf<float> slopes(size_t(p.H));
    AttentionParams pg = device_params(p, &slopes);
    const DType bf = DType::kBF16;
    if (via_op)
      rt::cuda::attention_forward_op(pg, Buf(dout.p, bf), dlse.p, CBuf(dq.p, bf), CBuf(dk.p, bf),
                                     CBuf(dv.p, bf), nullptr, impl_);
    else
      rt::cuda::attention_forward_bf16(pg, dout.p, dlse.p, dq.p, dk.p, dv.p, nullptr, impl_);
    CUDA_OK(cudaDeviceSynchronize());
    dout.get(out);
    dlse.get(lse);
  }
  void backward(const AttentionParams& p, vector<float>* dq, vector<float>* dk, vector<float>* dv,
                const vector<uint16_t>& dout, const vector<uint16_t>& q, const vector<uint16_t>& k,
                const vector<uint16_t>& v, const vector<uint16_t>& out, const vector<float>& lse,
                bool via_op) override {
    DevBuf<float> gq(*dq), gk(*dk), gv(*dv), dlse(lse);
    DevBuf<uint16_t> ddout(dout), dqq(q), dkk(k), dvv(v), dout_o(out);
    DevBuf<float> work(rt::cuda::attention_backward_workspace_floats(p, impl_));
    DevBuf<float> slopes(size_t(p.H));
    ASSERT_NE(work.p, nullptr);
    CUDA_OK(cudaMemset(work.p, 0xFF, work.n * sizeof(float)));  // NaN: unwritten parts show
    AttentionParams pg = device_params(p, &slopes);
    const DType bf = DType::kBF16;
    if (via_op)
      rt::cuda::attention_backward_op(pg, gq.p, gk.p, gv.p, CBuf(ddout.p, bf), CBuf(dqq.p, bf),
                                      CBuf(dkk.p, bf), CBuf(dvv.p, bf), CBuf(dout_o.p, bf), dlse.p,
                                      work.p, nullptr, impl_);
    else
      rt::cuda::attention_backward_bf16(pg, gq.p, gk.p, gv.p, ddout.p, dqq.p, dkk.p, dvv.p,
                                        dout_o.p, dlse.p, work.p, nullptr, impl_);
    CUDA_OK(cudaDeviceSynchronize());
    gq.get(dq);
    gk.get(dk);
    gv.get(dv);
  }

 private:
  // p with its host ALiBi slopes copied to the device.
  static AttentionParams device_params(const AttentionParams& p, DevBuf<float>* slopes) {
    AttentionParams pg = p;
    if (p.alibi_slopes) {
      slopes->put(vector<float>(p.alibi_slopes, p.alibi_slopes + p.H));
      pg.alibi_slopes = slopes->p;
    }
    return pg;
  }
  AttentionImpl impl_;
};

using rt_test::AttnCase;
using Case = AttnCase;

class CudaAttention : public ::testing::TestWithParam<std::tuple<Case, AttentionImpl>> {};

TEST_P(CudaAttention, MatchesCpuForwardAndBackward) {
  if (!have_device()) GTEST_SKIP() << "skipped: no CUDA device";
  const Case& c = std::get<0>(GetParam());
  const AttentionImpl impl = std::get<1>(GetParam());
  if (impl == AttentionImpl::kWgmma && !rt::cuda::wgmma_available())
    GTEST_SKIP() << "skipped: wgmma kernels need an sm_90 device";
  CudaRunner run(impl);
  const int split = rt::cuda::attention_backward_head_split(rt_test::params_of(c), impl);
  const std::string family = impl == AttentionImpl::kWgmma ? "wgmma" : "mma";
  // The automatic head split, then for GQA the other side of it: whole groups
  // per block where the automatic choice split them, every query head its own
  // block where it did not.
  const int rep = c.H / c.G;
  const int other = split > 1 ? 1 : rep;
  auto check_splits = [&](const std::string& sfx) {
    rt_test::check_attention_case(c, run, (family + ", head split " + std::to_string(split) + sfx).c_str());
    if (rep > 1) {
      rt::cuda::force_attention_backward_head_split(other);
      rt_test::check_attention_case(c, run, (family + ", head split " + std::to_string(other) + sfx).c_str());
      rt::cuda::force_attention_backward_head_split(0);
    }
  };
  check_splits("");
  // head_dim 64 on wgmma: again with the backward's dQ exchange (not yet the default).
  if (impl == AttentionImpl::kWgmma && c.hd == 64) {
    rt::cuda::force_attention_backward_dq_exchange(true);
    check_splits(", dQ exchange");
    rt::cuda::force_attention_backward_dq_exchange(false);
  }
}

// Shapes: tails that are not tile multiples, GQA and MQA, both head dims,
// ring-block offsets (fully visible, diagonal, partly and fully masked).
// Every shape runs on both kernel families (wgmma only where it exists).
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttention,
    ::testing::Combine(::testing::Values(
        Case{"hd64_causal_T200_B2", 2, 200, 200, 4, 4, 64, 0, 0, true, false},
        Case{"hd128_causal_gqa_T333", 1, 333, 333, 4, 2, 128, 0, 0, true, false},
        Case{"hd128_full_mqa_130x77", 1, 130, 77, 3, 1, 128, 0, 0, false, false},
        Case{"hd64_full_130x300", 2, 130, 300, 2, 2, 64, 0, 0, false, false},
        Case{"hd64_alibi_causal_T257", 1, 257, 257, 4, 4, 64, 0, 0, true, true},
        Case{"hd128_alibi_full_gqa", 1, 150, 190, 4, 2, 128, 0, 0, false, true},
        Case{"hd128_ring_past_block", 1, 128, 128, 2, 2, 128, 256, 0, true, false},
        Case{"hd128_ring_future_partial", 1, 160, 96, 2, 1, 128, 0, 64, true, false},
        Case{"hd64_ring_fully_masked", 1, 64, 64, 2, 2, 64, 100, 300, true, false},
        Case{"hd128_ring_alibi_gqa_offsets", 2, 96, 160, 4, 2, 128, 192, 64, true, true},
        Case{"hd64_ring_zigzag_offsets", 1, 100, 100, 2, 1, 64, 700, 500, true, true},
        Case{"hd128_causal_T1024", 1, 1024, 1024, 2, 1, 128, 0, 0, true, false},
        Case{"hd64_peaked_T384", 1, 384, 384, 2, 2, 64, 0, 0, true, false, 4.f},
        Case{"hd128_peaked_alibi_T300", 1, 300, 300, 2, 2, 128, 0, 0, true, true, 4.f},
        Case{"hd64_mqa_causal_keys_past_queries", 1, 100, 300, 4, 1, 64, 0, 0, true, false},
        Case{"hd64_gqa8_causal_T1024", 1, 1024, 1024, 8, 1, 64, 0, 0, true, false}),
                       ::testing::Values(AttentionImpl::kMma, AttentionImpl::kWgmma)),
    [](const ::testing::TestParamInfo<std::tuple<Case, AttentionImpl>>& i) {
      return std::get<0>(i.param).name +
             (std::get<1>(i.param) == AttentionImpl::kWgmma ? "_wgmma" : "_mma");
    });

#endif  // RINGTRAIN_HAVE_CUDA

TEST(CudaAttentionParams, RejectsUnsupportedShapesWithAReason) {
#ifndef RINGTRAIN_HAVE_CUDA
  GTEST_SKIP() << "skipped: built without CUDA (nvcc not found)";
#else
  AttentionParams p;
  p.B = 1, p.Tq = 8, p.Tk = 8, p.H = 4, p.G = 4, p.hd = 96, p.scale = 0.125f;
  try {
    rt::cuda::check_attention_params(p);
    FAIL() << "hd 96 accepted";
  } catch (const rt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 64 or 128"), std::string::npos) << e.what();
  }
  p.hd = 64;
  p.G = 3;
  EXPECT_THROW(rt::cuda::check_attention_params(p), rt::UsageError);
  p.G = 2;
  EXPECT_NO_THROW(rt::cuda::check_attention_params(p));
  p.scale = 0.f;
  EXPECT_THROW(rt::cuda::check_attention_params(p), rt::UsageError);
  p.scale = 0.125f;
  p.q_offset = int64_t(1) << 31;  // distances beyond 32 bits
  EXPECT_THROW(rt::cuda::check_attention_params(p), rt::UsageError);
  p.q_offset = 0;
  // wgmma is Hopper only; asking for it elsewhere is an error.
  if (!rt::cuda::wgmma_available()) {
    EXPECT_THROW(rt::cuda::attention_forward_bf16(p, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                  nullptr, rt::cuda::AttentionImpl::kWgmma),
                 rt::UsageError);
  }
#endif
}

}  // namespace
