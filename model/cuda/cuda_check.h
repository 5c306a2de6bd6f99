// Checked CUDA calls: every failure names the call, file and line, CUDA's
// message, and a hint where one helps (out of memory: what to lower). For
// .cu and .cpp files that include the CUDA runtime.
#pragma once

#include <cuda_runtime.h>

namespace rt::cuda {

// Throws rt::Error (exit 1) when e is not cudaSuccess.
void cuda_check(cudaError_t e, const char* call, const char* file, int line);

}  // namespace rt::cuda

#define RT_CUDA_CHECK(call) ::rt::cuda::cuda_check((call), #call, __FILE__, __LINE__)
