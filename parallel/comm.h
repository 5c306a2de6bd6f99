// Communication between ranks: the operations ringtrain needs, behind one
// interface shaped like NCCL's (typed collectives and a ring shift, each on an
// optional stream; no tags, no request handles). MpiComm implements it over an
// MPI communicator (CPU); an NCCL implementation slots in for GPUs (its unique
// id travels by broadcast()). A Comm is one group of ranks (the world, a
// data-parallel group or a context-parallel ring); parallel/process_groups.h
// builds the groups.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/tensor.h"

namespace rt {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In-place sum over the group of n elements of data.t: fp32, fp64 and int64
  // are summed in their own type; bf16 is summed in fp32 and rounded once to
  // bf16 (round to nearest even), so k ranks' values round once, not k-1 times.
  // `stream` orders the collective on a device stream (cudaStream_t for NCCL);
  // MPI ignores it and returns when the sum is complete.
  void allreduce_sum(Buf data, size_t n, void* stream = nullptr) {
    if (n) do_allreduce_sum(data, n, stream);
  }
  void allreduce_sum(double* data, size_t n) { allreduce_sum(Buf(data, DType::kF64), n); }
  void allreduce_sum(int64_t* data, size_t n) { allreduce_sum(Buf(data, DType::kI64), n); }

  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // out (size() * bytes) gets every rank's `bytes` bytes in rank order.
  virtual void allgather(const void* in, size_t bytes, void* out) = 0;

  // Ring shift (ring-flash-attn's send_recv + commit / wait): sends `bytes`
  // bytes of `send` to rank (r+1) % size and receives as many from rank
  // (r-1+size) % size into `recv`. Returns at once; shift_wait() completes
  // every shift started on this Comm since the last wait. Every rank of the
  // group starts the same shifts in the same order; several may be in flight
  // (they never cross-match). Until shift_wait returns, `send` must not be
  // written nor `recv` read. A second, independent channel (waited for on its
  // own) is a second Comm: split(0, rank()).
  void shift_start(CBuf send, Buf recv, size_t bytes, void* stream = nullptr) {
    do_shift_start(send, recv, bytes, stream);
  }
  virtual void shift_wait() = 0;

  // A new group of the ranks that pass the same color, ordered by key
  // (MPI_Comm_split). Collective over this group.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
  virtual void barrier() = 0;
  // Brings the whole job down (all ranks of every group) with this exit code.
  [[noreturn]] virtual void abort(int code) = 0;

 protected:
  virtual void do_allreduce_sum(Buf data, size_t n, void* stream) = 0;
  virtual void do_shift_start(CBuf send, Buf recv, size_t bytes, void* stream) = 0;
};

// Process-wide runtime: MPI is initialised only when the process was started
// by an MPI launcher (mpirun/srun); otherwise the world is one process and
// no MPI call is made.
struct ParallelRuntime {
  std::unique_ptr<Comm> world;
  int local_rank = 0;  // rank among the processes on this node
  int local_size = 1;  // processes on this node
  std::string host;
  bool mpi = false;
};

// Initialise once at start-up (reads the launcher's environment).
ParallelRuntime& init_parallel_runtime(int* argc, char*** argv);
// The runtime initialised above (a single-process one if never initialised).
ParallelRuntime& parallel_runtime();
void finalize_parallel_runtime();

// Sums data (n elements of data.t) over the group in buckets of `bucket`
// elements (bounded message size and temporary memory; the unit a future
// overlap with backward uses).
void allreduce_in_buckets(Comm& comm, Buf data, size_t n, size_t bucket = size_t(1) << 22);

// A single-process Comm (size 1): collectives are no-ops, a shift copies
// send to recv (host memory).
std::unique_ptr<Comm> make_self_comm();

}  // namespace rt
