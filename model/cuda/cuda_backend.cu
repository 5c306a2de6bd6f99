// The CUDA backend (model/cuda/cuda_backend.h): device memory from one
// allocator (sizes and the high-water mark tracked), one compute stream,
// cuBLASLt GEMMs in the HF [out, in] weight layout, the fused attention
// kernels, and model/cuda/ops.cu for everything else.
//
// Built twice, like ops.cu: by nvcc (make_cuda_backend) and by g++ with
// RT_CUDA_EMULATE (make_cuda_emu_backend), where device memory is host
// memory, kernels run in the fiber emulator, the GEMM is a plain loop
// accumulating in fp64 on the same rounded operands, and attention goes to the
// CPU backend on the same typed buffers.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/cuda/kernels.h"

#ifndef RT_CUDA_EMULATE
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "model/cuda/attention.h"
#include "model/cuda/attention_ops.h"
#include "model/cuda/cuda_check.h"
#include "model/cuda/device_info.h"
#endif

namespace rt {

#ifndef RT_CUDA_EMULATE
namespace cuda {

void cuda_check(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the message is the only effect
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in " + call + " at " + file + ":" +
                    std::to_string(line);
  if (e == cudaErrorMemoryAllocation)
    msg += ": the GPU is out of memory; lower train.seq_len or train.micro_batch_size, set "
           "train.activation_checkpointing: true (the least memory; selective keeps more), or "
           "spread the sequence over more ranks "
           "(parallel.context_parallel); `ringtrain plan CONFIG --device cuda` shows the bytes";
  else if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
    msg += ": no usable CUDA device or driver; run on the CPU with parallel.device: cpu";
  else if (e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure)
    msg += ": a kernel failed (a bug in ringtrain: please report it with the config; "
           "compute-sanitizer ringtrain ... names the kernel)";
  throw Error(kExitOther, msg);
}

}  // namespace cuda

namespace {

void lt_check(cublasStatus_t s, const char* call, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  std::string msg = std::string("cuBLASLt error ") + std::to_string(int(s)) + " in " + call +
                    " at " + __FILE__ + ":" + std::to_string(line);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED)
    msg += ": no cuBLASLt algorithm for this shape and dtype (report the model shape)";
  else if (s == CUBLAS_STATUS_ALLOC_FAILED)
    msg += ": out of GPU memory for the cuBLASLt workspace";
  throw Error(kExitOther, msg);
}
#define RT_LT_CHECK(call) lt_check((call), #call, __LINE__)

// Largest power of two <= 256 that divides the address (cuBLASLt's alignment
// preference must not promise more than the pointers have).
uint32_t alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al) al /= 2;
  return al;
}

