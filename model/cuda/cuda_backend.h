// The CUDA backend (model/backend.h on an NVIDIA GPU): bf16 activations and
// compute weights, fp32 statistics (lse, rstd), losses, gradients, master
// weights and optimizer state (SPEC §12); cuBLASLt GEMMs (bf16 in, fp32
// accumulate); the fused attention kernels of model/cuda/attention.h; every
// other op a kernel of model/cuda/ops.cu. Every op is queued on the backend's
// stream; nothing synchronises the host except copy_to_host, sum_squares and
// synchronize(). C++17, no CUDA headers.
//
// make_cuda_emu_backend() runs the same kernel source on the CPU through the
// fiber emulator of model/cuda/emu/ (GEMMs by a plain loop accumulating in
// fp64 on the rounded operands, attention by the CPU blocked attention): a test tool that checks the
// kernels' index arithmetic and reductions in CI, where no GPU exists. It says
// nothing about speed, races or the real hardware's rounding of fused ops.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "model/backend.h"

namespace rt {

// Built with CUDA (RINGTRAIN_HAVE_CUDA): the backend on CUDA device `device`
// (an index below cuda::device_count()). Throws UsageError when there is no
// such device.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Always built: the emulated CUDA backend (tests only).
std::unique_ptr<Backend> make_cuda_emu_backend();

}  // namespace rt
