// Rotary position tables (SPEC §4.1) and the rope_scaling family (SPEC §4.2:
// linear, ntk, dynamic, yarn, llama3, longrope — HF rope_scaling semantics,
// computed in double). Kept apart from attention so the model only sees
// finished cos/sin tables.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model_config.h"

namespace rt {

struct RopeTables {
  int half = 0;            // head_dim / 2
  int64_t pos_begin = 0;   // global position of row 0
  std::vector<float> cos;  // (n, half), already multiplied by attention_factor
  std::vector<float> sin;
};

// inv_freq (head_dim/2) for the config at a global sequence length seq_len
// (the whole sequence's length, not a shard's). Only dynamic (base grows
// once seq_len > original_max_position_embeddings) and longrope (long_factor
// once seq_len > original_max_position_embeddings, else short_factor) depend
// on it. Without rope_scaling: 1 / theta^(2i/head_dim). Computed in double.
// Expects a validated config (trainer/config/config.cpp): original length resolved,
// longrope factor lists of head_dim/2 entries.
std::vector<double> rope_inv_freq(const ModelConfig& m, int64_t seq_len);
// cos/sin multiplier: yarn (attention_factor, else mscale rules) and
// longrope (attention_factor, else sqrt(1 + ln s / ln L) for s > 1); 1 for
// every other type and without rope_scaling. Independent of seq_len.
double rope_attention_factor(const ModelConfig& m);

// Tables for global positions [pos_begin, pos_begin + n): angle computed in
// double from the exact integer position, then rounded to fp32.
RopeTables make_rope_tables(const ModelConfig& m, int64_t seq_len, int64_t pos_begin, int64_t n);

}  // namespace rt
