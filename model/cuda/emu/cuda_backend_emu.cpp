// The CUDA backend (model/cuda/cuda_backend.cu) built for the fiber emulator:
// make_cuda_emu_backend(), for tests.
#define RT_CUDA_EMULATE 1
#include "model/cuda/cuda_backend.cu"  // NOLINT(bugprone-suspicious-include): the same source
