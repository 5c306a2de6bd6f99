#include "trainer/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/errors.h"

namespace rt {

PerplexityResult evaluate_perplexity(LlamaModel& model, const SequenceSource& data, int64_t T,
                                     int64_t max_sequences) {
  const int64_t available = data.num_sequences(T);
  const int64_t n = std::min(available, max_sequences);
  if (n < 1)
    throw UsageError("evaluation data " + data.describe() + " holds no sequence of length " +
                     std::to_string(T) + ": use a shorter --seq-len or more data");
  std::vector<int32_t> inputs(T), targets(T);
  PerplexityResult r;
  r.seq_len = T;
  r.sequences = n;
  double nll = 0;
  for (int64_t i = 0; i < n; ++i) {
    data.read(i, T, 0, T, inputs.data(), targets.data());
    int64_t valid = 0;
    nll += model.forward_backward(inputs.data(), targets.data(), 1, int(T),
                                  RowPositions::whole(T), 0.f, &valid);
    r.tokens += valid;
  }
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
