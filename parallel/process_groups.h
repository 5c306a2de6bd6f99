// Process groups, built in one place (torchtitan's build_mesh): from the
// world and ParallelDims (SPEC §6: rank = dp_index * cp + cp_index) come the
// data-parallel group (same cp index, one member per dp index), the
// context-parallel ring (same dp index, ordered by cp index), the ring
// layout and the rows of a sequence this rank holds. Training and eval both
// take their groups from here.
#pragma once

#include <cstdint>
#include <memory>

#include "model/llama.h"
#include "parallel/comm.h"
#include "parallel/parallel_dims.h"

namespace rt {

struct ProcessGroups {
  Comm* world = nullptr;
  std::unique_ptr<Comm> dp;  // this rank's data-parallel group (size dims.dp)
  std::unique_ptr<Comm> cp;  // this rank's context-parallel ring (size dims.cp)
  ParallelDims dims;
  RingLayout layout = RingLayout::kZigzag;
  int rank = 0;  // in the world

  int dp_index() const { return dims.dp_index(rank); }
  int cp_index() const { return dims.cp_index(rank); }
  // The global rows of a sequence of T tokens this rank holds (all of them
  // without context parallelism). T must be a multiple of
  // dims.seq_len_divisor(layout) when dims.cp > 1.
  RowPositions rows(int64_t T) const;
};

// Collective over `world`: every rank calls it with the same dims and layout.
// dims.world must equal world.size().
ProcessGroups make_process_groups(Comm& world, const ParallelDims& dims, RingLayout layout);

}  // namespace rt
