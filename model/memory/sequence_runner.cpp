#include "model/memory/sequence_runner.h"

#include <algorithm>

#include "common/errors.h"
#include "model/memory/rmt.h"

namespace rt {

namespace {

// No memory: the whole sequence (or this rank's rows of it) in one forward.
class PlainRunner final : public SequenceRunner {
 public:
  explicit PlainRunner(LlamaModel& model) : model_(model) {}
  const char* kind() const override { return "none"; }
  double forward_backward(const SequenceBatch& b, float dloss_scale, int64_t* n_valid,
                          float* token_losses) override {
    const RowPositions rows = b.rows ? *b.rows : RowPositions::whole(b.T);
    const double loss = model_.forward_backward(b.inputs, b.targets, b.B, int(b.T), rows,
                                                dloss_scale, n_valid);
    if (token_losses) {
      const std::vector<float> l = model_.losses_to_host(0, int64_t(b.B) * b.T);
      std::copy(l.begin(), l.end(), token_losses);
    }
    T_ = b.T;
    return loss;
  }
  std::vector<float> logits(int b, int64_t row) override {
    return model_.logits_to_host(int64_t(b) * T_ + row, 1);
  }
  void set_memory_reset(bool reset) override {
    if (reset) throw UsageError("--memory-reset needs a model with memory (model.memory)");
  }

 private:
  LlamaModel& model_;
  int64_t T_ = 0;
};

}  // namespace

std::unique_ptr<SequenceRunner> make_sequence_runner(LlamaModel& model) {
  const auto& mem = model.config().memory;
  if (!mem) return std::make_unique<PlainRunner>(model);
  if (mem->type == "rmt") return std::make_unique<RmtRunner>(model);
  return std::make_unique<SegmentRunner>(model, make_layer_memory(model));
}

SegmentRunner::SegmentRunner(LlamaModel& model, std::unique_ptr<LayerMemory> memory)
    : model_(model), memory_(std::move(memory)) {
  RT_CHECK(memory_ != nullptr, "SegmentRunner needs a layer memory");
  S_ = model.config().memory->segment_length;
  model_.set_layer_memory(memory_.get());
}

SegmentRunner::~SegmentRunner() { model_.set_layer_memory(nullptr); }

double SegmentRunner::forward_backward(const SequenceBatch& batch, float dloss_scale,
                                       int64_t* n_valid, float* token_losses) {
  const int B = batch.B;
  const int64_t T = batch.T;
  RT_CHECK(T % S_ == 0, "seq_len must be a multiple of memory.segment_length");
  RT_CHECK(batch.whole_sequence(), "a memory model reads whole sequences (no context parallelism)");
  RT_CHECK(!reset_ || dloss_scale == 0.f, "memory reset is an evaluation-only ablation");
  const int64_t n = T / S_;
  seg_inputs_.resize(size_t(B) * S_);
  seg_targets_.resize(size_t(B) * S_);
  memory_->begin_sequence(B);
  // next document start to apply, per batch row
  std::vector<size_t> next_doc(size_t(B), 0);
  double loss = 0;
  int64_t valid = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t p0 = k * S_;
    if (reset_) memory_->begin_sequence(B);
    if (batch.doc_starts && k > 0)
      for (int b = 0; b < B; ++b) {
        const std::vector<int64_t>& starts = batch.doc_starts[b];
        int64_t last = -1;
        size_t& i = next_doc[size_t(b)];
        while (i < starts.size() && starts[i] <= p0) last = starts[i++];
        if (last > 0) memory_->drop_before(b, last);
      }
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < S_; ++i) {
        seg_inputs_[size_t(b) * S_ + i] = batch.inputs[size_t(b) * T + p0 + i];
        seg_targets_[size_t(b) * S_ + i] = batch.targets[size_t(b) * T + p0 + i];
      }
    int64_t v = 0;
    loss += model_.forward_backward(seg_inputs_.data(), seg_targets_.data(), B, S_,
                                    RowPositions::whole(S_), dloss_scale, &v);
    valid += v;
    if (token_losses)
      for (int b = 0; b < B; ++b) {
        const std::vector<float> l = model_.losses_to_host(int64_t(b) * S_, S_);
        std::copy(l.begin(), l.end(), token_losses + size_t(b) * T + p0);
      }
    if (!reset_) memory_->commit(p0, dloss_scale);
  }
  last_T_ = T;
  if (n_valid) *n_valid = valid;
  return loss;
}

std::vector<float> SegmentRunner::logits(int b, int64_t row) {
  const int64_t first = last_T_ - S_;
  RT_CHECK(row >= first && row < last_T_, "memory models keep logits of the last segment only");
  return model_.logits_to_host(int64_t(b) * S_ + (row - first), 1);
}

}  // namespace rt
