// Which transport carries device buffers between ranks (ring attention's K/V
// blocks, gradient reduction), decided in one place:
//   kMpi     host buffers (CPU backend): MPI directly;
//   kNccl    device buffers, one rank per GPU, NCCL compiled in: NCCL
//            communicators (parallel/nccl_comm.h);
//   kStaged  device buffers but NCCL unusable (ranks share a GPU: NCCL
//            refuses two ranks on one device; or the build has no NCCL):
//            MPI through pinned host staging buffers (parallel/staged_comm.h).
// The environment variable RINGTRAIN_COMM_STAGING=1 forces kStaged even on
// the CPU backend (a test hook: it shows the staging path gives the same
// numbers as plain MPI).
#pragma once

#include <string>

namespace rt {

enum class CommPath { kMpi, kNccl, kStaged };
const char* comm_path_name(CommPath p);

struct CommSituation {
  bool device_buffers = false;  // the backend's buffers live on a GPU
  bool have_nccl = false;       // built with NCCL (nccl_compiled_in())
  int world = 1;                // ranks in the job
  int local_size = 1;           // ranks on this node
  int device_count = 0;         // GPUs visible on this node
  int device = 0;               // this rank's GPU (local_rank % device_count)
  bool force_staging = false;   // RINGTRAIN_COMM_STAGING=1
};

struct CommChoice {
  CommPath path = CommPath::kMpi;
  std::string why;  // the log line: "comm: ..."
};

// Pure function of the situation (unit-tested).
CommChoice choose_comm_path(const CommSituation& s);

// This process's situation (ParallelRuntime's local ranks, the CUDA devices
// of this build) for a backend on GPU `device` (Backend::device_index(),
// chosen by resolve_device), or on the host (-1).
CommSituation comm_situation(int device, int world);

// Whether this build has NCCL (RINGTRAIN_HAVE_NCCL).
bool nccl_compiled_in();
// RINGTRAIN_COMM_STAGING: unset, "" or "0" -> false; "1" -> true; anything
// else throws UsageError.
bool comm_staging_forced();

}  // namespace rt
