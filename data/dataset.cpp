// Sequence sources and their order (SPEC §7).
#include "data/dataset.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "common/errors.h"
#include "common/log.h"
#include "common/rng.h"
#include "data/synthetic.h"

namespace rt {
namespace {

// Sequence i of length T = tokens[i*T : i*T + T + 1].
class TokenSequenceSource : public SequenceSource {
 public:
  TokenSequenceSource(std::string path, TokenData data)
      : path_(std::move(path)), data_(std::move(data)) {
    if (data_.tokens.size() < 2)
      throw UsageError(path_ + ": has " + std::to_string(data_.tokens.size()) +
                       " tokens; need at least 2 (one input and its target)");
  }

  int64_t vocab_size() const override { return data_.vocab_size; }

  int64_t num_sequences(int64_t T) const override {
    if (T < 1) throw UsageError("sequence length " + std::to_string(T) + " must be >= 1");
    const int64_t n = (int64_t(data_.tokens.size()) - 1) / T;
    if (n < 1)
      throw UsageError(path_ + ": has " + std::to_string(data_.tokens.size()) +
                       " tokens, too short for sequence length " + std::to_string(T) +
                       " (needs at least " + std::to_string(T + 1) +
                       "); use more data or a shorter seq_len");
    return n;
  }

  void read(int64_t index, int64_t T, int64_t begin, int64_t end, int32_t* inputs,
            int32_t* targets) const override {
    RT_CHECK(index >= 0 && index < num_sequences(T), "sequence index out of range");
    RT_CHECK(0 <= begin && begin <= end && end <= T, "bad [begin, end) range");
    const uint32_t* src = data_.tokens.data() + index * T + begin;
    for (int64_t k = 0; k < end - begin; ++k) {
      inputs[k] = int32_t(src[k]);
      targets[k] = int32_t(src[k + 1]);
    }
  }

  std::vector<int64_t> doc_starts(int64_t index, int64_t T) const override {
    std::vector<int64_t> out;
    const uint64_t lo = uint64_t(index * T), hi = lo + uint64_t(T);
    const auto& d = data_.doc_offsets;
    for (auto it = std::lower_bound(d.begin(), d.end(), lo); it != d.end() && *it < hi; ++it)
      if (out.empty() || out.back() != int64_t(*it - lo)) out.push_back(int64_t(*it - lo));
    return out;
  }

  std::string describe() const override {
    return "token file " + path_ + " (" + std::to_string(data_.tokens.size()) +
           " tokens, vocab " + std::to_string(data_.vocab_size) + ", tokenizer " +
           data_.tokenizer + ")";
  }

 private:
  std::string path_;
  TokenData data_;
};

// A synthetic task's sample i of length T+1 bytes: inputs = sample[0:T],
// targets = sample[1:T+1]; with loss: answer only the targets inside the
// answer (the sample's last bytes) count.
class SyntheticSource : public SequenceSource {
 public:
  SyntheticSource(const DataSourceConfig& cfg, uint64_t seed,
                  std::shared_ptr<const Tokenizer> tok)
      : n_(cfg.num_sequences),
        answer_only_(cfg.loss == "answer"),
        seed_(seed + uint64_t(cfg.seed_offset)),
        tok_(std::move(tok)) {
    if (n_ < 1)
      throw UsageError("data: num_sequences " + std::to_string(n_) +
                       " must be >= 1 for synthetic data");
    check_task_tokenizer(*tok_, "synthetic " + cfg.synthetic);
  }

  int64_t vocab_size() const override { return tok_->vocab_size(); }

  int64_t num_sequences(int64_t T) const override {
    if (T + 1 < min_length())
      throw UsageError("synthetic " + name() + ": seq_len " + std::to_string(T) +
                       " is too short; it needs at least " + std::to_string(min_length() - 1));
    return n_;
  }

