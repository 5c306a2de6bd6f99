#include "parallel/process_groups.h"

#include "common/errors.h"
#include "parallel/ring_attention.h"

namespace rt {

RowPositions ProcessGroups::rows(int64_t T) const {
  if (dims.cp == 1) return RowPositions::whole(T);
  return ring_local_rows(layout, dims.cp, cp_index(), T);
}

ProcessGroups make_process_groups(Comm& world, const ParallelDims& dims, RingLayout layout) {
  RT_CHECK(dims.world == world.size() && dims.dp * dims.cp == dims.world,
           "process groups: ParallelDims do not match the world");
  ProcessGroups g;
  g.world = &world;
  g.dims = dims;
  g.layout = layout;
  g.rank = world.rank();
  // ranks with the same cp index form a data-parallel group, ordered by dp index;
  // ranks with the same dp index form a ring, ordered by cp index.
  g.dp = split_comm(world, dims.cp_index(g.rank), dims.dp_index(g.rank));
  g.cp = split_comm(world, dims.dp_index(g.rank), dims.cp_index(g.rank));
  return g;
}

}  // namespace rt
