// Benchmark of the CUDA fused attention (model/cuda/attention.cu). Prints one
// JSON document: the device, its measured bf16 matrix rate (cuBLAS GEMM, bf16
// in, fp32 accumulation, 8192^3 on random data) and, per (T, causal), the
// median forward and backward times with their TFLOP/s and share of that rate.
//
//   bench_cuda_attention [--seq-lens 1024,4096,16384,32768] [--hd 128] [--heads 16]
//                        [--kv-heads H] [--tokens 16384] [--reps 10]
//                        [--impl auto|mma|wgmma] [--head-split 0|S] [--dq-exchange 0|1]
//
// --kv-heads G < H: grouped-query attention (H / G query heads per kv head).
// --head-split S > 0 forces the backward's head split, for either kernel family
// (S divides H / G); 0, the default, is the automatic (grid-based) choice.
// Each result names the split it ran with. --dq-exchange 1:
// the head_dim-64 wgmma backward sums its warpgroups' dQ halves in shared
// memory (not yet the default; "dq_exchange" in the JSON).
//
// Batch = max(1, tokens / T), so every length does about the same work per
// row block (FlashAttention-2's benchmark convention: batch x seqlen = 16K,
// 16 heads of 128). FLOPs count the matrix products only:
//   forward 4 B H T^2 hd, backward 2.5x forward, halved under a causal mask.
// The backward time includes its rowsum(dout * out) pre-pass.
// tests/bench/bench_sdpa.py times PyTorch's scaled_dot_product_attention on the
// same shapes and prints both side by side.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "model/cuda/attention.h"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS error %d in %s\n", int(s), what);
    std::exit(1);
  }
}

// Random bf16 bits, roughly N(0, 1)-scaled uniform in [-2, 2), never zero.
std::vector<uint16_t> random_bf16(size_t n, uint64_t seed) {
  std::vector<uint16_t> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    float f = (float(x >> 40) / float(1u << 24)) * 4.f - 2.f;
    if (f == 0.f) f = 0.25f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    out[i] = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  return out;
}

