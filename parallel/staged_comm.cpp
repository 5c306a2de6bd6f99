#include "parallel/staged_comm.h"

#include <cstdlib>
#include <utility>

#include "common/errors.h"

namespace rt {

StagedComm::StagedComm(Comm& inner, Backend& be)
    : inner_(&inner), be_(be), pin_(be.device() == Device::kCuda) {}

StagedComm::StagedComm(std::unique_ptr<Comm> inner, Backend& be)
    : owned_(std::move(inner)), inner_(owned_.get()), be_(be),
      pin_(be.device() == Device::kCuda) {}

StagedComm::~StagedComm() {
  // Messages still in flight write into our slots: finish them first.
  if (!pending_.empty()) inner_->shift_wait();
}

size_t StagedComm::take_slot(size_t bytes) {
  size_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = slots_.size();
    slots_.emplace_back();
  }
  slots_[i].reserve(bytes, pin_);
  return i;
}

void StagedComm::to_host(void* host, const void* dev, size_t bytes) {
  if (!bytes) return be_.synchronize();  // the wait a copy would have made (see below)
  be_.copy_to_host(host, dev, bytes);
  bytes_staged_ += int64_t(bytes);
}

void StagedComm::to_device(void* dev, const void* host, size_t bytes) {
  if (!bytes) return;
  be_.copy_to_device(dev, host, bytes);
  bytes_staged_ += int64_t(bytes);
}

// Collectives use a slot of their own for the call and give it back. A slot
// is written by MPI only after a copy_to_host (or a synchronize) in the same
// call, which waits for the stream: any copy_to_device still reading the
// slot from an earlier call has finished by then.
void StagedComm::do_allreduce_sum(Buf data, size_t n, void*) {
  const size_t bytes = n * dtype_size(data.t);
  const size_t s = take_slot(bytes);
  to_host(slots_[s].data(), data.p, bytes);
  inner_->allreduce_sum(Buf(slots_[s].data(), data.t), n);
  to_device(data.p, slots_[s].data(), bytes);
  free_.push_back(s);
}

void StagedComm::broadcast(void* data, size_t bytes, int root) {
  const size_t s = take_slot(bytes);
  if (rank() == root)
    to_host(slots_[s].data(), data, bytes);
  else
    be_.synchronize();  // no copy_to_host here orders the slot's reuse
  inner_->broadcast(slots_[s].data(), bytes, root);
  if (rank() != root) to_device(data, slots_[s].data(), bytes);
  free_.push_back(s);
}

void StagedComm::allgather(const void* in, size_t bytes, void* out) {
  const size_t total = bytes * size_t(size());
  const size_t a = take_slot(bytes), b = take_slot(total);
  to_host(slots_[a].data(), in, bytes);
  inner_->allgather(slots_[a].data(), bytes, slots_[b].data());
  to_device(out, slots_[b].data(), total);
  free_.push_back(a);
  free_.push_back(b);
}

// The send block goes to host memory now (its device copy may be
// overwritten as soon as shift_wait returns, as comm.h allows); the receive
// slot is copied to the device in shift_wait.
void StagedComm::do_shift_start(CBuf send, Buf recv, size_t bytes, void*) {
  const size_t a = take_slot(bytes), b = take_slot(bytes);
  to_host(slots_[a].data(), send.p, bytes);
  inner_->shift_start(CBuf(slots_[a].data(), send.t), Buf(slots_[b].data(), recv.t), bytes);
  pending_.push_back({a, b, recv, bytes});
}

void StagedComm::shift_wait() {
  if (pending_.empty()) return;
  inner_->shift_wait();
  for (const Shift& s : pending_) {
    to_device(s.recv.p, slots_[s.recv_slot].data(), s.bytes);
    free_.push_back(s.send_slot);
    free_.push_back(s.recv_slot);
  }
  pending_.clear();
}

void StagedComm::abort(int code) {
  inner_->abort(code);
  std::_Exit(code);  // (inner's abort does not return)
}

std::unique_ptr<Comm> StagedComm::split(int color, int key) {
  return std::make_unique<StagedComm>(inner_->split(color, key), be_);
}

}  // namespace rt
