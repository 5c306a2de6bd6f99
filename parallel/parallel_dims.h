// Parallel geometry: world = data_parallel x context_parallel, cp fastest
// (SPEC §6): rank = dp_index * cp + cp_index. All rank math lives here.
#pragma once

#include <string>

namespace rt {

struct ParallelDims {
  int world = 1;
  int dp = 1;
  int cp = 1;

  // Validates dp * cp == world (dp <= 0 means auto = world / cp). Throws
  // UsageError naming every factor, e.g.
  // "data_parallel(2) * context_parallel(3) != world size(4)".
  static ParallelDims build(int world, int data_parallel, int context_parallel);

  int dp_index(int rank) const { return rank / cp; }
  int cp_index(int rank) const { return rank % cp; }
  int rank_of(int dp_index, int cp_index) const { return dp_index * cp + cp_index; }
  std::string describe() const;
};

}  // namespace rt
