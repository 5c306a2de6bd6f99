// Built only with CUDA and NCCL (RINGTRAIN_HAVE_NCCL; CMakeLists.txt adds
// this file then). Plain C++: cuda_runtime.h and nccl.h, no kernels (the
// bf16 <-> fp32 casts are the backend's).
#include "parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/errors.h"
#include "model/cuda/cuda_check.h"

namespace rt {

namespace {

[[noreturn]] void fail(const char* file, int line, const char* call, const std::string& what,
                       const char* hint) {
  throw Error(kExitOther, std::string(file) + ":" + std::to_string(line) + ": " + call +
                              " failed: " + what + " (" + hint + ")");
}

const char* nccl_hint(ncclResult_t r) {
  switch (r) {
    case ncclUnhandledCudaError:
      return "a CUDA call inside NCCL failed: check the GPU with nvidia-smi and "
             "CUDA_VISIBLE_DEVICES";
    case ncclSystemError:
      return "a system call or the network failed: rerun with NCCL_DEBUG=INFO; on one node "
             "check /dev/shm size and that every rank sees its GPU";
    case ncclInvalidUsage:
      return "NCCL refuses this use; two ranks on one GPU need the pinned-host path "
             "(RINGTRAIN_COMM_STAGING=1 or one rank per GPU)";
    case ncclRemoteError:
      return "another rank failed or left: see its log";
    default:
      return "rerun with NCCL_DEBUG=INFO for NCCL's own account";
  }
}

}  // namespace

#define RT_NCCL_CALL(comm, call)                                                     \
  do {                                                                               \
    ncclResult_t r_ = (call);                                                        \
    if (r_ != ncclSuccess) {                                                         \
      std::string w_ = ncclGetErrorString(r_);                                       \
      if (const char* l_ = ncclGetLastError(comm); l_ && *l_) w_ += std::string(": ") + l_; \
      fail(__FILE__, __LINE__, #call, w_, nccl_hint(r_));                            \
    }                                                                                \
  } while (0)

struct NcclComm::Impl {
  ncclComm_t comm = nullptr;
  int device = 0;
  cudaStream_t comm_stream = nullptr;
  cudaEvent_t ready = nullptr;  // recorded on a caller's stream before comm work
  cudaEvent_t done = nullptr;   // recorded on the comm stream for callers to wait on
  std::vector<cudaStream_t> waiting;  // streams that started shifts since the last wait
  void* scratch = nullptr;      // fp32 temporary for bf16 sums (cudaMalloc)
  size_t scratch_bytes = 0;
  void* one = nullptr;          // barrier's device int

  void make_streams() {
    RT_CUDA_CHECK(cudaSetDevice(device));
    RT_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    RT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    RT_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  }
  // comm_stream waits for what is queued on s so far
  void after(cudaStream_t s) {
    RT_CUDA_CHECK(cudaEventRecord(ready, s));
    RT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready, 0));
  }
  // s waits for what is queued on comm_stream so far
  void before(cudaStream_t s) {
    RT_CUDA_CHECK(cudaEventRecord(done, comm_stream));
    RT_CUDA_CHECK(cudaStreamWaitEvent(s, done, 0));
  }
};

NcclComm::NcclComm(std::unique_ptr<Impl> impl, Backend& be) : impl_(std::move(impl)), be_(be) {
  RT_NCCL_CALL(impl_->comm, ncclCommUserRank(impl_->comm, &rank_));
  RT_NCCL_CALL(impl_->comm, ncclCommCount(impl_->comm, &size_));
}

std::unique_ptr<NcclComm> NcclComm::create_world(Comm& host, Backend& be, int device) {
  RT_CHECK(be.device() == Device::kCuda, "NcclComm needs a CUDA backend");
  ncclUniqueId id;
  if (host.rank() == 0) RT_NCCL_CALL(nullptr, ncclGetUniqueId(&id));
  host.broadcast(&id, sizeof id, 0);
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->make_streams();
  RT_NCCL_CALL(nullptr, ncclCommInitRank(&impl->comm, host.size(), id, host.rank()));
  return std::unique_ptr<NcclComm>(new NcclComm(std::move(impl), be));
}

