#include "parallel/grad_reducer.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <tuple>

#include "common/errors.h"
#include "parallel/mpi_handle.h"
#include "parallel/staged_comm.h"
#ifdef RINGTRAIN_HAVE_NCCL
#include "parallel/nccl_comm.h"
#endif

namespace rt {

namespace {

using Clock = std::chrono::steady_clock;

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  RT_CHECK(false, std::string("MPI error in ") + what + ": " + msg);
}

int as_count(size_t n) {
  RT_CHECK(n <= size_t(INT_MAX), "gradient bucket of more than 2^31 elements: lower parallel.bucket_mb");
  return int(n);
}

}  // namespace

std::pair<size_t, size_t> shard_range(size_t n, int world, int r) {
  const size_t w = size_t(world), base = n / w, extra = n % w, i = size_t(r);
  const size_t lo = i * base + std::min(i, extra);
  return {lo, lo + base + (i < extra ? 1 : 0)};
}

std::vector<std::pair<size_t, size_t>> gradient_buckets(const std::vector<TensorSpec>& specs,
                                                        size_t numel, size_t bucket_bytes) {
  std::vector<std::pair<size_t, size_t>> out;
  const size_t cap = std::max<size_t>(1, bucket_bytes / sizeof(float));
  size_t hi = numel;
  for (size_t i = specs.size(); i-- > 0;) {
    const size_t lo = specs[i].offset_bytes / sizeof(float);
    // cut at this tensor's start once the bucket is full (the first tensor
    // always closes the last bucket)
    if (hi - lo >= cap || i == 0) {
      out.push_back({i == 0 ? 0 : lo, hi});
      hi = i == 0 ? 0 : lo;
    }
  }
  if (hi > 0) out.push_back({0, hi});
  return out;
}

struct GradReducer::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<MPI_Request> reqs;
  std::vector<std::vector<int>> recvcounts;  // per bucket (sharded)
};

GradReducer::GradReducer(Comm& comm, const Arena& grads, size_t bucket_bytes, bool sharded)
    : comm_(comm),
      data_(grads.f32_base()),
      n_(grads.f32_numel()),
      world_(comm.size()),
      rank_(comm.rank()),
      sharded_(sharded),
      impl_(new Impl) {
  if (auto* st = dynamic_cast<StagedComm*>(&comm)) {
    stage_ = device_be_ = &st->backend();
    impl_->comm = mpi_handle(st->inner());
    host_.reserve(n_ * sizeof(float), stage_->device() == Device::kCuda);
#ifdef RINGTRAIN_HAVE_NCCL
  } else if (auto* nc = dynamic_cast<NcclComm*>(&comm)) {
    nccl_ = nc;
    device_be_ = &nc->backend();
#endif
  } else {
    impl_->comm = mpi_handle(comm);
  }
  RT_CHECK(world_ == 1 || impl_->comm != MPI_COMM_NULL || nccl_,
           "GradReducer: a group of several ranks that is neither MPI, staged MPI nor NCCL");
  for (int r = 0; r < world_; ++r) owned_.push_back(shard_range(n_, world_, r));
  if (sharded_)
    std::tie(lo_, hi_) = owned_[size_t(rank_)];
  else
    hi_ = n_;
  buckets_ = gradient_buckets(grads.specs(), n_, bucket_bytes);
  specs_ = grads.specs();
  if (sharded_) {
    for (auto [a, b] : owned_) {
      counts_.push_back(as_count(b - a));
      displs_.push_back(as_count(a));
    }
    for (auto [blo, bhi] : buckets_) {  // each owner's part of the bucket (maybe empty)
      std::vector<std::pair<size_t, size_t>>& parts = bucket_parts_.emplace_back();
      std::vector<int>& c = impl_->recvcounts.emplace_back();
      for (auto [a, b] : owned_) {
        const size_t x = std::max(a, blo), y = std::max(x, std::min(b, bhi));
        parts.push_back({x, y});
        c.push_back(as_count(y - x));
      }
    }
  }
  impl_->reqs.assign(buckets_.size(), MPI_REQUEST_NULL);
  next_ = buckets_.size();  // nothing to wait for before the first begin()
}

