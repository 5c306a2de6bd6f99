#include "trainer/eval/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/errors.h"
#include "data/synthetic.h"
#include "model/memory/sequence_runner.h"
#include "parallel/process_groups.h"

namespace rt {

namespace {

// Lengths a ring can hold: zigzag cuts the sequence into 2*cp chunks.
int64_t ring_multiple(const ProcessGroups* sh) {
  return sh ? sh->dims.seq_len_divisor(sh->layout) : 1;
}

void check_ring_length(int64_t T, const ProcessGroups* sh, const std::string& what) {
  const int64_t multiple = ring_multiple(sh);
  if (T % multiple != 0)
    throw UsageError(what + " " + std::to_string(T) + " is not a multiple of " +
                     std::to_string(multiple) + " (context_parallel " +
                     std::to_string(sh ? sh->dims.cp : 1) + ", ring layout " +
                     (sh && sh->layout == RingLayout::kZigzag ? "zigzag: 2*cp chunks"
                                                              : "contiguous") +
                     "): choose lengths divisible by " + std::to_string(multiple));
}

RowPositions local_rows(int64_t T, const ProcessGroups* sh) {
  return sh ? sh->rows(T) : RowPositions::whole(T);
}

// One evaluation forward of a sequence (batch 1) through the model's
// SequenceRunner: the plain model over its local rows, or a memory model's
// segments in order (single rank: memory models are not sharded over a
// ring). Afterwards, token_nll gives each local row's loss and logits() a
// row's logits, which for a memory model exist only for the last segment
// (where passkey answers are).
class EvalForward {
 public:
  // memory_reset: nothing crosses a segment boundary (ablation
  // `ringtrain eval --memory-reset`; docs/memory.md per memory type).
  EvalForward(LlamaModel& model, const ProcessGroups* sh, bool memory_reset)
      : runner_(make_sequence_runner(model)) {
    if (model.config().memory && sh && sh->dims.cp > 1)
      throw UsageError("evaluating a memory model (model.memory) over a ring is not supported: "
                       "run eval without --context-parallel (a memory model reads its segments "
                       "in order on one rank)");
    if (memory_reset) runner_->set_memory_reset(true);
  }
  int64_t segment() const { return runner_->segment_length(); }
  // T: this rank's rows (those of `rows`). want_losses: keep the per-token
  // losses for token_losses() (perplexity by position only).
  double run(const int32_t* inputs, const int32_t* targets, int64_t T, const RowPositions& rows,
             int64_t* valid, bool want_losses = false) {
    if (segment() > 0 && T % segment() != 0)
      throw UsageError("evaluation length " + std::to_string(T) +
                       " is not a multiple of model.memory.segment_length (" +
                       std::to_string(segment()) + "): choose lengths made of whole segments");
    if (want_losses) losses_.resize(size_t(T));
    SequenceBatch b;
    b.inputs = inputs;
    b.targets = targets;
    b.B = 1;
    b.T = T;
    b.rows = &rows;
    return runner_->forward_backward(b, 0.f, valid, want_losses ? losses_.data() : nullptr);
  }
  const std::vector<float>& token_losses() const { return losses_; }
  size_t memory_bytes() const { return runner_->memory_bytes(); }
  std::vector<std::pair<std::string, double>> memory_stats() const {
    return runner_->memory_stats();
  }
  std::vector<float> logits(int64_t row) { return runner_->logits(0, row); }