  void read(int64_t index, int64_t T, int64_t begin, int64_t end, int32_t* inputs,
            int32_t* targets) const override {
    RT_CHECK(index >= 0 && index < n_, "sequence index out of range");
    RT_CHECK(0 <= begin && begin <= end && end <= T, "bad [begin, end) range");
    int64_t answer_begin = 0;
    const std::vector<uint32_t> tokens = sample(index, T + 1, &answer_begin);
    for (int64_t k = 0; k < end - begin; ++k) {
      const int64_t t = begin + k;
      inputs[k] = int32_t(tokens[size_t(t)]);
      const bool in_answer = t + 1 >= answer_begin;  // the answer ends the sample
      targets[k] = (!answer_only_ || in_answer) ? int32_t(tokens[size_t(t + 1)]) : -1;
    }
  }

  std::string describe() const override {
    return "synthetic " + name() + " (" + std::to_string(n_) + " sequences, " + options() +
           "loss " + (answer_only_ ? "answer" : "all") +
           (tok_->kind() == "bytes" ? "" : ", tokenizer " + tok_->describe()) + ")";
  }

 protected:
  virtual std::string name() const = 0;
  virtual std::string options() const = 0;  // "key value, " pairs for describe()
  virtual int64_t min_length() const = 0;   // of a sample (T + 1)
  virtual std::vector<uint32_t> sample(int64_t index, int64_t length,
                                       int64_t* answer_begin) const = 0;
  uint64_t seed() const { return seed_; }
  const Tokenizer& tok() const { return *tok_; }

 private:
  int64_t n_;
  bool answer_only_;
  uint64_t seed_;
  std::shared_ptr<const Tokenizer> tok_;
};

class PasskeySource : public SyntheticSource {
 public:
  PasskeySource(const DataSourceConfig& cfg, uint64_t seed, std::shared_ptr<const Tokenizer> tok)
      : SyntheticSource(cfg, seed, std::move(tok)), depth_(cfg.depth) {
    if (depth_ && !(*depth_ >= 0.0 && *depth_ <= 1.0))
      throw UsageError("data: depth " + std::to_string(*depth_) + " must be in [0, 1]");
  }

 protected:
  std::string name() const override { return "passkey"; }
  std::string options() const override {
    return "depth " + (depth_ ? std::to_string(*depth_) : std::string("uniform")) + ", ";
  }
  int64_t min_length() const override { return passkey_min_length(tok()); }
  std::vector<uint32_t> sample(int64_t index, int64_t length,
                               int64_t* answer_begin) const override {
    const double depth =
        depth_ ? *depth_ : unit_double(mix_seed(seed(), kStreamDepth, uint64_t(index)));
    PasskeySample s = make_passkey_sample(tok(), length, depth, seed(), index);
    *answer_begin = s.answer_begin;
    return std::move(s.tokens);
  }

 private:
  std::optional<double> depth_;
};

class RecallSource : public SyntheticSource {
 public:
  RecallSource(const DataSourceConfig& cfg, uint64_t seed, std::shared_ptr<const Tokenizer> tok)
      : SyntheticSource(cfg, seed, std::move(tok)), pairs_(cfg.pairs) {
    if (pairs_ < 1 || pairs_ > kRecallMaxPairs)
      throw UsageError("data: pairs " + std::to_string(pairs_) + " must be in [1, " +
                       std::to_string(kRecallMaxPairs) + "] for synthetic recall");
  }

 protected:
  std::string name() const override { return "recall"; }
  std::string options() const override { return std::to_string(pairs_) + " pairs, "; }
  int64_t min_length() const override { return recall_min_length(tok(), pairs_); }
  std::vector<uint32_t> sample(int64_t index, int64_t length,
                               int64_t* answer_begin) const override {
    RecallSample s = make_recall_sample(tok(), length, pairs_, seed(), index);
    *answer_begin = s.answer_begin;
    return std::move(s.tokens);
  }