cudaDataType cuda_type(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

// cuBLASLt GEMMs, column-major: D (m x n) = op(A) op(B) + beta C, C = D in
// place. One plan (descriptors + heuristic algorithm) cached per shape,
// dtypes and pointer alignment.
class LtGemm {
 public:
  explicit LtGemm(size_t workspace_bytes) : ws_bytes_(workspace_bytes) {
    RT_LT_CHECK(cublasLtCreate(&h_));
    RT_CUDA_CHECK(cudaMalloc(&ws_, ws_bytes_));
  }
  ~LtGemm() {
    for (auto& [k, p] : plans_) {
      cublasLtMatmulDescDestroy(p.op);
      for (auto l : {p.a, p.b, p.c}) cublasLtMatrixLayoutDestroy(l);
    }
    cudaFree(ws_);
    cublasLtDestroy(h_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void gemm(cudaStream_t s, bool ta, bool tb, int m, int n, int k, const void* A, int lda,
            const void* B, int ldb, void* C, int ldc, DType ab, DType c, float beta) {
    const Key key{m, n, k, lda, ldb, ldc, ta, tb, ab, c, alignment(A), alignment(B),
                  alignment(C)};
    const Plan& p = plan(key);
    const float alpha = 1.f;
    RT_LT_CHECK(cublasLtMatmul(h_, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, C, p.c, &p.algo,
                               ws_, ws_bytes_, s));
  }

 private:
  using Key = std::tuple<int, int, int, int, int, int, bool, bool, DType, DType, uint32_t,
                         uint32_t, uint32_t>;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  const Plan& plan(const Key& key) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    const auto [m, n, k, lda, ldb, ldc, ta, tb, ab, ct, ala, alb, alc] = key;
    Plan p;
    RT_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    RT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    RT_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    RT_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(ab), ta ? k : m, ta ? m : k, lda));
    RT_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(ab), tb ? n : k, tb ? k : n, ldb));
    RT_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, cuda_type(ct), m, n, ldc));
    cublasLtMatmulPreference_t pref;
    RT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    RT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes_, sizeof ws_bytes_));
    for (auto [attr, al] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, ala},
                            std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alb},
                            std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alc},
                            std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alc}})
      RT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof al));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(h_, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
      throw Error(kExitOther, "cuBLASLt has no algorithm for the GEMM m=" + std::to_string(m) +
                                  " n=" + std::to_string(n) + " k=" + std::to_string(k) + " (" +
                                  dtype_name(ab) + " -> " + dtype_name(ct) + ", alignment " +
                                  std::to_string(std::min({ala, alb, alc})) + " bytes)");
    p.algo = res.algo;
    return plans_.emplace(key, p).first->second;
  }

  cublasLtHandle_t h_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace
#endif  // !RT_CUDA_EMULATE

namespace {

namespace kern = RT_CUDA_NS::kern;

bool is_bf16(DType t, const char* op) {
  if (t == DType::kF32) return false;
  if (t == DType::kBF16) return true;
  throw UsageError(std::string("CUDA backend: ") + op + " has no " + dtype_name(t) +
                   " version (fp32 and bf16 only)");
}
kern::TP tp(Buf b, const char* op) { return {b.p, is_bf16(b.t, op)}; }
kern::CTP ctp(CBuf b, const char* op) { return {b.p, is_bf16(b.t, op)}; }

class CudaBackend final : public Backend {
 public:
#ifdef RT_CUDA_EMULATE
  CudaBackend() : cpu_(make_cpu_backend()) {}
  ~CudaBackend() override {
    for (auto& [p, n] : sizes_) std::free(p);
    std::free(scratch_);
  }
  const char* name() const override { return "cuda-emu"; }
#else
  explicit CudaBackend(int device) : device_(device) {
    const int n = cuda::device_count();
    if (device < 0 || device >= n)
      throw UsageError("CUDA device " + std::to_string(device) + " does not exist (" +
                       std::to_string(n) + " visible); check CUDA_VISIBLE_DEVICES");
    RT_CUDA_CHECK(cudaSetDevice(device));
    RT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    lt_ = std::make_unique<LtGemm>(size_t(32) << 20);  // 32 MiB: cuBLAS's Hopper advice
    RT_CUDA_CHECK(cudaMalloc(&result_, sizeof(double)));
    for (Staging& st : staging_) {
      RT_CUDA_CHECK(cudaMallocHost(&st.host, kStagingBytes));
      RT_CUDA_CHECK(cudaEventCreateWithFlags(&st.done, cudaEventDisableTiming));
    }
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (Staging& st : staging_) {
      cudaFreeHost(st.host);
      cudaEventDestroy(st.done);
    }
    lt_.reset();
    cudaFree(result_);
    cudaFree(scratch_);
    for (auto& [p, n] : sizes_) cudaFree(p);
    cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "cuda"; }
#endif
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::kCuda; }
  int device_index() const override { return device_; }

  bool supports(Op op, DType act) const override {
    if (op == Op::kAttentionForward || op == Op::kAttentionBackward) return act == DType::kBF16;
    return act == DType::kF32 || act == DType::kBF16;
  }
  void* stream() override { return stream_; }