 private:
  std::unique_ptr<SequenceRunner> runner_;
  std::vector<float> losses_;
};

// Scores teacher-forced answers at one length L: a sample of L + 1 tokens is
// one forward (inputs tokens[0:L], targets tokens[1:L+1]) and the answer is
// its last n tokens, predicted by rows L-n .. L-1.
class AnswerScorer {
 public:
  AnswerScorer(EvalForward& forward, int64_t L, const ProcessGroups* sh)
      : forward_(forward), L_(L), rows_(local_rows(L, sh)) {
    const int64_t Tl = L / (sh ? sh->dims.cp : 1);
    inputs_.resize(size_t(Tl));
    targets_.resize(size_t(Tl));
  }
  // pred[k] = 1 + the greedy prediction of answer token k where this rank's
  // rows predict it, else left as is (0): summed over the ranks of a ring,
  // every answer token is predicted by exactly one.
  void predict_answer(const std::vector<uint32_t>& tokens, int64_t n, int64_t* pred) {
    RT_CHECK(int64_t(tokens.size()) == L_ + 1, "answer sample length");
    int64_t r = 0;
    for (auto [begin, len] : rows_.chunks)
      for (int64_t k = 0; k < len; ++k, ++r) {
        inputs_[size_t(r)] = int32_t(tokens[size_t(begin + k)]);
        targets_[size_t(r)] = int32_t(tokens[size_t(begin + k + 1)]);
      }
    forward_.run(inputs_.data(), targets_.data(), int64_t(inputs_.size()), rows_, nullptr);
    r = 0;
    for (auto [begin, len] : rows_.chunks) {
      for (int64_t k = 0; k < len; ++k) {
        const int64_t p = begin + k;
        if (p < L_ - n) continue;
        const std::vector<float> lg = forward_.logits(r + k);
        pred[p - (L_ - n)] = 1 + (std::max_element(lg.begin(), lg.end()) - lg.begin());
      }
      r += len;
    }
  }

