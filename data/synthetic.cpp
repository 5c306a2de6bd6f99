// Passkey retrieval and associative-recall samples (SPEC §7).
//
// Passkey:
// Layout of a sample of `length` tokens, R = length - |intro| - |needle| -
// |question| - |answer|:
//   intro | filler[0:p] | needle | filler[p:R] | question | answer
// filler = the filler sentences' tokens repeated and cut to R tokens; p =
// depth * R snapped to the nearest sentence start, or to 0 / R. With bytes
// a sentence starts after ". " or "\n", as in the byte layout of synthetic.h.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "common/errors.h"
#include "common/rng.h"

namespace rt {
namespace {

const std::string kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n";
// The filler block, cut into its sentences (a sentence starts after ". " or "\n").
const std::vector<std::string> kFillerSentences = {
    "The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
    "There and back again.\n"};
const std::string kNeedle = "The pass key is NNNNN. Remember it. NNNNN is the pass key.\n";
const std::string kQuestion = "What is the pass key? The pass key is ";  // then the answer
constexpr int64_t kPasskeyDigits = 5;

std::string with_passkey(std::string s, const std::string& key) {
  for (size_t pos = s.find("NNNNN"); pos != std::string::npos; pos = s.find("NNNNN", pos + 5))
    s.replace(pos, 5, key);
  return s;
}

void append(std::vector<uint32_t>& to, const std::vector<uint32_t>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

// Encodes the text parts of a sample. SentencePiece models with a dummy
// prefix (Llama's) start every encoded part with a word-start mark, which
// decodes as a space between parts: their parts drop the trailing space or
// newline, so the sample reads "... green. The sky ..." as the whole text
// would (the spaces between parts, like the original passkey prompt). Other
// tokenizers (bytes) encode the parts exactly.
class PartEncoder {
 public:
  explicit PartEncoder(const Tokenizer& tok) : tok_(tok) {
    std::vector<uint32_t> ab = tok.encode("a");
    append(ab, tok.encode("b"));
    joins_with_space_ = tok.decode(ab) == "a b";
  }
  std::vector<uint32_t> operator()(std::string part) const {
    if (joins_with_space_)
      while (!part.empty() && (part.back() == ' ' || part.back() == '\n')) part.pop_back();
    return tok_.encode(part);
  }

 private:
  const Tokenizer& tok_;
  bool joins_with_space_ = false;
};

}  // namespace

void check_task_tokenizer(const Tokenizer& tok, const std::string& task) {
  const std::string digits = "0123456789";
  std::string back = tok.decode(tok.encode(digits));
  while (!back.empty() && back.front() == ' ') back.erase(back.begin());
  if (back != digits)
    throw UsageError(task + ": tokenizer " + tok.describe() + " does not reproduce digits (\"" +
                     digits + "\" decodes back as \"" + back + "\"); the " + task +
                     " answers are digits: use a tokenizer that covers 0-9 (e.g. trained with "
                     "--byte_fallback or on text with digits)");
}

int64_t passkey_min_length() { return passkey_min_length(bytes_tokenizer()); }

int64_t passkey_min_length(const Tokenizer& tok) {
  const PartEncoder enc(tok);
  const int64_t needle_chars = int64_t(with_passkey(kNeedle, "12345").size());
  return int64_t(enc(kIntro).size()) + tok.max_tokens_ascii(needle_chars) +
         int64_t(enc(kQuestion).size()) + tok.max_tokens_ascii(kPasskeyDigits);
}

PasskeySample make_passkey_sample(int64_t length, double depth, uint64_t seed, int64_t index) {
  return make_passkey_sample(bytes_tokenizer(), length, depth, seed, index);
}

PasskeySample make_passkey_sample(const Tokenizer& tok, int64_t length, double depth,
                                  uint64_t seed, int64_t index) {
  const int64_t min_length = passkey_min_length(tok);
  if (length < min_length)
    throw UsageError("passkey: sequence length " + std::to_string(length) +
                     " is too short; the intro, needle and question need at least " +
                     std::to_string(min_length) + " tokens");
  if (!(depth >= 0.0 && depth <= 1.0))
    throw UsageError("passkey: depth " + std::to_string(depth) + " must be in [0, 1]");

  PasskeySample s;
  const uint64_t h = mix_seed(seed, kStreamPasskey, uint64_t(index));
  s.passkey = std::to_string(10000 + h % 90000);

  const PartEncoder enc(tok);
  const std::vector<uint32_t> intro = enc(kIntro);
  const std::vector<uint32_t> needle = enc(with_passkey(kNeedle, s.passkey));
  const std::vector<uint32_t> question = enc(kQuestion);
  const std::vector<uint32_t> answer = enc(s.passkey);
  const size_t fixed = intro.size() + needle.size() + question.size() + answer.size();
  RT_CHECK(int64_t(fixed) <= length, "passkey_min_length bounds a sample");
  const size_t region = size_t(length) - fixed;

  // The filler: whole blocks of sentences, cut to `region`; sentence starts noted.
  std::vector<uint32_t> block;
  std::vector<size_t> starts;  // within a block
  for (const std::string& sentence : kFillerSentences) {
    starts.push_back(block.size());
    append(block, enc(sentence));
  }
  std::vector<uint32_t> fill;
  std::vector<bool> boundary(region + 1, false);
  boundary[0] = boundary[region] = true;
  fill.reserve(region + block.size());
  while (fill.size() < region) {
    for (size_t st : starts)
      if (fill.size() + st < region) boundary[fill.size() + st] = true;
    append(fill, block);
  }
  fill.resize(region);

  // Nearest boundary to depth * region; ties go to the earlier one.
  const size_t target = size_t(std::llround(depth * double(region)));
  size_t p = target;
  for (size_t d = 0; d <= region; ++d) {
    if (target >= d && boundary[target - d]) {
      p = target - d;
      break;
    }
    if (target + d <= region && boundary[target + d]) {
      p = target + d;
      break;
    }
  }

  s.tokens.reserve(size_t(length));
  append(s.tokens, intro);
  s.tokens.insert(s.tokens.end(), fill.begin(), fill.begin() + std::ptrdiff_t(p));
  s.needle_begin = int64_t(s.tokens.size());
  append(s.tokens, needle);
  s.tokens.insert(s.tokens.end(), fill.begin() + std::ptrdiff_t(p), fill.end());
  append(s.tokens, question);
  s.answer_begin = int64_t(s.tokens.size());
  append(s.tokens, answer);
  RT_CHECK(int64_t(s.tokens.size()) == length, "passkey sample length");
  s.text = tok.decode(s.tokens);
  return s;
}

int64_t recall_min_length(int64_t pairs) { return recall_min_length(bytes_tokenizer(), pairs); }

int64_t recall_min_length(const Tokenizer& tok, int64_t pairs) {
  return pairs * tok.max_tokens_ascii(kRecallPairBytes) +
         tok.max_tokens_ascii(kRecallQueryBytes - kRecallValueDigits) +
         tok.max_tokens_ascii(kRecallValueDigits);
}

RecallSample make_recall_sample(int64_t length, int64_t pairs, uint64_t seed, int64_t index) {
  return make_recall_sample(bytes_tokenizer(), length, pairs, seed, index);
}

RecallSample make_recall_sample(const Tokenizer& tok, int64_t length, int64_t pairs,
                                uint64_t seed, int64_t index) {
  if (pairs < 1 || pairs > kRecallMaxPairs)
    throw UsageError("recall: pairs " + std::to_string(pairs) + " must be in [1, " +
                     std::to_string(kRecallMaxPairs) + "] (one lowercase letter per key)");
  const int64_t min_length = recall_min_length(tok, pairs);
  if (length < min_length)
    throw UsageError("recall: sequence length " + std::to_string(length) + " is too short for " +
                     std::to_string(pairs) + " pairs of " + std::to_string(kRecallPairBytes) +
                     " characters and the query; it needs at least " +
                     std::to_string(min_length) + " tokens");

  Rng rng(mix_seed(seed, kStreamRecall, uint64_t(index)));
  // Distinct keys: the first `pairs` letters of a Fisher-Yates shuffle.
  std::string letters(26, 'a');
  std::iota(letters.begin(), letters.end(), 'a');
  for (int64_t i = 0; i < pairs; ++i)
    std::swap(letters[size_t(i)], letters[size_t(i) + rng.below(uint64_t(26 - i))]);

  // The body holds the pairs; the query is at most this long.
  const int64_t max_query = tok.max_tokens_ascii(kRecallQueryBytes - kRecallValueDigits) +
                            tok.max_tokens_ascii(kRecallValueDigits);
  const int64_t body = length - max_query;
  const PartEncoder enc(tok);
  const uint32_t dot = enc(".").back();
  RecallSample s;
  s.tokens.assign(size_t(body), dot);
  std::vector<std::string> values;
  for (int64_t i = 0; i < pairs; ++i) {
    char digits[8];
    std::snprintf(digits, sizeof digits, "%03u", unsigned(rng.below(1000)));
    values.emplace_back(digits);
    const std::vector<uint32_t> pair =
        enc(std::string(1, letters[size_t(i)]) + "=" + values[size_t(i)] + ";");
    const int64_t n = int64_t(pair.size());
    const int64_t lo = i * body / pairs, hi = (i + 1) * body / pairs;  // hi - lo >= n
    RT_CHECK(hi - lo >= n, "recall_min_length bounds a pair");
    const int64_t at = lo + int64_t(rng.below(uint64_t(hi - lo - n + 1)));
    std::copy(pair.begin(), pair.end(), s.tokens.begin() + at);
    s.pair_begin.push_back(at);
  }
  s.queried_pair = int64_t(rng.below(uint64_t(pairs)));
  s.key = letters[size_t(s.queried_pair)];
  s.value = values[size_t(s.queried_pair)];
  const std::vector<uint32_t> query = enc(std::string("?") + s.key + "=");
  const std::vector<uint32_t> answer = enc(s.value);
  // Filler up to the query, so that the sample is exactly `length` tokens.
  s.tokens.resize(size_t(length) - query.size() - answer.size(), dot);
  append(s.tokens, query);
  s.answer_begin = int64_t(s.tokens.size());
  append(s.tokens, answer);
  RT_CHECK(int64_t(s.tokens.size()) == length, "recall sample length");
  s.text = tok.decode(s.tokens);
  return s;
}

}  // namespace rt
