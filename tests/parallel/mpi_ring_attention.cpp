// Ring attention over MPI (run under mpirun -np 1..4): output, LSE and
// dq/dk/dv of every rank's rows against a full-sequence float64 reference,
// for both layouts, MHA and GQA, with and without ALiBi, sequence lengths
// that are not powers of two.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "attention_reference.h"
#include "model/alibi.h"
#include "mpi_main.h"
#include "model/cuda/cuda_backend.h"
#include "parallel/ring_attention.h"

namespace rt {
namespace {

struct RingCase {
  std::string name;
  RingLayout layout;
  int B, H, G, hd, chunk;  // global T = 2 * cp * chunk
  bool alibi;
};
void PrintTo(const RingCase& c, std::ostream* os) { *os << c.name; }

class RingVsReference : public ::testing::TestWithParam<RingCase> {};

std::vector<double> random_vec(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(-1.5, 1.5);
  std::vector<double> v(n);
  for (auto& x : v) x = float(u(g));  // representable in fp32
  return v;
}

// Global tensor rows (B, T, heads, hd) -> this rank's rows, as float.
std::vector<float> local_rows(const std::vector<double>& g, const RowPositions& rows, int B,
                              int64_t T, int heads, int hd) {
  std::vector<float> out;
  for (int b = 0; b < B; ++b)
    for (auto [begin, len] : rows.chunks)
      for (int64_t t = begin; t < begin + len; ++t)
        for (int e = 0; e < heads * hd; ++e)
          out.push_back(float(g[(size_t(b) * T + t) * heads * hd + e]));
  return out;
}

void expect_rows_close(const std::vector<float>& got, const std::vector<double>& global,
                       const RowPositions& rows, int B, int64_t T, int heads, int hd, double tol,
                       const char* what) {
  std::vector<float> want = local_rows(global, rows, B, T, heads, hd);
  ASSERT_EQ(got.size(), want.size());
  double scale = 1e-3, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, double(std::abs(want[i])));
    err = std::max(err, double(std::abs(got[i] - want[i])));
  }
  EXPECT_LT(err / scale, tol) << what << " max abs err " << err << " scale " << scale;
}

// The largest |local lse - global lse| over this rank's rows: lse is (B, H, T)
// globally and (B, H, Tl) locally.
double max_lse_error(const std::vector<float>& local, const std::vector<double>& global,
                     const RowPositions& rows, int B, int H, int64_t T, int64_t Tl) {
  double err = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      int64_t row = 0;
      for (auto [begin, len] : rows.chunks)
        for (int64_t t = 0; t < len; ++t, ++row)
          err = std::max(err, std::abs(local[(size_t(b) * H + h) * Tl + row] -
                                       global[(size_t(b) * H + h) * T + begin + t]));
    }
  return err;
}

