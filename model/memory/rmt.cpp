#include "model/memory/rmt.h"

#include <algorithm>

#include "common/errors.h"

namespace rt {

RmtRunner::RmtRunner(LlamaModel& model) : model_(model), be_(model.backend()) {
  const ModelConfig& c = model.config();
  RT_CHECK(c.memory.has_value(), "RmtRunner needs model.memory");
  M_ = c.memory->num_tokens;
  S_ = c.memory->segment_length;
  d_ = c.hidden_size;
  K_ = c.memory->bptt_segments;
  act_ = model.precision().act;
  grad_ = model.precision().grad;
}

bool RmtRunner::detached_before(int64_t k) const {
  if (k <= 0 || K_ < 0) return false;
  if (K_ == 0) return true;
  return k % K_ == 0;
}

// One segment: builds [mem_k ; embed(tokens_k) ; mem_k] for every batch row,
// runs the model (backward too when dloss_scale != 0 or dwrite is given) and
// stores mem_{k+1} from the write rows.
double RmtRunner::run_segment(int64_t k, const int32_t* inputs, const int32_t* targets, int B,
                              int64_t T, float dloss_scale, CBuf dwrite, int64_t* n_valid) {
  const int R = S_ + 2 * M_;
  const size_t md = size_t(M_) * d_;
  seg_tokens_.resize(size_t(B) * S_);
  seg_targets_.assign(size_t(B) * R, -1);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < S_; ++i) {
      seg_tokens_[size_t(b) * S_ + i] = inputs[size_t(b) * T + k * S_ + i];
      seg_targets_[size_t(b) * R + M_ + i] = targets[size_t(b) * T + k * S_ + i];
    }
  // token embeddings for all rows at once, then placed between the memories
  model_.embed_tokens(seg_tokens_.data(), B * S_, tok_.buf());
  for (int b = 0; b < B; ++b) {
    const Buf row = at(x0_.buf(), size_t(b) * R * d_);
    const CBuf mem = at(mems_[size_t(carry_ ? k : 0)].buf(), size_t(b) * md);
    be_.copy(row, mem, md);
    be_.copy(at(row, md), at(tok_.buf(), size_t(b) * S_ * d_), size_t(S_) * d_);
    be_.copy(at(row, size_t(M_ + S_) * d_), mem, md);
  }
  CBuf dextra;
  if (dwrite) {
    be_.zero(dextra_.buf(), size_t(B) * R * d_);
    for (int b = 0; b < B; ++b)
      be_.copy(at(dextra_.buf(), (size_t(b) * R + M_ + S_) * d_), at(dwrite, size_t(b) * md), md);
    dextra = dextra_.buf();
  }
  const double loss = model_.forward_backward_embeddings(
      x0_.buf(), seg_targets_.data(), B, R, RowPositions::whole(R), dloss_scale, n_valid, dextra,
      (dloss_scale != 0.f || dwrite) ? dx0_.buf() : Buf());
  // mem_{k+1}: the residual stream at the write rows
  if (size_t(k + 1) < mems_.size()) {
    const CBuf out = model_.final_residual();
    for (int b = 0; b < B; ++b)
      be_.copy(at(mems_[size_t(k + 1)].buf(), size_t(b) * md),
               at(out, (size_t(b) * R + M_ + S_) * d_), md);
  }
  return loss;
}

