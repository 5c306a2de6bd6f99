#include "parallel/comm.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/errors.h"

namespace rt {

namespace {

// ---- single process -----------------------------------------------------------

class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void broadcast(void*, size_t, int) override {}
  void allgather(const void* in, size_t bytes, void* out) override {
    if (bytes) std::memcpy(out, in, bytes);
  }
  void shift_wait() override {}
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SelfComm>(); }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

 protected:
  void do_allreduce_sum(Buf, size_t, void*) override {}
  void do_shift_start(CBuf send, Buf recv, size_t bytes, void*) override {
    if (bytes && send.p != recv.p) std::memcpy(recv.p, send.p, bytes);
  }
};

// ---- MPI -----------------------------------------------------------------------

#define RT_MPI(call)                                                                   \
  do {                                                                                 \
    int rc_ = (call);                                                                  \
    if (rc_ != MPI_SUCCESS) {                                                          \
      char msg_[MPI_MAX_ERROR_STRING];                                                 \
      int len_ = 0;                                                                    \
      MPI_Error_string(rc_, msg_, &len_);                                              \
      std::fprintf(stderr, "MPI error at %s:%d: %s: %s\n", __FILE__, __LINE__, #call, msg_); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                    \
    }                                                                                  \
  } while (0)

int checked_count(size_t bytes) {
  RT_CHECK(bytes <= size_t(INT_MAX), "message larger than 2 GiB: split it");
  return int(bytes);
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI64: return MPI_INT64_T;
    case DType::kI32: return MPI_INT32_T;
    default: break;
  }
  RT_CHECK(false, std::string("allreduce_sum: no MPI sum for ") + dtype_name(t));
  return MPI_BYTE;
}

class MpiComm final : public Comm {
 public:
  MPI_Comm handle() const { return comm_; }
  explicit MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (!pending_.empty())
      MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE);
    if (owned_) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void broadcast(void* data, size_t bytes, int root) override {
    RT_MPI(MPI_Bcast(data, checked_count(bytes), MPI_BYTE, root, comm_));
  }
  void allgather(const void* in, size_t bytes, void* out) override {
    RT_MPI(MPI_Allgather(in, checked_count(bytes), MPI_BYTE, out, checked_count(bytes), MPI_BYTE,
                         comm_));
  }
  void shift_wait() override {
    if (pending_.empty()) return;
    RT_MPI(MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE));
    pending_.clear();
  }
  std::unique_ptr<Comm> split(int color, int key) override {
    MPI_Comm out;
    RT_MPI(MPI_Comm_split(comm_, color, key, &out));
    return std::make_unique<MpiComm>(out, true);
  }
  void barrier() override { RT_MPI(MPI_Barrier(comm_)); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 protected:
  void do_allreduce_sum(Buf data, size_t n, void*) override {
    if (data.t == DType::kBF16) return reduce_bf16(data.as<uint16_t>(), n);
    reduce(data.p, n, mpi_type(data.t), dtype_size(data.t));
  }
  // The shift's two messages carry a tag from a per-Comm sequence number:
  // every rank starts the same shifts in the same order, so shift k on one
  // rank matches shift k on its neighbours even when several are in flight.
  void do_shift_start(CBuf send, Buf recv, size_t bytes, void*) override {
    const int next = (rank_ + 1) % size_, prev = (rank_ - 1 + size_) % size_;
    const int tag = int(shift_seq_++ % kShiftTags);
    MPI_Request r[2];
    RT_MPI(MPI_Irecv(recv.p, checked_count(bytes), MPI_BYTE, prev, tag, comm_, &r[0]));
    RT_MPI(MPI_Isend(send.p, checked_count(bytes), MPI_BYTE, next, tag, comm_, &r[1]));
    pending_.insert(pending_.end(), r, r + 2);
  }

 private:
  static constexpr int64_t kShiftTags = 1 << 15;  // MPI guarantees tags up to 32767

  void reduce(void* data, size_t n, MPI_Datatype t, size_t elem) {
    // in chunks so that the count fits an int
    const size_t chunk = size_t(INT_MAX) / 2;
    char* p = static_cast<char*>(data);
    for (size_t off = 0; off < n; off += chunk) {
      int count = int(std::min(chunk, n - off));
      RT_MPI(MPI_Allreduce(MPI_IN_PLACE, p + off * elem, count, t, MPI_SUM, comm_));
    }
  }
  // bf16: widened to fp32, summed, rounded once (MPI has no bf16 type; this is
  // also what summing "in fp32 then round" means on any transport).
  void reduce_bf16(uint16_t* data, size_t n) {
    const size_t chunk = std::min(n, size_t(1) << 20);
    std::vector<float> wide(chunk);
    for (size_t off = 0; off < n; off += chunk) {
      const size_t m = std::min(chunk, n - off);
      for (size_t i = 0; i < m; ++i) wide[i] = bf16_to_f32(data[off + i]);
      RT_MPI(MPI_Allreduce(MPI_IN_PLACE, wide.data(), int(m), MPI_FLOAT, MPI_SUM, comm_));
      for (size_t i = 0; i < m; ++i) data[off + i] = f32_to_bf16(wide[i]);
    }
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  int64_t shift_seq_ = 0;
  std::vector<MPI_Request> pending_;  // the shifts started since the last shift_wait
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                        "SLURM_PROCID"})
    if (std::getenv(v)) return true;
  return false;
}

ParallelRuntime g_runtime;
bool g_initialised = false;

}  // namespace

void allreduce_in_buckets(Comm& comm, Buf data, size_t n, size_t bucket) {
  if (comm.size() == 1) return;
  const size_t elem = dtype_size(data.t);
  for (size_t off = 0; off < n; off += bucket)
    comm.allreduce_sum(Buf(static_cast<char*>(data.p) + off * elem, data.t),
                       std::min(bucket, n - off));
}

std::unique_ptr<Comm> make_self_comm() { return std::make_unique<SelfComm>(); }

ParallelRuntime& init_parallel_runtime(int* argc, char*** argv) {
  if (g_initialised) return g_runtime;
  g_initialised = true;
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  g_runtime.host = host;
  if (!launched_by_mpi()) {
    g_runtime.world = make_self_comm();
    return g_runtime;
  }
  int provided = 0;
  RT_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  // Errors inside MPI calls come back to RT_MPI, which aborts the job.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_runtime.mpi = true;
  g_runtime.world = std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
  MPI_Comm local;
  RT_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  MPI_Comm_rank(local, &g_runtime.local_rank);
  MPI_Comm_size(local, &g_runtime.local_size);
  MPI_Comm_free(&local);
  return g_runtime;
}

ParallelRuntime& parallel_runtime() {
  if (!g_initialised) {
    g_initialised = true;
    g_runtime.world = make_self_comm();
  }
  return g_runtime;
}

void finalize_parallel_runtime() {
  if (g_runtime.mpi) {
    g_runtime.world.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
    g_runtime.mpi = false;
  }
}

}  // namespace rt

#include "parallel/mpi_handle.h"

namespace rt {

MPI_Comm mpi_handle(const Comm& c) {
  const auto* mpi = dynamic_cast<const MpiComm*>(&c);
  return mpi ? mpi->handle() : MPI_COMM_NULL;
}

}  // namespace rt
