#include "trainer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "common/errors.h"
#include "common/log.h"
#include "common/rng.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/rmt_decoder.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace rt {

int32_t sample_token(const std::vector<float>& logits, double temperature, int top_k, Rng& rng) {
  const int V = int(logits.size());
  if (temperature <= 0.0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  const int k = top_k > 0 ? std::min(top_k, V) : V;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  const double mx = logits[size_t(ids[0])];
  std::vector<double> w(static_cast<size_t>(k));
  double sum = 0;
  for (int i = 0; i < k; ++i)
    sum += w[size_t(i)] = std::exp((double(logits[size_t(ids[size_t(i)])]) - mx) / temperature);
  double u = rng.uniform() * sum;
  for (int i = 0; i < k; ++i) {
    u -= w[size_t(i)];
    if (u < 0) return ids[size_t(i)];
  }
  return ids[size_t(k - 1)];
}

int run_generate_command(const GenerateOptions& o) {
  if (o.prompt.empty())
    throw UsageError("generate: --prompt is empty; give the text to continue, e.g. "
                     "--prompt 'What is the pass key?'");
  if (o.max_new < 0) throw UsageError("--max-new must be >= 0, got " + std::to_string(o.max_new));
  if (!(o.temperature >= 0.0))
    throw UsageError("--temperature must be >= 0 (0 = greedy), got " +
                     std::to_string(o.temperature));
  if (o.top_k < 0) throw UsageError("--top-k must be >= 0 (0 = all tokens)");
  const CheckpointMeta meta = read_checkpoint_meta(o.checkpoint);
  const Config cfg = parse_config(meta.config_yaml, o.checkpoint + ":config", {},
                                  ConfigUse::kNoTraining);
  if (cfg.model.vocab_size < 256)
    throw UsageError("generate: the model has vocab_size " + std::to_string(cfg.model.vocab_size) +
                     "; the byte tokenizer needs >= 256 (SentencePiece models come later)");

  std::unique_ptr<Backend> be = make_backend(cfg.parallel.device);
  LlamaModel model(cfg.model, *be);
  load_model_weights(o.checkpoint, model);
  std::vector<int32_t> tokens;
  for (unsigned char ch : o.prompt) tokens.push_back(ch);
  const int total = int(tokens.size()) + o.max_new;
  // Memory models read the text segment by segment through their memory
  // (positions restart every segment); others keep every position in a KV cache.
  std::unique_ptr<RmtDecoder> rmt;
  std::unique_ptr<KvCacheDecoder> kv;
  if (cfg.model.memory) {
    rmt = std::make_unique<RmtDecoder>(model);
  } else {
    if (total > cfg.model.max_position_embeddings)
      log_warn("generate: %d positions exceed model.max_position_embeddings %d; quality may drop",
               total, cfg.model.max_position_embeddings);
    kv = std::make_unique<KvCacheDecoder>(model, std::max(total, 1));
  }
  auto append = [&](const int32_t* t, int n) { return rmt ? rmt->append(t, n) : kv->append(t, n); };
  Rng rng(mix_seed(o.seed ? o.seed : cfg.run.seed, 0x67656e00000004ull));

  std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = append(tokens.data(), int(tokens.size()));
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.max_new; ++i) {
    const int32_t next = sample_token(logits, o.temperature, o.top_k, rng);
    const char ch = char(next & 0xff);
    std::fwrite(&ch, 1, 1, stdout);
    std::fflush(stdout);
    if (i + 1 < o.max_new) logits = append(&next, 1);
  }
  std::printf("\n");
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill = std::chrono::duration<double>(t1 - t0).count();
  const double decode = std::chrono::duration<double>(t2 - t1).count();
  const std::string how = rmt ? "recurrent memory, " + std::to_string(rmt->segments_done()) +
                                    " segments carried"
                              : "KV cache";
  log_info("generate: step %lld checkpoint, prompt %zu tokens (prefill %.3f s), %d new tokens "
           "(%.1f tok/s, %s)",
           (long long)meta.step, tokens.size(), prefill, o.max_new,
           decode > 0 ? o.max_new / decode : 0.0, how.c_str());
  return kExitOk;
}

}  // namespace rt
