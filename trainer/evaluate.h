// Evaluation (SPEC §9): perplexity at one or more lengths.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "model/llama.h"
#include "parallel/comm.h"
#include "parallel/parallel_dims.h"
#include "parallel/ring_attention.h"

namespace rt {

struct PerplexityResult {
  int64_t seq_len = 0;
  int64_t sequences = 0;
  int64_t tokens = 0;  // targets counted
  double mean_nll = 0;
  double ppl = 0;
};

// How evaluation is spread over ranks: dp ranks take every dp-th sequence,
// the cp ranks of a ring each hold their rows of it (the model's attention
// must be the ring's when cp > 1).
struct EvalSharding {
  Comm* world = nullptr;
  ParallelDims dims;
  RingLayout layout = RingLayout::kZigzag;
  int rank = 0;
};

// mean next-token NLL over all valid targets of the first `max_sequences`
// non-overlapping sequences of length T, in order from the start of the data.
// With sharding, every rank returns the same global result.
PerplexityResult evaluate_perplexity(LlamaModel& model, const SequenceSource& data, int64_t T,
                                     int64_t max_sequences, const EvalSharding* sharding = nullptr);

nlohmann::json perplexity_to_json(const std::vector<PerplexityResult>& results);
// Console table: seq_len | sequences | tokens | mean_nll | ppl
std::string perplexity_table(const std::vector<PerplexityResult>& results);

}  // namespace rt
