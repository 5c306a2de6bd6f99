// The CUDA backend's kernels (model/cuda/ops.cu) built for the fiber
// emulator (model/cuda/emu/cuda_emu.h), in namespace rt::cuda_emu.
#define RT_CUDA_EMULATE 1
#include "model/cuda/ops.cu"  // NOLINT(bugprone-suspicious-include): the same source, for the CPU
