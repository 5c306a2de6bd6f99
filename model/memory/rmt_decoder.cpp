#include "model/memory/rmt_decoder.h"

#include "common/errors.h"

namespace rt {

RmtDecoder::RmtDecoder(LlamaModel& model) : model_(model), be_(model.backend()) {
  const ModelConfig& c = model.config();
  RT_CHECK(c.memory.has_value(), "RmtDecoder needs model.memory");
  M_ = c.memory->num_tokens;
  S_ = c.memory->segment_length;
  d_ = c.hidden_size;
  const size_t md = size_t(M_) * d_;
  const DType act = model.precision().act;
  mem_ = DeviceBuffer(be_, md, act);
  x0_ = DeviceBuffer(be_, size_t(S_ + 2 * M_) * d_, act);
  be_.cast(mem_.buf(), model.params().buf("model.memory.embeddings"), md);
  open_.reserve(size_t(S_));
}

void RmtDecoder::run_open_segment(bool with_write_rows) {
  const int len = int(open_.size());
  const size_t md = size_t(M_) * d_;
  const int R = M_ + len + (with_write_rows ? M_ : 0);
  const Buf x0 = x0_.buf();
  be_.copy(x0, mem_.buf(), md);
  model_.embed_tokens(open_.data(), len, at(x0, md));
  if (with_write_rows) be_.copy(at(x0, md + size_t(len) * d_), mem_.buf(), md);
  const std::vector<int32_t> no_targets(size_t(R), -1);
  model_.forward_backward_embeddings(x0, no_targets.data(), 1, R, RowPositions::whole(R), 0.f,
                                     nullptr, CBuf(), Buf());
}

void RmtDecoder::advance_memory() {
  RT_CHECK(int(open_.size()) == S_, "only a full segment writes the memory");
  run_open_segment(/*with_write_rows=*/true);
  be_.copy(mem_.buf(), at(model_.final_residual(), size_t(M_ + S_) * d_), size_t(M_) * d_);
  open_.clear();
  ++segments_done_;
}

std::vector<float> RmtDecoder::append(const int32_t* tokens, int n) {
  RT_CHECK(n >= 1, "RmtDecoder::append needs at least one token");
  for (int i = 0; i < n; ++i) {
    if (int(open_.size()) == S_) advance_memory();
    open_.push_back(tokens[i]);
  }
  length_ += n;
  run_open_segment(/*with_write_rows=*/false);
  return model_.logits_to_host(M_ + int64_t(open_.size()) - 1, 1);
}

}  // namespace rt