  void* scratch(size_t bytes) override {
    if (bytes <= scratch_bytes_) return scratch_;
    const size_t grow = std::max(bytes, scratch_bytes_ + scratch_bytes_ / 2);
#ifdef RT_CUDA_EMULATE
    std::free(scratch_);
    scratch_ = std::aligned_alloc(256, kern::align256(grow));
    if (!scratch_) throw std::bad_alloc();
#else
    RT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued ops may still read the old one
    RT_CUDA_CHECK(cudaFree(scratch_));
    scratch_ = nullptr;
    RT_CUDA_CHECK(cudaMalloc(&scratch_, grow));
#endif
    scratch_bytes_ = grow;
    return scratch_;
  }

  // ---- memory ---------------------------------------------------------------
  void* alloc_bytes(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
#ifdef RT_CUDA_EMULATE
    p = std::aligned_alloc(256, kern::align256(bytes));
    if (!p) throw std::bad_alloc();
#else
    RT_CUDA_CHECK(cudaMalloc(&p, bytes));
#endif
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    return p;
  }
  void free_bytes(void* p) override {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sizes_.find(p);
      RT_CHECK(it != sizes_.end(), "free of a pointer this backend did not allocate");
      in_use_ -= it->second;
      sizes_.erase(it);
    }
#ifdef RT_CUDA_EMULATE
    std::free(p);
#else
    RT_CUDA_CHECK(cudaFree(p));  // synchronises the device: owners free outside steps
#endif
  }
  size_t peak_bytes() const override { return peak_; }

  // The caller may reuse src as soon as this returns. Small uploads (each
  // micro-batch's tokens and targets) go through a ring of pinned buffers and
  // stay asynchronous: the host waits only when a buffer's previous copy
  // (kStagingSlots uploads ago) has not run yet. Large ones (weights at load,
  // RoPE tables when positions change) are pageable copies, which the driver
  // orders after the stream's earlier work.
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
#ifdef RT_CUDA_EMULATE
    std::memcpy(dst, src, bytes);
#else
    if (bytes <= kStagingBytes) {
      Staging& st = staging_[next_staging_];
      next_staging_ = (next_staging_ + 1) % kStagingSlots;
      RT_CUDA_CHECK(cudaEventSynchronize(st.done));
      std::memcpy(st.host, src, bytes);
      RT_CUDA_CHECK(cudaMemcpyAsync(dst, st.host, bytes, cudaMemcpyHostToDevice, stream_));
      RT_CUDA_CHECK(cudaEventRecord(st.done, stream_));
      return;
    }
    RT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    RT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // src may be reused at once
#endif
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
#ifdef RT_CUDA_EMULATE
    std::memcpy(dst, src, bytes);