TEST_P(RingVsReference, ForwardBackward) {
  const RingCase& c = GetParam();
  Comm& ring = *parallel_runtime().world;
  const int cp = ring.size(), r = ring.rank();
  const int64_t T = 2 * int64_t(cp) * c.chunk;
  const RowPositions rows = ring_local_rows(c.layout, cp, r, T);
  const int64_t Tl = T / cp;
  std::vector<float> slopes = alibi_slopes(c.H);

  AttentionParams full;
  full.B = c.B; full.Tq = full.Tk = int(T); full.H = c.H; full.G = c.G; full.hd = c.hd;
  full.causal = true;
  full.scale = float(1.0 / std::sqrt(double(c.hd)));
  full.alibi_slopes = c.alibi ? slopes.data() : nullptr;

  // The same global inputs on every rank.
  auto q = random_vec(size_t(c.B) * T * c.H * c.hd, 1);
  auto k = random_vec(size_t(c.B) * T * c.G * c.hd, 2);
  auto v = random_vec(size_t(c.B) * T * c.G * c.hd, 3);
  auto dout = random_vec(size_t(c.B) * T * c.H * c.hd, 4);
  testing::Ref ref{full};
  std::vector<double> out, lse, dq, dk, dv;
  ref.forward(q, k, v, out, lse);
  ref.backward(dout, q, k, v, out, lse, dq, dk, dv);

  auto be = make_cpu_backend();
  RingAttention ring_attn(ring, c.layout);
  AttentionParams local = full;
  local.Tq = local.Tk = int(Tl);
  auto ql = local_rows(q, rows, c.B, T, c.H, c.hd), kl = local_rows(k, rows, c.B, T, c.G, c.hd),
       vl = local_rows(v, rows, c.B, T, c.G, c.hd), dl = local_rows(dout, rows, c.B, T, c.H, c.hd);
  std::vector<float> o(ql.size(), 7.f), l(size_t(c.B) * c.H * Tl, 7.f);  // poisoned
  ring_attn.forward(*be, local, rows, o.data(), l.data(), ql.data(), kl.data(), vl.data());
  expect_rows_close(o, out, rows, c.B, T, c.H, c.hd, 2e-5, "out");
  EXPECT_LT(max_lse_error(l, lse, rows, c.B, c.H, T, Tl), 2e-5) << "lse";

  std::vector<float> gq(ql.size(), 0.f), gk(kl.size(), 0.f), gv(vl.size(), 0.f);
  ring_attn.backward(*be, local, rows, gq.data(), gk.data(), gv.data(), dl.data(), ql.data(),
                     kl.data(), vl.data(), o.data(), l.data());
  expect_rows_close(gq, dq, rows, c.B, T, c.H, c.hd, 1e-4, "dq");
  expect_rows_close(gk, dk, rows, c.B, T, c.G, c.hd, 1e-4, "dk");
  expect_rows_close(gv, dv, rows, c.B, T, c.G, c.hd, 1e-4, "dv");
  // the communication volume is the ring's: K,V go round once forward, once
  // more backward, and dK,dV make a full turn
  const int64_t kv_bytes = 2 * int64_t(kl.size()) * 4;
  EXPECT_EQ(ring_attn.bytes_sent(), kv_bytes * (2 * (cp - 1) + (cp > 1 ? cp : 0)));
  EXPECT_EQ(ring_attn.bytes_sent(), ring_bytes_per_layer(cp, kl.size(), ring_attn.kv_dtype()));
}

