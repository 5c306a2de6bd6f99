// Host <-> device transfers with dtype conversion, for the memory layers'
// host-side stores (model/memory/knn.cpp, compressive.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include "model/backend.h"

namespace rt {

// n elements of src (any float dtype, on the device) as fp32 on the host.
inline std::vector<float> to_host_f32(Backend& be, CBuf src, size_t n) {
  std::vector<float> out(n);
  if (n == 0) return out;
  if (src.t == DType::kF32) {
    be.copy_to_host(out.data(), src.p, n * sizeof(float));
    return out;
  }
  DeviceBuffer tmp(be, n);
  be.cast(tmp.buf(), src, n);
  be.copy_to_host(out.data(), tmp.data(), n * sizeof(float));
  return out;
}

// n host fp32 values into dst (any float dtype, on the device), rounded once.
inline void upload_f32(Backend& be, Buf dst, const float* host, size_t n) {
  if (n == 0) return;
  if (dst.t == DType::kF32) {
    be.copy_to_device(dst.p, host, n * sizeof(float));
    return;
  }
  DeviceBuffer tmp(be, n);
  be.copy_to_device(tmp.data(), host, n * sizeof(float));
  be.cast(dst, tmp.buf(), n);
}

// dst (fp32, on the device) += n host fp32 values.
inline void add_from_host(Backend& be, Buf dst, const float* host, size_t n) {
  if (n == 0) return;
  DeviceBuffer tmp(be, n);
  be.copy_to_device(tmp.data(), host, n * sizeof(float));
  be.add_inplace(dst, tmp.buf(), n);
}

}  // namespace rt
