#include "trainer/eval/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "common/errors.h"
#include "common/log.h"
#include "common/rng.h"
#include "model/decode/decoder.h"
#include "model/llama.h"
#include "data/tokenizer.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config/config.h"
#include "trainer/train/trainer.h"

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

namespace {

// Prints generated tokens as text. Bytes: each token is its byte (ids past
// 255 print as their low byte, as before tokenizers existed). Others: the
// decoded continuation, printed as it grows; ids the tokenizer does not have
// (a model vocab padded past the tokenizer's) print as nothing.
class ContinuationPrinter {
 public:
  explicit ContinuationPrinter(const Tokenizer& tok) : tok_(tok) {}
  void add(int32_t id) {
    if (tok_.kind() == "bytes") {
      const char ch = char(id & 0xff);
      std::fwrite(&ch, 1, 1, stdout);
      std::fflush(stdout);
      return;
    }
    if (id < 0 || id >= tok_.vocab_size()) return;
    ids_.push_back(uint32_t(id));
    const std::string text = tok_.decode(ids_);
    if (text.size() > printed_.size() && text.compare(0, printed_.size(), printed_) == 0) {
      std::fwrite(text.data() + printed_.size(), 1, text.size() - printed_.size(), stdout);
      std::fflush(stdout);
      printed_ = text;
    }
  }
  void finish() {
    if (ids_.empty()) return;
    const std::string text = tok_.decode(ids_);
    if (text.compare(0, printed_.size(), printed_) == 0)
      std::fwrite(text.data() + printed_.size(), 1, text.size() - printed_.size(), stdout);
    std::fflush(stdout);
  }

 private:
  const Tokenizer& tok_;
  std::vector<uint32_t> ids_;
  std::string printed_;
};

}  // namespace

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
  const std::unique_ptr<Tokenizer> tok = read_checkpoint_tokenizer(o.checkpoint);
  if (cfg.model.vocab_size < tok->vocab_size())
    throw UsageError("generate: the model has vocab_size " + std::to_string(cfg.model.vocab_size) +
                     " but its tokenizer " + tok->describe() + " has " +
                     std::to_string(tok->vocab_size()) + " tokens");
  if (o.bos && tok->bos_id() < 0)
    throw UsageError("generate --bos: the tokenizer " + tok->describe() + " has no BOS token");

  const DeviceChoice dev = resolve_inference_device(cfg, parallel_runtime().local_rank);
  std::unique_ptr<Backend> be = make_device_backend(dev);
  LlamaModel model(cfg.model, *be, dev.precision);
  load_model_weights(o.checkpoint, model);
  std::vector<int32_t> tokens;
  if (o.bos) tokens.push_back(tok->bos_id());
  for (uint32_t id : tok->encode(o.prompt)) tokens.push_back(int32_t(id));
  const int total = int(tokens.size()) + o.max_new;
  // Memory models read the text segment by segment through their memory
  // (positions restart every segment); others keep every position in a KV cache.
  if (!cfg.model.memory && total > cfg.model.max_position_embeddings)
    log_warn("generate: %d positions exceed model.max_position_embeddings %d; quality may drop",
             total, cfg.model.max_position_embeddings);
  const std::unique_ptr<Decoder> decoder = make_decoder(model, std::max(total, 1));
  Rng rng(mix_seed(o.seed ? o.seed : cfg.run.seed, 0x67656e00000004ull));

  std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = decoder->append(tokens.data(), int(tokens.size()));
  const auto t1 = std::chrono::steady_clock::now();
  // The continuation is decoded as a whole (a piece's text can depend on its
  // neighbours); what is new is printed as soon as the text only grows.
  ContinuationPrinter out(*tok);
  int generated = 0;
  for (int i = 0; i < o.max_new; ++i) {
    const int32_t next = sample_token(logits, o.temperature, o.top_k, rng);
    out.add(next);
    ++generated;
    if (o.stop_at_eos && next == tok->eos_id()) break;
    if (i + 1 < o.max_new) logits = decoder->append(&next, 1);
  }
  out.finish();
  std::printf("\n");
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill = std::chrono::duration<double>(t1 - t0).count();
  const double decode = std::chrono::duration<double>(t2 - t1).count();
  const std::string how = decoder->describe();
  log_info("generate: step %lld checkpoint, prompt %zu tokens (prefill %.3f s), %d new tokens "
           "(%.1f tok/s, %s)",
           (long long)meta.step, tokens.size(), prefill, generated,
           decode > 0 ? generated / decode : 0.0, how.c_str());
  return kExitOk;
}

}  // namespace rt
