// ALiBi slopes (SPEC §4.3, Press et al.).
#pragma once

#include <vector>

namespace rt {

// n heads a power of two: start = 2^(-8/n), slope_k = start^(k+1); otherwise
// c = 2^floor(log2 n): the c power-of-two slopes, then the even-indexed
// slopes of 2c, first n-c of them.
std::vector<float> alibi_slopes(int n_heads);

}  // namespace rt
