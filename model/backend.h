// The op layer: every numeric operation the model and optimizer need, with one
// implementation per device (model/cpu/, later model/cuda/). Model code calls
// ops only through a Backend, so a new device never touches model code.
//
// Conventions (llm.c style): plain buffers, every dimension passed in, shapes
// written once per op. "+=" in a comment means the op accumulates into the
// output (gradient buffers are zeroed once per step); otherwise it overwrites.
// All buffers live on the backend's device and come from its allocator.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "model/tensor.h"

namespace rt {

enum class Device { kCpu, kCuda };
const char* device_name(Device d);

// One attention call over a block of queries and a block of keys. Ring
// attention calls it once per (local Q, travelling KV) pair, so the global
// positions of both blocks are explicit.
struct AttentionParams {
  int B = 1;        // batch
  int Tq = 0;       // query rows in this block
  int Tk = 0;       // key rows in this block
  int H = 1;        // query heads
  int G = 1;        // kv heads (divides H; query head h uses kv head h / (H/G))
  int hd = 0;       // head dim
  int64_t q_offset = 0;  // global position of query row 0
  int64_t k_offset = 0;  // global position of key row 0
  bool causal = true;    // key visible iff k_pos <= q_pos
  const float* alibi_slopes = nullptr;  // [H] or null: bias -slope*(q_pos-k_pos)
  float scale = 0.f;     // softmax scale, usually 1/sqrt(hd)
};

// Every op of the layer, for Backend::supports and the op-by-backend test
// harness (tests/model/test_model_backend_ops.cpp). kCount last.
enum class Op : uint8_t {
  kCast, kZero, kCopy,
  kEmbeddingForward, kEmbeddingBackward,
  kRmsnormForward, kRmsnormBackward,
  kMatmulForward, kMatmulBackward,
  kRopeForward, kRopeBackward,
  kAttentionForward, kAttentionBackward, kAttentionMerge,
  kSwigluForward, kSwigluBackward,
  kAddInplace, kCrossEntropy, kLossSum,
  kSumSquares, kScale, kAdamwUpdate, kAdamwUpdateSegments, kSgdUpdate, kSgdMomentumUpdate,
  kCount
};
const char* op_name(Op op);

// One AdamW step's hyper-parameters. step is 1-based.
struct AdamWStep {
  float lr = 0.f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  int64_t step = 1;
  // Gradient-clipping coefficient folded into the update: each gradient is
  // read as g * grad_scale (one fp32 product, the value a separate scale()
  // pass would store), saving that pass over the gradients. 1: unclipped.
  float grad_scale = 1.f;
  // 1 - beta^step in double, rounded once (the same on every backend)
  float bias_correction1() const { return 1.f - float(std::pow(double(beta1), double(step))); }
  float bias_correction2() const { return 1.f - float(std::pow(double(beta2), double(step))); }
};

// One tensor (or a tensor's part in an optimizer shard) of an AdamW step
// over many: the arguments of adamw_update, with its own weight decay.
struct AdamWSegment {
  float* master = nullptr;
  Buf param;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  size_t n = 0;
  float weight_decay = 0.f;
};

// Buffers at this boundary are typed (model/tensor.h): activations and
// weights are Buf/CBuf in the precision's dtypes (fp32, bf16); softmax and
// norm statistics (lse, rstd), losses, parameter gradients, optimizer state
// and reductions stay fp32 (float*). An op reads its inputs in their dtype,
// computes in fp32 and rounds once where it stores a bf16 output (the GPU
// contract; the CPU backend emulates it). supports(op, dtype) says whether
// the op accepts activations/weights of that dtype.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // The GPU the backend runs on (CUDA device index); -1 for host memory.
  virtual int device_index() const { return -1; }
  virtual const char* name() const = 0;
  // Whether op runs with activations and weights of dtype act.
  virtual bool supports(Op op, DType act) const = 0;
  // The stream ops are queued on (cudaStream_t on CUDA); nullptr on the CPU.
  virtual void* stream() { return nullptr; }
  // Backend-owned workspace of at least bytes, valid until the next call to
  // scratch (one op's temporary: attention D, cuBLASLt workspace, CE partials).
  virtual void* scratch(size_t bytes) = 0;

