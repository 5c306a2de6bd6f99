// cuBLAS bf16 GEMM rate (model/cuda/gemm_probe.h).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "model/cuda/gemm_probe.h"

namespace rt::cuda {
namespace {

void check_cuda(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess)
    throw Error(kExitOther, std::string("gemm probe: ") + what + " failed at " + __FILE__ + ":" +
                                std::to_string(line) + ": " + cudaGetErrorString(e) +
                                " (is the GPU busy or out of memory? nvidia-smi shows it)");
}
void check_cublas(cublasStatus_t s, const char* what, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(kExitOther, std::string("gemm probe: ") + what + " failed at " + __FILE__ + ":" +
                                std::to_string(line) + ": cuBLAS status " +
                                std::to_string(int(s)) +
                                " (a cuBLAS that does not match the driver? check LD_LIBRARY_PATH)");
}
#define PROBE_CUDA(x) check_cuda((x), #x, __LINE__)
#define PROBE_CUBLAS(x) check_cublas((x), #x, __LINE__)

// Uniform [-1, 1) from a counter hash (splitmix64), rounded to bf16.
__global__ void fill_uniform_bf16(__nv_bfloat16* x, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = float(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    x[i] = __float2bfloat16(2.f * u - 1.f);
  }
}

// Frees on every path (the probe throws on failure).
struct ProbeState {
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
  cublasHandle_t h = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  ~ProbeState() {
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (h) cublasDestroy(h);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
  }
};

}  // namespace

double measure_gemm_bf16_tflops(int device, int n, int reps) {
  PROBE_CUDA(cudaSetDevice(device));
  ProbeState s;
  const size_t elems = size_t(n) * size_t(n);
  const size_t bytes = elems * sizeof(__nv_bfloat16);
  PROBE_CUDA(cudaMalloc(&s.a, bytes));
  PROBE_CUDA(cudaMalloc(&s.b, bytes));
  PROBE_CUDA(cudaMalloc(&s.c, bytes));
  fill_uniform_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(s.a), elems, 1);
  PROBE_CUDA(cudaGetLastError());
  fill_uniform_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(s.b), elems, 2);
  PROBE_CUDA(cudaGetLastError());
  PROBE_CUBLAS(cublasCreate(&s.h));
  PROBE_CUDA(cudaEventCreate(&s.e0));
  PROBE_CUDA(cudaEventCreate(&s.e1));
  const float alpha = 1.f, beta = 0.f;
  auto gemm = [&] {
    PROBE_CUBLAS(cublasGemmEx(s.h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, s.a, CUDA_R_16BF,
                              n, s.b, CUDA_R_16BF, n, &beta, s.c, CUDA_R_16BF, n,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < 3; ++i) gemm();  // heuristics, clocks up
  PROBE_CUDA(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    PROBE_CUDA(cudaEventRecord(s.e0));
    gemm();
    PROBE_CUDA(cudaEventRecord(s.e1));
    PROBE_CUDA(cudaEventSynchronize(s.e1));
    float t = 0;
    PROBE_CUDA(cudaEventElapsedTime(&t, s.e0, s.e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double median_s = double(ms[ms.size() / 2]) / 1e3;
  return 2.0 * double(n) * double(n) * double(n) / median_s / 1e12;
}

}  // namespace rt::cuda
