// Passkey retrieval samples (SPEC §7).
//
// Layout of a sample of `length` bytes, R = length - |intro| - |needle| - |question|:
//   intro | filler[0:p] | needle | filler[p:R] | question
// filler = the filler block repeated and cut to R bytes; p = depth * R snapped
// to the nearest sentence start (after ". " or "\n"), or to 0 / R.
#include "data/synthetic.h"

#include <cmath>
#include <cstdlib>

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

}  // namespace rt