NcclComm::~NcclComm() {
  if (!impl_) return;
  // Destructors do not throw: errors here are reported and ignored.
  cudaSetDevice(impl_->device);
  if (impl_->comm_stream) cudaStreamSynchronize(impl_->comm_stream);
  if (impl_->comm) ncclCommDestroy(impl_->comm);
  // (temporaries from cudaMalloc: the backend may be gone by now)
  if (impl_->scratch) cudaFree(impl_->scratch);
  if (impl_->one) cudaFree(impl_->one);
  if (impl_->ready) cudaEventDestroy(impl_->ready);
  if (impl_->done) cudaEventDestroy(impl_->done);
  if (impl_->comm_stream) cudaStreamDestroy(impl_->comm_stream);
}

void* NcclComm::resolve(void* stream) const { return stream ? stream : be_.stream(); }

void NcclComm::do_allreduce_sum(Buf data, size_t n, void* stream) {
  auto s = static_cast<cudaStream_t>(resolve(stream));
  switch (data.t) {
    case DType::kF32:
      RT_NCCL_CALL(impl_->comm, ncclAllReduce(data.p, data.p, n, ncclFloat32, ncclSum,
                                              impl_->comm, s));
      return;
    case DType::kF64:
      RT_NCCL_CALL(impl_->comm, ncclAllReduce(data.p, data.p, n, ncclFloat64, ncclSum,
                                              impl_->comm, s));
      return;
    case DType::kI64:
      RT_NCCL_CALL(impl_->comm, ncclAllReduce(data.p, data.p, n, ncclInt64, ncclSum,
                                              impl_->comm, s));
      return;
    case DType::kBF16: {
      // comm.h: summed in fp32, rounded once. The casts are queued on the
      // backend's stream; the caller's stream, if another, is joined to it.
      auto bs = static_cast<cudaStream_t>(be_.stream());
      if (bs != s) {
        RT_CUDA_CHECK(cudaEventRecord(impl_->ready, s));
        RT_CUDA_CHECK(cudaStreamWaitEvent(bs, impl_->ready, 0));
      }
      if (impl_->scratch_bytes < n * sizeof(float)) {
        if (impl_->scratch) {
          RT_CUDA_CHECK(cudaStreamSynchronize(bs));
          RT_CUDA_CHECK(cudaFree(impl_->scratch));
          impl_->scratch = nullptr;
        }
        RT_CUDA_CHECK(cudaMalloc(&impl_->scratch, n * sizeof(float)));
        impl_->scratch_bytes = n * sizeof(float);
      }
      Buf wide(impl_->scratch, DType::kF32);
      be_.cast(wide, CBuf(data), n);
      RT_NCCL_CALL(impl_->comm, ncclAllReduce(wide.p, wide.p, n, ncclFloat32, ncclSum,
                                              impl_->comm, bs));
      be_.cast(data, CBuf(wide), n);
      if (bs != s) {
        RT_CUDA_CHECK(cudaEventRecord(impl_->ready, bs));
        RT_CUDA_CHECK(cudaStreamWaitEvent(s, impl_->ready, 0));
      }
      return;
    }
    default: break;
  }
  RT_CHECK(false, std::string("NcclComm::allreduce_sum: no sum for ") + dtype_name(data.t));
}

void NcclComm::broadcast(void* data, size_t bytes, int root) {
  auto s = static_cast<cudaStream_t>(be_.stream());
  RT_NCCL_CALL(impl_->comm, ncclBroadcast(data, data, bytes, ncclUint8, root, impl_->comm, s));
  RT_CUDA_CHECK(cudaStreamSynchronize(s));
}

void NcclComm::allgather(const void* in, size_t bytes, void* out) {
  auto s = static_cast<cudaStream_t>(be_.stream());
  RT_NCCL_CALL(impl_->comm, ncclAllGather(in, out, bytes, ncclUint8, impl_->comm, s));
  RT_CUDA_CHECK(cudaStreamSynchronize(s));
}

void NcclComm::do_shift_start(CBuf send, Buf recv, size_t bytes, void* stream) {
  auto s = static_cast<cudaStream_t>(resolve(stream));
  const int next = (rank_ + 1) % size_, prev = (rank_ - 1 + size_) % size_;
  impl_->after(s);  // the send block is written by work queued on s
  RT_NCCL_CALL(impl_->comm, ncclGroupStart());
  RT_NCCL_CALL(impl_->comm,
               ncclSend(send.p, bytes, ncclUint8, next, impl_->comm, impl_->comm_stream));
  RT_NCCL_CALL(impl_->comm,
               ncclRecv(recv.p, bytes, ncclUint8, prev, impl_->comm, impl_->comm_stream));
  RT_NCCL_CALL(impl_->comm, ncclGroupEnd());
  bool known = false;
  for (cudaStream_t w : impl_->waiting) known = known || w == s;
  if (!known) impl_->waiting.push_back(s);
}

