// The model section of the config (SPEC §2, §3, §4, §5). Parsed and
// validated by trainer/config/config.cpp; model/ only reads it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rt {

// SPEC §4.2 — same keys as HF rope_scaling.
struct RopeScalingConfig {
  std::string rope_type = "linear";  // linear | ntk | dynamic | yarn | llama3 | longrope
  double factor = 1.0;               // > 0 (>= 1 for every type but longrope)
  std::optional<int64_t> original_max_position_embeddings;  // default: model.max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> attention_factor;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::vector<double> short_factor;  // longrope: head_dim/2 entries
  std::vector<double> long_factor;
};

// SPEC §5: the memory of model.memory.type, processed segment by segment
// (docs/memory.md has the exact math of every type).
struct MemoryConfig {
  std::string type = "rmt";  // rmt | knn | compressive
  int num_tokens = 16;       // rmt: M >= 1
  int segment_length = 128;  // S >= 1; train.seq_len % S == 0 (every type)
  int bptt_segments = -1;    // rmt: -1 all, 0 detached, K > 0 windows of K
  // knn and compressive: the decoder layers (0-based) that have memory;
  // empty in YAML means the default, one layer at (3L-1)/4 (resolved by the
  // config parser, so never empty here for these types)
  std::vector<int> layers;
  // knn
  int memory_size = 4096;     // stored (key, value) rows per sequence, FIFO
  int top_k = 32;             // retrieved rows per query, <= memory_size
  std::string index = "exact";  // exact (BLAS) | flat | ivf | hnsw (FAISS)
  // compressive
  int memory_segments = 1;        // >= 0 full-resolution segments kept (FIFO)
  int rate = 4;                   // >= 2 compression rate per level
  int levels = 1;                 // >= 1 compressed levels
  int compressed_size = 64;       // compressed slots over all levels
  std::string compression = "mean";  // mean | conv (learned, attention-reconstruction loss)

  static MemoryConfig rmt(int num_tokens, int segment_length, int bptt_segments = -1) {
    MemoryConfig c;
    c.num_tokens = num_tokens;
    c.segment_length = segment_length;
    c.bptt_segments = bptt_segments;
    return c;
  }
};

struct ModelConfig {
  int vocab_size = 256;
  int hidden_size = 256;
  int intermediate_size = 704;
  int num_hidden_layers = 4;
  int num_attention_heads = 4;
  int num_key_value_heads = 4;  // resolved: defaults to num_attention_heads
  int head_dim = 0;             // resolved: hidden_size / num_attention_heads when null
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  int max_position_embeddings = 1024;
  std::string position = "rope";  // rope | alibi | none
  double rope_theta = 10000.0;
  std::optional<RopeScalingConfig> rope_scaling;
  std::optional<MemoryConfig> memory;
  double init_std = 0.02;
};

// Activation checkpointing (train.activation_checkpointing):
//   kOff:       every layer keeps its activations for the backward;
//   kFull:      only each layer's input x.l is kept, the backward recomputes
//               the whole layer (the least memory);
//   kSelective: each layer's attention output (N, H*hd) and LSE (B,H,T) are
//               kept too, the recompute skips the attention (and, over a ring,
//               its communication). A layer whose attention a LayerMemory
//               provides is recomputed whole (its attention has side effects).
// All three give the same gradients (bitwise with a deterministic attention,
// as on the CPU).
enum class Checkpointing { kOff, kFull, kSelective };
// "off", "full", "selective" (for logs and plans).
const char* checkpointing_name(Checkpointing c);

}  // namespace rt
