// Rotary position tables (SPEC §4.1). Kept apart from attention so the
// scaling family (SPEC §4.2) can grow here without touching the model.
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

// inv_freq (head_dim/2) for the config at a global sequence length
// seq_len (only dynamic scaling depends on it). Computed in double.
std::vector<double> rope_inv_freq(const ModelConfig& m, int64_t seq_len);
// cos/sin multiplier (1 unless the scaling type sets one).
double rope_attention_factor(const ModelConfig& m);

// Tables for global positions [pos_begin, pos_begin + n): angle computed in
// double from the exact integer position, then rounded to fp32.
RopeTables make_rope_tables(const ModelConfig& m, int64_t seq_len, int64_t pos_begin, int64_t n);

}  // namespace rt
