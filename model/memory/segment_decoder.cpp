#include "model/memory/segment_decoder.h"

#include "common/errors.h"

namespace rt {

SegmentDecoder::SegmentDecoder(LlamaModel& model, std::unique_ptr<LayerMemory> memory)
    : model_(model), memory_(std::move(memory)) {
  RT_CHECK(memory_ != nullptr, "SegmentDecoder needs a layer memory");
  S_ = model.config().memory->segment_length;
  model_.set_layer_memory(memory_.get());
  memory_->begin_sequence(1);
  open_.reserve(size_t(S_));
}

SegmentDecoder::~SegmentDecoder() { model_.set_layer_memory(nullptr); }

void SegmentDecoder::run_open_segment() {
  const int len = int(open_.size());
  no_targets_.assign(size_t(len), -1);
  model_.forward_backward(open_.data(), no_targets_.data(), 1, len, RowPositions::whole(len), 0.f,
                          nullptr);
  last_run_full_ = len == S_;
}

void SegmentDecoder::close_segment() {
  RT_CHECK(int(open_.size()) == S_, "only a full segment is written into the stores");
  if (!last_run_full_) run_open_segment();
  memory_->commit(segments_done_ * S_, 0.f);
  open_.clear();
  last_run_full_ = false;
  ++segments_done_;
}

std::vector<float> SegmentDecoder::append(const int32_t* tokens, int n) {
  RT_CHECK(n >= 1, "SegmentDecoder::append needs at least one token");
  for (int i = 0; i < n; ++i) {
    if (int(open_.size()) == S_) close_segment();
    open_.push_back(tokens[i]);
  }
  run_open_segment();
  return model_.logits_to_host(int64_t(open_.size()) - 1, 1);
}

std::string SegmentDecoder::describe() const {
  return std::string(memory_->kind()) + " memory, " + std::to_string(segments_done_) +
         " segments stored";
}

}  // namespace rt
