// The op layer: every numeric operation the model and optimizer need, with one
// implementation per device (model/cpu/, later model/cuda/). Model code calls
// ops only through a Backend, so a new device never touches model code.
//
// Conventions (llm.c style): plain buffers, every dimension passed in, shapes
// written once per op. "+=" in a comment means the op accumulates into the
// output (gradient buffers are zeroed once per step); otherwise it overwrites.
// All buffers live on the backend's device and come from its allocator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

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

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // ---- memory -------------------------------------------------------------
  virtual void* alloc_bytes(size_t bytes) = 0;
  virtual void free_bytes(void* p) = 0;
  virtual void copy_to_device(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void copy_to_host(void* dst_host, const void* src, size_t bytes) = 0;
  virtual void zero(float* x, size_t n) = 0;
  virtual void copy(float* dst, const float* src, size_t n) = 0;  // device to device
  virtual void synchronize() {}

  // ---- layers ---------------------------------------------------------------
  // tokens (N) , table (V,C) -> out (N,C)
  virtual void embedding_forward(float* out, const int32_t* tokens, const float* table, int N,
                                 int C) = 0;
  // dtable (V,C) += scatter of dout (N,C)
  virtual void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N,
                                  int C) = 0;

  // inp (N,C), weight (C) -> out (N,C), rstd (N) saved for backward
  virtual void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N,
                               int C, float eps) = 0;
  // dinp (N,C) +=, dweight (C) +=
  virtual void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                                const float* weight, const float* rstd, int N, int C) = 0;

  // inp (N,C), weight (OC,C) -> out (N,OC) = inp weight^T   (+= out when accumulate)
  virtual void matmul_forward(float* out, const float* inp, const float* weight, int N, int C,
                              int OC, bool accumulate = false) = 0;
  // dinp (N,C) += dout weight ; dweight (OC,C) += dout^T inp. Either may be null.
  virtual void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                               const float* weight, int N, int C, int OC) = 0;

  // x (B,T,nh,hd) rotated in place, HF rotate_half pairing (j, j+hd/2);
  // cos, sin (T, hd/2) for the T rows' global positions.
  virtual void rope_forward(float* x, const float* cos, const float* sin, int B, int T, int nh,
                            int hd) = 0;
  // dx (B,T,nh,hd) in place: the transpose (inverse) rotation.
  virtual void rope_backward(float* dx, const float* cos, const float* sin, int B, int T, int nh,
                             int hd) = 0;

  // q (B,Tq,H,hd), k,v (B,Tk,G,hd) -> out (B,Tq,H,hd), lse (B,H,Tq) natural log.
  // Blocked online softmax: O(T) extra memory. A row that sees no key gets
  // out = 0 and lse = -inf.
  virtual void attention_forward(const AttentionParams& p, float* out, float* lse, const float* q,
                                 const float* k, const float* v) = 0;
  // Given dout and the *final* out, lse of these query rows (merged over all
  // key blocks), accumulate this key block's contribution: dq, dk, dv +=.
  virtual void attention_backward(const AttentionParams& p, float* dq, float* dk, float* dv,
                                  const float* dout, const float* q, const float* k,
                                  const float* v, const float* out, const float* lse) = 0;

  // Merge one key block's result into a running one, for the same Tq query
  // rows (ring attention): out (Tq,H,hd), lse (H,Tq) are updated in place
  // with blk_out (Tq,H,hd), blk_lse (H,Tq):
  //   lse' = logaddexp(lse, blk_lse); out' = out*e^(lse-lse') + blk*e^(blk_lse-lse').
  // -inf entries (no visible key yet) are handled; fp32 throughout.
  virtual void attention_merge(float* out, float* lse, const float* blk_out, const float* blk_lse,
                               int Tq, int H, int hd) = 0;

  // gate, up (N,F) -> out (N,F) = silu(gate) * up
  virtual void swiglu_forward(float* out, const float* gate, const float* up, size_t n) = 0;
  // dgate, dup (N,F) = (overwrite); dgate may alias dout (element-wise)
  virtual void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                               const float* up, size_t n) = 0;

  // x += y
  virtual void add_inplace(float* x, const float* y, size_t n) = 0;

  // logits (N,V) -> losses (N) = -log softmax[target]; rows with target < 0
  // get loss 0. When dloss_scale != 0 the logits are overwritten with
  // dlogits = (softmax - onehot) * dloss_scale (zero for ignored rows).
  virtual void cross_entropy_forward_backward(float* logits, float* losses,
                                              const int32_t* targets, int N, int V,
                                              float dloss_scale) = 0;

  // ---- optimizer -------------------------------------------------------------
  // sum of squares, accumulated in double
  virtual double sum_squares(const float* x, size_t n) = 0;
  virtual void scale(float* x, size_t n, float s) = 0;
  // Decoupled weight decay (Loshchilov & Hutter). step is 1-based.
  virtual void adamw_update(float* param, const float* grad, float* m, float* v, size_t n,
                            float lr, float beta1, float beta2, float eps, float weight_decay,
                            int64_t step) = 0;
  virtual void sgd_update(float* param, const float* grad, size_t n, float lr,
                          float weight_decay) = 0;
  // torch.optim.SGD with momentum (dampening 0, not Nesterov): d = g + wd * p;
  // buf = momentum * buf + d; p -= lr * buf.
  virtual void sgd_momentum_update(float* param, const float* grad, float* buf, size_t n,
                                   float lr, float weight_decay, float momentum) = 0;
};

// The CPU backend (fp32, BLAS, OpenMP). Always available.
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace rt
