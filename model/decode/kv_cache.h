// Incremental decoding with a KV cache (for `ringtrain generate`).
//
// Each append() runs n new tokens, at global positions [length, length + n),
// through the model's layers with the same ops as the training forward:
// their K (rotated with RoPE at those positions) and V go straight into the
// per-layer cache, and the new queries attend over the whole cache with one
// attention_forward call (Tq = n, Tk = length + n, q_offset = length,
// k_offset = 0, causal; ALiBi from the global positions). A prompt is one
// append (prefill); each generated token is one more (Tq = 1). The result
// equals recomputing the full forward over the whole sequence, to fp32
// rounding (tests/trainer/eval/test_trainer_generate.cpp), except with rope_scaling
// dynamic/longrope, whose tables depend on the sequence length: cached keys
// keep the rotation of the length they were computed at, as in HF.
#pragma once

#include <cstdint>
#include <vector>

#include "model/arena.h"
#include "model/decode/decoder.h"
#include "model/llama.h"

namespace rt {

class KvCacheDecoder final : public Decoder {
 public:
  // capacity: the most positions the cache holds (prompt + new tokens).
  KvCacheDecoder(LlamaModel& model, int capacity);
  KvCacheDecoder(const KvCacheDecoder&) = delete;
  KvCacheDecoder& operator=(const KvCacheDecoder&) = delete;

  // tokens (n) host -> logits (V) of the last of them, on the host.
  std::vector<float> append(const int32_t* tokens, int n) override;
  std::string describe() const override { return "KV cache"; }
  int length() const { return length_; }
  int capacity() const { return capacity_; }
  void reset() { length_ = 0; }

 private:
  void plan_work(int n);

  LlamaModel& model_;
  Backend& be_;
  int capacity_ = 0;
  int length_ = 0;
  Arena cache_;  // k.<l>, v.<l>: (capacity, G, hd) each
  Arena work_;   // per-call activations for up to work_rows_ rows
  int work_rows_ = 0;
  DeviceBuffer tokens_dev_;  // int32
  DeviceBuffer alibi_dev_;
  DeviceBuffer rope_cos_, rope_sin_;  // (rows, hd/2)
};

}  // namespace rt
