// GradReducer on 1-4 ranks (3 gives uneven shards): buckets, bucketed
// all-reduce and reduce-scatter started from the backward's readiness
// offsets, the shard all-gathers (flat fp32 and per-tensor bf16) and the
// gather to rank 0, against sums computed here. Values are small integers,
// so every sum is exact in fp32 whatever the summation order.
#include <gtest/gtest.h>

#include <cstring>

#include "model/arena.h"
#include "mpi_main.h"
#include "parallel/grad_reducer.h"

namespace rt {
namespace {

std::vector<TensorSpec> specs() {  // odd sizes: shards and buckets cut inside tensors
  return {{"a", {7}}, {"b", {10, 10}}, {"c", {33}}, {"d", {25, 40}}, {"e", {5}}, {"f", {3, 17}}};
}

float value(int rank, size_t i) { return float((int(i) * 7 + rank * 3) % 23 - 11); }

TEST(GradReducer, ShardsAndBucketsCoverTheArena) {
  for (size_t n : {1u, 5u, 1000u, 1001u})
    for (int w = 1; w <= 5; ++w) {
      size_t next = 0, smallest = n, largest = 0;
      for (int r = 0; r < w; ++r) {
        auto [lo, hi] = shard_range(n, w, r);
        EXPECT_EQ(lo, next);
        next = hi;
        smallest = std::min(smallest, hi - lo);
        largest = std::max(largest, hi - lo);
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(largest - smallest, 1u);
    }
  auto be = make_cpu_backend();
  Arena a(*be, "g", specs());
  for (size_t bucket_bytes : {4u, 400u, 2000u, 1u << 20}) {
    auto b = gradient_buckets(a.specs(), a.f32_numel(), bucket_bytes);
    ASSERT_FALSE(b.empty());
    EXPECT_EQ(b.front().second, a.f32_numel());
    EXPECT_EQ(b.back().first, 0u);
    for (size_t k = 0; k + 1 < b.size(); ++k) EXPECT_EQ(b[k].first, b[k + 1].second);
    for (auto [lo, hi] : b) {
      bool at_tensor = false;
      for (const TensorSpec& s : a.specs()) at_tensor |= s.offset_bytes / 4 == lo;
      EXPECT_TRUE(at_tensor) << "bucket starts inside a tensor at " << lo;
      EXPECT_LT(lo, hi);
    }
    if (bucket_bytes == 4u) {
      EXPECT_EQ(b.size(), a.specs().size());
    }
    if (bucket_bytes == (1u << 20)) {
      EXPECT_EQ(b.size(), 1u);
    }
  }
}

void fill(const Arena& g, int rank) {
  float* p = g.f32_base();
  for (size_t i = 0; i < g.f32_numel(); ++i) p[i] = value(rank, i);
}

float sum_over_ranks(int world, size_t i) {
  float s = 0;
  for (int r = 0; r < world; ++r) s += value(r, i);
  return s;
}

// the backward's order: last tensor first, then "everything from tensor k"
void backward_readiness(GradReducer& red, const Arena& g) {
  red.begin();
  for (size_t k = g.specs().size(); k-- > 0;) red.ready_from(g.specs()[k].offset_bytes);
  red.finish();
}

TEST(GradReducer, AllReduceDuringBackward) {
  Comm& world = *parallel_runtime().world;
  auto be = make_cpu_backend();
  Arena g(*be, "g", specs());
  for (size_t bucket_bytes : {4u, 600u, 1u << 20}) {
    GradReducer red(world, g, bucket_bytes, false);
    for (int step = 0; step < 2; ++step) {
      fill(g, world.rank());
      backward_readiness(red, g);
      for (size_t i = 0; i < g.f32_numel(); ++i)
        ASSERT_EQ(g.f32_base()[i], sum_over_ranks(world.size(), i)) << i;
    }
  }
}

TEST(GradReducer, ReduceScatterOntoShardsAndGatherBack) {
  Comm& world = *parallel_runtime().world;
  const int W = world.size(), me = world.rank();
  auto be = make_cpu_backend();
  Arena g(*be, "g", specs());
  for (size_t bucket_bytes : {4u, 600u, 1u << 20}) {
    GradReducer red(world, g, bucket_bytes, true);
    const size_t n = g.f32_numel();
    auto [lo, hi] = shard_range(n, W, me);
    ASSERT_EQ(red.shard_lo(), lo);
    ASSERT_EQ(red.shard_hi(), hi);
    fill(g, me);
    backward_readiness(red, g);
    for (size_t i = lo; i < hi; ++i) ASSERT_EQ(g.f32_base()[i], sum_over_ranks(W, i)) << i;

    // every rank writes its shard, the all-gather gives every rank all of them
    std::vector<float> full(n, -1.f);
    for (size_t i = lo; i < hi; ++i) full[i] = float(me * 1000 + int(i % 100));
    red.allgather_shards(full.data());
    for (int r = 0; r < W; ++r) {
      auto [a, b] = shard_range(n, W, r);
      for (size_t i = a; i < b; ++i) ASSERT_EQ(full[i], float(r * 1000 + int(i % 100))) << i;
    }
    // gather to rank 0
    std::vector<float> shard(hi - lo), at0(me == 0 ? n : 0, -1.f);
    for (size_t i = lo; i < hi; ++i) shard[i - lo] = float(int(i) * 2 + 1);
    red.gather_to_root(shard.data(), me == 0 ? at0.data() : nullptr, 0);
    if (me == 0) {
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(at0[i], float(int(i) * 2 + 1)) << i;
    }
  }
}

TEST(GradReducer, AllGatherOfBf16TensorsByShard) {
  Comm& world = *parallel_runtime().world;
  const int W = world.size(), me = world.rank();
  auto be = make_cpu_backend();
  Arena g(*be, "g", specs());
  Arena w(*be, "w", with_dtype(specs(), DType::kBF16));  // other offsets than g
  GradReducer red(world, g, 600, true);
  auto [lo, hi] = shard_range(g.f32_numel(), W, me);
  auto owner_value = [](int r, size_t j) { return float(r * 16 + int(j % 16)); };
  for (const TensorSpec& s : w.specs()) {
    uint16_t* p = static_cast<uint16_t*>(w.buf(s).p);
    const size_t base = g.spec(s.name).offset_bytes / 4;
    for (size_t j = 0; j < s.numel; ++j)
      p[j] = f32_to_bf16(base + j >= lo && base + j < hi ? owner_value(me, j) : -7.f);
  }
  red.allgather_shards(w);
  for (const TensorSpec& s : w.specs()) {
    const uint16_t* p = static_cast<const uint16_t*>(w.buf(s).p);
    const size_t base = g.spec(s.name).offset_bytes / 4;
    for (size_t j = 0; j < s.numel; ++j) {
      int owner = 0;
      for (int r = 0; r < W; ++r) {
        auto [a, b] = shard_range(g.f32_numel(), W, r);
        if (base + j >= a && base + j < b) owner = r;
      }
      ASSERT_EQ(bf16_to_f32(p[j]), owner_value(owner, j)) << s.name << "[" << j << "]";
    }
  }
}

}  // namespace
}  // namespace rt

int main(int argc, char** argv) { return run_mpi_tests(argc, argv); }
