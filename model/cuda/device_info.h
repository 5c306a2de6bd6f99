// CUDA device discovery; compiled only when nvcc is found
// (RINGTRAIN_HAVE_CUDA). No CUDA types leak into this header.
#pragma once

#include <cstddef>
#include <string>

namespace rt::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device.
int device_count();
std::string device_name(int device);
// Global memory of the device in bytes (0 when it cannot be read).
size_t device_total_memory(int device);
// Compute capability as major*10 + minor (90 for Hopper; 0 when unknown).
int device_compute_capability(int device);

}  // namespace rt::cuda