// bf16 activations (the GPU's dtypes): q, k, v, out bf16 and K,V travelling
// in bf16 (half the bytes); LSE, dq, dk, dv and the accumulators fp32. On the
// CPU (storage emulation) and on the CUDA backend's kernels run by the CPU
// emulator (cuda-emu), against the float64 reference on the bf16-rounded
// inputs. Bounds: out is rounded to bf16 (2^-8 relative) and each block's
// output is rounded before the merge; the emulated GPU also rounds dout.
TEST_P(RingVsReference, ForwardBackwardBf16) {
  const RingCase& c = GetParam();
  Comm& ring = *parallel_runtime().world;
  const int cp = ring.size(), r = ring.rank();
  const int64_t T = 2 * int64_t(cp) * c.chunk;
  const RowPositions rows = ring_local_rows(c.layout, cp, r, T);
  const int64_t Tl = T / cp;
  auto round_all = [](std::vector<double> v) {
    for (double& x : v) x = double(round_bf16(float(x)));
    return v;
  };
  auto to_bf16 = [](const std::vector<float>& v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = f32_to_bf16(v[i]);
    return o;
  };
  auto from_bf16 = [](const std::vector<uint16_t>& v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = bf16_to_f32(v[i]);
    return o;
  };
  for (const char* backend : {"cpu", "cuda-emu"}) {
    std::vector<float> slopes = alibi_slopes(c.H);
    AttentionParams full;
    full.B = c.B; full.Tq = full.Tk = int(T); full.H = c.H; full.G = c.G; full.hd = c.hd;
    full.causal = true;
    full.scale = float(1.0 / std::sqrt(double(c.hd)));
    full.alibi_slopes = c.alibi ? slopes.data() : nullptr;
    auto q = round_all(random_vec(size_t(c.B) * T * c.H * c.hd, 11));
    auto k = round_all(random_vec(size_t(c.B) * T * c.G * c.hd, 12));
    auto v = round_all(random_vec(size_t(c.B) * T * c.G * c.hd, 13));
    auto dout = random_vec(size_t(c.B) * T * c.H * c.hd, 14);
    testing::Ref ref{full};
    std::vector<double> out, lse, dq, dk, dv;
    ref.forward(q, k, v, out, lse);
    ref.backward(dout, q, k, v, out, lse, dq, dk, dv);

    auto be = std::string(backend) == "cpu" ? make_cpu_backend() : make_cuda_emu_backend();
    AttentionParams local = full;
    local.Tq = local.Tk = int(Tl);
    DeviceBuffer slopes_dev(*be, slopes.size());
    be->copy_to_device(slopes_dev.data(), slopes.data(), slopes.size() * sizeof(float));
    local.alibi_slopes = c.alibi ? slopes_dev.f32() : nullptr;
    auto ql = to_bf16(local_rows(q, rows, c.B, T, c.H, c.hd));
    auto kl = to_bf16(local_rows(k, rows, c.B, T, c.G, c.hd));
    auto vl = to_bf16(local_rows(v, rows, c.B, T, c.G, c.hd));
    auto dl = local_rows(dout, rows, c.B, T, c.H, c.hd);
    std::vector<uint16_t> o(ql.size(), f32_to_bf16(7.f));  // poisoned
    std::vector<float> l(size_t(c.B) * c.H * Tl, 7.f);
    RingAttention ring_attn(ring, c.layout);
    const DType bf = DType::kBF16;
    ring_attn.forward(*be, local, rows, Buf(o.data(), bf), l.data(), CBuf(ql.data(), bf),
                      CBuf(kl.data(), bf), CBuf(vl.data(), bf));
    expect_rows_close(from_bf16(o), out, rows, c.B, T, c.H, c.hd, 1e-2, backend);
    EXPECT_LT(max_lse_error(l, lse, rows, c.B, c.H, T, Tl), 1e-4) << backend << " lse";
    std::vector<float> gq(ql.size(), 0.f), gk(kl.size(), 0.f), gv(vl.size(), 0.f);
    ring_attn.backward(*be, local, rows, gq.data(), gk.data(), gv.data(), dl.data(),
                       CBuf(ql.data(), bf), CBuf(kl.data(), bf), CBuf(vl.data(), bf),
                       CBuf(o.data(), bf), l.data());
    expect_rows_close(gq, dq, rows, c.B, T, c.H, c.hd, 3e-2, backend);
    expect_rows_close(gk, dk, rows, c.B, T, c.G, c.hd, 3e-2, backend);
    expect_rows_close(gv, dv, rows, c.B, T, c.G, c.hd, 3e-2, backend);
    // K,V travel in bf16: half the fp32 bytes
    EXPECT_EQ(ring_attn.kv_dtype(), bf);
    EXPECT_EQ(ring_attn.bytes_sent(), ring_bytes_per_layer(cp, kl.size(), bf));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Ring, RingVsReference,
    ::testing::Values(RingCase{"zigzag_mha", RingLayout::kZigzag, 1, 4, 4, 16, 37, false},
                      RingCase{"zigzag_gqa_alibi", RingLayout::kZigzag, 2, 4, 2, 16, 21, true},
                      RingCase{"contiguous_gqa", RingLayout::kContiguous, 1, 4, 1, 32, 45, false},
                      RingCase{"contiguous_mha_alibi", RingLayout::kContiguous, 2, 3, 3, 16, 29,
                               true}),
    [](const ::testing::TestParamInfo<RingCase>& i) { return i.param.name; });

TEST(RingLayoutRows, ZigzagBalancesCausalWork) {
  // rank r holds chunks r and 2cp-1-r: every rank gets the same number of
  // visible (query, key) pairs
  const int cp = 4;
  const int64_t T = 2 * cp * 10;
  std::vector<int64_t> work;
  for (int r = 0; r < cp; ++r) {
    int64_t w = 0;
    for (auto [b, l] : ring_local_rows(RingLayout::kZigzag, cp, r, T).chunks)
      for (int64_t t = b; t < b + l; ++t) w += t + 1;
    work.push_back(w);
  }
  for (int r = 1; r < cp; ++r) EXPECT_EQ(work[r], work[0]);
  auto c = ring_local_rows(RingLayout::kContiguous, cp, 2, T);
  ASSERT_EQ(c.chunks.size(), 1u);
  EXPECT_EQ(c.chunks[0], std::make_pair(int64_t(40), int64_t(20)));
}

}  // namespace
}  // namespace rt

int main(int argc, char** argv) { return run_mpi_tests(argc, argv); }
