#include "model/arena.h"

#include <map>
#include <utility>

#include "common/errors.h"
#include "common/log.h"

namespace rt {

std::vector<TensorSpec> with_dtype(std::vector<TensorSpec> specs, DType t) {
  for (TensorSpec& s : specs) s.dtype = t;
  return specs;
}

size_t layout_specs(std::vector<TensorSpec>& specs) {
  size_t off = 0;
  for (TensorSpec& s : specs) {
    s.numel = 1;
    for (int64_t d : s.shape) s.numel *= size_t(d);
    // 64-byte alignment for every tensor
    off = (off + 63) / 64 * 64;
    s.offset_bytes = off;
    off += s.numel * dtype_size(s.dtype);
  }
  // no padding after the last tensor: an fp32 arena is exactly the array the
  // fp32 reductions always ran over (their thread split depends on its length)
  return (off + 3) / 4 * 4;
}

Arena::Arena(Backend& be, std::string label, std::vector<TensorSpec> specs)
    : be_(&be), label_(std::move(label)), specs_(std::move(specs)) {
  const size_t bytes = layout_specs(specs_);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const TensorSpec& s = specs_[i];
    numel_ += s.numel;
    all_f32_ = all_f32_ && s.dtype == DType::kF32;
    RT_CHECK(index_.emplace(s.name, i).second, "duplicate tensor name " + s.name);
  }
  mem_ = DeviceBuffer(be, bytes / 4, DType::kF32);
}

size_t Arena::bytes_of(DType t) const {
  size_t b = 0;
  for (const TensorSpec& s : specs_)
    if (s.dtype == t) b += s.numel * dtype_size(t);
  return b;
}

std::string Arena::describe() const {
  std::map<std::string, size_t> by;
  for (const TensorSpec& s : specs_) by[dtype_name(s.dtype)] += s.numel * dtype_size(s.dtype);
  std::string out = format_bytes(double(bytes())) + " (";
  bool first = true;
  for (auto& [name, b] : by) {
    out += (first ? "" : ", ") + name + " " + format_bytes(double(b));
    first = false;
  }
  return out + ")";
}

const TensorSpec& Arena::spec(const std::string& name) const {
  auto it = index_.find(name);
  RT_CHECK(it != index_.end(), "no tensor named " + name + " in arena " + label_);
  return specs_[it->second];
}

float* Arena::f32(const TensorSpec& s) const {
  RT_CHECK(s.dtype == DType::kF32, s.name + " in arena " + label_ + " is " +
                                       dtype_name(s.dtype) + ", not fp32");
  return reinterpret_cast<float*>(static_cast<char*>(mem_.data()) + s.offset_bytes);
}

float* Arena::f32(const std::string& name) const { return f32(spec(name)); }

float* Arena::f32_base() const {
  RT_CHECK(all_f32_, "arena " + label_ + " is not all fp32");
  return static_cast<float*>(mem_.data());
}

void Arena::zero() {
  if (mem_) be_->zero(mem_.buf(), mem_.size());
}

}  // namespace rt
