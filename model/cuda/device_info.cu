// CUDA device discovery: which devices exist, their names, memory and
// compute capability (trainer/train/device.cpp chooses one from these).
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

namespace {
// The device's properties; false (error cleared) when they cannot be read.
bool properties(int device, cudaDeviceProp* prop) {
  if (cudaGetDeviceProperties(prop, device) == cudaSuccess) return true;
  cudaGetLastError();
  return false;
}
}  // namespace

std::string device_name(int device) {
  cudaDeviceProp prop{};
  return properties(device, &prop) ? prop.name : "unknown";
}

size_t device_total_memory(int device) {
  cudaDeviceProp prop{};
  return properties(device, &prop) ? prop.totalGlobalMem : 0;
}

int device_compute_capability(int device) {
  cudaDeviceProp prop{};
  return properties(device, &prop) ? prop.major * 10 + prop.minor : 0;
}

}  // namespace rt::cuda
