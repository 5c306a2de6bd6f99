// Incremental decoding for recurrent-memory models (RMT, SPEC §5), for
// `ringtrain generate`.
//
// Tokens are cut into segments of S as in training. The open segment k
// holds the tokens appended since its start; an append recomputes its rows
// [mem_k ; tokens so far] (positions 0..M+len-1, causal) and returns the
// logits of the last row. These equal the token rows of the training input
// [mem_k ; tokens_k ; mem_k]: under the causal mask no token row sees the
// trailing write rows. When segment k is full and another token comes, one
// forward over [mem_k ; tokens_k ; mem_k] gives mem_{k+1} at its write rows
// (the last layer's residual stream), and segment k+1 opens.
// No KV cache: a segment is short (S + 2M rows), so recomputing it costs
// O(S) rows per token however long the text grows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/decode/decoder.h"
#include "model/llama.h"

namespace rt {

class RmtDecoder final : public Decoder {
 public:
  explicit RmtDecoder(LlamaModel& model);  // model.config().memory must be set
  RmtDecoder(const RmtDecoder&) = delete;
  RmtDecoder& operator=(const RmtDecoder&) = delete;

  // tokens (n >= 1) host -> logits (V) after the last of them, on the host.
  std::vector<float> append(const int32_t* tokens, int n) override;
  std::string describe() const override {
    return "recurrent memory, " + std::to_string(segments_done_) + " segments carried";
  }
  int64_t length() const { return length_; }
  // Segments whose memory has been carried forward (k of the open segment).
  int64_t segments_done() const { return segments_done_; }

 private:
  void advance_memory();  // closes the full open segment: mem <- its write rows
  // Runs [mem ; open tokens] (+ [mem] when with_write_rows) as one forward.
  void run_open_segment(bool with_write_rows);

  LlamaModel& model_;
  Backend& be_;
  int M_, S_, d_;
  DeviceBuffer mem_;  // (M, d) device, act dtype: the memory entering the open segment
  DeviceBuffer x0_;   // (S + 2M, d) device, act dtype: the rows of one segment
  std::vector<int32_t> open_;  // tokens of the open segment (<= S)
  int64_t length_ = 0, segments_done_ = 0;
};

}  // namespace rt
