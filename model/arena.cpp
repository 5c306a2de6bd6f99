#include "model/arena.h"

#include <utility>

#include "common/errors.h"

namespace rt {

Arena::Arena(Backend& be, std::string label, std::vector<TensorSpec> specs)
    : be_(&be), label_(std::move(label)), specs_(std::move(specs)) {
  size_t off = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    TensorSpec& s = specs_[i];
    s.numel = 1;
    for (int64_t d : s.shape) s.numel *= size_t(d);
    // 16-float (64-byte) alignment for every tensor
    off = (off + 15) / 16 * 16;
    s.offset = off;
    off += s.numel;
    RT_CHECK(index_.emplace(s.name, i).second, "duplicate tensor name " + s.name);
  }
  total_ = off;
  base_ = static_cast<float*>(be_->alloc_bytes(total_ * sizeof(float)));
}

Arena::~Arena() {
  if (be_ && base_) be_->free_bytes(base_);
}

Arena::Arena(Arena&& o) noexcept { *this = std::move(o); }

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    if (be_ && base_) be_->free_bytes(base_);
    be_ = std::exchange(o.be_, nullptr);
    label_ = std::move(o.label_);
    specs_ = std::move(o.specs_);
    index_ = std::move(o.index_);
    base_ = std::exchange(o.base_, nullptr);
    total_ = std::exchange(o.total_, 0);
  }
  return *this;
}

const TensorSpec& Arena::spec(const std::string& name) const {
  auto it = index_.find(name);
  RT_CHECK(it != index_.end(), "no tensor named " + name + " in arena " + label_);
  return specs_[it->second];
}

void Arena::zero() {
  if (base_) be_->zero(base_, total_);
}

}  // namespace rt
