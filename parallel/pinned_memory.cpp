#include "parallel/pinned_memory.h"

#include <cstdlib>
#include <new>

#ifdef RINGTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace rt {

PinnedBuffer::PinnedBuffer(size_t bytes, bool pin) { reserve(bytes, pin); }

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    p_ = o.p_;
    bytes_ = o.bytes_;
    pinned_ = o.pinned_;
    o.p_ = nullptr;
    o.bytes_ = 0;
    o.pinned_ = false;
  }
  return *this;
}

void PinnedBuffer::reserve(size_t bytes, bool pin) {
  if (bytes <= bytes_ && p_) return;
  reset();
  if (bytes == 0) return;
#ifdef RINGTRAIN_HAVE_CUDA
  if (pin) {
    void* p = nullptr;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) == cudaSuccess) {
      p_ = p;
      bytes_ = bytes;
      pinned_ = true;
      return;
    }
    cudaGetLastError();  // clear the error; fall back to pageable memory
  }
#else
  (void)pin;
#endif
  const size_t align = 256, rounded = (bytes + align - 1) / align * align;
  p_ = std::aligned_alloc(align, rounded);
  if (!p_) throw std::bad_alloc();
  bytes_ = bytes;
  pinned_ = false;
}

void PinnedBuffer::reset() {
  if (!p_) return;
#ifdef RINGTRAIN_HAVE_CUDA
  if (pinned_) cudaFreeHost(p_);
  else std::free(p_);
#else
  std::free(p_);
#endif
  p_ = nullptr;
  bytes_ = 0;
  pinned_ = false;
}

}  // namespace rt
