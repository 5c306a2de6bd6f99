// The CUDA backend's kernels other than attention (model/cuda/ops.cu), as
// host launch functions. The same source builds twice: by nvcc for the GPU
// (namespace rt::cuda) and by g++ with RT_CUDA_EMULATE for the fiber
// emulator of model/cuda/emu/ (namespace rt::cuda_emu), so that CI runs the
// kernels' index arithmetic, reductions and barriers without a GPU.
//
// Conventions (model/backend.h): device pointers, explicit shapes; a typed
// pointer (activation, weight, activation gradient) is a TP / CTP: the
// pointer and whether it holds bf16 bit patterns (else fp32), each buffer its
// own (the model keeps activation gradients in fp32 beside bf16
// activations); statistics, losses, gradients of weights and optimizer state
// are fp32 (float*). Every launch goes on `stream` (a cudaStream_t; ignored
// by the emulator). Reductions run in a fixed order, so every kernel here is
// deterministic: the same inputs give the same bits on every run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/cuda/cuda_ns.h"

namespace rt::RT_CUDA_NS::kern {

struct TP {  // typed device pointer
  void* p;
  bool bf16;
};
struct CTP {  // read-only typed device pointer
  const void* p;
  bool bf16;
};

// The compute copy an optimizer update also writes: none when it is the
// master itself (fp32 compute weights).
inline TP compute_copy(float* master, TP compute) {
  return compute.p == master ? TP{nullptr, false} : compute;
}
// Bytes rounded up to 256: scratch sub-buffers stay aligned for cuBLASLt.
constexpr size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Elements a scratch buffer needs for each kernel that uses one.
size_t rmsnorm_backward_scratch_bytes(int N, int C);
size_t sum_squares_scratch_bytes(size_t n);
size_t embedding_backward_scratch_bytes(int N);

void cast(TP dst, CTP src, size_t n, void* stream);
void embedding_forward(TP out, const int32_t* tokens, CTP table, int N, int C, void* stream);
// Deterministic: token ids sorted (stable) with their row index, then each
// distinct id sums its rows in order and adds once to its table row.
void embedding_backward(TP dtable, CTP dout, const int32_t* tokens, int N, int C, void* scratch,
                        void* stream);
void rmsnorm_forward(TP out, float* rstd, CTP inp, CTP weight, int N, int C, float eps,
                     void* stream);
void rmsnorm_backward(TP dinp, TP dweight, CTP dout, CTP inp, CTP weight, const float* rstd, int N,
                      int C, void* scratch, void* stream);
void rope(TP x, const float* cos, const float* sin, int B, int T, int nh, int hd, float sign,
          void* stream);
void attention_merge(TP out, float* lse, CTP blk, const float* blk_lse, int Tq, int H, int hd,
                     void* stream);
void swiglu_forward(TP out, CTP gate, CTP up, size_t n, void* stream);
void swiglu_backward(TP dgate, TP dup, CTP dout, CTP gate, CTP up, size_t n, void* stream);
void add_inplace(TP x, CTP y, size_t n, void* stream);
void cross_entropy(TP logits, float* losses, const int32_t* targets, int N, int V,
                   float dloss_scale, void* stream);
void loss_sum(double* acc, const float* losses, int N, void* stream);
// Writes the sum of squares (fp64) to *out (device).
void sum_squares(double* out, const float* x, size_t n, void* scratch, void* stream);
void scale(float* x, size_t n, float s, void* stream);
// compute: the compute copy (p null or == master: none). Gradients are read
// as grad * grad_scale (the clipping coefficient; AdamWStep::grad_scale).
void adamw(float* master, TP compute, const float* grad, float* m, float* v, size_t n, float lr,
           float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
           float grad_scale, void* stream);
// One AdamW step over many segments in one launch: segs (device memory,
// nseg entries, begin = the running sum of the n before it) cover total
// elements; each segment has its own weight decay; compute.p null: no
// compute copy. The same arithmetic as adamw, element for element.
struct AdamSeg {
  float* master;
  TP compute;
  const float* grad;
  float* m;
  float* v;
  size_t begin, n;
  float weight_decay;
};
void adamw_segments(const AdamSeg* segs, int nseg, size_t total, float lr, float beta1,
                    float beta2, float eps, float bc1, float bc2, float grad_scale, void* stream);
void sgd(float* master, TP compute, const float* grad, size_t n, float lr, float weight_decay,
         void* stream);
void sgd_momentum(float* master, TP compute, const float* grad, float* buf, size_t n, float lr,
                  float weight_decay, float momentum, void* stream);

}  // namespace rt::RT_CUDA_NS::kern
