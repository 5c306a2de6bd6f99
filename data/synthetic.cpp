// Passkey retrieval and associative-recall samples (SPEC §7).
//
// Passkey:
// Layout of a sample of `length` bytes, R = length - |intro| - |needle| - |question|:
//   intro | filler[0:p] | needle | filler[p:R] | question
// filler = the filler block repeated and cut to R bytes; p = depth * R snapped
// to the nearest sentence start (after ". " or "\n"), or to 0 / R.
#include "data/synthetic.h"

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
const std::string kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";
const std::string kNeedle = "The pass key is NNNNN. Remember it. NNNNN is the pass key.\n";
const std::string kQuestion = "What is the pass key? The pass key is NNNNN";

std::string with_passkey(std::string s, const std::string& key) {
  for (size_t pos = s.find("NNNNN"); pos != std::string::npos; pos = s.find("NNNNN", pos + 5))
    s.replace(pos, 5, key);
  return s;
}

// True if position p of `fill` starts a sentence (or is one of the ends).
bool is_boundary(const std::string& fill, size_t p) {
  if (p == 0 || p == fill.size()) return true;
  if (fill[p - 1] == '\n') return true;
  return p >= 2 && fill[p - 2] == '.' && fill[p - 1] == ' ';
}

}  // namespace

int64_t passkey_min_length() {
  return int64_t(kIntro.size() + kNeedle.size() + kQuestion.size());
}

PasskeySample make_passkey_sample(int64_t length, double depth, uint64_t seed, int64_t index) {
  if (length < passkey_min_length())
    throw UsageError("passkey: sequence length " + std::to_string(length) +
                     " is too short; the intro, needle and question need at least " +
                     std::to_string(passkey_min_length()) + " tokens");
  if (!(depth >= 0.0 && depth <= 1.0))
    throw UsageError("passkey: depth " + std::to_string(depth) + " must be in [0, 1]");

  PasskeySample s;
  const uint64_t h = mix_seed(seed, kStreamPasskey, uint64_t(index));
  s.passkey = std::to_string(10000 + h % 90000);

  const size_t region = size_t(length) - size_t(passkey_min_length());
  std::string fill;
  fill.reserve(region + kFiller.size());
  while (fill.size() < region) fill += kFiller;
  fill.resize(region);

  // Nearest boundary to depth * region; ties go to the earlier one.
  const size_t target = size_t(std::llround(depth * double(region)));
  size_t p = target;
  for (size_t d = 0; d <= region; ++d) {
    if (target >= d && is_boundary(fill, target - d)) {
      p = target - d;
      break;
    }
    if (target + d <= region && is_boundary(fill, target + d)) {
      p = target + d;
      break;
    }
  }

  s.text.reserve(size_t(length));
  s.text += kIntro;
  s.text.append(fill, 0, p);
  s.needle_begin = int64_t(s.text.size());
  s.text += with_passkey(kNeedle, s.passkey);
  s.text.append(fill, p, std::string::npos);
  s.text += with_passkey(kQuestion, s.passkey);
  s.answer_begin = length - 5;
  RT_CHECK(int64_t(s.text.size()) == length, "passkey sample length");
  return s;
}

int64_t recall_min_length(int64_t pairs) {
  return pairs * kRecallPairBytes + kRecallQueryBytes;
}

RecallSample make_recall_sample(int64_t length, int64_t pairs, uint64_t seed, int64_t index) {
  if (pairs < 1 || pairs > kRecallMaxPairs)
    throw UsageError("recall: pairs " + std::to_string(pairs) + " must be in [1, " +
                     std::to_string(kRecallMaxPairs) + "] (one lowercase letter per key)");
  if (length < recall_min_length(pairs))
    throw UsageError("recall: sequence length " + std::to_string(length) + " is too short for " +
                     std::to_string(pairs) + " pairs of " + std::to_string(kRecallPairBytes) +
                     " bytes and the query; it needs at least " +
                     std::to_string(recall_min_length(pairs)) + " tokens");

  Rng rng(mix_seed(seed, kStreamRecall, uint64_t(index)));
  // Distinct keys: the first `pairs` letters of a Fisher-Yates shuffle.
  std::string letters(26, 'a');
  std::iota(letters.begin(), letters.end(), 'a');
  for (int64_t i = 0; i < pairs; ++i)
    std::swap(letters[size_t(i)], letters[size_t(i) + rng.below(uint64_t(26 - i))]);

  RecallSample s;
  const int64_t body = length - kRecallQueryBytes;
  s.text.assign(size_t(body), '.');
  std::vector<std::string> values;
  for (int64_t i = 0; i < pairs; ++i) {
    char digits[8];
    std::snprintf(digits, sizeof digits, "%03u", unsigned(rng.below(1000)));
    values.emplace_back(digits);
    const int64_t lo = i * body / pairs, hi = (i + 1) * body / pairs;  // hi - lo >= 6
    const int64_t at = lo + int64_t(rng.below(uint64_t(hi - lo - kRecallPairBytes + 1)));
    s.text.replace(size_t(at), size_t(kRecallPairBytes),
                   std::string(1, letters[size_t(i)]) + "=" + values[size_t(i)] + ";");
    s.pair_begin.push_back(at);
  }
  s.queried_pair = int64_t(rng.below(uint64_t(pairs)));
  s.key = letters[size_t(s.queried_pair)];
  s.value = values[size_t(s.queried_pair)];
  s.text += std::string("?") + s.key + "=" + s.value;
  s.answer_begin = length - kRecallValueDigits;
  RT_CHECK(int64_t(s.text.size()) == length, "recall sample length");
  return s;
}

}  // namespace rt
