// Evaluation (SPEC §9): perplexity at one or more lengths, loss by position
// and the passkey retrieval grid. Every function runs the same on one rank or
// sharded over dp x cp ranks (ProcessGroups) and returns the global result on
// every rank.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/llama.h"

namespace rt {

struct PerplexityResult {
  int64_t seq_len = 0;
  int64_t sequences = 0;
  int64_t tokens = 0;  // targets counted
  double mean_nll = 0;
  double ppl = 0;
  // memory models: host bytes their memory holds for one sequence of this
  // length at its end (knn/compressive stores, RMT's carried memories); 0
  // without memory
  int64_t memory_bytes = 0;
  // the memory's measurements over these sequences (compressive: each
  // level's compressions and the relative error they leave in the attention
  // output, docs/memory.md); empty for others
  std::vector<std::pair<std::string, double>> memory_stats;
};

// How evaluation is spread over ranks: a `const ProcessGroups*` (null = one
// rank). dp ranks take every dp-th sequence, the cp ranks of a ring each hold
// their rows of it (the model's attention must be the ring's when cp > 1).
struct ProcessGroups;

// Mean next-token NLL by position bucket: mean_nll[b] averages the valid
// targets at positions [b*bucket, (b+1)*bucket) (NaN where a bucket has none,
// e.g. synthetic data with loss: answer).
struct LossByPosition {
  int64_t seq_len = 0;
  int64_t bucket = 0;
  std::vector<double> mean_nll;
  std::vector<int64_t> tokens;  // valid targets per bucket
};

// mean next-token NLL over all valid targets of the first `max_sequences`
// non-overlapping sequences of length T, in order from the start of the data.
// With sharding, every rank returns the same global result.
PerplexityResult evaluate_perplexity(LlamaModel& model, const SequenceSource& data, int64_t T,
                                     int64_t max_sequences, const ProcessGroups* groups = nullptr,
                                     LossByPosition* by_position = nullptr,
                                     bool memory_reset = false);
// Default bucket for loss by position: seq_len/16, at most 512, at least 1.
int64_t default_position_bucket(int64_t seq_len);

// Passkey retrieval (SPEC §7, §9). Trial t at (length L, depth d) is
// make_passkey_sample(tok, L + 1, d, seed, t) (tok: the model's tokenizer,
// null = bytes): its first L tokens are one forward pass (teacher forcing,
// the training format: inputs L tokens, the answer's tokens are the last
// targets). A trial is correct when the greedy (argmax) predictions at the
// answer positions decode to the answer's digits (with bytes: each of the 5
// predicted bytes is the digit).
struct PasskeyResult {
  std::vector<int64_t> seq_lens;
  std::vector<double> depths;
  int trials = 0;
  std::vector<std::vector<double>> accuracy;  // [seq_len][depth], in [0, 1]
};
// The seed stream of evaluation samples: distinct from the training and
// validation streams (run.seed + data.*.seed_offset).
inline uint64_t passkey_eval_seed(uint64_t run_seed) { return run_seed + 7919; }
// UsageError unless every length fits a passkey sample (>= passkey_min_length(tok)
// - 1), the depths are in [0, 1], the lengths suit the ring (multiples of 2*cp
// for zigzag, cp for contiguous) and the model's vocab holds the tokenizer's
// (bytes: vocab >= 256), which must reproduce digits.
void check_passkey_grid(const std::vector<int64_t>& seq_lens, const std::vector<double>& depths,
                        int trials, int vocab_size, const ProcessGroups* groups,
                        const Tokenizer* tok = nullptr);
PasskeyResult evaluate_passkey(LlamaModel& model, const std::vector<int64_t>& seq_lens,
                               const std::vector<double>& depths, int trials, uint64_t seed,
                               const ProcessGroups* groups = nullptr, bool memory_reset = false,
                               const Tokenizer* tok = nullptr);

// Scoring of one passkey or recall trial: `tokens` is the sample, its answer
// tokens[answer_begin:]; pred[k] = 1 + the greedy prediction at answer
// position k (0 = none). Right when the predictions decode to the answer's
// text (another segmentation of the same digits counts); ids outside the
// tokenizer are wrong. With bytes: every byte right.
bool answer_right(const Tokenizer& tok, const std::vector<uint32_t>& tokens, int64_t answer_begin,
                  const int64_t* pred);

// Associative recall (data/synthetic.h). Trial t at length L is
// make_recall_sample(tok, L + 1, pairs, seed, t), scored like a passkey
// trial: it is correct when the greedy predictions of the answer tokens
// decode to the asked value. accuracy_by_pair[i][q] is the accuracy over the trials that
// asked pair q (pairs lie in order along the sequence, so with pairs = the
// number of memory segments, pair q lies in segment q); NaN where no trial
// asked it.
struct RecallResult {
  std::vector<int64_t> seq_lens;
  int pairs = 0;
  int trials = 0;
  std::vector<double> accuracy;                      // [seq_len]
  std::vector<std::vector<double>> accuracy_by_pair;  // [seq_len][pair]
  std::vector<std::vector<int64_t>> asked;            // [seq_len][pair]: trials asking it
};
inline uint64_t recall_eval_seed(uint64_t run_seed) { return run_seed + 7919; }
// UsageError unless the lengths fit `pairs` pairs and the query and suit the
// ring, pairs is in [1, 26], trials >= 1 and the model's vocab holds the
// tokenizer's (null = bytes).
void check_recall_grid(const std::vector<int64_t>& seq_lens, int pairs, int trials,
                       int vocab_size, const ProcessGroups* groups,
                       const Tokenizer* tok = nullptr);
RecallResult evaluate_recall(LlamaModel& model, const std::vector<int64_t>& seq_lens, int pairs,
                             int trials, uint64_t seed, const ProcessGroups* groups = nullptr,
                             bool memory_reset = false, const Tokenizer* tok = nullptr);

nlohmann::json perplexity_to_json(const std::vector<PerplexityResult>& results);
// Console table: seq_len | sequences | tokens | mean_nll | ppl
std::string perplexity_table(const std::vector<PerplexityResult>& results);
// {"seq_len", "bucket", "mean_nll": [...]} (null for empty buckets)
nlohmann::json loss_by_position_to_json(const LossByPosition& r);
std::string loss_by_position_table(const LossByPosition& r);
// {"seq_lens", "depths", "accuracy": [[...]], "trials"}
nlohmann::json passkey_to_json(const PasskeyResult& r);
// Rows: lengths, columns: depths, cells: accuracy.
std::string passkey_table(const PasskeyResult& r);
// {"seq_lens", "pairs", "trials", "accuracy": [...], "accuracy_by_pair": [[...]] (null where
// no trial asked the pair), "asked": [[...]]}
nlohmann::json recall_to_json(const RecallResult& r);
// Rows: lengths; columns: all trials, then by asked pair.
std::string recall_table(const RecallResult& r);

}  // namespace rt