GradReducer::~GradReducer() { delete impl_; }

// Device -> host mirror before MPI writes the mirror. copy_to_host waits for
// the backend's stream, so an earlier copy_to_device still reading the
// (pinned) mirror has finished; an empty copy waits all the same.
void GradReducer::stage_in(void* host, const void* dev, size_t bytes) {
  if (bytes)
    stage_->copy_to_host(host, dev, bytes);
  else
    stage_->synchronize();
}

void GradReducer::begin() { next_ = 0; }

void GradReducer::start(size_t b) {
  auto [blo, bhi] = buckets_[b];
  const size_t n = bhi - blo;
  const double frac = double(world_ - 1) / double(world_);
  if (world_ == 1) return;
#ifdef RINGTRAIN_HAVE_NCCL
  if (nccl_) {
    if (!sharded_) {
      nccl_->allreduce_sum_async(data_ + blo, n, nullptr);
      bytes_sent_ += int64_t(2.0 * frac * double(n * sizeof(float)));
      return;
    }
    nccl_->reduce_to_owners_async(data_, bucket_parts_[b], nullptr);
    bytes_sent_ += int64_t(frac * double(n * sizeof(float)));
    return;
  }
#endif
  float* d = mpi_data();
  if (stage_) stage_in(d + blo, data_ + blo, n * sizeof(float));
  if (!sharded_) {
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, d + blo, as_count(n), MPI_FLOAT, MPI_SUM,
                             impl_->comm, &impl_->reqs[b]),
              "MPI_Iallreduce");
    bytes_sent_ += int64_t(2.0 * frac * double(n * sizeof(float)));
    return;
  }
  // in place: this rank's part of the bucket arrives at the bucket's start;
  // finish() moves it to its place in the shard
  check_mpi(MPI_Ireduce_scatter(MPI_IN_PLACE, d + blo, impl_->recvcounts[b].data(),
                                MPI_FLOAT, MPI_SUM, impl_->comm, &impl_->reqs[b]),
            "MPI_Ireduce_scatter");
  bytes_sent_ += int64_t(frac * double(n * sizeof(float)));
}

void GradReducer::progress() {
  if (impl_->comm == MPI_COMM_NULL || next_ == 0) return;
  int flag = 0;
  check_mpi(MPI_Testall(int(next_), impl_->reqs.data(), &flag, MPI_STATUSES_IGNORE),
            "MPI_Testall");
}

void GradReducer::ready_from(size_t from_byte) {
  const size_t from = from_byte / sizeof(float);
  while (next_ < buckets_.size() && buckets_[next_].first >= from) start(next_++);
  progress();
}

void GradReducer::finish() {
  const auto t0 = Clock::now();
  while (next_ < buckets_.size()) start(next_++);
#ifdef RINGTRAIN_HAVE_NCCL
  if (nccl_ && world_ > 1) nccl_->join(nullptr);  // the compute stream waits, not the host
#endif
  if (impl_->comm != MPI_COMM_NULL && world_ > 1) {
    check_mpi(MPI_Waitall(int(impl_->reqs.size()), impl_->reqs.data(), MPI_STATUSES_IGNORE),
              "MPI_Waitall");
    float* d = mpi_data();
    if (sharded_)  // each bucket's part of the shard, from the bucket's start to its place
      for (size_t b = 0; b < buckets_.size(); ++b) {
        const size_t c = size_t(impl_->recvcounts[b][size_t(rank_)]);
        const size_t blo = buckets_[b].first, mine = std::max(blo, lo_);
        if (c > 0 && mine != blo) std::memmove(d + mine, d + blo, c * sizeof(float));
      }
    if (stage_)  // the reduced part (the shard, or all) back to the device
      stage_->copy_to_device(data_ + lo_, d + lo_, (hi_ - lo_) * sizeof(float));
  }
  exposed_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

void GradReducer::allgather_shards(float* data) {
  if (world_ == 1) return;
  const auto t0 = Clock::now();
#ifdef RINGTRAIN_HAVE_NCCL
  if (nccl_) {
    nccl_->allgather_ranges(data, sizeof(float), owned_, nullptr);
  } else
#endif
  {
    float* d = stage_ ? host(0) : data;
    if (stage_) stage_in(d + lo_, data + lo_, (hi_ - lo_) * sizeof(float));
    check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d, counts_.data(),
                             displs_.data(), MPI_FLOAT, impl_->comm),
              "MPI_Allgatherv");
    if (stage_) stage_->copy_to_device(data, d, n_ * sizeof(float));
  }
  bytes_sent_ += int64_t(double(world_ - 1) / double(world_) * double(n_ * sizeof(float)));
  exposed_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

