// Typed collectives and the ring shift over MPI (run under mpirun -np 1..4),
// against serial computations of what every rank contributed:
//  - allreduce_sum for fp32, fp64, int64 and bf16 (bf16: summed in fp32 and
//    rounded once, which per-step rounding would get wrong), in buckets too;
//  - shift_start/shift_wait: a block returns to its owner after size() hops,
//    two shifts of different sizes in flight at once do not cross;
//  - split: groups of the right size and membership;
//  - make_process_groups: dp and cp groups for every cp that divides the
//    world (SPEC §6: rank = dp_index * cp + cp_index) and each rank's rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mpi_main.h"
#include "parallel/comm.h"
#include "parallel/process_groups.h"
#include "parallel/ring_attention.h"

namespace rt {
namespace {

Comm& world() { return *parallel_runtime().world; }

// A value every rank can compute for (rank, i): small multiples of 1/8, so
// that any sum of up to 4 of them is exact in fp32 and the order of MPI's
// reduction cannot change the result.
double contribution(int rank, size_t i) {
  std::mt19937_64 g(uint64_t(rank) * 1000003u + i);
  return double(int64_t(g() % 511) - 255) / 8.0;
}

TEST(Allreduce, Fp32AgainstSerialSum) {
  const int p = world().size(), r = world().rank();
  const size_t n = 1000;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = float(contribution(r, i));
  world().allreduce_sum(x.data(), n);  // float* -> Buf (fp32)
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += float(contribution(q, i));
    ASSERT_EQ(x[i], want) << "element " << i;
  }
}

TEST(Allreduce, Fp64AgainstSerialSum) {
  const int p = world().size(), r = world().rank();
  const size_t n = 777;
  std::vector<double> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = contribution(r, i) * (1.0 + 1e-12 * double(i));
  world().allreduce_sum(Buf(x.data(), DType::kF64), n);
  for (size_t i = 0; i < n; ++i) {
    double want = 0;
    for (int q = 0; q < p; ++q) want += contribution(q, i) * (1.0 + 1e-12 * double(i));
    ASSERT_NEAR(x[i], want, 1e-12 * (1 + std::abs(want))) << "element " << i;
  }
}

TEST(Allreduce, Int64BeyondDoublePrecision) {
  const int p = world().size(), r = world().rank();
  const size_t n = 64;
  std::vector<int64_t> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (int64_t(1) << 60) / 8 + int64_t(r) * 1000 + int64_t(i);
  world().allreduce_sum(x.data(), n);  // int64_t* overload
  for (size_t i = 0; i < n; ++i) {
    int64_t want = 0;
    for (int q = 0; q < p; ++q) want += (int64_t(1) << 60) / 8 + int64_t(q) * 1000 + int64_t(i);
    ASSERT_EQ(x[i], want) << "element " << i;
  }
}

TEST(Allreduce, Bf16SumsInFp32AndRoundsOnce) {
  const int p = world().size(), r = world().rank();
  const size_t n = 1500;
  std::vector<uint16_t> x(n);
  // element 0: rank 0 gives 256, the others 1. bf16 spacing at 256 is 2, so
  // rounding after every addition would stay at 256; one rounding of the fp32
  // sum gives 256 + (p-1) rounded to nearest even: 256, 258, 260 for p=2,3,4.
  auto value = [](int q, size_t i) {
    return i == 0 ? (q == 0 ? 256.0f : 1.0f) : float(contribution(q, i));
  };
  for (size_t i = 0; i < n; ++i) x[i] = f32_to_bf16(value(r, i));
  world().allreduce_sum(Buf(x.data(), DType::kBF16), n);
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += bf16_to_f32(f32_to_bf16(value(q, i)));
    ASSERT_EQ(x[i], f32_to_bf16(want)) << "element " << i << ": got " << bf16_to_f32(x[i])
                                       << ", want " << round_bf16(want);
  }
  const float first[] = {256.f, 256.f, 258.f, 260.f};
  EXPECT_EQ(bf16_to_f32(x[0]), first[std::min(p, 4) - 1]);
}

TEST(Allreduce, InBucketsOfEveryType) {
  const int p = world().size(), r = world().rank();
  const size_t n = 1001;
  std::vector<float> f(n);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) {
    f[i] = float(contribution(r, i));
    h[i] = f32_to_bf16(f[i]);
  }
  allreduce_in_buckets(world(), f.data(), n, 64);
  allreduce_in_buckets(world(), Buf(h.data(), DType::kBF16), n, 100);
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += float(contribution(q, i));
    ASSERT_EQ(f[i], want) << "fp32 element " << i;
    ASSERT_EQ(h[i], f32_to_bf16(want)) << "bf16 element " << i;
  }
}

