// Incremental decoding (`ringtrain generate`), one implementation per way a
// model reads a sequence: a KV cache over every position (no memory,
// model/decode/kv_cache.h), or segment by segment through the model's
// memory (rmt: model/memory/rmt_decoder.h; knn, compressive:
// model/memory/segment_decoder.h). Chosen once by model.memory.type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rt {

class LlamaModel;

class Decoder {
 public:
  virtual ~Decoder() = default;
  // tokens (n >= 1, host) -> the logits (V, host fp32) after the last of them.
  virtual std::vector<float> append(const int32_t* tokens, int n) = 0;
  // For the log line: how the text so far is held ("KV cache", "recurrent
  // memory, 3 segments carried", ...).
  virtual std::string describe() const = 0;
};

// capacity: the most positions a KV cache must hold (prompt + new tokens).
std::unique_ptr<Decoder> make_decoder(LlamaModel& model, int capacity);

}  // namespace rt
