// Typed buffers at the backend and communication boundaries.
//
// A buffer carries its element type (DType) so that one process can hold the
// fp32 CPU backend and a bf16 GPU backend side by side (no global activation
// type as in llm.c's floatX). Kernels stay templated on the element type
// inside each backend; shapes stay explicit int arguments (llm.c style).
//
// This header is C++17 and needs no CUDA headers: .cu files include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace rt {

// Element types. bf16 is stored as its bit pattern (uint16_t). kF8E4M3 is
// reserved for fp8 and has no op that supports it yet.
enum class DType : uint8_t { kF32, kBF16, kF64, kI32, kI64, kF8E4M3 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF64: return "fp64";
    case DType::kI32: return "int32";
    case DType::kI64: return "int64";
    case DType::kF8E4M3: return "fp8_e4m3";
  }
  return "?";
}

// A mutable typed buffer. Converts implicitly from float* (fp32), so fp32
// call sites read as before.
struct Buf {
  void* p = nullptr;
  DType t = DType::kF32;
  Buf() = default;
  Buf(void* ptr, DType type) : p(ptr), t(type) {}
  Buf(float* ptr) : p(ptr), t(DType::kF32) {}  // NOLINT: implicit on purpose
  template <class T>
  T* as() const { return static_cast<T*>(p); }
  float* f32() const { return static_cast<float*>(p); }
  explicit operator bool() const { return p != nullptr; }
};

// A read-only typed buffer.
struct CBuf {
  const void* p = nullptr;
  DType t = DType::kF32;
  CBuf() = default;
  CBuf(const void* ptr, DType type) : p(ptr), t(type) {}
  CBuf(const float* ptr) : p(ptr), t(DType::kF32) {}  // NOLINT: implicit on purpose
  CBuf(Buf b) : p(b.p), t(b.t) {}                     // NOLINT: implicit on purpose
  template <class T>
  const T* as() const { return static_cast<const T*>(p); }
  const float* f32() const { return static_cast<const float*>(p); }
  explicit operator bool() const { return p != nullptr; }
};

// The buffer from element i on (same dtype).
inline Buf at(Buf b, size_t i) { return Buf(static_cast<char*>(b.p) + i * dtype_size(b.t), b.t); }
inline CBuf at(CBuf b, size_t i) {
  return CBuf(static_cast<const char*>(b.p) + i * dtype_size(b.t), b.t);
}

// bf16 <-> fp32 on the host, round to nearest even (NaN stays NaN), the
// rounding CUDA's __float2bfloat16_rn does.
inline uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))  // NaN: keep it quiet
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// x rounded to the nearest bf16 value, kept in fp32 (storage emulation).
inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

}  // namespace rt
