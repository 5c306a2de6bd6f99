// NcclComm on real GPUs (ctest label `cuda`; built with CUDA and NCCL), under
// mpirun with one rank per GPU: at world size 1 on any GPU machine, and
// through a two-rank communicator when the machine has two GPUs ("skipped:"
// otherwise). Against MpiComm on the same values (host copies):
//  - allreduce_sum fp32 and bf16 (bf16 summed in fp32, rounded once: equal
//    to MpiComm's bits at 1 and 2 ranks, where a sum has one order);
//  - broadcast, allgather; ring shifts, two in flight, then compute queued on
//    the backend's stream after shift_wait reads the received block (the
//    ordering is by events, not by a host wait);
//  - split groups; GradReducer's bucketed all-reduce, reduce onto shards,
//    all-gathers and gather to rank 0 on the device arena equal the MPI
//    reducer on the host arena.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "model/arena.h"
#include "model/cuda/cuda_backend.h"
#include "model/cuda/device_info.h"
#include "mpi_main.h"
#include "parallel/grad_reducer.h"
#include "parallel/nccl_comm.h"

namespace rt {
namespace {

Comm& world() { return *parallel_runtime().world; }

struct Gpu {
  std::unique_ptr<Backend> be;
  std::unique_ptr<NcclComm> nccl;
};

// A backend and the world communicator, or a skip reason.
Gpu* gpu(std::string* skip) {
  static Gpu& g = *new Gpu;  // never destroyed: no NCCL or CUDA calls at exit
  static std::string why;
  static bool tried = false;
  if (!tried) {
    tried = true;
    const int n = cuda::device_count();
    const ParallelRuntime& rt = parallel_runtime();
    if (n == 0)
      why = "skipped: no CUDA device";
    else if (rt.local_size > n)
      why = "skipped: " + std::to_string(rt.local_size) + " ranks and " + std::to_string(n) +
            " GPU(s) on this node: NCCL needs one rank per GPU";
    if (why.empty()) {
      g.be = make_cuda_backend(rt.local_rank);
      g.nccl = NcclComm::create_world(world(), *g.be, rt.local_rank);
    }
  }
  *skip = why;
  return why.empty() ? &g : nullptr;
}

#define NEED_GPU(g)                              \
  std::string skip_;                             \
  Gpu* g = gpu(&skip_);                          \
  if (!g) GTEST_SKIP() << skip_

std::vector<float> randoms(size_t n, int rank, uint64_t salt) {
  std::mt19937_64 r(uint64_t(rank) * 7919u + salt);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (float& v : x) v = d(r);
  return x;
}

template <class T>
struct Dev {  // n elements of T on the device
  Backend& be;
  size_t n;
  void* p;
  Dev(Backend& b, size_t count) : be(b), n(count), p(b.alloc_bytes(count * sizeof(T))) {}
  ~Dev() { be.free_bytes(p); }
  void put(const std::vector<T>& h) { be.copy_to_device(p, h.data(), n * sizeof(T)); }
  std::vector<T> get() {
    std::vector<T> h(n);
    be.copy_to_host(h.data(), p, n * sizeof(T));
    return h;
  }
};

TEST(NcclComm, RankAndSizeAreTheWorlds) {
  NEED_GPU(g);
  EXPECT_EQ(g->nccl->rank(), world().rank());
  EXPECT_EQ(g->nccl->size(), world().size());
}

TEST(NcclComm, AllreduceEqualsMpi) {
  NEED_GPU(g);
  const int r = world().rank();
  const size_t n = 4099;
  std::vector<float> x = randoms(n, r, 1), want = x;
  world().allreduce_sum(Buf(want.data(), DType::kF32), n);
  Dev<float> d(*g->be, n);
  d.put(x);
  g->nccl->allreduce_sum(Buf(d.p, DType::kF32), n);  // on the backend's stream
  std::vector<float> got = d.get();
  if (world().size() <= 2) {
    ASSERT_EQ(std::memcmp(got.data(), want.data(), n * 4), 0);
  } else {
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], want[i], 1e-5f * (1 + std::abs(want[i])));
  }
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(x[i] * 3.f);
  std::vector<uint16_t> hwant = h;
  world().allreduce_sum(Buf(hwant.data(), DType::kBF16), n);
  Dev<uint16_t> dh(*g->be, n);
  dh.put(h);
  g->nccl->allreduce_sum(Buf(dh.p, DType::kBF16), n);
  if (world().size() <= 2) {
    ASSERT_EQ(dh.get(), hwant) << "bf16: summed in fp32 and rounded once, as MpiComm";
  }
}

