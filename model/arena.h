// Planned memory: one arena per category (parameters, gradients, optimizer
// state, activations), laid out from a table of tensor specs and allocated in
// one piece by the backend's allocator.
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
  size_t numel = 0;   // product of shape
  size_t offset = 0;  // in floats, from the arena base (filled by Arena)
};

class Arena {
 public:
  Arena() = default;
  Arena(Backend& be, std::string label, std::vector<TensorSpec> specs);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;

  float* base() const { return base_; }
  size_t numel() const { return total_; }
  size_t bytes() const { return total_ * sizeof(float); }
  const std::string& label() const { return label_; }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const TensorSpec& spec(const std::string& name) const;
  float* get(const std::string& name) const { return base_ + spec(name).offset; }
  void zero();

 private:
  Backend* be_ = nullptr;
  std::string label_;
  std::vector<TensorSpec> specs_;
  std::unordered_map<std::string, size_t> index_;
  float* base_ = nullptr;
  size_t total_ = 0;
};

}  // namespace rt
