// The small LLaMA most model and trainer tests build, and random tokens for
// it. One definition, so that "the tiny model" means the same everywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/rng.h"
#include "model/model_config.h"

namespace rt::testing {

// 2 layers, hidden 32, intermediate 48, 4 heads of 8 over kv_heads KV heads,
// init_std 0.1 (larger than the default, so attention is not uniform).
inline ModelConfig tiny_llama(int vocab, const std::string& position = "rope", int kv_heads = 2) {
  ModelConfig mc;
  mc.vocab_size = vocab;
  mc.hidden_size = 32;
  mc.intermediate_size = 48;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = 4;
  mc.num_key_value_heads = kv_heads;
  mc.head_dim = 8;
  mc.position = position;
  mc.init_std = 0.1;
  return mc;
}

// n token ids uniform in [0, V) from seed.
inline std::vector<int32_t> random_tokens(size_t n, uint64_t seed, int V) {
  Rng r(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(r.below(uint64_t(V)));
  return t;
}

}  // namespace rt::testing