 private:
  EvalForward& forward_;
  int64_t L_;
  RowPositions rows_;
  std::vector<int32_t> inputs_, targets_;
};

}  // namespace

bool answer_right(const Tokenizer& tok, const std::vector<uint32_t>& tokens, int64_t answer_begin,
                  const int64_t* pred) {
  const std::vector<uint32_t> answer(tokens.begin() + answer_begin, tokens.end());
  std::vector<uint32_t> got(answer.size());
  for (size_t k = 0; k < answer.size(); ++k) {
    if (pred[k] < 1 || pred[k] - 1 >= tok.vocab_size()) return false;  // not a token of tok
    got[k] = uint32_t(pred[k] - 1);
  }
  return got == answer || tok.decode(got) == tok.decode(answer);
}

int64_t default_position_bucket(int64_t seq_len) {
  return std::clamp<int64_t>(seq_len / 16, 1, 512);
}

PerplexityResult evaluate_perplexity(LlamaModel& model, const SequenceSource& data, int64_t T,
                                     int64_t max_sequences, const ProcessGroups* sh,
                                     LossByPosition* by_position, bool memory_reset) {
  const int64_t available = data.num_sequences(T);
  const int64_t n = std::min(available, max_sequences);
  if (n < 1)
    throw UsageError("evaluation data " + data.describe() + " holds no sequence of length " +
                     std::to_string(T) + ": use a shorter --seq-len or more data");
  const int dp = sh ? sh->dims.dp : 1, cp = sh ? sh->dims.cp : 1;
  const int dp_index = sh ? sh->dp_index() : 0;
  check_ring_length(T, sh, "evaluation length");
  const RowPositions rows = local_rows(T, sh);
  int64_t bucket = 0, nb = 0;
  std::vector<double> pos_nll;
  std::vector<int64_t> pos_tokens;
  if (by_position) {
    bucket = by_position->bucket > 0 ? by_position->bucket : default_position_bucket(T);
    if (bucket > T)
      throw UsageError("--bucket " + std::to_string(bucket) + " is longer than the sequence (" +
                       std::to_string(T) + "): choose a bucket <= the longest --seq-lens");
    nb = (T + bucket - 1) / bucket;
    pos_nll.assign(size_t(nb), 0.0);
    pos_tokens.assign(size_t(nb), 0);
  }
  const int64_t Tl = T / cp;
  std::vector<int32_t> inputs(Tl), targets(Tl);
  EvalForward forward(model, sh, memory_reset);
  PerplexityResult r;
  r.seq_len = T;
  r.sequences = n;
  double nll = 0;
  int64_t tokens = 0;
  // Every rank of a ring runs the same number of forwards (the ring needs
  // all of them); a dp rank with no sequence left idles.
  for (int64_t i = dp_index; i < n; i += dp) {
    int64_t row = 0;
    for (auto [begin, len] : rows.chunks) {
      data.read(i, T, begin, begin + len, inputs.data() + row, targets.data() + row);
      row += len;
    }
    int64_t valid = 0;
    nll += forward.run(inputs.data(), targets.data(), Tl, rows, &valid, by_position != nullptr);
    tokens += valid;
    if (!by_position) continue;
    // Per-token NLL placed at each local row's global position.
    const std::vector<float>& losses = forward.token_losses();
    int64_t row_i = 0;
    for (auto [begin, len] : rows.chunks)
      for (int64_t k = 0; k < len; ++k, ++row_i) {
        if (targets[size_t(row_i)] < 0) continue;
        const size_t b = size_t((begin + k) / bucket);
        pos_nll[b] += losses[size_t(row_i)];
        ++pos_tokens[b];
      }
  }
  if (sh && sh->world->size() > 1) {
    sh->world->allreduce_sum(&nll, 1);
    sh->world->allreduce_sum(&tokens, 1);
    if (by_position) {
      sh->world->allreduce_sum(pos_nll.data(), pos_nll.size());
      sh->world->allreduce_sum(pos_tokens.data(), pos_tokens.size());
    }
  }
  if (by_position) {
    by_position->seq_len = T;
    by_position->bucket = bucket;
    by_position->tokens = pos_tokens;
    by_position->mean_nll.assign(size_t(nb), std::nan(""));
    for (int64_t b = 0; b < nb; ++b)
      if (pos_tokens[size_t(b)] > 0)
        by_position->mean_nll[size_t(b)] = pos_nll[size_t(b)] / double(pos_tokens[size_t(b)]);
  }
  r.tokens = tokens;
  r.mean_nll = r.tokens ? nll / double(r.tokens) : 0.0;
  r.ppl = std::exp(r.mean_nll);
  r.memory_bytes = int64_t(forward.memory_bytes());
  r.memory_stats = forward.memory_stats();
  return r;
}

void check_passkey_grid(const std::vector<int64_t>& seq_lens, const std::vector<double>& depths,
                        int trials, int vocab_size, const ProcessGroups* sh,
                        const Tokenizer* tokenizer) {
  const Tokenizer& tok = tokenizer ? *tokenizer : bytes_tokenizer();
  if (seq_lens.empty() || depths.empty())
    throw UsageError("passkey: needs at least one length and one depth, e.g. "
                     "--passkey-seq-lens 256,512 --passkey-depths 0,0.5,1");
  if (trials < 1)
    throw UsageError("passkey: trials must be >= 1, got " + std::to_string(trials));
  if (vocab_size < tok.vocab_size())
    throw UsageError("passkey: the model has vocab_size " + std::to_string(vocab_size) +
                     " but passkey samples are tokens of " + tok.describe() + " (vocab " +
                     std::to_string(tok.vocab_size()) + "): passkey evaluation needs a model "
                     "whose vocab_size holds its tokenizer's (byte-level: vocab_size >= 256)");
  check_task_tokenizer(tok, "passkey");
  const int64_t min_length = passkey_min_length(tok);
  for (int64_t L : seq_lens) {
    if (L + 1 < min_length)
      throw UsageError("passkey: length " + std::to_string(L) +
                       " is too short for the intro, needle and question; use lengths >= " +
                       std::to_string(min_length - 1));
    check_ring_length(L, sh, "passkey length");
  }
  for (double d : depths)
    if (!(d >= 0.0 && d <= 1.0))
      throw UsageError("passkey: depth " + std::to_string(d) +
                       " is outside [0, 1] (0 = needle at the start, 1 = at the end)");
}

PasskeyResult evaluate_passkey(LlamaModel& model, const std::vector<int64_t>& seq_lens,
                               const std::vector<double>& depths, int trials, uint64_t seed,
                               const ProcessGroups* sh, bool memory_reset,
                               const Tokenizer* tokenizer) {
  const Tokenizer& tok = tokenizer ? *tokenizer : bytes_tokenizer();
  const int64_t V = model.config().vocab_size;
  check_passkey_grid(seq_lens, depths, trials, int(V), sh, &tok);
  const int dp = sh ? sh->dims.dp : 1;
  const int dp_index = sh ? sh->dp_index() : 0;
  const size_t nL = seq_lens.size(), nD = depths.size(), nT = size_t(trials);
  // The predicted answer tokens of every trial (AnswerScorer::predict_answer):
  // the answer rows of a trial may lie on different ranks of its ring, and
  // only one ring runs a trial, so the world sum holds every prediction.
  const size_t slots = size_t(tok.max_tokens_ascii(5));
  std::vector<int64_t> pred(nL * nD * nT * slots, 0);
  auto sample = [&](size_t i, size_t j, size_t t) {
    return make_passkey_sample(tok, seq_lens[i] + 1, depths[j], seed, int64_t(t));
  };
  EvalForward forward(model, sh, memory_reset);
  for (size_t i = 0; i < nL; ++i) {
    AnswerScorer scorer(forward, seq_lens[i], sh);
    for (size_t j = 0; j < nD; ++j)
      for (size_t t = size_t(dp_index); t < nT; t += size_t(dp)) {
        const PasskeySample s = sample(i, j, t);
        scorer.predict_answer(s.tokens, seq_lens[i] + 1 - s.answer_begin,
                              &pred[((i * nD + j) * nT + t) * slots]);
      }
  }
  if (sh && sh->world->size() > 1) sh->world->allreduce_sum(pred.data(), pred.size());
  PasskeyResult res;
  res.seq_lens = seq_lens;
  res.depths = depths;
  res.trials = trials;
  res.accuracy.assign(nL, std::vector<double>(nD, 0.0));
  for (size_t i = 0; i < nL; ++i)
    for (size_t j = 0; j < nD; ++j) {
      int64_t correct = 0;
      for (size_t t = 0; t < nT; ++t) {
        const PasskeySample s = sample(i, j, t);
        correct += answer_right(tok, s.tokens, s.answer_begin,
                                &pred[((i * nD + j) * nT + t) * slots]);
      }
      res.accuracy[i][j] = double(correct) / double(trials);
    }
  return res;
}

void check_recall_grid(const std::vector<int64_t>& seq_lens, int pairs, int trials,
                       int vocab_size, const ProcessGroups* sh, const Tokenizer* tokenizer) {
  const Tokenizer& tok = tokenizer ? *tokenizer : bytes_tokenizer();
  if (seq_lens.empty())
    throw UsageError("recall: needs at least one length, e.g. --recall-seq-lens 256,512");
  if (trials < 1) throw UsageError("recall: trials must be >= 1, got " + std::to_string(trials));
  if (pairs < 1 || pairs > kRecallMaxPairs)
    throw UsageError("recall: pairs must be in [1, " + std::to_string(kRecallMaxPairs) +
                     "], got " + std::to_string(pairs));
  if (vocab_size < tok.vocab_size())
    throw UsageError("recall: the model has vocab_size " + std::to_string(vocab_size) +
                     " but recall samples are tokens of " + tok.describe() + " (vocab " +
                     std::to_string(tok.vocab_size()) + "): recall evaluation needs a model "
                     "whose vocab_size holds its tokenizer's (byte-level: vocab_size >= 256)");
  check_task_tokenizer(tok, "recall");
  const int64_t min_length = recall_min_length(tok, pairs);
  for (int64_t L : seq_lens) {
    if (L + 1 < min_length)
      throw UsageError("recall: length " + std::to_string(L) + " is too short for " +
                       std::to_string(pairs) + " pairs and the query; use lengths >= " +
                       std::to_string(min_length - 1) + " or fewer pairs");
    check_ring_length(L, sh, "recall length");
  }
}

RecallResult evaluate_recall(LlamaModel& model, const std::vector<int64_t>& seq_lens, int pairs,
                             int trials, uint64_t seed, const ProcessGroups* sh,
                             bool memory_reset, const Tokenizer* tokenizer) {
  const Tokenizer& tok = tokenizer ? *tokenizer : bytes_tokenizer();
  check_recall_grid(seq_lens, pairs, trials, int(model.config().vocab_size), sh, &tok);
  const int dp = sh ? sh->dims.dp : 1;
  const int dp_index = sh ? sh->dp_index() : 0;
  const size_t nL = seq_lens.size(), nT = size_t(trials), nP = size_t(pairs);
  // predicted answer tokens per trial, summed over ranks as in evaluate_passkey
  const size_t slots = size_t(tok.max_tokens_ascii(kRecallValueDigits));
  std::vector<int64_t> pred(nL * nT * slots, 0);
  auto sample = [&](size_t i, size_t t) {
    return make_recall_sample(tok, seq_lens[i] + 1, pairs, seed, int64_t(t));
  };
  EvalForward forward(model, sh, memory_reset);
  for (size_t i = 0; i < nL; ++i) {
    AnswerScorer scorer(forward, seq_lens[i], sh);
    for (size_t t = size_t(dp_index); t < nT; t += size_t(dp)) {
      const RecallSample s = sample(i, t);
      scorer.predict_answer(s.tokens, seq_lens[i] + 1 - s.answer_begin,
                            &pred[(i * nT + t) * slots]);
    }
  }
  if (sh && sh->world->size() > 1) sh->world->allreduce_sum(pred.data(), pred.size());
  RecallResult res;
  res.seq_lens = seq_lens;
  res.pairs = pairs;
  res.trials = trials;
  res.accuracy.assign(nL, 0.0);
  res.asked.assign(nL, std::vector<int64_t>(nP, 0));
  res.accuracy_by_pair.assign(nL, std::vector<double>(nP, 0.0));
  for (size_t i = 0; i < nL; ++i) {
    std::vector<int64_t> correct(nP, 0);
    for (size_t t = 0; t < nT; ++t) {
      // which pair trial t asked: a property of the sample, the same on every rank
      const RecallSample s = sample(i, t);
      const size_t q = size_t(s.queried_pair);
      ++res.asked[i][q];
      correct[q] += answer_right(tok, s.tokens, s.answer_begin, &pred[(i * nT + t) * slots]);
    }
    int64_t all_correct = 0;
    for (int64_t c : correct) all_correct += c;
    res.accuracy[i] = double(all_correct) / double(trials);
    for (size_t q = 0; q < nP; ++q)
      res.accuracy_by_pair[i][q] = res.asked[i][q] ? double(correct[q]) / double(res.asked[i][q])
                                                   : std::nan("");
  }
  return res;
}

nlohmann::json perplexity_to_json(const std::vector<PerplexityResult>& results) {
  nlohmann::json arr = nlohmann::json::array();
  for (const PerplexityResult& r : results) {
    nlohmann::json e = {{"seq_len", r.seq_len},
                        {"sequences", r.sequences},
                        {"tokens", r.tokens},
                        {"mean_nll", r.mean_nll},
                        {"ppl", r.ppl}};
    if (r.memory_bytes > 0) e["memory_bytes_per_sequence"] = r.memory_bytes;
    for (const auto& [name, value] : r.memory_stats) e["memory_stats"][name] = value;
    arr.push_back(std::move(e));
  }
  return arr;
}

std::string perplexity_table(const std::vector<PerplexityResult>& results) {
  std::string s = "  seq_len  sequences     tokens   mean_nll        ppl\n";
  char buf[128];
  for (const PerplexityResult& r : results) {
    std::snprintf(buf, sizeof buf, "  %7lld  %9lld  %9lld  %9.4f  %9.3f\n", (long long)r.seq_len,
                  (long long)r.sequences, (long long)r.tokens, r.mean_nll, r.ppl);
    s += buf;
  }
  return s;
}

nlohmann::json loss_by_position_to_json(const LossByPosition& r) {
  nlohmann::json m = nlohmann::json::array();
  for (double v : r.mean_nll) m.push_back(std::isfinite(v) ? nlohmann::json(v) : nullptr);
  return {{"seq_len", r.seq_len}, {"bucket", r.bucket}, {"mean_nll", m}, {"tokens", r.tokens}};
}

std::string loss_by_position_table(const LossByPosition& r) {
  std::string s = "      positions     tokens   mean_nll\n";
  char buf[128];
  for (size_t b = 0; b < r.mean_nll.size(); ++b) {
    const long long lo = (long long)(int64_t(b) * r.bucket);
    const long long hi = std::min<long long>(lo + r.bucket, r.seq_len) - 1;
    if (std::isfinite(r.mean_nll[b]))
      std::snprintf(buf, sizeof buf, "  %6lld-%-6lld  %9lld  %9.4f\n", lo, hi,
                    (long long)r.tokens[b], r.mean_nll[b]);
    else
      std::snprintf(buf, sizeof buf, "  %6lld-%-6lld  %9lld  %9s\n", lo, hi,
                    (long long)r.tokens[b], "-");
    s += buf;
  }
  return s;
}

nlohmann::json passkey_to_json(const PasskeyResult& r) {
  return {{"seq_lens", r.seq_lens},
          {"depths", r.depths},
          {"accuracy", r.accuracy},
          {"trials", r.trials}};
}

std::string passkey_table(const PasskeyResult& r) {
  std::string s = "  seq_len \\ depth";
  char buf[64];
  for (double d : r.depths) {
    std::snprintf(buf, sizeof buf, "  %6.2f", d);
    s += buf;
  }
  s += "\n";
  for (size_t i = 0; i < r.seq_lens.size(); ++i) {
    std::snprintf(buf, sizeof buf, "  %15lld", (long long)r.seq_lens[i]);
    s += buf;
    for (double a : r.accuracy[i]) {
      std::snprintf(buf, sizeof buf, "  %6.2f", a);
      s += buf;
    }
    s += "\n";
  }
  return s;
}

nlohmann::json recall_to_json(const RecallResult& r) {
  nlohmann::json by_pair = nlohmann::json::array();
  for (const auto& row : r.accuracy_by_pair) {
    nlohmann::json a = nlohmann::json::array();
    for (double v : row) a.push_back(std::isfinite(v) ? nlohmann::json(v) : nullptr);
    by_pair.push_back(a);
  }
  return {{"seq_lens", r.seq_lens}, {"pairs", r.pairs},     {"trials", r.trials},
          {"accuracy", r.accuracy}, {"accuracy_by_pair", by_pair}, {"asked", r.asked}};
}

std::string recall_table(const RecallResult& r) {
  std::string s = "  seq_len     all";
  char buf[64];
  for (int q = 0; q < r.pairs; ++q) {
    std::snprintf(buf, sizeof buf, "  %6s", ("pair" + std::to_string(q)).c_str());
    s += buf;
  }
  s += "\n";
  for (size_t i = 0; i < r.seq_lens.size(); ++i) {
    std::snprintf(buf, sizeof buf, "  %7lld  %6.2f", (long long)r.seq_lens[i], r.accuracy[i]);
    s += buf;
    for (double a : r.accuracy_by_pair[i]) {
      if (std::isfinite(a))
        std::snprintf(buf, sizeof buf, "  %6.2f", a);
      else
        std::snprintf(buf, sizeof buf, "  %6s", "-");
      s += buf;
    }
    s += "\n";
  }
  return s;
}

}  // namespace rt
