// CUDA device discovery. The CUDA training backend (kernels, cuBLAS GEMMs)
// builds on this; for now the trainer uses it to report what it sees.
#include <cuda_runtime.h>

#include "model/cuda/device_info.h"

namespace rt::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unknown";
  return prop.name;
}

}  // namespace rt::cuda
