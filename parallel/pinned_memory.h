// Page-locked (pinned) host memory for staging device buffers through MPI:
// cudaHostAlloc in CUDA builds (DMA straight from and to the GPU, and
// asynchronous copies stay asynchronous); plain aligned host memory in builds
// without CUDA, where there is no device to pin for. C++ only: no CUDA types.
#pragma once

#include <cstddef>

namespace rt {

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  // pin: ask for page-locked memory (CUDA builds with a device); otherwise,
  // or when the CUDA runtime refuses, ordinary host memory.
  PinnedBuffer(size_t bytes, bool pin);
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept { *this = static_cast<PinnedBuffer&&>(o); }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;

  // At least `bytes` (reallocates, contents lost, when smaller).
  void reserve(size_t bytes, bool pin);
  void reset();
  void* data() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
};

}  // namespace rt