TEST(NcclComm, BroadcastAndAllgather) {
  NEED_GPU(g);
  const int p = world().size(), r = world().rank();
  std::vector<float> x = randoms(777, r, 2), want = x;
  world().broadcast(want.data(), want.size() * 4, p - 1);
  Dev<float> d(*g->be, x.size());
  d.put(x);
  g->nccl->broadcast(d.p, x.size() * 4, p - 1);
  ASSERT_EQ(d.get(), want);
  std::vector<float> mine = randoms(33, r, 3), all(33 * size_t(p));
  world().allgather(mine.data(), 33 * 4, all.data());
  Dev<float> dm(*g->be, 33), da(*g->be, 33 * size_t(p));
  dm.put(mine);
  g->nccl->allgather(dm.p, 33 * 4, da.p);
  ASSERT_EQ(da.get(), all);
}

TEST(NcclComm, ShiftsThenComputeOnTheStreamSeeTheBlocks) {
  NEED_GPU(g);
  Backend& be = *g->be;
  const int p = world().size(), r = world().rank(), prev = (r - 1 + p) % p;
  const size_t n = 1 << 16;
  std::vector<float> kv = randoms(n, r, 4), dkv = randoms(n / 2, r, 5);
  Dev<float> a(be, n), a_in(be, n), b(be, n / 2), b_in(be, n / 2), one(be, n);
  a.put(kv);
  b.put(dkv);
  one.put(std::vector<float>(n, 1.f));
  g->nccl->shift_start(CBuf(static_cast<const float*>(a.p)), Buf(static_cast<float*>(a_in.p)),
                       n * 4);
  g->nccl->shift_start(CBuf(static_cast<const float*>(b.p)), Buf(static_cast<float*>(b_in.p)),
                       n / 2 * 4);
  g->nccl->shift_wait();  // the compute stream waits on the comm stream's event
  be.add_inplace(Buf(static_cast<float*>(a_in.p)), CBuf(static_cast<const float*>(one.p)), n);
  std::vector<float> want = randoms(n, prev, 4), want_b = randoms(n / 2, prev, 5);
  for (float& v : want) v += 1.f;
  ASSERT_EQ(a_in.get(), want);
  ASSERT_EQ(b_in.get(), want_b);
}

TEST(NcclComm, SplitGroups) {
  NEED_GPU(g);
  const int p = world().size(), r = world().rank();
  std::unique_ptr<Comm> sub = g->nccl->split(r % 2, r);
  EXPECT_EQ(sub->size(), (p + 1 - r % 2) / 2);
  Dev<float> d(*g->be, 1);
  d.put({float(r)});
  sub->allreduce_sum(Buf(static_cast<float*>(d.p)), 1);
  float want = 0;
  for (int q = r % 2; q < p; q += 2) want += float(q);
  EXPECT_EQ(d.get()[0], want);
  sub->barrier();
}

TEST(NcclComm, GradReducerEqualsMpi) {
  NEED_GPU(g);
  Backend& be = *g->be;
  auto cpu = make_cpu_backend();
  const int me = world().rank();
  const std::vector<TensorSpec> specs = {{"a", {7}},      {"b", {10, 10}}, {"c", {33}},
                                         {"d", {25, 40}}, {"e", {5}},      {"f", {3, 17}}};
  for (bool sharded : {false, true}) {
    Arena host(*cpu, "h", specs), dev(be, "d", specs);
    GradReducer plain(world(), host, 600, sharded), gpu_red(*g->nccl, dev, 600, sharded);
    const size_t n = host.f32_numel();
    std::vector<float> x = randoms(n, me, 6);
    std::memcpy(host.f32_base(), x.data(), n * 4);
    be.copy_to_device(dev.f32_base(), x.data(), n * 4);
    for (GradReducer* red : {&plain, &gpu_red}) {
      const Arena& a = red == &plain ? host : dev;
      red->begin();
      for (size_t k = specs.size(); k-- > 0;) red->ready_from(a.specs()[k].offset_bytes);
      red->finish();
    }
    std::vector<float> got(n);
    be.copy_to_host(got.data(), dev.f32_base(), n * 4);
    const size_t lo = plain.shard_lo(), hi = plain.shard_hi();
    for (size_t i = lo; i < hi; ++i)
      ASSERT_NEAR(got[i], host.f32_base()[i], world().size() <= 2 ? 0.f : 1e-5f) << i;
    if (!sharded) continue;
    std::vector<float> full = randoms(n, me, 7), want = full;
    plain.allgather_shards(want.data());
    Dev<float> df(be, n);
    df.put(full);
    gpu_red.allgather_shards(static_cast<float*>(df.p));
    ASSERT_EQ(df.get(), want);
    std::vector<float> shard = randoms(hi - lo, me, 8), at0(n, -1.f);
    plain.gather_to_root(shard.data(), me == 0 ? at0.data() : nullptr, 0);
    Dev<float> ds(be, hi - lo), dfull(be, n);
    ds.put(shard);
    gpu_red.gather_to_root(static_cast<float*>(ds.p), static_cast<float*>(dfull.p), 0);
    if (me == 0) {
      ASSERT_EQ(dfull.get(), at0);
    }
  }
}

}  // namespace
}  // namespace rt

int main(int argc, char** argv) { return run_mpi_tests(argc, argv); }
