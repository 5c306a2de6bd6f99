// How a model reads a sequence, chosen once by model.memory.type: the whole
// sequence in one forward (no memory), or segment by segment through a
// memory (rmt: model/memory/rmt.h; knn, compressive: a LayerMemory run by
// SegmentRunner). Training, evaluation and benchmarks call only this
// interface; a new memory kind is one new file behind it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/llama.h"
#include "model/memory/layer_memory.h"

namespace rt {

// B sequences of T local rows (host arrays, row-major (B, T)); targets < 0
// are ignored. rows: the global positions of the local rows (context
// parallelism; whole sequence when null; memory runners need the whole
// sequence). doc_starts (the first of B lists, or null): sequence positions in [0, T)
// where a document starts (memory stores are cleared there, docs/memory.md).
struct SequenceBatch {
  const int32_t* inputs = nullptr;
  const int32_t* targets = nullptr;
  int B = 0;
  int64_t T = 0;
  const RowPositions* rows = nullptr;
  const std::vector<int64_t>* doc_starts = nullptr;
  // Whether the rows are the whole sequence (what memory runners need).
  bool whole_sequence() const {
    return !rows ||
           (rows->chunks.size() == 1 && rows->chunks[0].first == 0 && rows->global_len == T);
  }
};

class SequenceRunner {
 public:
  virtual ~SequenceRunner() = default;
  // "none", "rmt", "knn" or "compressive".
  virtual const char* kind() const = 0;
  // Forward, and backward when dloss_scale != 0 (accumulating into the
  // model's gradients). Returns the summed loss over valid targets; *n_valid
  // (or null) gets their count; token_losses (B*T host floats, or null) gets
  // each local row's loss.
  virtual double forward_backward(const SequenceBatch& batch, float dloss_scale,
                                  int64_t* n_valid, float* token_losses = nullptr) = 0;
  // The logits (V, host fp32) of local row `row` of batch row b after the
  // last forward. Memory runners keep the last segment's rows only.
  virtual std::vector<float> logits(int b, int64_t row) = 0;
  // Rows per segment (0: the whole sequence is one forward). A sequence's
  // length must be a multiple of it.
  virtual int64_t segment_length() const { return 0; }
  // Evaluation ablation (`eval --memory-reset`): nothing crosses a segment
  // boundary. Forward only. Refused by the runner without memory.
  virtual void set_memory_reset(bool reset) = 0;
  // Whether one forward_backward is one model backward, so that the model's
  // gradient-ready hook reports final gradients (overlapped reduction).
  virtual bool single_backward() const { return true; }
  // Host bytes a memory keeps per sequence now (stores, carried state).
  virtual size_t memory_bytes() const { return 0; }
  // The memory's evaluation measurements (LayerMemory::stats).
  virtual std::vector<std::pair<std::string, double>> memory_stats() const { return {}; }
};

// The runner of model.config().memory (none when unset). The model must
// outlive it.
std::unique_ptr<SequenceRunner> make_sequence_runner(LlamaModel& model);

// knn and compressive: segments in order through a LayerMemory (stores
// written after each segment's forward and backward; no replay).
class SegmentRunner final : public SequenceRunner {
 public:
  SegmentRunner(LlamaModel& model, std::unique_ptr<LayerMemory> memory);
  ~SegmentRunner() override;
  const char* kind() const override { return memory_->kind(); }
  double forward_backward(const SequenceBatch& batch, float dloss_scale, int64_t* n_valid,
                          float* token_losses) override;
  std::vector<float> logits(int b, int64_t row) override;
  int64_t segment_length() const override { return S_; }
  void set_memory_reset(bool reset) override { reset_ = reset; }
  bool single_backward() const override { return false; }
  size_t memory_bytes() const override { return memory_->store_bytes(); }
  std::vector<std::pair<std::string, double>> memory_stats() const override {
    return memory_->stats();
  }
  LayerMemory& memory() { return *memory_; }

 private:
  LlamaModel& model_;
  std::unique_ptr<LayerMemory> memory_;
  int S_;
  bool reset_ = false;
  int64_t last_T_ = 0;
  std::vector<int32_t> seg_inputs_, seg_targets_;
};

}  // namespace rt
