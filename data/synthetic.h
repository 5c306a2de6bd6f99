// Synthetic tasks generated from the seed, byte tokens, never stored (SPEC §7).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

// One passkey sample: exactly `length` bytes, ending with the answer digits:
//   intro, filler..., needle (at `depth` of the filler), filler...,
//   "What is the pass key? The pass key is NNNNN"
// answer_begin: index of the first answer digit (length - 5).
struct PasskeySample {
  std::string text;
  std::string passkey;  // 5 digits
  int64_t answer_begin = 0;
  int64_t needle_begin = 0;
};

// Throws UsageError if length is too short to hold intro + needle + question.
PasskeySample make_passkey_sample(int64_t length, double depth, uint64_t seed, int64_t index);
int64_t passkey_min_length();

}  // namespace rt
