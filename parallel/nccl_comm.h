// NCCL behind Comm (parallel/comm.h) for device buffers, one rank per GPU;
// built when CUDA and NCCL are found (RINGTRAIN_HAVE_NCCL). No NCCL or CUDA
// types in this header.
//
// One communicator for the world (llm.c's scheme): rank 0 makes the unique
// id, the host (MPI) world broadcasts it, every rank calls ncclCommInitRank
// on its GPU. Sub-groups (dp, cp, the ring's second channel) come from
// ncclCommSplit (parallel/process_groups.h builds them).
//
// Streams. Every buffer lives on the backend's GPU. A null `stream` means the
// backend's stream (Backend::stream(), the compute stream).
//  - allreduce_sum is queued on the caller's stream: its result is ordered
//    before the work queued after it, with no host wait. bf16 is widened to
//    fp32 in a temporary (Backend::cast), summed by NCCL in fp32 and rounded
//    once (comm.h's contract; NCCL's own bf16 sum rounds at every hop).
//  - shift_start records an event on the caller's stream; the communication
//    stream waits for it (cudaStreamWaitEvent) and runs the grouped
//    ncclSend/ncclRecv. shift_wait records an event on the communication
//    stream and makes every stream that started a shift wait for it: compute
//    after shift_wait sees the received block, and `send` may be rewritten
//    by work queued after it. The host never waits.
//  - broadcast, allgather and barrier keep comm.h's host-visible semantics:
//    they return when complete (a stream synchronisation).
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "parallel/comm.h"

namespace rt {

class NcclComm final : public Comm {
 public:
  // Collective over `host` (an MPI Comm of the same ranks): the world
  // communicator on CUDA device `device`, with be's buffers and stream.
  static std::unique_ptr<NcclComm> create_world(Comm& host, Backend& be, int device);
  ~NcclComm() override;

  Backend& backend() { return be_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void broadcast(void* data, size_t bytes, int root) override;
  void allgather(const void* in, size_t bytes, void* out) override;
  void shift_wait() override;
  std::unique_ptr<Comm> split(int color, int key) override;
  void barrier() override;
  [[noreturn]] void abort(int code) override;

  // ---- for gradient reduction (parallel/grad_reducer.cpp) -------------------
  // The range [lo, hi) of elements each rank owns in a flat array.
  using Ranges = std::vector<std::pair<size_t, size_t>>;
  // Queued on the communication stream after the work queued so far on
  // `stream` (null: the backend's): a sum of n fp32 in place...
  void allreduce_sum_async(float* data, size_t n, void* stream);
  // ...or, per rank r, the sum of [owned[r].first, owned[r].second) of data
  // onto rank r, in place (grouped ncclReduce; other ranks' parts of data
  // are left as they were). Empty ranges are skipped.
  void reduce_to_owners_async(float* data, const Ranges& owned, void* stream);
  // `stream` waits (on the device) for everything queued on the
  // communication stream so far.
  void join(void* stream);
  // Every rank's range of data to every rank, in place (grouped
  // ncclBroadcast), elements of elem_bytes (2 or 4); ordered on `stream`.
  void allgather_ranges(void* data, size_t elem_bytes, const Ranges& owned, void* stream);
  // Rank r's `mine` (owned[r] elements) into full + owned[r].first on root
  // (full is read only on root); ordered on `stream`.
  void gather_ranges(const float* mine, float* full, const Ranges& owned, int root,
                     void* stream);

 protected:
  void do_allreduce_sum(Buf data, size_t n, void* stream) override;
  void do_shift_start(CBuf send, Buf recv, size_t bytes, void* stream) override;

 private:
  struct Impl;
  NcclComm(std::unique_ptr<Impl> impl, Backend& be);
  void* resolve(void* stream) const;

  std::unique_ptr<Impl> impl_;
  Backend& be_;
  int rank_ = 0, size_ = 1;
};

}  // namespace rt
