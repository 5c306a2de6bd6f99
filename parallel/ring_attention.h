// Ring attention (SPEC §6): the sequence is sharded over the ranks of a
// context-parallel group; each rank keeps its queries and the key/value
// blocks travel the ring (send to r+1, receive from r-1) while the block
// kernel runs, so communication overlaps compute. Partial outputs are merged
// with their log-sum-exp. Backward re-circulates K,V with travelling fp32
// dK,dV accumulators that arrive back at their owner after a full turn.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"
#include "parallel/comm.h"
#include "parallel/parallel_dims.h"

namespace rt {

// Global rows held by cp rank r of a sequence of T tokens:
// zigzag: chunks r and 2*cp-1-r of T/(2*cp); contiguous: chunk r of T/cp.
RowPositions ring_local_rows(RingLayout layout, int cp, int r, int64_t T);

class RingAttention final : public SequenceAttention {
 public:
  // ring: the context-parallel group. layout decides which rows each rank has.
  RingAttention(Comm& ring, RingLayout layout);
  ~RingAttention() override;

  // fp32 activations only for now (typed travelling buffers: issue 12 item 4).
  void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf out,
               float* lse, CBuf q, CBuf k, CBuf v) override;
  void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf dq,
                Buf dk, Buf dv, CBuf dout, CBuf q, CBuf k, CBuf v, CBuf out,
                const float* lse) override;

  // Bytes this rank sent since construction (for the benchmark).
  int64_t bytes_sent() const { return bytes_sent_; }
  // Seconds spent waiting for ring transfers (exposed, not hidden behind
  // the block computations) since construction.
  double wait_seconds() const { return wait_s_; }

 private:
  void ensure_buffers(Backend& be, size_t kv_floats, size_t blk_floats, size_t lse_floats);
  size_t load_local_kv(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                       const float* k, const float* v);
  void send_kv_onwards(size_t kv_half, Comm::Request& send, Comm::Request& recv);

  Comm& ring_;
  RingLayout layout_;
  Backend* be_ = nullptr;
  // travelling buffers: [k | v] current and next, [dk | dv] current and next
  float *kv_cur_ = nullptr, *kv_next_ = nullptr, *dkv_cur_ = nullptr, *dkv_next_ = nullptr;
  float *blk_out_ = nullptr, *blk_lse_ = nullptr, *chunk_lse_ = nullptr;
  size_t kv_cap_ = 0, blk_cap_ = 0, lse_cap_ = 0;
  int64_t bytes_sent_ = 0;
  double wait_s_ = 0;
  void timed_wait(Comm::Request& r);
};

}  // namespace rt
