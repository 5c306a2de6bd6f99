// Sequence sources and their order (SPEC §7).
#include "data/dataset.h"

#include <numeric>
#include <utility>

#include "common/errors.h"
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

  std::string describe() const override {
    return "token file " + path_ + " (" + std::to_string(data_.tokens.size()) +
           " tokens, vocab " + std::to_string(data_.vocab_size) + ", tokenizer " +
           data_.tokenizer + ")";
  }

 private:
  std::string path_;
  TokenData data_;
};

// Passkey sample i of length T+1 bytes: inputs = sample[0:T], targets = sample[1:T+1].
class PasskeySource : public SequenceSource {
 public:
  PasskeySource(const DataSourceConfig& cfg, uint64_t seed)
      : n_(cfg.num_sequences),
        depth_(cfg.depth),
        answer_only_(cfg.loss == "answer"),
        seed_(seed + uint64_t(cfg.seed_offset)) {
    if (n_ < 1)
      throw UsageError("data: num_sequences " + std::to_string(n_) +
                       " must be >= 1 for synthetic data");
    if (depth_ && !(*depth_ >= 0.0 && *depth_ <= 1.0))
      throw UsageError("data: depth " + std::to_string(*depth_) + " must be in [0, 1]");
  }

  int64_t vocab_size() const override { return 256; }

  int64_t num_sequences(int64_t T) const override {
    if (T + 1 < passkey_min_length())
      throw UsageError("synthetic passkey: seq_len " + std::to_string(T) +
                       " is too short; it needs at least " +
                       std::to_string(passkey_min_length() - 1));
    return n_;
  }

  void read(int64_t index, int64_t T, int64_t begin, int64_t end, int32_t* inputs,
            int32_t* targets) const override {
    RT_CHECK(index >= 0 && index < n_, "sequence index out of range");
    RT_CHECK(0 <= begin && begin <= end && end <= T, "bad [begin, end) range");
    const double depth =
        depth_ ? *depth_
               : unit_double(mix_seed(seed_, kStreamDepth, uint64_t(index)));
    const PasskeySample s = make_passkey_sample(T + 1, depth, seed_, index);
    const auto* bytes = reinterpret_cast<const unsigned char*>(s.text.data());
    for (int64_t k = 0; k < end - begin; ++k) {
      const int64_t t = begin + k;
      inputs[k] = bytes[t];
      const bool in_answer = t + 1 >= s.answer_begin;  // the answer is the last 5 bytes
      targets[k] = (!answer_only_ || in_answer) ? int32_t(bytes[t + 1]) : -1;
    }
  }

  std::string describe() const override {
    return "synthetic passkey (" + std::to_string(n_) + " sequences, depth " +
           (depth_ ? std::to_string(*depth_) : std::string("uniform")) + ", loss " +
           (answer_only_ ? "answer" : "all") + ")";
  }

 private:
  int64_t n_;
  std::optional<double> depth_;
  bool answer_only_;
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<SequenceSource> make_token_source(const std::string& path) {
  return std::make_unique<TokenSequenceSource>(path, read_token_file(path));
}

std::unique_ptr<SequenceSource> make_source(const DataSourceConfig& cfg, uint64_t seed) {
  if (cfg.is_synthetic()) {
    if (!cfg.path.empty())
      throw UsageError("data: give either path or synthetic, not both (path " + cfg.path +
                       ", synthetic " + cfg.synthetic + ")");
    if (cfg.synthetic != "passkey")
      throw UsageError("data: synthetic '" + cfg.synthetic +
                       "' is not supported (valid: passkey)");
    if (cfg.loss != "answer" && cfg.loss != "all")
      throw UsageError("data: loss '" + cfg.loss + "' is not valid (valid: answer, all)");
    return std::make_unique<PasskeySource>(cfg, seed);
  }
  if (cfg.path.empty())
    throw UsageError("data: a source needs a path (.h5, .bin, .txt) or synthetic: passkey");
  return make_token_source(cfg.path);
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