#else
    RT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    RT_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
  }
  void synchronize() override {
#ifndef RT_CUDA_EMULATE
    RT_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
  }

  void zero(Buf x, size_t n) override {
    if (!n) return;
#ifdef RT_CUDA_EMULATE
    std::memset(x.p, 0, n * dtype_size(x.t));
#else
    RT_CUDA_CHECK(cudaMemsetAsync(x.p, 0, n * dtype_size(x.t), stream_));
#endif
  }
  void copy(Buf dst, CBuf src, size_t n) override {
    RT_CHECK(dst.t == src.t, std::string("copy from ") + dtype_name(src.t) + " to " +
                                 dtype_name(dst.t) + ": use cast");
    if (!n) return;
#ifdef RT_CUDA_EMULATE
    std::memmove(dst.p, src.p, n * dtype_size(dst.t));
#else
    RT_CUDA_CHECK(
        cudaMemcpyAsync(dst.p, src.p, n * dtype_size(dst.t), cudaMemcpyDeviceToDevice, stream_));
#endif
  }
  void cast(Buf dst, CBuf src, size_t n) override {
    if (dst.t == src.t) return copy(dst, src, n);
    kern::cast(tp(dst, "cast"), ctp(src, "cast"), n, stream_);
  }

  // ---- layers ---------------------------------------------------------------
  void embedding_forward(Buf out, const int32_t* tokens, CBuf table, int N, int C) override {
    kern::embedding_forward(tp(out, "embedding_forward"), tokens, ctp(table, "embedding_forward"),
                            N, C, stream_);
  }
  void embedding_backward(Buf dtable, CBuf dout, const int32_t* tokens, int N, int C) override {
    void* s = scratch(kern::embedding_backward_scratch_bytes(N));
    kern::embedding_backward(tp(dtable, "embedding_backward"), ctp(dout, "embedding_backward"),
                             tokens, N, C, s, stream_);
  }

  void rmsnorm_forward(Buf out, float* rstd, CBuf inp, CBuf weight, int N, int C,
                       float eps) override {
    const char* op = "rmsnorm_forward";
    kern::rmsnorm_forward(tp(out, op), rstd, ctp(inp, op), ctp(weight, op), N, C, eps, stream_);
  }
  void rmsnorm_backward(Buf dinp, Buf dweight, CBuf dout, CBuf inp, CBuf weight,
                        const float* rstd, int N, int C) override {
    const char* op = "rmsnorm_backward";
    void* s = scratch(kern::rmsnorm_backward_scratch_bytes(N, C));
    kern::rmsnorm_backward(tp(dinp, op), tp(dweight, op), ctp(dout, op), ctp(inp, op),
                           ctp(weight, op), rstd, N, C, s, stream_);
  }

  // Row-major HF layout through column-major GEMMs (a row-major r x c matrix
  // is a column-major c x r one). The operands of a GEMM share one dtype:
  // bf16 when any is bf16 (an fp32 operand, e.g. the activation gradients the
  // model keeps in fp32, is rounded to bf16 into scratch first), fp32
  // otherwise; the output is that dtype or fp32; accumulation is fp32.
  void matmul_forward(Buf out, CBuf inp, CBuf weight, int N, int C, int OC,
                      bool accumulate) override {
    if (N == 0 || OC == 0) return;
    const char* op = "matmul_forward";
    const DType t = gemm_dtype({inp, weight}, out, op);
    Operands o(*this, t, {{inp, size_t(N) * C}, {weight, size_t(OC) * C}});
    // out^T (OC x N) = W (OC x C) . inp^T (C x N)
    gemm(true, false, OC, N, C, o[1], C, o[0], C, out, OC, accumulate ? 1.f : 0.f);
  }
  void matmul_backward(Buf dinp, Buf dweight, CBuf dout, CBuf inp, CBuf weight, int N, int C,
                       int OC) override {
    if (N == 0 || OC == 0 || C == 0) return;
    const char* op = "matmul_backward";
    const DType t = dinp && dweight ? gemm_dtype({dout, inp, weight}, dinp, op)
                    : dinp          ? gemm_dtype({dout, weight}, dinp, op)
                                    : gemm_dtype({dout, inp}, dweight, op);
    if (dinp && dweight) gemm_dtype({dout, inp, weight}, dweight, op);
    Operands o(*this, t,
               {{dout, size_t(N) * OC}, {dweight ? inp : CBuf(), size_t(N) * C},
                {dinp ? weight : CBuf(), size_t(OC) * C}});
    // dinp^T (C x N) += W^T (C x OC) . dout^T (OC x N)
    if (dinp) gemm(false, false, C, N, OC, o[2], C, o[0], OC, dinp, C, 1.f);
    // dW^T (C x OC) += inp^T (C x N) . dout (N x OC)
    if (dweight) gemm(false, true, C, OC, N, o[1], C, o[0], OC, dweight, C, 1.f);
  }

  void rope_forward(Buf x, const float* cos, const float* sin, int B, int T, int nh,
                    int hd) override {
    kern::rope(tp(x, "rope_forward"), cos, sin, B, T, nh, hd, 1.f, stream_);
  }
  void rope_backward(Buf dx, const float* cos, const float* sin, int B, int T, int nh,
                     int hd) override {
    kern::rope(tp(dx, "rope_backward"), cos, sin, B, T, nh, hd, -1.f, stream_);
  }

  void attention_forward(const AttentionParams& p, Buf out, float* lse, CBuf q, CBuf k,
                         CBuf v) override {
#ifdef RT_CUDA_EMULATE
    require_bf16(q, "attention_forward");
    cpu_->attention_forward(p, out, lse, q, k, v);
#else
    cuda::attention_forward_op(p, out, lse, q, k, v, stream_);
#endif
  }
  void attention_backward(const AttentionParams& p, Buf dq, Buf dk, Buf dv, CBuf dout, CBuf q,
                          CBuf k, CBuf v, CBuf out, const float* lse) override {
#ifdef RT_CUDA_EMULATE
    require_bf16(q, "attention_backward");
    cpu_->attention_backward(p, dq, dk, dv, dout, q, k, v, out, lse);
#else
    // The kernels take bf16 dout and accumulate fp32 dq, dk, dv. The model
    // keeps activation gradients in fp32: dout is rounded to bf16 first; a
    // bf16 dq/dk/dv goes through fp32 copies.
    const size_t nq = size_t(p.B) * p.Tq * p.H * p.hd, nk = size_t(p.B) * p.Tk * p.G * p.hd;
    const size_t ws = cuda::attention_backward_workspace_floats(p);
    const bool direct = dq.t == DType::kF32 && dk.t == DType::kF32 && dv.t == DType::kF32;
    const bool cast_dout = dout.t != DType::kBF16;
    const size_t floats = ws + (direct ? 0 : nq + 2 * nk) + (cast_dout ? (nq + 1) / 2 : 0);
    float* s = static_cast<float*>(scratch(floats * sizeof(float)));
    float* next = s + ws;
    if (cast_dout) {
      Buf d16(next, DType::kBF16);
      cast(d16, dout, nq);
      dout = d16;
      next += (nq + 1) / 2;
    }
    if (direct) {
      cuda::attention_backward_op(p, dq, dk, dv, dout, q, k, v, out, lse, s, stream_);
      return;
    }
    float *fq = next, *fk = fq + nq, *fv = fk + nk;
    cast(fq, dq, nq);
    cast(fk, dk, nk);
    cast(fv, dv, nk);
    cuda::attention_backward_op(p, fq, fk, fv, dout, q, k, v, out, lse, s, stream_);
    cast(dq, fq, nq);
    cast(dk, fk, nk);
    cast(dv, fv, nk);
#endif
  }

  void attention_merge(Buf out, float* lse, CBuf blk_out, const float* blk_lse, int Tq, int H,
                       int hd) override {
    const char* op = "attention_merge";
    kern::attention_merge(tp(out, op), lse, ctp(blk_out, op), blk_lse, Tq, H, hd, stream_);
  }

  void swiglu_forward(Buf out, CBuf gate, CBuf up, size_t n) override {
    const char* op = "swiglu_forward";
    kern::swiglu_forward(tp(out, op), ctp(gate, op), ctp(up, op), n, stream_);
  }
  void swiglu_backward(Buf dgate, Buf dup, CBuf dout, CBuf gate, CBuf up, size_t n) override {
    const char* op = "swiglu_backward";
    kern::swiglu_backward(tp(dgate, op), tp(dup, op), ctp(dout, op), ctp(gate, op), ctp(up, op), n,
                          stream_);
  }

  void add_inplace(Buf x, CBuf y, size_t n) override {
    kern::add_inplace(tp(x, "add_inplace"), ctp(y, "add_inplace"), n, stream_);
  }

  void cross_entropy_forward_backward(Buf logits, float* losses, const int32_t* targets, int N,
                                      int V, float dloss_scale) override {
    kern::cross_entropy(tp(logits, "cross_entropy"), losses, targets, N, V, dloss_scale, stream_);
  }
  void loss_sum(double* acc, const float* losses, int N) override {
    kern::loss_sum(acc, losses, N, stream_);
  }

  // ---- optimizer -------------------------------------------------------------
  double sum_squares(const float* x, size_t n) override {
    if (!n) return 0.0;
    void* s = scratch(kern::sum_squares_scratch_bytes(n));
#ifdef RT_CUDA_EMULATE
    double out = 0.0;
    kern::sum_squares(&out, x, n, s, stream_);
    return out;
#else
    kern::sum_squares(static_cast<double*>(result_), x, n, s, stream_);
    double out = 0.0;
    copy_to_host(&out, result_, sizeof out);  // the one read of the gradient norm
    return out;
#endif
  }
  void scale(float* x, size_t n, float s) override { kern::scale(x, n, s, stream_); }

  void adamw_update(float* master, Buf param, const float* grad, float* m, float* v, size_t n,
                    const AdamWStep& h) override {
    kern::adamw(master, tp(param, "adamw_update"), grad, m, v, n, h.lr, h.beta1, h.beta2, h.eps,
                h.weight_decay, h.bias_correction1(), h.bias_correction2(), h.grad_scale, stream_);
  }
  // One launch for the whole arena (or shard). The segment table is uploaded
  // when it changes (the first step; pointers are stable after that).
  void adamw_update_segments(const AdamWSegment* segs, int count, const AdamWStep& h) override {
    std::vector<kern::AdamSeg> table(static_cast<size_t>(count));  // zeroed, padding too
    size_t total = 0;
    for (int i = 0; i < count; ++i) {
      const AdamWSegment& a = segs[i];
      kern::AdamSeg& t = table[size_t(i)];
      t.master = a.master;
      t.compute = kern::compute_copy(a.master, tp(a.param, "adamw_update_segments"));
      t.grad = a.grad;
      t.m = a.m;
      t.v = a.v;
      t.begin = total;
      t.n = a.n;
      t.weight_decay = a.weight_decay;
      total += a.n;
    }
    if (!total) return;
    const size_t bytes = table.size() * sizeof(kern::AdamSeg);
    if (table.size() != seg_host_.size() ||
        std::memcmp(table.data(), seg_host_.data(), bytes) != 0) {
      if (bytes > seg_cap_) {
        free_bytes(seg_dev_);
        seg_dev_ = alloc_bytes(bytes);
        seg_cap_ = bytes;
      }
      copy_to_device(seg_dev_, table.data(), bytes);
      seg_host_ = std::move(table);
    }
    kern::adamw_segments(static_cast<const kern::AdamSeg*>(seg_dev_), count, total, h.lr, h.beta1,
                         h.beta2, h.eps, h.bias_correction1(), h.bias_correction2(), h.grad_scale,
                         stream_);
  }
  void sgd_update(float* master, Buf param, const float* grad, size_t n, float lr,
                  float weight_decay) override {
    kern::sgd(master, tp(param, "sgd_update"), grad, n, lr, weight_decay, stream_);
  }
  void sgd_momentum_update(float* master, Buf param, const float* grad, float* buf, size_t n,
                           float lr, float weight_decay, float momentum) override {
    kern::sgd_momentum(master, tp(param, "sgd_momentum_update"), grad, buf, n, lr, weight_decay,
                       momentum, stream_);
  }

 private:
  // The dtype a GEMM's operands share (bf16 when any is bf16) after checking
  // that the output can be written from it.
  static DType gemm_dtype(std::initializer_list<CBuf> operands, CBuf out, const char* op) {
    DType t = DType::kF32;
    for (CBuf b : operands)
      if (b && is_bf16(b.t, op)) t = DType::kBF16;
    if (is_bf16(out.t, op) && t != DType::kBF16)
      throw UsageError(std::string("CUDA backend: ") + op +
                       " writes bf16 only from bf16 operands (fp32 accumulate)");
    return t;
  }

  // GEMM operands in dtype t: each buffer itself when it has t, otherwise a
  // rounded copy in scratch (one scratch call for all of them).
  class Operands {
   public:
    Operands(CudaBackend& be, DType t, std::initializer_list<std::pair<CBuf, size_t>> in) {
      RT_CHECK(in.size() <= v_.size(), "Operands: at most 3 GEMM operands");
      size_t bytes = 0;
      for (auto& [b, n] : in)
        if (b && b.t != t) bytes += kern::align256(n * dtype_size(t));
      char* s = bytes ? static_cast<char*>(be.scratch(bytes)) : nullptr;
      size_t i = 0;
      for (auto& [b, n] : in) {
        if (!b || b.t == t) {
          v_[i++] = b;
          continue;
        }
        Buf c(s, t);
        be.cast(c, b, n);
        v_[i++] = c;
        s += kern::align256(n * dtype_size(t));
      }
    }
    CBuf operator[](size_t i) const { return v_[i]; }

   private:
    std::array<CBuf, 3> v_{};
  };

  // Column-major D (m x n) = op(A) op(B) + beta D, fp32 accumulate.
  void gemm(bool ta, bool tb, int m, int n, int k, CBuf A, int lda, CBuf B, int ldb, Buf D,
            int ldd, float beta) {
#ifdef RT_CUDA_EMULATE
    // the CPU's sgemm on the same (already rounded) operands, as row-major
    // products: column-major D^T = op(B)^T op(A)^T
    cpu_gemm(ta, tb, m, n, k, A, lda, B, ldb, D, ldd, beta);
#else
    lt_->gemm(stream_, ta, tb, m, n, k, A.p, lda, B.p, ldb, D.p, ldd, A.t, D.t, beta);
#endif
  }

