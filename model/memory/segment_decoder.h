// Incremental decoding for layer-memory models (knn, compressive;
// docs/memory.md), for `ringtrain generate`.
//
// As in training, tokens are cut into segments of S at positions restarting
// every segment. An append recomputes the open segment's rows (positions
// 0..len-1, causal, the memory layers reading the stores) and returns the
// last row's logits: under the causal mask these equal the training
// forward's rows. When the open segment is full and another token comes,
// its rows are written into the stores (LayerMemory::commit) and a new
// segment opens. No KV cache: a segment is short, so recomputing it costs
// O(S) rows per token however long the text grows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/decode/decoder.h"
#include "model/llama.h"
#include "model/memory/layer_memory.h"

namespace rt {

class SegmentDecoder final : public Decoder {
 public:
  SegmentDecoder(LlamaModel& model, std::unique_ptr<LayerMemory> memory);
  ~SegmentDecoder() override;
  SegmentDecoder(const SegmentDecoder&) = delete;
  SegmentDecoder& operator=(const SegmentDecoder&) = delete;

  std::vector<float> append(const int32_t* tokens, int n) override;
  std::string describe() const override;
  int64_t segments_done() const { return segments_done_; }

 private:
  void run_open_segment();
  void close_segment();  // the full open segment into the stores

  LlamaModel& model_;
  std::unique_ptr<LayerMemory> memory_;
  int S_;
  std::vector<int32_t> open_, no_targets_;
  bool last_run_full_ = false;  // the last forward ran over the full open segment
  int64_t segments_done_ = 0;
};

}  // namespace rt
