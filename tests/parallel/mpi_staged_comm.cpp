// StagedComm (device buffers through pinned host memory over MPI) against
// the MPI Comm it wraps, under mpirun -np 1..4, with the CPU backend (whose
// copies to and from "the device" are memcpy): every collective, the ring
// shift (two in flight, in a split group) and GradReducer's bucketed
// all-reduce, reduce-scatter, all-gathers and gather to rank 0 give the same
// bits as the plain MPI path, and the bytes really went through the staging
// buffers. Also attach_device_groups: kStaged wraps world, dp and cp.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "model/arena.h"
#include "mpi_main.h"
#include "parallel/grad_reducer.h"
#include "parallel/process_groups.h"
#include "parallel/staged_comm.h"

namespace rt {
namespace {

Comm& world() { return *parallel_runtime().world; }

// Random (not exactly summable) values: the staged sum must round like MPI's.
std::vector<float> randoms(size_t n, int rank, uint64_t salt) {
  std::mt19937_64 g(uint64_t(rank) * 7919u + salt);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (float& v : x) v = d(g);
  return x;
}

TEST(StagedComm, CollectivesEqualMpiBitForBit) {
  auto be = make_cpu_backend();
  StagedComm st(world(), *be);
  ASSERT_EQ(st.size(), world().size());
  ASSERT_EQ(st.rank(), world().rank());
  const int p = world().size(), r = world().rank();
  const size_t n = 1003;
  // fp32 sum
  std::vector<float> a = randoms(n, r, 1), b = a;
  world().allreduce_sum(Buf(a.data(), DType::kF32), n);
  st.allreduce_sum(Buf(b.data(), DType::kF32), n);
  ASSERT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0);
  // bf16 sum (summed in fp32, rounded once, by the inner Comm)
  std::vector<uint16_t> ha(n), hb;
  for (size_t i = 0; i < n; ++i) ha[i] = f32_to_bf16(randoms(n, r, 2)[i]);
  hb = ha;
  world().allreduce_sum(Buf(ha.data(), DType::kBF16), n);
  st.allreduce_sum(Buf(hb.data(), DType::kBF16), n);
  ASSERT_EQ(ha, hb);
  // broadcast from the last rank, allgather
  std::vector<float> c = randoms(n, r, 3), d = c;
  world().broadcast(c.data(), n * sizeof(float), p - 1);
  st.broadcast(d.data(), n * sizeof(float), p - 1);
  ASSERT_EQ(c, d);
  std::vector<float> mine = randoms(17, r, 4), ga(17 * size_t(p)), gb(17 * size_t(p), -1.f);
  world().allgather(mine.data(), 17 * sizeof(float), ga.data());
  st.allgather(mine.data(), 17 * sizeof(float), gb.data());
  ASSERT_EQ(ga, gb);
  EXPECT_GT(st.bytes_staged(), int64_t(n * sizeof(float)));
}

TEST(StagedComm, ShiftsInFlightAndInASplitGroup) {
  auto be = make_cpu_backend();
  StagedComm st(world(), *be);
  const int p = world().size(), r = world().rank(), prev = (r - 1 + p) % p;
  // ring attention's backward: bf16 K,V and fp32 dK,dV in flight together;
  // the sender's buffers are overwritten right after shift_start (allowed
  // only once shift_wait returned; the staged copy must not care either way)
  std::vector<uint16_t> kv(500), kv_in(500, 0);
  std::vector<float> dkv(1000), dkv_in(1000, 0.f);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = f32_to_bf16(float(r + 1) + float(i % 7));
  for (size_t i = 0; i < dkv.size(); ++i) dkv[i] = float(r) * 0.5f - float(i);
  st.shift_start(CBuf(kv.data(), DType::kBF16), Buf(kv_in.data(), DType::kBF16),
                 kv.size() * 2);
  st.shift_start(dkv.data(), dkv_in.data(), dkv.size() * sizeof(float));
  const int64_t before_wait = st.bytes_staged();
  EXPECT_EQ(before_wait, int64_t(kv.size() * 2 + dkv.size() * 4)) << "sends staged at start";
  st.shift_wait();
  EXPECT_EQ(st.bytes_staged(), 2 * before_wait) << "receives staged at wait";
  for (size_t i = 0; i < kv.size(); ++i)
    ASSERT_EQ(kv_in[i], f32_to_bf16(float(prev + 1) + float(i % 7))) << "kv " << i;
  for (size_t i = 0; i < dkv.size(); ++i)
    ASSERT_EQ(dkv_in[i], float(prev) * 0.5f - float(i)) << "dkv " << i;
  // a block makes a full turn, hop by hop, buffers reused (the slot pool)
  std::vector<float> cur(333), next(333, -1.f);
  for (size_t i = 0; i < cur.size(); ++i) cur[i] = float(r * 10000 + int(i));
  for (int hop = 1; hop <= p; ++hop) {
    st.shift_start(cur.data(), next.data(), cur.size() * sizeof(float));
    st.shift_wait();
    const int from = ((r - hop) % p + p) % p;
    for (size_t i = 0; i < cur.size(); ++i)
      ASSERT_EQ(next[i], float(from * 10000 + int(i))) << "hop " << hop;
    std::swap(cur, next);
  }
  // split: a staged group of the even or odd ranks
  std::unique_ptr<Comm> g = st.split(r % 2, r);
  ASSERT_NE(dynamic_cast<StagedComm*>(g.get()), nullptr);
  int64_t x = r;
  g->allreduce_sum(Buf(&x, DType::kI64), 1);
  int64_t want = 0;
  for (int q = r % 2; q < p; q += 2) want += q;
  EXPECT_EQ(x, want);
}

std::vector<TensorSpec> specs() {  // odd sizes: shards and buckets cut inside tensors
  return {{"a", {7}}, {"b", {10, 10}}, {"c", {33}}, {"d", {25, 40}}, {"e", {5}}, {"f", {3, 17}}};
}

void backward_readiness(GradReducer& red, const Arena& g) {
  red.begin();
  for (size_t k = g.specs().size(); k-- > 0;) red.ready_from(g.specs()[k].offset_bytes);
  red.finish();
}

TEST(StagedComm, GradReducerEqualsMpiBitForBit) {
  auto be = make_cpu_backend();
  StagedComm st(world(), *be);
  const int W = world().size(), me = world().rank();
  for (bool sharded : {false, true})
    for (size_t bucket_bytes : {4u, 600u, 1u << 20}) {
      Arena ga(*be, "ga", specs()), gb(*be, "gb", specs());
      GradReducer plain(world(), ga, bucket_bytes, sharded);
      GradReducer staged(st, gb, bucket_bytes, sharded);
      const size_t n = ga.f32_numel();
      for (int step = 0; step < 2; ++step) {
        std::vector<float> x = randoms(n, me, 10 + uint64_t(step));
        std::memcpy(ga.f32_base(), x.data(), n * 4);
        std::memcpy(gb.f32_base(), x.data(), n * 4);
        backward_readiness(plain, ga);
        backward_readiness(staged, gb);
        const size_t lo = plain.shard_lo(), hi = plain.shard_hi();
        ASSERT_EQ(std::memcmp(ga.f32_base() + lo, gb.f32_base() + lo, (hi - lo) * 4), 0)
            << "sharded " << sharded << " bucket " << bucket_bytes;
        if (W > 1) {  // the sums came back to the device copy
          EXPECT_NE(std::memcmp(gb.f32_base() + lo, x.data() + lo, (hi - lo) * 4), 0);
        }
      }
      if (!sharded) continue;
      // all-gather of the shards (flat fp32), gather to rank 0
      std::vector<float> fa = randoms(n, me, 20), fb = fa;
      plain.allgather_shards(fa.data());
      staged.allgather_shards(fb.data());
      ASSERT_EQ(fa, fb);
      std::vector<float> shard = randoms(plain.shard_hi() - plain.shard_lo(), me, 21);
      std::vector<float> ra(me == 0 ? n : 0, -1.f), rb(me == 0 ? n : 0, -2.f);
      plain.gather_to_root(shard.data(), me == 0 ? ra.data() : nullptr, 0);
      staged.gather_to_root(shard.data(), me == 0 ? rb.data() : nullptr, 0);
      ASSERT_EQ(ra, rb);
      // per-tensor bf16 all-gather (the compute weights)
      Arena wa(*be, "wa", with_dtype(specs(), DType::kBF16));
      Arena wb(*be, "wb", with_dtype(specs(), DType::kBF16));
      for (const TensorSpec& s : wa.specs()) {
        auto* pa = static_cast<uint16_t*>(wa.buf(s).p);
        auto* pb = static_cast<uint16_t*>(wb.buf(wb.spec(s.name)).p);
        std::vector<float> v = randoms(s.numel, me, 30 + s.numel);
        for (size_t j = 0; j < s.numel; ++j) pa[j] = pb[j] = f32_to_bf16(v[j]);
      }
      plain.allgather_shards(wa);
      staged.allgather_shards(wb);
      for (const TensorSpec& s : wa.specs())
        ASSERT_EQ(std::memcmp(wa.buf(s).p, wb.buf(wb.spec(s.name)).p, s.numel * 2), 0) << s.name;
    }
}

TEST(StagedComm, AttachDeviceGroupsWrapsEveryGroup) {
  auto be = make_cpu_backend();
  const int p = world().size();
  for (int cp = 1; cp <= p; ++cp) {
    if (p % cp) continue;
    ProcessGroups g = make_process_groups(world(), ParallelDims::build(p, 0, cp),
                                          RingLayout::kZigzag);
    EXPECT_EQ(&g.device_cp(), g.cp.get()) << "MPI path: the host groups serve";
    attach_device_groups(g, *be, CommPath::kStaged, 0);
    auto* dcp = dynamic_cast<StagedComm*>(&g.device_cp());
    auto* ddp = dynamic_cast<StagedComm*>(&g.device_dp());
    auto* dw = dynamic_cast<StagedComm*>(&g.device_world());
    ASSERT_TRUE(dcp && ddp && dw);
    EXPECT_EQ(&dcp->inner(), g.cp.get());
    EXPECT_EQ(&ddp->inner(), g.dp.get());
    EXPECT_EQ(&dw->inner(), g.world);
    EXPECT_EQ(g.device_cp().size(), cp);
    EXPECT_EQ(g.device_dp().size(), p / cp);
    attach_device_groups(g, *be, CommPath::kMpi, 0);
    EXPECT_EQ(&g.device_dp(), g.dp.get());
  }
}

}  // namespace
}  // namespace rt

int main(int argc, char** argv) { return run_mpi_tests(argc, argv); }
