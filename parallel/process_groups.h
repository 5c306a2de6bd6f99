// Process groups, built in one place (torchtitan's build_mesh): from the
// world and ParallelDims (SPEC §6: rank = dp_index * cp + cp_index) come the
// data-parallel group (same cp index, one member per dp index), the
// context-parallel ring (same dp index, ordered by cp index), the ring
// layout and the rows of a sequence this rank holds. Training and eval both
// take their groups from here.
//
// The groups come twice when buffers live on a GPU: world/dp/cp are MPI
// groups for host values (losses, counts, the start-up tables), and
// attach_device_groups adds the same groups for device buffers (ring
// attention's K/V, gradient reduction): NCCL communicators, or the MPI groups
// behind pinned-host staging (parallel/comm_path.h says which).
#pragma once

#include <cstdint>
#include <memory>

#include "model/backend.h"
#include "model/llama.h"
#include "parallel/comm.h"
#include "parallel/comm_path.h"
#include "parallel/parallel_dims.h"

namespace rt {

struct ProcessGroups {
  Comm* world = nullptr;
  std::unique_ptr<Comm> dp;  // this rank's data-parallel group (size dims.dp)
  std::unique_ptr<Comm> cp;  // this rank's context-parallel ring (size dims.cp)
  // The groups for device buffers (after dp and cp: destroyed first, they
  // may wrap them); null on the MPI path, where world/dp/cp serve.
  std::unique_ptr<Comm> dev_world, dev_dp, dev_cp;
  CommPath path = CommPath::kMpi;
  ParallelDims dims;
  RingLayout layout = RingLayout::kZigzag;
  int rank = 0;  // in the world

  int dp_index() const { return dims.dp_index(rank); }
  int cp_index() const { return dims.cp_index(rank); }
  // The global rows of a sequence of T tokens this rank holds (all of them
  // without context parallelism). T must be a multiple of
  // dims.seq_len_divisor(layout) when dims.cp > 1.
  RowPositions rows(int64_t T) const;

  // The group that carries the backend's buffers.
  Comm& device_world() const { return dev_world ? *dev_world : *world; }
  Comm& device_dp() const { return dev_dp ? *dev_dp : *dp; }
  Comm& device_cp() const { return dev_cp ? *dev_cp : *cp; }
};

// Collective over `world`: every rank calls it with the same dims and layout.
// dims.world must equal world.size().
ProcessGroups make_process_groups(Comm& world, const ParallelDims& dims, RingLayout layout);

// Collective over g.world: the device groups for `path` with be's buffers.
// kNccl: one NCCL communicator for the world on CUDA device `device` (unique
// id broadcast over the MPI world), dp and cp split from it; kStaged:
// StagedComm over world, dp and cp; kMpi: none. Throws UsageError for kNccl
// in a build without NCCL.
void attach_device_groups(ProcessGroups& g, Backend& be, CommPath path, int device);

// The one place the transport is chosen: this process's situation
// (comm_situation) for be, choose_comm_path, attach_device_groups, and the
// choice logged once ("comm: ...", except for a single CPU process, where
// nothing travels). Collective over g.world.
CommChoice setup_device_groups(ProcessGroups& g, Backend& be);

}  // namespace rt