double RmtRunner::forward_backward(const int32_t* inputs, const int32_t* targets, int B,
                                   int64_t T, float dloss_scale, int64_t* n_valid,
                                   float* token_losses) {
  RT_CHECK(T % S_ == 0, "seq_len must be a multiple of memory.segment_length");
  RT_CHECK(carry_ || dloss_scale == 0.f, "memory reset is an evaluation-only ablation");
  const int64_t n = T / S_;
  const int R = S_ + 2 * M_;
  const size_t md = size_t(M_) * d_;
  last_B_ = B;
  last_T_ = T;
  // buffers: memories for every segment boundary, one segment's rows
  while (mems_.size() < size_t(n + 1) || (cap_rows_ < size_t(B) * R)) {
    mems_.clear();
    for (int64_t i = 0; i <= n; ++i) mems_.emplace_back(be_, size_t(B) * md, act_);
    x0_ = DeviceBuffer(be_, size_t(B) * R * d_, act_);
    tok_ = DeviceBuffer(be_, size_t(B) * S_ * d_, act_);
    dx0_ = DeviceBuffer(be_, size_t(B) * R * d_, grad_);
    dextra_ = DeviceBuffer(be_, size_t(B) * R * d_, grad_);
    dmem_ = DeviceBuffer(be_, size_t(B) * md, grad_);
    dtok_ = DeviceBuffer(be_, size_t(B) * S_ * d_, grad_);
    cap_rows_ = size_t(B) * R;
  }
  // the learned initial memory, in the compute dtype, as activation rows
  const Buf mem0 = model_.params().buf("model.memory.embeddings");
  for (int b = 0; b < B; ++b) be_.cast(at(mems_[0].buf(), size_t(b) * md), mem0, md);

  // pass 1: forward through all segments, keeping only the memories
  double loss = 0;
  int64_t valid = 0;
  for (int64_t k = 0; k < n; ++k) {
    int64_t v = 0;
    loss += run_segment(k, inputs, targets, B, T, 0.f, CBuf(), &v);
    valid += v;
    if (token_losses)
      for (int b = 0; b < B; ++b) {
        const std::vector<float> l = model_.losses_to_host(int64_t(b) * R + M_, S_);
        std::copy(l.begin(), l.end(), token_losses + size_t(b) * T + k * S_);
      }
  }
  if (n_valid) *n_valid = valid;
  if (dloss_scale == 0.f) return loss;

  // pass 2: replay in reverse, carrying d(mem_{k+1}) into segment k (its
  // losses were counted in pass 1)
  model_.set_count_loss(false);
  bool have_dmem = false;  // dmem_ holds d(loss)/d(mem_{k+1}) from later segments
  const Buf gmem = model_.grads().buf("model.memory.embeddings");
  const Buf dx0 = dx0_.buf(), dtok = dtok_.buf(), dmem = dmem_.buf();
  for (int64_t k = n - 1; k >= 0; --k) {
    run_segment(k, inputs, targets, B, T, dloss_scale, have_dmem ? CBuf(dmem) : CBuf(), nullptr);
    // token rows -> embedding gradient
    for (int b = 0; b < B; ++b)
      be_.copy(at(dtok, size_t(b) * S_ * d_), at(dx0, (size_t(b) * R + M_) * d_),
               size_t(S_) * d_);
    model_.embed_tokens_backward(seg_tokens_.data(), B * S_, dtok);
    // mem_k feeds both the read rows and the write rows of segment k
    for (int b = 0; b < B; ++b) {
      const Buf dm = at(dmem, size_t(b) * md);
      be_.copy(dm, at(dx0, size_t(b) * R * d_), md);
      be_.add_inplace(dm, at(dx0, (size_t(b) * R + M_ + S_) * d_), md);
    }
    if (k == 0) {
      for (int b = 0; b < B; ++b) be_.add_inplace(gmem, at(dmem, size_t(b) * md), md);
    } else {
      have_dmem = !detached_before(k);
    }
  }
  model_.set_count_loss(true);
  return loss;
}

double RmtRunner::forward_backward(const SequenceBatch& batch, float dloss_scale,
                                   int64_t* n_valid, float* token_losses) {
  RT_CHECK(batch.whole_sequence(), "a memory model reads whole sequences (no context parallelism)");
  return forward_backward(batch.inputs, batch.targets, batch.B, batch.T, dloss_scale, n_valid,
                          token_losses);
}

std::vector<float> RmtRunner::logits(int b, int64_t row) {
  const int64_t first = last_T_ - S_;
  RT_CHECK(row >= first && row < last_T_, "memory models keep logits of the last segment only");
  const int R = S_ + 2 * M_;
  return model_.logits_to_host(int64_t(b) * R + M_ + (row - first), 1);
}

size_t RmtRunner::memory_bytes() const {
  // the memories carried between segments, per sequence: (n+1) x (M, d)
  return mems_.empty() || last_B_ == 0 ? 0 : mems_.size() * mems_[0].bytes() / size_t(last_B_);
}

}  // namespace rt
