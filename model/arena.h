// Planned memory: one arena per category (parameters, master weights,
// gradients, optimizer state, activations), laid out from a table of tensor
// specs and allocated in one piece by the backend's allocator. Each tensor
// carries its dtype; offsets are in bytes (64-byte aligned).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/backend.h"

namespace rt {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;
  size_t numel = 0;         // product of shape (filled by Arena)
  size_t offset_bytes = 0;  // from the arena base (filled by Arena)
};

// The same specs with every dtype set to t (a master or gradient arena laid
// out like the parameters).
std::vector<TensorSpec> with_dtype(std::vector<TensorSpec> specs, DType t);

// Lays specs out as an Arena does (numel, 64-byte aligned offset_bytes) and
// returns the bytes the arena allocates for them: the one sizing rule, for
// the Arena constructor and for memory plans made without allocating.
size_t layout_specs(std::vector<TensorSpec>& specs);
inline size_t layout_bytes(std::vector<TensorSpec> specs) { return layout_specs(specs); }

class Arena {
 public:
  Arena() = default;
  Arena(Backend& be, std::string label, std::vector<TensorSpec> specs);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept = default;
  Arena& operator=(Arena&& o) noexcept = default;

  void* data() const { return mem_.data(); }
  bool allocated() const { return bool(mem_); }
  size_t bytes() const { return mem_.bytes(); }
  // Bytes of the tensors of dtype t (without alignment padding).
  size_t bytes_of(DType t) const;
  // "12.0 MiB (bf16 8.0 MiB, fp32 4.0 MiB)" for the start-up log.
  std::string describe() const;
  const std::string& label() const { return label_; }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const TensorSpec& spec(const std::string& name) const;

  // Typed views of one tensor.
  Buf buf(const TensorSpec& s) const {
    return Buf(static_cast<char*>(mem_.data()) + s.offset_bytes, s.dtype);
  }
  Buf buf(const std::string& name) const { return buf(spec(name)); }
  // fp32 pointer; aborts when the tensor is not fp32.
  float* f32(const std::string& name) const;
  float* f32(const TensorSpec& s) const;

  // The whole arena as one fp32 array of f32_numel() floats (padding
  // included, zero); aborts unless every tensor is fp32. For reductions over
  // a whole category (gradient all-reduce, norms, checkpoint I/O).
  float* f32_base() const;
  size_t f32_numel() const { return mem_.bytes() / sizeof(float); }
  // Elements of all tensors (padding excluded).
  size_t numel() const { return numel_; }
  void zero();

 private:
  Backend* be_ = nullptr;
  std::string label_;
  std::vector<TensorSpec> specs_;
  std::unordered_map<std::string, size_t> index_;
  DeviceBuffer mem_;  // the whole arena, counted in 4-byte words
  size_t numel_ = 0;
  bool all_f32_ = true;
};

}  // namespace rt
