// Gradient reduction in buckets, overlapped with the backward (the scheme of
// PyTorch DDP and Megatron-LM), on the CPU with MPI non-blocking collectives.
//
// The fp32 gradient arena is one flat array. It is cut, at tensor boundaries
// and from its end, into buckets of about bucket_bytes (a larger tensor is a
// bucket of its own). The backward produces gradients from the end of the
// arena towards its start (head, last layer, ..., first layer, embeddings),
// so the model reports "every gradient at or after this offset is final"
// (LlamaModel::set_grad_ready_hook) and every bucket wholly past that offset
// starts its reduction at once: MPI_Iallreduce without a sharded optimizer,
// MPI_Ireduce_scatter onto the owners' shards with one. finish() starts what
// is left and waits for everything; the time spent there is the reduction's
// exposed time (what compute did not hide).
//
// Shards (ZeRO-1): rank r owns the contiguous range shard_range(n, world, r)
// of the flat arena, near-equal in size. A bucket's reduce-scatter (in
// place, no staging memory) gives each rank the part of the bucket inside
// its shard (zero elements for most ranks), so after finish() a rank holds
// the fully reduced gradient of its shard, in place in the arena; the rest
// of its arena is stale.
//
// Device buffers (a GPU backend; parallel/comm_path.h). Given a StagedComm,
// the same MPI collectives run on a pinned host mirror of the arena: a
// bucket is copied to the host when it starts and the result back in
// finish() (bit for bit the host path's numbers). Given an NcclComm, each
// bucket is queued on NCCL's communication stream after the work already on
// the compute stream (ncclAllReduce; with shards, grouped ncclReduce onto
// each owner's part), and finish() makes the compute stream wait for it:
// the host never waits, so there the exposed time is that of queuing.
//
// Bytes sent are counted as the ring algorithm sends them (what NCCL and
// large-message MPI collectives do): all-reduce 2(W-1)/W, reduce-scatter and
// all-gather (W-1)/W of the bytes reduced or gathered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "model/arena.h"
#include "parallel/comm.h"
#include "parallel/pinned_memory.h"

namespace rt {

class Backend;
class NcclComm;

// [lo, hi) of rank r when n elements are split into `world` near-equal
// contiguous pieces (the first n % world pieces have one more).
std::pair<size_t, size_t> shard_range(size_t n, int world, int r);

// The buckets of an arena, as [lo, hi) element ranges from the end of the
// arena towards its start (the order in which the backward completes them).
std::vector<std::pair<size_t, size_t>> gradient_buckets(const std::vector<TensorSpec>& specs,
                                                        size_t numel, size_t bucket_bytes);

class GradReducer {
 public:
  // grads: the fp32 gradient arena (outlives the reducer). comm: the group
  // gradients are summed over (the world: dp x cp; a device group for device
  // buffers). sharded: reduce-scatter onto shards instead of all-reduce.
  GradReducer(Comm& comm, const Arena& grads, size_t bucket_bytes, bool sharded);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // A new backward: no bucket started.
  void begin();
  // Every gradient at byte offset >= from_byte is final: start the buckets
  // it completes (and let MPI progress the ones in flight).
  void ready_from(size_t from_byte);
  // Starts the remaining buckets and waits for all of them.
  void finish();

  // After the optimizer updated this rank's shard of `data` (a flat fp32
  // array laid out like the gradients): every rank gets every shard
  // (in-place all-gather). Counted as reduction time and bytes.
  void allgather_shards(float* data);
  // The same for an arena with the gradients' tensor table in other dtypes
  // (bf16 compute weights): per tensor, every rank's part of its shard.
  void allgather_shards(const Arena& a);
  // Gathers every rank's shard of a flat array to root (full, n elements,
  // read on root only; may be null elsewhere). shard: this rank's part.
  void gather_to_root(const float* shard, float* full, int root);

  bool sharded() const { return sharded_; }
  size_t shard_lo() const { return lo_; }
  size_t shard_hi() const { return hi_; }
  size_t numel() const { return n_; }
  size_t num_buckets() const { return buckets_.size(); }
  // Totals since construction.
  double exposed_seconds() const { return exposed_s_; }
  int64_t bytes_sent() const { return bytes_sent_; }

 private:
  void start(size_t b);
  void progress();

  Comm& comm_;
  float* data_;
  size_t n_;
  int world_, rank_;
  bool sharded_;
  size_t lo_ = 0, hi_ = 0;
  std::vector<std::pair<size_t, size_t>> buckets_;
  std::vector<TensorSpec> specs_;  // the gradient arena's table
  size_t next_ = 0;  // buckets [0, next_) started this backward
  std::vector<int> counts_, displs_;  // per rank, for the all-gather
  struct Impl;
  Impl* impl_;  // the MPI requests (keeps mpi.h out of this header)
  // The backend of a device group (staged or NCCL), for device copies.
  Backend* device_be_ = nullptr;
  // Staging (StagedComm): the arena's host mirror, or null.
  Backend* stage_ = nullptr;
  PinnedBuffer host_;
  float* host(size_t i) const { return host_.as<float>() + i; }
  void stage_in(void* host, const void* dev, size_t bytes);
  // The array the MPI collectives work on: the host mirror or the arena.
  float* mpi_data() const { return stage_ ? host(0) : data_; }
  // NCCL (NcclComm): the communicator, or null.
  NcclComm* nccl_ = nullptr;
  std::vector<std::pair<size_t, size_t>> owned_;  // every rank's shard
  // sharded: per bucket, each rank's part of it ([x, x) when none)
  std::vector<std::vector<std::pair<size_t, size_t>>> bucket_parts_;
  double exposed_s_ = 0;
  int64_t bytes_sent_ = 0;
};

}  // namespace rt
