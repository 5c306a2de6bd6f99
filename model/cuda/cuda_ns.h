// The namespace of the CUDA sources: nvcc builds them in rt::cuda; g++ with
// RT_CUDA_EMULATE builds the same sources for the CPU fiber emulator
// (model/cuda/emu/) in rt::cuda_emu, so both can link into one test.
#pragma once

#ifdef RT_CUDA_EMULATE
#define RT_CUDA_NS cuda_emu
#else
#define RT_CUDA_NS cuda
#endif
