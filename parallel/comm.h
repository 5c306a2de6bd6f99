// Communication between ranks: the operations ringtrain needs, behind one
// interface. MpiComm implements it over an MPI communicator (CPU); an NCCL
// implementation slots in later for GPUs. A Comm is one group of ranks
// (the world, a data-parallel group or a context-parallel ring).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rt {

class Comm {
 public:
  // A pending non-blocking operation; wait() completes it.
  struct Request {
    int64_t id = -1;
    bool valid() const { return id >= 0; }
  };

  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  virtual void allreduce_sum(float* data, size_t n) = 0;
  virtual void allreduce_sum(double* data, size_t n) = 0;
  virtual void allreduce_sum(int64_t* data, size_t n) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // out (size() * bytes) gets every rank's `bytes` bytes in rank order.
  virtual void allgather(const void* in, size_t bytes, void* out) = 0;
  virtual Request isend(const void* data, size_t bytes, int dst, int tag) = 0;
  virtual Request irecv(void* data, size_t bytes, int src, int tag) = 0;
  virtual void wait(Request& r) = 0;
  virtual void barrier() = 0;
  // Brings the whole job down (all ranks of every group) with this exit code.
  [[noreturn]] virtual void abort(int code) = 0;
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

// Sums data over the group in buckets of `bucket` floats (bounded message
// size and temporary memory; the unit a future overlap with backward uses).
void allreduce_in_buckets(Comm& comm, float* data, size_t n, size_t bucket = size_t(1) << 22);

// A single-process Comm (size 1): collectives are no-ops.
std::unique_ptr<Comm> make_self_comm();
// Split `parent` into groups by color, ordered by key (MPI_Comm_split).
std::unique_ptr<Comm> split_comm(Comm& parent, int color, int key);

}  // namespace rt
