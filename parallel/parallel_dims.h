// Parallel geometry: world = data_parallel x context_parallel, cp fastest
// (SPEC §6): rank = dp_index * cp + cp_index. All rank math lives here.
#pragma once

#include <cstdint>
#include <string>

namespace rt {

// How a context-parallel ring shards a sequence (SPEC §6). zigzag: the
// sequence is cut into 2*cp chunks and cp rank r holds chunks r and
// 2*cp-1-r (balanced causal work); contiguous: cp chunks, rank r holds chunk r.
enum class RingLayout { kZigzag, kContiguous };
// "zigzag" | "contiguous"; anything else is a UsageError naming the field.
RingLayout parse_ring_layout(const std::string& s);
const char* ring_layout_name(RingLayout layout);

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
  // The ring's sequence-length rule, its one home: a sequence sharded over
  // the cp ranks must have a length that is a multiple of this (zigzag 2*cp,
  // contiguous cp; 1 without context parallelism).
  int64_t seq_len_divisor(RingLayout layout) const {
    if (cp == 1) return 1;  // no ring: the whole sequence, any length
    return layout == RingLayout::kZigzag ? 2 * int64_t(cp) : int64_t(cp);
  }
  std::string describe() const;
};

}  // namespace rt