 private:
  int64_t pairs_;
};

}  // namespace

void check_token_file_tokenizer(const std::string& path, const TokenData& data,
                                const Tokenizer& tok) {
  if (!data.tokenizer_recorded || data.tokenizer == tok.id()) return;
  const bool known = data.tokenizer == "bytes" || data.tokenizer.rfind("sentencepiece:", 0) == 0;
  const std::string what = path + " was tokenized with " + describe_tokenizer_id(data.tokenizer) +
                           " but the model's tokenizer is " + tok.describe();
  if (!known) {
    log_warn("%s (attribute tokenizer '%s' is not one ringtrain writes; assuming the ids fit)",
             what.c_str(), data.tokenizer.c_str());
    return;
  }
  throw UsageError(what + ": prepare the data with the model's tokenizer (`ringtrain data "
                          "prepare IN.txt --out OUT.h5 --tokenizer " +
                   (tok.kind() == "bytes" ? std::string("bytes") : std::string("tokenizer.model")) +
                   "`) or set data.tokenizer to the one the data was made with");
}

std::unique_ptr<SequenceSource> make_token_source(const std::string& path,
                                                  std::shared_ptr<const Tokenizer> tok) {
  TokenData data = read_token_file(path, tok.get());
  if (tok) check_token_file_tokenizer(path, data, *tok);
  if (tok && !data.tokenizer_recorded &&
      std::all_of(data.tokens.begin(), data.tokens.end(),
                  [&](uint32_t t) { return int64_t(t) < tok->vocab_size(); })) {
    // .bin records no vocabulary (its guess is for GPT-2 files): ids that fit
    // the model's tokenizer are taken as its
    data.vocab_size = tok->vocab_size();
    data.tokenizer = tok->id();
  }
  return std::make_unique<TokenSequenceSource>(path, std::move(data));
}

std::unique_ptr<SequenceSource> make_source(const DataSourceConfig& cfg, uint64_t seed,
                                            std::shared_ptr<const Tokenizer> tok) {
  if (!tok) tok = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  if (cfg.is_synthetic()) {
    if (!cfg.path.empty())
      throw UsageError("data: give either path or synthetic, not both (path " + cfg.path +
                       ", synthetic " + cfg.synthetic + ")");
    if (cfg.loss != "answer" && cfg.loss != "all")
      throw UsageError("data: loss '" + cfg.loss + "' is not valid (valid: answer, all)");
    if (cfg.synthetic == "passkey") return std::make_unique<PasskeySource>(cfg, seed, tok);
    if (cfg.synthetic == "recall") return std::make_unique<RecallSource>(cfg, seed, tok);
    throw UsageError("data: synthetic '" + cfg.synthetic +
                     "' is not supported (valid: passkey, recall)");
  }
  if (cfg.path.empty())
    throw UsageError(
        "data: a source needs a path (.h5, .bin, .txt) or synthetic: passkey | recall");
  return make_token_source(cfg.path, tok);
}

// ---- SequenceOrder -------------------------------------------------------------

SequenceOrder::SequenceOrder(int64_t num_sequences, int64_t global_batch, bool shuffle,
                             uint64_t seed)
    : n_(num_sequences), g_(global_batch), shuffle_(shuffle), seed_(seed) {
  if (n_ < 1)
    throw UsageError("data: no sequences to train on (num_sequences " + std::to_string(n_) + ")");
  if (g_ < 1)
    throw UsageError("global batch size " + std::to_string(g_) + " must be >= 1");
}

int64_t SequenceOrder::index(int64_t step, int64_t j) const {
  RT_CHECK(step >= 0 && j >= 0 && j < g_, "SequenceOrder::index arguments out of range");
  const int64_t p = step * g_ + j;
  if (!shuffle_) return p % n_;
  return perm(p / n_)[size_t(p % n_)];
}

// Fisher–Yates with the portable generator seeded by (seed, epoch).
const std::vector<int64_t>& SequenceOrder::perm(int64_t epoch) const {
  if (epoch != cached_epoch_) {
    cached_perm_.resize(size_t(n_));
    std::iota(cached_perm_.begin(), cached_perm_.end(), int64_t(0));
    Rng rng(mix_seed(seed_, kStreamShuffle, uint64_t(epoch)));
    for (int64_t i = n_ - 1; i > 0; --i) {
      const int64_t k = int64_t(rng.below(uint64_t(i) + 1));
      std::swap(cached_perm_[size_t(i)], cached_perm_[size_t(k)]);
    }
    cached_epoch_ = epoch;
  }
  return cached_perm_;
}

}  // namespace rt
