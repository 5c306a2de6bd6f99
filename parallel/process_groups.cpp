#include "parallel/process_groups.h"

#include "common/errors.h"
#include "common/log.h"
#include "parallel/ring_attention.h"
#include "parallel/staged_comm.h"
#ifdef RINGTRAIN_HAVE_NCCL
#include "parallel/nccl_comm.h"
#endif

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
  g.dp = world.split(dims.cp_index(g.rank), dims.dp_index(g.rank));
  g.cp = world.split(dims.dp_index(g.rank), dims.cp_index(g.rank));
  return g;
}

void attach_device_groups(ProcessGroups& g, Backend& be, CommPath path, int device) {
  g.dev_dp.reset();
  g.dev_cp.reset();
  g.dev_world.reset();
  g.path = path;
  const int dpi = g.dp_index(), cpi = g.cp_index();
  switch (path) {
    case CommPath::kMpi: return;
    case CommPath::kStaged:
      g.dev_world = std::make_unique<StagedComm>(*g.world, be);
      g.dev_dp = std::make_unique<StagedComm>(*g.dp, be);
      g.dev_cp = std::make_unique<StagedComm>(*g.cp, be);
      return;
    case CommPath::kNccl:
#ifdef RINGTRAIN_HAVE_NCCL
      g.dev_world = NcclComm::create_world(*g.world, be, device);
      // the same colors and keys as the MPI groups above
      g.dev_dp = g.dev_world->split(cpi, dpi);
      g.dev_cp = g.dev_world->split(dpi, cpi);
      return;
#else
      (void)device;
      (void)dpi;
      (void)cpi;
      throw UsageError("NCCL communication was asked for, but this build has no NCCL: install "
                       "libnccl-dev and rebuild with CUDA, or let ranks share the pinned-host "
                       "path (RINGTRAIN_COMM_STAGING=1)");
#endif
  }
}

CommChoice setup_device_groups(ProcessGroups& g, Backend& be) {
  const CommSituation s = comm_situation(be.device_index(), g.world->size());
  CommChoice c = choose_comm_path(s);
  attach_device_groups(g, be, c.path, s.device);
  if (g.world->size() > 1 || c.path != CommPath::kMpi) log_info("%s", c.why.c_str());
  return c;
}

}  // namespace rt