template <typename F>
float median_ms(F&& fn, int reps) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  for (int i = 0; i < 3; ++i) fn();  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(a), "record");
    fn();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double matmul_tflops(int reps) {
  const int n = 8192;
  const size_t e = size_t(n) * n;
  void *A, *B, *C;
  check(cudaMalloc(&A, e * 2), "malloc");
  check(cudaMalloc(&B, e * 2), "malloc");
  check(cudaMalloc(&C, e * 2), "malloc");
  const auto h = random_bf16(e, 7);
  check(cudaMemcpy(A, h.data(), e * 2, cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(B, h.data(), e * 2, cudaMemcpyHostToDevice), "copy");
  cublasHandle_t handle;
  check(cublasCreate(&handle), "cublasCreate");
  const float one = 1.f, zero = 0.f;
  const float ms = median_ms(
      [&] {
        check(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B,
                           CUDA_R_16BF, n, &zero, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
      },
      reps);
  cublasDestroy(handle);
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  return 2.0 * double(n) * n * n / (ms * 1e-3) / 1e12;
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> lens = {1024, 4096, 16384, 32768};
  int hd = 128, H = 16, G = 0, tokens = 16384, reps = 10, split = 0, dqx = 0;
  std::string impl_name = "auto";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_cuda_attention [--seq-lens L1,L2,...] [--hd 64|128] [--heads H]\n"
          "                            [--kv-heads G] [--tokens N] [--reps R]\n"
          "                            [--impl auto|mma|wgmma] [--head-split 0|S]\n"
          "                            [--dq-exchange 0|1]\n");
      return 0;
    }
    if (!v) {
      std::fprintf(stderr, "option %s needs a value (see --help)\n", a.c_str());
      return 2;
    }
    if (a == "--seq-lens") lens = parse_list(v);
    else if (a == "--hd") hd = std::atoi(v);
    else if (a == "--heads") H = std::atoi(v);
    else if (a == "--kv-heads") G = std::atoi(v);
    else if (a == "--head-split") split = std::atoi(v);
    else if (a == "--tokens") tokens = std::atoi(v);
    else if (a == "--reps") reps = std::atoi(v);
    else if (a == "--impl") impl_name = v;
    else if (a == "--dq-exchange") dqx = std::atoi(v);
    else {
      std::fprintf(stderr, "unknown option %s (see --help)\n", a.c_str());
      return 2;
    }
    ++i;
  }
  if (G == 0) G = H;
  if (G <= 0 || H % G != 0 || split < 0 || (dqx != 0 && dqx != 1)) {
    std::fprintf(stderr, "--kv-heads must divide --heads, --head-split be >= 0 and --dq-exchange 0 or 1 "
                         "(see --help)\n");
    return 2;
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("{\"skipped\": \"no CUDA device\"}\n");
    return 0;
  }
  rt::cuda::AttentionImpl impl = rt::cuda::AttentionImpl::kAuto;
  if (impl_name == "mma") impl = rt::cuda::AttentionImpl::kMma;
  else if (impl_name == "wgmma") impl = rt::cuda::AttentionImpl::kWgmma;
  else if (impl_name != "auto") {
    std::fprintf(stderr, "--impl must be auto, mma or wgmma, got %s\n", impl_name.c_str());
    return 2;
  }
  if (impl == rt::cuda::AttentionImpl::kAuto) {
    impl_name = rt::cuda::resolve_attention_impl(impl) == rt::cuda::AttentionImpl::kWgmma
                    ? "wgmma"
                    : "mma";
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  const double peak = matmul_tflops(reps);

  std::printf("{\n  \"device\": \"%s\",\n  \"sms\": %d,\n  \"matmul_bf16_tflops\": %.1f,\n",
              prop.name, prop.multiProcessorCount, peak);
  std::printf(
      "  \"impl\": \"%s\",\n  \"dq_exchange\": %s,\n  \"hd\": %d,\n  \"heads\": %d,\n"
      "  \"kv_heads\": %d,\n  \"results\": [",
      impl_name.c_str(), dqx ? "true" : "false", hd, H, G);
  rt::cuda::force_attention_backward_dq_exchange(dqx == 1);
  try {
    rt::cuda::force_attention_backward_head_split(split);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  bool first = true;
  for (int T : lens) {
    const int B = std::max(1, tokens / T);
    const size_t n = size_t(B) * T * H * hd, nk = size_t(B) * T * G * hd;
    const auto hq = random_bf16(n, 1), hk = random_bf16(nk, 2), hv = random_bf16(nk, 3),
               hdo = random_bf16(n, 4);
    rt::AttentionParams p0;
    p0.B = B, p0.Tq = T, p0.Tk = T, p0.H = H, p0.G = G, p0.hd = hd;
    p0.scale = 1.f / std::sqrt(float(hd));
    int used_split = 1;
    size_t work_floats = 0;
    try {
      used_split = rt::cuda::attention_backward_head_split(p0, impl);
      work_floats = rt::cuda::attention_backward_workspace_floats(p0, impl);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 2;
    }
    uint16_t *q, *k, *v, *o, *dO;
    float *lse, *dq, *dk, *dv, *work;
    check(cudaMalloc(&q, n * 2), "malloc");
    check(cudaMalloc(&k, nk * 2), "malloc");
    check(cudaMalloc(&v, nk * 2), "malloc");
    check(cudaMalloc(&o, n * 2), "malloc");
    check(cudaMalloc(&dO, n * 2), "malloc");
    check(cudaMalloc(&dq, n * 4), "malloc");
    check(cudaMalloc(&dk, nk * 4), "malloc");
    check(cudaMalloc(&dv, nk * 4), "malloc");
    check(cudaMalloc(&lse, size_t(B) * H * T * 4), "malloc");
    check(cudaMalloc(&work, work_floats * 4), "malloc");
    check(cudaMemcpy(q, hq.data(), n * 2, cudaMemcpyHostToDevice), "copy");
    check(cudaMemcpy(k, hk.data(), nk * 2, cudaMemcpyHostToDevice), "copy");
    check(cudaMemcpy(v, hv.data(), nk * 2, cudaMemcpyHostToDevice), "copy");
    check(cudaMemcpy(dO, hdo.data(), n * 2, cudaMemcpyHostToDevice), "copy");
    check(cudaMemset(dq, 0, n * 4), "memset");
    check(cudaMemset(dk, 0, nk * 4), "memset");
    check(cudaMemset(dv, 0, nk * 4), "memset");
    for (int causal = 0; causal < 2; ++causal) {
      rt::AttentionParams p = p0;
      p.causal = causal != 0;
      const float fwd = median_ms([&] { rt::cuda::attention_forward_bf16(p, o, lse, q, k, v, nullptr, impl); },
                                  reps);
      const float bwd = median_ms(
          [&] {
            rt::cuda::attention_backward_bf16(p, dq, dk, dv, dO, q, k, v, o, lse, work, nullptr, impl);
          },
          reps);
      check(cudaGetLastError(), "kernels");
      const double flops = 4.0 * B * H * double(T) * T * hd * (causal ? 0.5 : 1.0);
      const double tf = flops / (fwd * 1e-3) / 1e12, tb = 2.5 * flops / (bwd * 1e-3) / 1e12;
      std::printf(
          "%s\n    {\"T\": %d, \"B\": %d, \"causal\": %s, \"head_split\": %d, \"fwd_ms\": %.3f, "
          "\"fwd_tflops\": %.1f, \"fwd_frac_of_matmul\": %.3f, \"bwd_ms\": %.3f, "
          "\"bwd_tflops\": %.1f, \"bwd_frac_of_matmul\": %.3f}",
          first ? "" : ",", T, B, causal ? "true" : "false", used_split, fwd, tf, tf / peak, bwd,
          tb, tb / peak);
      std::fflush(stdout);
      first = false;
    }
    for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)o, (void*)dO, (void*)dq, (void*)dk,
                      (void*)dv, (void*)lse, (void*)work})
      cudaFree(ptr);
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
