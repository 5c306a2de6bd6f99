#include "trainer/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/errors.h"

namespace rt {

PerplexityResult evaluate_perplexity(LlamaModel& model, const SequenceSource& data, int64_t T,
                                     int64_t max_sequences, const EvalSharding* sh) {
  const int64_t available = data.num_sequences(T);
  const int64_t n = std::min(available, max_sequences);
  if (n < 1)
    throw UsageError("evaluation data " + data.describe() + " holds no sequence of length " +
                     std::to_string(T) + ": use a shorter --seq-len or more data");
  const int dp = sh ? sh->dims.dp : 1, cp = sh ? sh->dims.cp : 1;
  const int dp_index = sh ? sh->dims.dp_index(sh->rank) : 0;
  const int64_t multiple = sh && sh->layout == RingLayout::kZigzag ? 2 * cp : cp;
  if (T % multiple != 0)
    throw UsageError("evaluation length " + std::to_string(T) + " is not a multiple of " +
                     std::to_string(multiple) + " (context_parallel " + std::to_string(cp) +
                     ", ring layout " + (multiple == cp ? "contiguous" : "zigzag") +
                     "): choose lengths divisible by " + std::to_string(multiple));
  const RowPositions rows =
      cp > 1 ? ring_local_rows(sh->layout, cp, sh->dims.cp_index(sh->rank), T)
             : RowPositions::whole(T);
  const int64_t Tl = T / cp;
  std::vector<int32_t> inputs(Tl), targets(Tl);
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
    nll += model.forward_backward(inputs.data(), targets.data(), 1, int(Tl), rows, 0.f, &valid);
    tokens += valid;
  }
  if (sh && sh->world->size() > 1) {
    sh->world->allreduce_sum(&nll, 1);
    sh->world->allreduce_sum(&tokens, 1);
  }
  r.tokens = tokens;
  r.mean_nll = r.tokens ? nll / double(r.tokens) : 0.0;
  r.ppl = std::exp(r.mean_nll);
  return r;
}

nlohmann::json perplexity_to_json(const std::vector<PerplexityResult>& results) {
  nlohmann::json arr = nlohmann::json::array();
  for (const PerplexityResult& r : results)
    arr.push_back({{"seq_len", r.seq_len},
                   {"sequences", r.sequences},
                   {"tokens", r.tokens},
                   {"mean_nll", r.mean_nll},
                   {"ppl", r.ppl}});
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

}  // namespace rt
