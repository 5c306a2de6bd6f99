// Synthetic tasks generated from the seed, never stored (SPEC §7). A sample is
// built as text and tokenized with the model's tokenizer: every text part
// (intro, each filler sentence, needle, question, answer; a recall pair, the
// query, the answer) is encoded on its own and the token lists concatenated,
// so that a sample is exactly `length` tokens for any tokenizer. With the
// bytes tokenizer a token is a byte and the samples are the byte layouts
// below, unchanged; the overloads without a tokenizer use bytes. Positions
// (answer_begin, needle_begin, pair_begin) and lengths are in tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace rt {

// One passkey sample: exactly `length` bytes, ending with the answer digits:
//   intro, filler..., needle (at `depth` of the filler), filler...,
//   "What is the pass key? The pass key is NNNNN"
// answer_begin: index of the first answer digit (length - 5).
// With another tokenizer: the filler is the filler sentences' tokens repeated
// and cut to the remaining length; the needle goes to the sentence start
// nearest depth * that length; the answer is the tokens of the 5 digits.
struct PasskeySample {
  std::string text;                  // decode(tokens)
  std::vector<uint32_t> tokens;      // exactly `length`
  std::string passkey;  // 5 digits
  int64_t answer_begin = 0;          // answer = tokens[answer_begin:], the passkey's tokens
  int64_t needle_begin = 0;
};

// Throws UsageError if length is too short to hold intro + needle + question.
PasskeySample make_passkey_sample(int64_t length, double depth, uint64_t seed, int64_t index);
int64_t passkey_min_length();
PasskeySample make_passkey_sample(const Tokenizer& tok, int64_t length, double depth,
                                  uint64_t seed, int64_t index);
// The shortest length every sample fits (bytes: exact; others: a bound).
int64_t passkey_min_length(const Tokenizer& tok);
// UsageError unless `tok` encodes and decodes digits faithfully (the answers
// of passkey and recall are digits compared after decoding).
void check_task_tokenizer(const Tokenizer& tok, const std::string& task);

// One associative-recall sample: exactly `length` bytes, `pairs` key-value
// pairs spread over the sequence, then a query whose answer is one value:
//   body (length - 6 bytes) | "?" key "=" value
// A pair is 6 bytes, key "=" value ";", e.g. "q=907;": the key a lowercase
// letter (distinct within a sample), the value 3 digits. The body is cut into
// `pairs` equal slots (slot i = [i*B/P, (i+1)*B/P), B the body length, P
// pairs); pair i lies at a seeded offset inside slot i and the rest of the
// body is '.' filler. The query asks for the key of a pair drawn uniformly,
// so with n segments the asked pair lies in each segment about equally often.
//   "..k=381;.......q=907;....b=055;...?q=907"   (answer "907")
// answer_begin = length - 3; pair_begin[i] = index of pair i's key.
// With another tokenizer: pair i is the tokens of "k=ddd;", the filler token
// the last token of ".", the query the tokens of "?k=" then of "ddd", with
// filler between body and query up to the longest query the tokenizer can
// make; slots are sized by the longest pair it can make.
struct RecallSample {
  std::string text;               // decode(tokens)
  std::vector<uint32_t> tokens;   // exactly `length`
  char key = 0;       // the queried key
  std::string value;  // its 3-digit value: the answer
  int64_t answer_begin = 0;
  int64_t queried_pair = 0;          // index into pair_begin
  std::vector<int64_t> pair_begin;  // ascending
};

inline constexpr int64_t kRecallPairBytes = 6;   // "k=ddd;"
inline constexpr int64_t kRecallQueryBytes = 6;  // "?k=ddd"
inline constexpr int64_t kRecallValueDigits = 3;
inline constexpr int64_t kRecallMaxPairs = 26;  // one lowercase letter per key

// Throws UsageError if pairs is outside [1, 26] or length < recall_min_length(pairs).
RecallSample make_recall_sample(int64_t length, int64_t pairs, uint64_t seed, int64_t index);
int64_t recall_min_length(int64_t pairs);
RecallSample make_recall_sample(const Tokenizer& tok, int64_t length, int64_t pairs,
                                uint64_t seed, int64_t index);
int64_t recall_min_length(const Tokenizer& tok, int64_t pairs);

}  // namespace rt
