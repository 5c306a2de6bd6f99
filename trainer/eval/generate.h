// `ringtrain generate` (SPEC §1): samples text from a checkpoint with a KV
// cache (model/decode/kv_cache.h): the prompt is prefilled in one forward, then one
// single-token step per new token; a memory model (model.memory) reads the
// prompt segment by segment through its memory and generates within the open
// segment, carrying the memory on at each segment boundary
// (model/memory/rmt_decoder.h; knn and compressive memories: model/memory/segment_decoder.h). Text goes through the checkpoint's tokenizer
// (bytes, or the SentencePiece model stored in it): the prompt is encoded, the
// continuation decoded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

class Rng;

struct GenerateOptions {
  std::string checkpoint;
  std::string prompt;
  int max_new = 64;
  double temperature = 0.0;  // 0 = greedy
  int top_k = 0;             // 0 = all tokens
  uint64_t seed = 0;
  bool bos = false;          // prepend the tokenizer's BOS token (Llama-style models)
  bool stop_at_eos = false;  // stop when the model emits the tokenizer's EOS token
};

// Greedy (argmax) when temperature <= 0, else a draw from
// softmax(logits / temperature) restricted to the top_k largest (all if 0).
int32_t sample_token(const std::vector<float>& logits, double temperature, int top_k, Rng& rng);

int run_generate_command(const GenerateOptions& o);

}  // namespace rt