  // ---- memory -------------------------------------------------------------
  // Raw allocation; owners use DeviceBuffer (below) or an Arena, never a
  // hand-written free.
  virtual void* alloc_bytes(size_t bytes) = 0;
  virtual void free_bytes(void* p) = 0;
  virtual void copy_to_device(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void copy_to_host(void* dst_host, const void* src, size_t bytes) = 0;
  virtual void zero(Buf x, size_t n) = 0;
  // device to device, same dtype (n elements)
  virtual void copy(Buf dst, CBuf src, size_t n) = 0;
  // dst (n) = src (n) converted (fp32 <-> bf16 rounds to nearest even; same dtype copies)
  virtual void cast(Buf dst, CBuf src, size_t n) = 0;
  virtual void synchronize() {}

  // ---- layers ---------------------------------------------------------------
  // tokens (N) , table (V,C) -> out (N,C)
  virtual void embedding_forward(Buf out, const int32_t* tokens, CBuf table, int N, int C) = 0;
  // dtable (V,C) += scatter of dout (N,C)
  virtual void embedding_backward(Buf dtable, CBuf dout, const int32_t* tokens, int N,
                                  int C) = 0;

  // inp (N,C), weight (C) -> out (N,C), rstd (N) saved for backward
  virtual void rmsnorm_forward(Buf out, float* rstd, CBuf inp, CBuf weight, int N, int C,
                               float eps) = 0;
  // dinp (N,C) +=, dweight (C) +=
  virtual void rmsnorm_backward(Buf dinp, Buf dweight, CBuf dout, CBuf inp, CBuf weight,
                                const float* rstd, int N, int C) = 0;

  // inp (N,C), weight (OC,C) -> out (N,OC) = inp weight^T   (+= out when accumulate)
  virtual void matmul_forward(Buf out, CBuf inp, CBuf weight, int N, int C, int OC,
                              bool accumulate = false) = 0;
  // dinp (N,C) += dout weight ; dweight (OC,C) += dout^T inp. Either may be null.
  virtual void matmul_backward(Buf dinp, Buf dweight, CBuf dout, CBuf inp, CBuf weight, int N,
                               int C, int OC) = 0;

  // x (B,T,nh,hd) rotated in place, HF rotate_half pairing (j, j+hd/2);
  // cos, sin (T, hd/2) fp32 for the T rows' global positions.
  virtual void rope_forward(Buf x, const float* cos, const float* sin, int B, int T, int nh,
                            int hd) = 0;
  // dx (B,T,nh,hd) in place: the transpose (inverse) rotation.
  virtual void rope_backward(Buf dx, const float* cos, const float* sin, int B, int T, int nh,
                             int hd) = 0;

  // q (B,Tq,H,hd), k,v (B,Tk,G,hd) -> out (B,Tq,H,hd), lse (B,H,Tq) natural log.
  // Blocked online softmax: O(T) extra memory. A row that sees no key gets
  // out = 0 and lse = -inf.
  virtual void attention_forward(const AttentionParams& p, Buf out, float* lse, CBuf q, CBuf k,
                                 CBuf v) = 0;
  // Given dout and the *final* out, lse of these query rows (merged over all
  // key blocks), accumulate this key block's contribution: dq, dk, dv +=.
  virtual void attention_backward(const AttentionParams& p, Buf dq, Buf dk, Buf dv, CBuf dout,
                                  CBuf q, CBuf k, CBuf v, CBuf out, const float* lse) = 0;

  // Merge one key block's result into a running one, for the same Tq query
  // rows (ring attention): out (Tq,H,hd), lse (H,Tq) are updated in place
  // with blk_out (Tq,H,hd), blk_lse (H,Tq):
  //   lse' = logaddexp(lse, blk_lse); out' = out*e^(lse-lse') + blk*e^(blk_lse-lse').
  // -inf entries (no visible key yet) are handled; fp32 arithmetic, blk_out
  // read in its dtype (an fp32 out accumulates without rounding).
  virtual void attention_merge(Buf out, float* lse, CBuf blk_out, const float* blk_lse, int Tq,
                               int H, int hd) = 0;

  // gate, up (N,F) -> out (N,F) = silu(gate) * up
  virtual void swiglu_forward(Buf out, CBuf gate, CBuf up, size_t n) = 0;
  // dgate, dup (N,F) = (overwrite); dgate may alias dout (element-wise)
  virtual void swiglu_backward(Buf dgate, Buf dup, CBuf dout, CBuf gate, CBuf up, size_t n) = 0;

  // x += y
  virtual void add_inplace(Buf x, CBuf y, size_t n) = 0;

  // logits (N,V) -> losses (N) fp32 = -log softmax[target]; rows with target < 0
  // get loss 0. When dloss_scale != 0 the logits are overwritten with
  // dlogits = (softmax - onehot) * dloss_scale (zero for ignored rows).
  virtual void cross_entropy_forward_backward(Buf logits, float* losses, const int32_t* targets,
                                              int N, int V, float dloss_scale) = 0;
  // acc (one fp64 on the device) += the sum of losses (N fp32), summed in
  // order in fp64 then added once: the loss is summed where it is computed
  // and read once per step (LlamaModel::take_loss_sum).
  virtual void loss_sum(double* acc, const float* losses, int N) = 0;

  // ---- optimizer (fp32 state) -----------------------------------------------
  // sum of squares, accumulated in double
  virtual double sum_squares(const float* x, size_t n) = 0;
  virtual void scale(float* x, size_t n, float s) = 0;
  // Decoupled weight decay (Loshchilov & Hutter) on the fp32 master (n);
  // param (n) = master rounded to param's dtype when param is not master
  // (it may alias master: fp32 without master weights).
  virtual void adamw_update(float* master, Buf param, const float* grad, float* m, float* v,
                            size_t n, const AdamWStep& h) = 0;
  // The same step over many segments (the optimizer's whole arena or shard):
  // one launch on a GPU. h.weight_decay is unused (each segment has its own).
  // The default calls adamw_update per segment (the CPU's: same bits).
  virtual void adamw_update_segments(const AdamWSegment* segs, int count, const AdamWStep& h) {
    for (int i = 0; i < count; ++i) {
      AdamWStep hs = h;
      hs.weight_decay = segs[i].weight_decay;
      adamw_update(segs[i].master, segs[i].param, segs[i].grad, segs[i].m, segs[i].v, segs[i].n,
                   hs);
    }
  }
  virtual void sgd_update(float* master, Buf param, const float* grad, size_t n, float lr,
                          float weight_decay) = 0;
  // torch.optim.SGD with momentum (dampening 0, not Nesterov) on the fp32
  // master: d = g + wd * p; buf = momentum * buf + d; p -= lr * buf; then the
  // compute copy param = round(master) as for sgd_update.
  virtual void sgd_momentum_update(float* master, Buf param, const float* grad, float* buf,
                                   size_t n, float lr, float weight_decay, float momentum) = 0;

  // ---- statistics -------------------------------------------------------------
  // High-water mark of the backend's device allocator in bytes (the CUDA
  // backend's); 0 where the backend keeps none (the CPU: use peak RSS).
  virtual size_t peak_bytes() const { return 0; }
};

// One allocation on a backend, freed through it (RAII; movable).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& be, size_t n, DType t = DType::kF32)
      : be_(&be), p_(n ? be.alloc_bytes(n * dtype_size(t)) : nullptr), n_(n), t_(t) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      p_ = o.p_;
      n_ = o.n_;
      t_ = o.t_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  void reset() {
    if (be_ && p_) be_->free_bytes(p_);
    p_ = nullptr;
    n_ = 0;
  }
  Buf buf() const { return Buf(p_, t_); }
  // fp32 view (checks the dtype)
  float* f32() const;
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  void* data() const { return p_; }
  size_t size() const { return n_; }
  DType dtype() const { return t_; }
  size_t bytes() const { return n_ * dtype_size(t_); }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
  DType t_ = DType::kF32;
};

// The CPU backend (fp32 and bf16 storage emulation, BLAS, OpenMP). Always available.
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace rt
