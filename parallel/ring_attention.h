// Ring attention (SPEC §6): the sequence is sharded over the ranks of a
// context-parallel group; each rank keeps its queries and the key/value
// blocks travel the ring (send to r+1, receive from r-1) while the block
// kernel runs, so communication overlaps compute. Partial outputs are merged
// with their log-sum-exp into an fp32 accumulator. Backward re-circulates K,V
// with travelling fp32 dK,dV accumulators that arrive back at their owner
// after a full turn; their hop, like the K,V hop, overlaps the next step's
// compute (ring-flash-attn's scheme).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/tensor.h"
#include "parallel/comm.h"
#include "parallel/parallel_dims.h"

namespace rt {

// Global rows held by cp rank r of a sequence of T tokens:
// zigzag: chunks r and 2*cp-1-r of T/(2*cp); contiguous: chunk r of T/cp.
RowPositions ring_local_rows(RingLayout layout, int cp, int r, int64_t T);

// The bytes one rank sends for one attention layer's forward and backward on a
// ring of cp ranks that each hold kv_elems elements of K (and as many of V):
// K,V (kv_dtype, the activation dtype) make cp-1 hops forward and cp-1
// backward; the dK,dV accumulators (fp32) make a full turn of cp hops.
int64_t ring_bytes_per_layer(int cp, size_t kv_elems, DType kv_dtype);

class RingAttention final : public SequenceAttention {
 public:
  // ring: the context-parallel group. layout decides which rows each rank has.
  RingAttention(Comm& ring, RingLayout layout);
  ~RingAttention() override;

  // Activations (q, k, v, out) fp32 or bf16 (the K,V blocks travel in that
  // dtype; the block outputs merge into an fp32 accumulator rounded once into
  // out); dq, dk, dv, the LSE and the dK,dV accumulators are fp32.
  void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf out,
               float* lse, CBuf q, CBuf k, CBuf v) override;
  void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf dq,
                Buf dk, Buf dv, CBuf dout, CBuf q, CBuf k, CBuf v, CBuf out,
                const float* lse) override;

  // Bytes this rank sent since construction (for the benchmark).
  int64_t bytes_sent() const { return bytes_sent_; }
  // The dtype of the K,V blocks that travel (the activation dtype; fp32 before
  // the first call).
  DType kv_dtype() const { return kv_cur_.t; }
  // Seconds spent waiting for ring transfers (exposed, not hidden behind
  // the block computations) since construction.
  double wait_seconds() const { return wait_s_; }

 private:
  void ensure_buffers(Backend& be, DType kv_t, size_t kv_elems, size_t blk_elems,
                      size_t lse_floats, size_t acc_floats);
  size_t load_local_kv(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                       CBuf k, CBuf v);
  void shift_kv(size_t kv_half);
  void shift_dkv(Buf acc, size_t kv_half);

  Comm& ring_;
  std::unique_ptr<Comm> dkv_ring_;  // the dK,dV channel: waited for apart from K,V
  RingLayout layout_;
  Backend* be_ = nullptr;
  // travelling K,V ([k | v], activation dtype): current and next
  Buf kv_cur_, kv_next_;
  // dK,dV ([dk | dv], fp32): this step's block contributions (two, one of
  // them may be on its way), and the accumulator arriving from r-1
  float *dkv_blk_[2] = {nullptr, nullptr}, *dkv_in_ = nullptr;
  // one block's output (activation dtype) and LSE; the LSE rows per query
  // chunk; the fp32 output accumulator (bf16 activations only)
  Buf blk_out_;
  float *blk_lse_ = nullptr, *chunk_lse_ = nullptr, *acc_ = nullptr;
  size_t kv_cap_bytes_ = 0, dkv_cap_ = 0, blk_cap_bytes_ = 0, lse_cap_ = 0, acc_cap_ = 0;
  int64_t bytes_sent_ = 0;
  double wait_s_ = 0;
  void timed_shift_wait(Comm& c);  // shift_wait, its time added to wait_s_
};

}  // namespace rt
