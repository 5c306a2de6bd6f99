// The fused attention kernels (model/cuda/attention.cu) built for the fiber
// emulator, in namespace rt::cuda_emu: the mma.sync kernels run on the CPU
// (test_model_attention_emu); the wgmma ones exist only on a GPU.
#define RT_CUDA_EMULATE 1
#include "model/cuda/attention.cu"  // NOLINT(bugprone-suspicious-include): the same source, for the CPU
