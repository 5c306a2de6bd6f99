// A Comm for device buffers over a host Comm (MPI), through pinned host
// staging buffers: the path when ranks share a GPU (NCCL refuses two ranks on
// one device) or the build has no NCCL (parallel/comm_path.h chooses it).
//
// Every buffer passed to a StagedComm lives on the backend's device. An
// operation copies its input to pinned host memory (Backend::copy_to_host,
// which waits for the work queued on the backend's stream), runs the inner
// Comm on the host copy and copies the result back (Backend::copy_to_device,
// queued on the backend's stream). Host-visible semantics are comm.h's:
// collectives have completed when they return; shift_start returns once its
// messages are posted and shift_wait puts every received block in place.
// The result is the inner Comm's bit for bit (bf16 sums are the inner
// Comm's: widened to fp32, summed, rounded once).
//
// With the CPU backend (copies are memcpy) this is the same computation as
// the inner Comm through extra copies: the test that the staging moves the
// right bytes at the right time (RINGTRAIN_COMM_STAGING=1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/backend.h"
#include "parallel/comm.h"
#include "parallel/pinned_memory.h"

namespace rt {

class StagedComm final : public Comm {
 public:
  // inner: a host (MPI) Comm that outlives this one; be: whose buffers move.
  StagedComm(Comm& inner, Backend& be);
  // The same, owning inner (split() returns these).
  StagedComm(std::unique_ptr<Comm> inner, Backend& be);
  ~StagedComm() override;

  Comm& inner() { return *inner_; }
  Backend& backend() { return be_; }
  // Bytes copied device -> host and host -> device since construction.
  int64_t bytes_staged() const { return bytes_staged_; }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void broadcast(void* data, size_t bytes, int root) override;
  void allgather(const void* in, size_t bytes, void* out) override;
  void shift_wait() override;
  std::unique_ptr<Comm> split(int color, int key) override;
  void barrier() override { inner_->barrier(); }
  [[noreturn]] void abort(int code) override;

 protected:
  void do_allreduce_sum(Buf data, size_t n, void* stream) override;
  void do_shift_start(CBuf send, Buf recv, size_t bytes, void* stream) override;

 private:
  // A pinned slot from the pool (grown to bytes), index into slots_.
  size_t take_slot(size_t bytes);
  void to_host(void* host, const void* dev, size_t bytes);
  void to_device(void* dev, const void* host, size_t bytes);

  std::unique_ptr<Comm> owned_;
  Comm* inner_;
  Backend& be_;
  bool pin_;  // page-locked memory only for a GPU backend
  std::vector<PinnedBuffer> slots_;
  std::vector<size_t> free_;  // indices of slots not in use
  struct Shift {
    size_t send_slot, recv_slot;
    Buf recv;
    size_t bytes;
  };
  std::vector<Shift> pending_;  // started since the last shift_wait, in order
  int64_t bytes_staged_ = 0;
};

}  // namespace rt
