// A memory mechanism that changes the attention of chosen decoder layers
// (knn, compressive; docs/memory.md). The model calls it in place of its
// own position encoding and attention for those layers; the segment runner
// and decoder (model/memory/sequence_runner.h, decoder.h) call the
// sequence-level hooks between segments. One implementation per file:
// model/memory/knn.cpp, model/memory/compressive.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"

namespace rt {

class LlamaModel;

// One call of a memory layer: B batch rows of T rows each (a segment, or the
// open part of one when decoding), at segment positions 0..T-1. rope_cos/sin
// (T, hd/2): the model's tables for those positions (RoPE models), else null.
struct LayerMemoryCall {
  int B = 0, T = 0;
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
};

class LayerMemory {
 public:
  virtual ~LayerMemory() = default;
  virtual const char* kind() const = 0;
  // Whether decoder layer `layer` is a memory layer.
  virtual bool handles(int layer) const = 0;

  // ---- inside the model's layer (forward, then backward) ----
  // q (B,T,H,hd), k, v (B,T,G,hd) as projected, before any position
  // encoding; the layer may rotate q and k in place (backward receives them
  // as left). Writes att (B,T,H,hd) and lse (B,H,T). A pure function of its
  // inputs and the store: activation checkpointing runs it again before the
  // backward. It also keeps this segment's pre-position keys and values for
  // commit().
  virtual void forward(int layer, const LayerMemoryCall& c, Buf att, float* lse, Buf q, Buf k,
                       CBuf v) = 0;
  // dq, dk, dv (B,T,.,hd) += the gradients of the pre-position q, k, v given
  // datt; parameter gradients (gate, ...) accumulate into the model's.
  virtual void backward(int layer, const LayerMemoryCall& c, Buf dq, Buf dk, Buf dv, CBuf datt,
                        CBuf q, CBuf k, CBuf v, CBuf att, const float* lse) = 0;

  // ---- between segments (segment runner, decoder) ----
  // Empty stores for B sequences.
  virtual void begin_sequence(int B) = 0;
  // Batch row b: drop every stored row at a sequence position below pos (a
  // document starts there).
  virtual void drop_before(int b, int64_t pos) = 0;
  // Writes the rows of the last forward (a whole segment whose first token
  // is at sequence position first_pos) into the stores. dloss_scale != 0: a
  // training step; mechanisms with a loss of their own (the compressive
  // attention-reconstruction loss) add its gradient with this scale.
  virtual void commit(int64_t first_pos, float dloss_scale) = 0;
  // Host bytes of the stores now (for cost reports).
  virtual size_t store_bytes() const = 0;
  // Measurements accumulated during evaluation (name, value), e.g. what each
  // compression level loses; empty when the mechanism has none.
  virtual std::vector<std::pair<std::string, double>> stats() const { return {}; }
};

// Index of `layer` in a memory's model.memory.layers, or -1 (not a memory layer).
inline int memory_layer_slot(const std::vector<int>& layers, int layer) {
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i] == layer) return int(i);
  return -1;
}

// The LayerMemory of model.config().memory (knn or compressive); null for
// models without one (no memory or rmt).
std::unique_ptr<LayerMemory> make_layer_memory(LlamaModel& model);

}  // namespace rt
