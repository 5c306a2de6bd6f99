#include "parallel/comm.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "common/errors.h"

namespace rt {

namespace {

// ---- single process -----------------------------------------------------------

class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, size_t) override {}
  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(int64_t*, size_t) override {}
  void broadcast(void*, size_t, int) override {}
  void allgather(const void* in, size_t bytes, void* out) override {
    if (bytes) std::memcpy(out, in, bytes);
  }
  Request isend(const void*, size_t, int, int) override {
    RT_CHECK(false, "point-to-point send in a single-process group");
  }
  Request irecv(void*, size_t, int, int) override {
    RT_CHECK(false, "point-to-point receive in a single-process group");
  }
  void wait(Request&) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
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

class MpiComm final : public Comm {
 public:
  explicit MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  MPI_Comm handle() const { return comm_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(float* data, size_t n) override { reduce(data, n, MPI_FLOAT); }
  void allreduce_sum(double* data, size_t n) override { reduce(data, n, MPI_DOUBLE); }
  void allreduce_sum(int64_t* data, size_t n) override { reduce(data, n, MPI_INT64_T); }

  void broadcast(void* data, size_t bytes, int root) override {
    RT_MPI(MPI_Bcast(data, checked_count(bytes), MPI_BYTE, root, comm_));
  }
  void allgather(const void* in, size_t bytes, void* out) override {
    RT_MPI(MPI_Allgather(in, checked_count(bytes), MPI_BYTE, out, checked_count(bytes), MPI_BYTE,
                         comm_));
  }
  Request isend(const void* data, size_t bytes, int dst, int tag) override {
    MPI_Request r;
    RT_MPI(MPI_Isend(data, checked_count(bytes), MPI_BYTE, dst, tag, comm_, &r));
    return remember(r);
  }
  Request irecv(void* data, size_t bytes, int src, int tag) override {
    MPI_Request r;
    RT_MPI(MPI_Irecv(data, checked_count(bytes), MPI_BYTE, src, tag, comm_, &r));
    return remember(r);
  }
  void wait(Request& req) override {
    if (!req.valid()) return;
    auto it = pending_.find(req.id);
    RT_CHECK(it != pending_.end(), "wait on an unknown request");
    RT_MPI(MPI_Wait(&it->second, MPI_STATUS_IGNORE));
    pending_.erase(it);
    req.id = -1;
  }
  void barrier() override { RT_MPI(MPI_Barrier(comm_)); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  void reduce(void* data, size_t n, MPI_Datatype t) {
    // in chunks so that the count fits an int
    int elem = 0;
    MPI_Type_size(t, &elem);
    const size_t chunk = size_t(INT_MAX) / 2;
    char* p = static_cast<char*>(data);
    for (size_t off = 0; off < n; off += chunk) {
      int count = int(std::min(chunk, n - off));
      RT_MPI(MPI_Allreduce(MPI_IN_PLACE, p + off * elem, count, t, MPI_SUM, comm_));
    }
  }
  Request remember(MPI_Request r) {
    Request q{next_id_++};
    pending_.emplace(q.id, r);
    return q;
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  int64_t next_id_ = 0;
  std::unordered_map<int64_t, MPI_Request> pending_;
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

void allreduce_in_buckets(Comm& comm, float* data, size_t n, size_t bucket) {
  if (comm.size() == 1) return;
  for (size_t off = 0; off < n; off += bucket) comm.allreduce_sum(data + off, std::min(bucket, n - off));
}

std::unique_ptr<Comm> make_self_comm() { return std::make_unique<SelfComm>(); }

std::unique_ptr<Comm> split_comm(Comm& parent, int color, int key) {
  auto* mpi = dynamic_cast<MpiComm*>(&parent);
  if (!mpi) return make_self_comm();
  MPI_Comm out;
  RT_MPI(MPI_Comm_split(mpi->handle(), color, key, &out));
  return std::make_unique<MpiComm>(out, true);
}

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
