#include "parallel/comm_path.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/errors.h"
#include "parallel/comm.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/device_info.h"
#endif

namespace rt {

const char* comm_path_name(CommPath p) {
  switch (p) {
    case CommPath::kMpi: return "mpi";
    case CommPath::kNccl: return "nccl";
    case CommPath::kStaged: return "staged";
  }
  return "?";
}

CommChoice choose_comm_path(const CommSituation& s) {
  const std::string gpu = "GPU " + std::to_string(s.device);
  if (s.force_staging)
    return {CommPath::kStaged,
            std::string("comm: RINGTRAIN_COMM_STAGING=1, ") +
                (s.device_buffers ? "device" : "backend") +
                " buffers travel through pinned host memory over MPI"};
  if (!s.device_buffers)
    return {CommPath::kMpi, "comm: CPU backend, buffers travel over MPI"};
  if (s.device_count > 0 && s.local_size > s.device_count)
    return {CommPath::kStaged,
            "comm: ranks share " + gpu + " (" + std::to_string(s.local_size) +
                " ranks on this node, " + std::to_string(s.device_count) +
                " GPU" + (s.device_count == 1 ? "" : "s") +
                "), device buffers travel through pinned host memory over MPI"};
  if (!s.have_nccl)
    return {CommPath::kStaged,
            "comm: this build has no NCCL, device buffers travel through pinned host memory "
            "over MPI (install NCCL, libnccl-dev, and rebuild for GPU-to-GPU transfers)"};
  return {CommPath::kNccl, "comm: NCCL on " + gpu + " (one rank per GPU, " +
                               std::to_string(s.world) + " rank" + (s.world == 1 ? "" : "s") +
                               ")"};
}

CommSituation comm_situation(int device, int world) {
  CommSituation s;
  s.device_buffers = device >= 0;
  s.have_nccl = nccl_compiled_in();
  s.world = world;
  s.local_size = parallel_runtime().local_size;
#ifdef RINGTRAIN_HAVE_CUDA
  if (s.device_buffers) s.device_count = cuda::device_count();
#endif
  s.device = std::max(device, 0);
  s.force_staging = comm_staging_forced();
  return s;
}

bool nccl_compiled_in() {
#ifdef RINGTRAIN_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

bool comm_staging_forced() {
  const char* v = std::getenv("RINGTRAIN_COMM_STAGING");
  if (!v || !*v || std::string(v) == "0") return false;
  if (std::string(v) == "1") return true;
  throw UsageError(std::string("RINGTRAIN_COMM_STAGING=") + v +
                   ": expected 1 (device buffers through pinned host memory over MPI) or 0 "
                   "(choose automatically); unset it for the automatic choice");
}

}  // namespace rt
