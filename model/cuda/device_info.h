// CUDA device discovery; compiled only when nvcc is found
// (RINGTRAIN_HAVE_CUDA). No CUDA types leak into this header.
#pragma once

#include <string>

namespace rt::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device.
int device_count();
std::string device_name(int device);

}  // namespace rt::cuda