void GradReducer::allgather_shards(const Arena& a) {
  if (world_ == 1) return;
  const auto t0 = Clock::now();
  std::vector<int> counts(static_cast<size_t>(world_)), displs(static_cast<size_t>(world_));
  size_t bytes = 0;
  for (const TensorSpec& g : specs_) {
    const TensorSpec& s = a.spec(g.name);
    const size_t base = g.offset_bytes / sizeof(float);
    for (int r = 0; r < world_; ++r) {
      auto [lo, hi] = shard_range(n_, world_, r);
      const size_t x = std::max(lo, base), y = std::min(hi, base + g.numel);
      counts[size_t(r)] = y > x ? as_count(y - x) : 0;
      displs[size_t(r)] = y > x ? as_count(x - base) : 0;
    }
    const size_t es = dtype_size(s.dtype);
    RT_CHECK(es == 2 || es == 4, "all-gather of a tensor of element size " + std::to_string(es));
    char* p = static_cast<char*>(a.buf(s).p);
#ifdef RINGTRAIN_HAVE_NCCL
    if (nccl_) {
      NcclComm::Ranges parts;
      for (int r = 0; r < world_; ++r)
        parts.push_back({size_t(displs[size_t(r)]),
                         size_t(displs[size_t(r)]) + size_t(counts[size_t(r)])});
      nccl_->allgather_ranges(p, es, parts, nullptr);
    } else
#endif
    {
      // staged: the tensor through the host mirror (n_ floats hold any tensor)
      char* d = stage_ ? host_.as<char>() : p;
      const size_t mine_lo = size_t(displs[size_t(rank_)]) * es;
      if (stage_) stage_in(d + mine_lo, p + mine_lo, size_t(counts[size_t(rank_)]) * es);
      check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d, counts.data(),
                               displs.data(), es == 2 ? MPI_UINT16_T : MPI_FLOAT, impl_->comm),
                "MPI_Allgatherv");
      if (stage_) stage_->copy_to_device(p, d, s.numel * es);
    }
    bytes += s.numel * es;
  }
  bytes_sent_ += int64_t(double(world_ - 1) / double(world_) * double(bytes));
  exposed_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

void GradReducer::gather_to_root(const float* shard, float* full, int root) {
  if (world_ == 1) {
    if (full && full != shard) {
      if (device_be_)
        device_be_->copy(Buf(full), CBuf(shard), hi_ - lo_);
      else
        std::memcpy(full, shard, (hi_ - lo_) * sizeof(float));
    }
    return;
  }
#ifdef RINGTRAIN_HAVE_NCCL
  if (nccl_) return nccl_->gather_ranges(shard, full, owned_, root, nullptr);
#endif
  if (!stage_) {
    check_mpi(MPI_Gatherv(shard, as_count(hi_ - lo_), MPI_FLOAT, full, counts_.data(),
                          displs_.data(), MPI_FLOAT, root, impl_->comm),
              "MPI_Gatherv");
    return;
  }
  // staged: the shard to its place in the host mirror, gathered there on root
  stage_in(host(lo_), shard, (hi_ - lo_) * sizeof(float));
  if (rank_ == root)
    check_mpi(MPI_Gatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, host(0), counts_.data(),
                          displs_.data(), MPI_FLOAT, root, impl_->comm),
              "MPI_Gatherv");
  else
    check_mpi(MPI_Gatherv(host(lo_), as_count(hi_ - lo_), MPI_FLOAT, nullptr, nullptr, nullptr,
                          MPI_FLOAT, root, impl_->comm),
              "MPI_Gatherv");
  if (rank_ == root) stage_->copy_to_device(full, host(0), n_ * sizeof(float));
}

}  // namespace rt
