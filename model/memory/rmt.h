// Recurrent-state memory (RMT, SPEC §5) over a LlamaModel.
//
// A sequence of n*S tokens runs as n segments. Segment k's input rows are
// [mem_k ; tokens_k ; mem_k] (M + S + M rows, positions restarting at 0);
// mem_0 is the learned model.memory.embeddings, mem_{k+1} is the last
// layer's output at segment k's M trailing (write) rows. The loss covers the
// S token rows only.
//
// Backward is by replay: a first pass runs every segment forward keeping only
// the memories (n+1) x (M, d); the second runs the segments in reverse, each
// forward again and then backward, carrying d(memory) to the segment before.
// Activation memory is therefore one segment's, whatever n is.
#pragma once

#include <cstdint>
#include <vector>

#include "model/llama.h"
#include "model/memory/sequence_runner.h"

namespace rt {

class RmtRunner final : public SequenceRunner {
 public:
  explicit RmtRunner(LlamaModel& model);
  const char* kind() const override { return "rmt"; }
  // SequenceRunner: the whole sequence (batch.rows null or whole).
  double forward_backward(const SequenceBatch& batch, float dloss_scale, int64_t* n_valid,
                          float* token_losses) override;
  std::vector<float> logits(int b, int64_t row) override;
  int64_t segment_length() const override { return S_; }
  void set_memory_reset(bool reset) override { carry_ = !reset; }
  bool single_backward() const override { return false; }
  size_t memory_bytes() const override;

  RmtRunner(const RmtRunner&) = delete;
  RmtRunner& operator=(const RmtRunner&) = delete;

  // inputs, targets: (B, T) host, T a multiple of segment_length; targets < 0
  // are ignored. Returns the summed loss over valid targets (*n_valid gets
  // their count). dloss_scale != 0: backward as above, accumulating into the
  // model's gradients (memory embeddings included).
  // token_losses (B, T) host or null: each token row's loss from the
  // forward pass (for evaluation by position).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int64_t T,
                          float dloss_scale, int64_t* n_valid, float* token_losses = nullptr);

  // Whether the memory entering segment k (k >= 1) is detached under the
  // bptt_segments rule: K = -1 never, K = 0 always, K > 0 when k % K == 0.
  // The learned initial memory always receives its gradient from segment 0.
  bool detached_before(int64_t k) const;

 private:
  double run_segment(int64_t k, const int32_t* inputs, const int32_t* targets, int B, int64_t T,
                     float dloss_scale, CBuf dwrite, int64_t* n_valid);

  LlamaModel& model_;
  Backend& be_;
  int M_, S_, d_, K_;
  DType act_, grad_;  // the model's activation and gradient dtypes
  std::vector<DeviceBuffer> mems_;  // mem_k, (B, M, d) each (act)
  DeviceBuffer x0_, tok_;               // segment input rows, token embeddings (act)
  DeviceBuffer dx0_, dextra_, dmem_, dtok_;  // their gradients (grad)
  size_t cap_rows_ = 0;
  std::vector<int32_t> seg_targets_, seg_tokens_;
  int last_B_ = 0;
  int64_t last_T_ = 0;
  bool carry_ = true;
};

}  // namespace rt