#ifdef RT_CUDA_EMULATE
  void cpu_gemm(bool ta, bool tb, int m, int n, int k, CBuf A, int lda, CBuf B, int ldb, Buf D,
                int ldd, float beta) {
    auto f32 = [](CBuf b, size_t count) {
      std::vector<float> v(count);
      for (size_t i = 0; i < count; ++i)
        v[i] = b.t == DType::kBF16 ? bf16_to_f32(b.as<uint16_t>()[i]) : b.f32()[i];
      return v;
    };
    const std::vector<float> a = f32(A, size_t(lda) * (ta ? m : k));
    const std::vector<float> bm = f32(B, size_t(ldb) * (tb ? k : n));
    std::vector<float> d = f32(D, size_t(ldd) * n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double acc = 0.0;
        for (int l = 0; l < k; ++l) {
          const float av = ta ? a[size_t(i) * lda + l] : a[size_t(l) * lda + i];
          const float bv = tb ? bm[size_t(l) * ldb + j] : bm[size_t(j) * ldb + l];
          acc += double(av) * bv;
        }
        float& o = d[size_t(j) * ldd + i];
        o = beta == 0.f ? float(acc) : float(acc + double(beta) * o);  // beta 0: D not read
      }
    for (size_t i = 0; i < d.size(); ++i) {
      if (D.t == DType::kBF16)
        D.as<uint16_t>()[i] = f32_to_bf16(d[i]);
      else
        D.f32()[i] = d[i];
    }
  }
  static void require_bf16(CBuf b, const char* op) {
    if (b.t != DType::kBF16)
      throw UsageError(std::string("CUDA backend: ") + op + " takes bf16 q, k, v (got " +
                       dtype_name(b.t) + ")");
  }
  std::unique_ptr<Backend> cpu_;
  void* stream_ = nullptr;
#else
  static constexpr size_t kStagingBytes = size_t(1) << 20;
  static constexpr int kStagingSlots = 8;
  struct Staging {
    void* host = nullptr;
    cudaEvent_t done = nullptr;
  };
  Staging staging_[kStagingSlots];
  int next_staging_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<LtGemm> lt_;
  void* result_ = nullptr;
#endif
  int device_ = 0;  // the emulator's one "device" is 0
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* seg_dev_ = nullptr;  // adamw_update_segments' table on the device
  size_t seg_cap_ = 0;
  std::vector<kern::AdamSeg> seg_host_;
  std::mutex mu_;
  std::map<void*, size_t> sizes_;
  size_t in_use_ = 0, peak_ = 0;
};

}  // namespace

#ifdef RT_CUDA_EMULATE
std::unique_ptr<Backend> make_cuda_emu_backend() { return std::make_unique<CudaBackend>(); }
#else
std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}
#endif

}  // namespace rt