void NcclComm::shift_wait() {
  for (cudaStream_t s : impl_->waiting) impl_->before(s);
  impl_->waiting.clear();
}

std::unique_ptr<Comm> NcclComm::split(int color, int key) {
  auto impl = std::make_unique<Impl>();
  impl->device = impl_->device;
  impl->make_streams();
  RT_NCCL_CALL(impl_->comm, ncclCommSplit(impl_->comm, color, key, &impl->comm, nullptr));
  return std::unique_ptr<NcclComm>(new NcclComm(std::move(impl), be_));
}

void NcclComm::barrier() {
  if (!impl_->one) RT_CUDA_CHECK(cudaMalloc(&impl_->one, sizeof(int)));
  RT_NCCL_CALL(impl_->comm, ncclAllReduce(impl_->one, impl_->one, 1, ncclInt32, ncclSum,
                                          impl_->comm, impl_->comm_stream));
  RT_CUDA_CHECK(cudaStreamSynchronize(impl_->comm_stream));
}

void NcclComm::abort(int code) {
  ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
  parallel_runtime().world->abort(code);  // the MPI world brings every rank down
  std::_Exit(code);
}

// ---- gradient reduction ---------------------------------------------------------

void NcclComm::allreduce_sum_async(float* data, size_t n, void* stream) {
  if (!n) return;
  impl_->after(static_cast<cudaStream_t>(resolve(stream)));
  RT_NCCL_CALL(impl_->comm, ncclAllReduce(data, data, n, ncclFloat32, ncclSum, impl_->comm,
                                          impl_->comm_stream));
}

void NcclComm::reduce_to_owners_async(float* data, const Ranges& owned, void* stream) {
  impl_->after(static_cast<cudaStream_t>(resolve(stream)));
  RT_NCCL_CALL(impl_->comm, ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    auto [lo, hi] = owned[size_t(r)];
    if (hi > lo)
      RT_NCCL_CALL(impl_->comm, ncclReduce(data + lo, data + lo, hi - lo, ncclFloat32, ncclSum,
                                           r, impl_->comm, impl_->comm_stream));
  }
  RT_NCCL_CALL(impl_->comm, ncclGroupEnd());
}

void NcclComm::join(void* stream) { impl_->before(static_cast<cudaStream_t>(resolve(stream))); }

void NcclComm::allgather_ranges(void* data, size_t elem_bytes, const Ranges& owned,
                                void* stream) {
  RT_CHECK(elem_bytes == 2 || elem_bytes == 4, "allgather_ranges: 2- or 4-byte elements");
  auto s = static_cast<cudaStream_t>(resolve(stream));
  const ncclDataType_t t = elem_bytes == 2 ? ncclBfloat16 : ncclFloat32;  // moved, not summed
  char* p = static_cast<char*>(data);
  RT_NCCL_CALL(impl_->comm, ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    auto [lo, hi] = owned[size_t(r)];
    if (hi > lo)
      RT_NCCL_CALL(impl_->comm, ncclBroadcast(p + lo * elem_bytes, p + lo * elem_bytes, hi - lo,
                                              t, r, impl_->comm, s));
  }
  RT_NCCL_CALL(impl_->comm, ncclGroupEnd());
}

void NcclComm::gather_ranges(const float* mine, float* full, const Ranges& owned, int root,
                             void* stream) {
  auto s = static_cast<cudaStream_t>(resolve(stream));
  RT_NCCL_CALL(impl_->comm, ncclGroupStart());
  if (rank_ == root) {
    for (int r = 0; r < size_; ++r) {
      auto [lo, hi] = owned[size_t(r)];
      if (hi <= lo) continue;
      if (r == root)
        RT_CUDA_CHECK(cudaMemcpyAsync(full + lo, mine, (hi - lo) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, s));
      else
        RT_NCCL_CALL(impl_->comm, ncclRecv(full + lo, hi - lo, ncclFloat32, r, impl_->comm, s));
    }
  } else {
    auto [lo, hi] = owned[size_t(rank_)];
    if (hi > lo)
      RT_NCCL_CALL(impl_->comm, ncclSend(mine, hi - lo, ncclFloat32, root, impl_->comm, s));
  }
  RT_NCCL_CALL(impl_->comm, ncclGroupEnd());
}

}  // namespace rt