TEST(Shift, BlocksGoRoundTheRing) {
  const int p = world().size(), r = world().rank();
  const size_t n = 333;
  std::vector<float> cur(n), next(n, -1.f);
  for (size_t i = 0; i < n; ++i) cur[i] = float(r * 10000 + int(i));
  for (int hop = 1; hop <= p; ++hop) {
    world().shift_start(cur.data(), next.data(), n * sizeof(float));
    world().shift_wait();
    const int from = ((r - hop) % p + p) % p;  // the block's owner
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(next[i], float(from * 10000 + int(i))) << "hop " << hop << " element " << i;
    std::swap(cur, next);
  }
}

TEST(Shift, TwoInFlightOfDifferentSizesAndTypes) {
  // the pattern of ring attention's backward: a bf16 K,V block and an fp32
  // dK,dV block on their way at once, waited for together
  const int p = world().size(), r = world().rank();
  const int prev = (r - 1 + p) % p;
  std::vector<uint16_t> kv(500), kv_in(500, 0);
  std::vector<float> dkv(1000), dkv_in(1000, 0.f);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = f32_to_bf16(float(r + 1) + float(i % 7));
  for (size_t i = 0; i < dkv.size(); ++i) dkv[i] = float(r) * 0.5f - float(i);
  world().shift_start(CBuf(kv.data(), DType::kBF16), Buf(kv_in.data(), DType::kBF16),
                      kv.size() * dtype_size(DType::kBF16));
  world().shift_start(dkv.data(), dkv_in.data(), dkv.size() * sizeof(float));
  world().shift_wait();
  for (size_t i = 0; i < kv.size(); ++i)
    ASSERT_EQ(kv_in[i], f32_to_bf16(float(prev + 1) + float(i % 7))) << "kv " << i;
  for (size_t i = 0; i < dkv.size(); ++i)
    ASSERT_EQ(dkv_in[i], float(prev) * 0.5f - float(i)) << "dkv " << i;
}

TEST(Split, GroupsByColorOrderedByKey) {
  const int p = world().size(), r = world().rank();
  // two groups (even, odd ranks), ordered by descending world rank
  std::unique_ptr<Comm> g = world().split(r % 2, -r);
  const int members = (p + 1 - r % 2) / 2;
  ASSERT_EQ(g->size(), members);
  int64_t sum = r;
  g->allreduce_sum(&sum, 1);
  int64_t want = 0;
  for (int q = r % 2; q < p; q += 2) want += q;
  EXPECT_EQ(sum, want);
  // rank in the group: members with a larger world rank come first
  int larger = 0;
  for (int q = r % 2; q < p; q += 2) larger += q > r;
  EXPECT_EQ(g->rank(), larger);
  // a shift inside the group goes to the next member
  int64_t mine = r, got = -1;
  g->shift_start(CBuf(&mine, DType::kI64), Buf(&got, DType::kI64), sizeof mine);
  g->shift_wait();
  const int prev_member = g->size() == 1 ? r : (g->rank() == 0 ? r % 2 : r + 2);
  EXPECT_EQ(got, prev_member);
}

TEST(ProcessGroups, DataAndContextGroupsFromTheRankFormula) {
  const int p = world().size(), r = world().rank();
  for (int cp = 1; cp <= p; ++cp) {
    if (p % cp != 0) continue;
    for (RingLayout layout : {RingLayout::kZigzag, RingLayout::kContiguous}) {
      const ParallelDims dims = ParallelDims::build(p, 0, cp);
      ProcessGroups g = make_process_groups(world(), dims, layout);
      ASSERT_EQ(g.cp->size(), cp);
      ASSERT_EQ(g.dp->size(), p / cp);
      EXPECT_EQ(g.cp->rank(), r % cp) << "cp index";
      EXPECT_EQ(g.dp->rank(), r / cp) << "dp index";
      // members: a ring is the cp consecutive ranks of one dp index, a dp
      // group the ranks of one cp index
      int64_t ring_sum = r, dp_sum = r;
      g.cp->allreduce_sum(&ring_sum, 1);
      g.dp->allreduce_sum(&dp_sum, 1);
      int64_t want_ring = 0, want_dp = 0;
      for (int q = 0; q < p; ++q) {
        if (q / cp == r / cp) want_ring += q;
        if (q % cp == r % cp) want_dp += q;
      }
      EXPECT_EQ(ring_sum, want_ring);
      EXPECT_EQ(dp_sum, want_dp);
      const int64_t T = 8 * dims.seq_len_divisor(layout);
      const RowPositions rows = g.rows(T);
      const RowPositions want = cp == 1 ? RowPositions::whole(T)
                                        : ring_local_rows(layout, cp, r % cp, T);
      EXPECT_EQ(rows.global_len, T);
      EXPECT_EQ(rows.chunks, want.chunks);
      int64_t held = 0;
      for (auto [begin, len] : rows.chunks) held += len;
      EXPECT_EQ(held, T / cp);
    }
  }
}

}  // namespace
}  // namespace rt

int main(int argc, char** argv) { return run_mpi_tests(argc, argv); }
