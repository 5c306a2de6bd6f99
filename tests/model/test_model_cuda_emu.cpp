// The CUDA-on-CPU fiber emulator (model/cuda/emu/cuda_emu.h): kernels written
// as CUDA source run on the CPU. Block reductions against a serial float64
// sum; a shared-memory transpose against the plain transpose, and the same
// kernels without their __syncthreads giving wrong answers (the alternating
// thread order catches missing barriers); divergent barriers and warp
// intrinsics reported; 1-/2-/3-D indexing against an enumeration of the
// grid; atomics; shuffle edge lanes against the CUDA programming guide's
// rules; a kernel that throws; launch cost (printed, not asserted). The
// tensor-core collectives (ldmatrix, mma.m16n8k16) against a plain matrix
// product written from the PTX ISA's fragment tables; a race between warps
// (no barrier) caught by running warps one after another.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "model/cuda/emu/cuda_emu.h"

namespace {

using rt::emu::launch;
using std::vector;

constexpr unsigned kFull = 0xffffffffu;

// Runs f, which must throw std::runtime_error; returns its message.
template <class F>
std::string launch_error(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected std::runtime_error";
  return {};
}

// ---- block reductions ----------------------------------------------------------

__device__ __forceinline__ float warp_sum_xor(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// x (n) -> out (gridDim.x): block b sums x[i] for i = b*blockDim.x + t +
// k*blockDim.x*gridDim.x (grid-stride), warp shuffles then one partial per
// warp in shared memory.
__global__ void __launch_bounds__(1024)
    block_sum_kernel(const float* __restrict__ x, int n, float* __restrict__ out) {
  __shared__ float partial[32];
  const int tid = int(threadIdx.x);
  float v = 0.f;
  for (int i = int(blockIdx.x * blockDim.x) + tid; i < n; i += int(blockDim.x * gridDim.x)) v += x[i];
  v = warp_sum_xor(v);
  const int lane = tid % warpSize, warp = tid / warpSize;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = int(blockDim.x) / warpSize;
  if (warp == 0) {
    v = lane < nwarps ? partial[lane] : 0.f;
    v = warp_sum_xor(v);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// The same in double with __shfl_down_sync (lane 0 ends with the sum) and a
// 2-D block: the linear thread id decides the warp.
__global__ void block_sum_down_kernel(const double* x, int n, double* out) {
  __shared__ double partial[32];
  const int tid = int(threadIdx.x + threadIdx.y * blockDim.x);
  const int nthreads = int(blockDim.x * blockDim.y);
  double v = 0;
  for (int i = tid; i < n; i += nthreads) v += x[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, unsigned(o));
  if (tid % 32 == 0) partial[tid / 32] = v;
  __syncthreads();
  if (tid < 32) {
    v = tid < nthreads / 32 ? partial[tid] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, unsigned(o));
    if (tid == 0) *out = v;
  }
}

TEST(CudaEmu, BlockReductionMatchesSerialDoubleSum) {
  const int n = 10007, grid = 3;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  for (int bs : {32, 64, 96, 128, 256, 512, 1024}) {
    vector<float> out(size_t(grid), -1e30f);
    launch(dim3(unsigned(grid)), dim3(unsigned(bs)), block_sum_kernel, x.data(), n, out.data());
    for (int b = 0; b < grid; ++b) {
      double ref = 0, mag = 0;
      for (int i = b * bs; i < n; i += bs * grid) {
        for (int t = 0; t < bs && i + t < n; ++t) {
          ref += double(x[size_t(i + t)]);
          mag += std::abs(double(x[size_t(i + t)]));
        }
      }
      EXPECT_NEAR(out[size_t(b)], ref, 1e-6 * mag + 1e-6) << "block size " << bs << " block " << b;
    }
  }
}

TEST(CudaEmu, DoubleShuffleDownReductionIn2DBlocks) {
  const int n = 5000;
  vector<double> x(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) x[size_t(i)] = 1.0 / (i + 1) + (i % 3) * 1e9;
  double ref = 0;
  for (double v : x) ref += v;
  for (dim3 block : {dim3(32, 1), dim3(8, 4), dim3(16, 8), dim3(32, 32), dim3(4, 8, 4)}) {
    double out = 0;
    launch(dim3(1), block, block_sum_down_kernel, x.data(), n, &out);
    EXPECT_NEAR(out, ref, 1e-12 * ref) << block.x << "x" << block.y << "x" << block.z;
  }
}

// ---- barriers ------------------------------------------------------------------

constexpr int kTile = 32, kTileRows = 8;

// in (rows, cols) -> out (cols, rows) through a shared 32x33 tile; blocks of
// 32x8 threads, each moving 4 rows. Needs the barrier between filling the
// tile and reading it transposed.
template <bool kSync>
__global__ void transpose_kernel(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[kTile][kTile + 1];
  int x = int(blockIdx.x) * kTile + int(threadIdx.x);
  int y = int(blockIdx.y) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  }
  if constexpr (kSync) __syncthreads();
  x = int(blockIdx.y) * kTile + int(threadIdx.x);
  y = int(blockIdx.x) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
  }
}

template <bool kSync>
int transpose_mismatches(int rows, int cols) {
  vector<float> in(size_t(rows * cols)), out(size_t(rows * cols), -1.f);
  std::iota(in.begin(), in.end(), 1.f);
  const dim3 grid(unsigned((cols + kTile - 1) / kTile), unsigned((rows + kTile - 1) / kTile));
  launch(grid, dim3(kTile, kTileRows), transpose_kernel<kSync>, in.data(), out.data(), rows, cols);
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) bad += out[size_t(c * rows + r)] != in[size_t(r * cols + c)];
  }
  return bad;
}

TEST(CudaEmu, SharedMemoryTransposeWithBarrierIsRight) {
  EXPECT_EQ(transpose_mismatches<true>(70, 45), 0);
  EXPECT_EQ(transpose_mismatches<true>(32, 32), 0);
  EXPECT_EQ(transpose_mismatches<true>(1, 97), 0);
}

TEST(CudaEmu, TransposeWithoutBarrierIsWrong) {
  const int bad = transpose_mismatches<false>(70, 45);
  EXPECT_GT(bad, 70 * 45 / 4) << "a missing __syncthreads went unnoticed";
  std::printf("transpose 70x45 without __syncthreads: %d of %d elements wrong\n", bad, 70 * 45);
}

// Each of `steps` rounds shifts the block's values up by one thread through
// shared memory: thread t reads what thread t - 1 wrote in the same round.
// Without the first barrier the read is right only when t - 1 happened to run
// first, i.e. in a forward-ordered phase.
template <bool kSync>
__global__ void shift_kernel(const int* in, int* out, int steps) {
  __shared__ int s[256];
  const int t = int(threadIdx.x);
  const int base = int(blockIdx.x * blockDim.x);
  int v = in[base + t];
  for (int k = 0; k < steps; ++k) {
    s[t] = v;
    if constexpr (kSync) __syncthreads();
    v = t > 0 ? s[t - 1] : 0;
    __syncthreads();
  }
  out[base + t] = v;
}

template <bool kSync>
int shift_mismatches(int blocks, int steps) {
  const int bs = 256;
  vector<int> in(size_t(blocks * bs)), out(in.size(), -1);
  std::iota(in.begin(), in.end(), 100);
  launch(dim3(unsigned(blocks)), dim3(unsigned(bs)), shift_kernel<kSync>, in.data(), out.data(), steps);
  int bad = 0;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < bs; ++t) {
      const int want = t >= steps ? in[size_t(b * bs + t - steps)] : 0;
      bad += out[size_t(b * bs + t)] != want;
    }
  }
  return bad;
}

TEST(CudaEmu, AlternatingOrderCatchesMissingBarriers) {
  for (int blocks : {1, 2}) {
    for (int steps : {1, 2, 3}) EXPECT_EQ(shift_mismatches<true>(blocks, steps), 0);
  }
  // One block, one round: its only phase runs forward, where this race reads
  // the right value; the second round runs in reverse and exposes it.
  EXPECT_EQ(shift_mismatches<false>(1, 1), 0) << "phase 0 of block 0 runs forward";
  EXPECT_GT(shift_mismatches<false>(1, 2), 200);
  // Block 1 starts in reverse order: one round suffices with two blocks.
  EXPECT_GT(shift_mismatches<false>(2, 1), 200);
}

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void loop_divergent_kernel(int* out) {
  for (unsigned i = 0; i < threadIdx.x % 3; ++i) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void ones_kernel(int* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
  __syncthreads();
}

// Warp 1 reads what warp 0 wrote in the same phase. Without the barrier the
// read is right only when warp 0 ran all the way first: forward phases run
// whole warps in order, reverse phases the other way round.
template <bool kSync>
__global__ void cross_warp_kernel(int* out, int rounds) {
  __shared__ int s[64];
  const int t = int(threadIdx.x);
  for (int r = 0; r < rounds; ++r) {
    s[t] = r * 1000 + t;
    if constexpr (kSync) __syncthreads();
    out[r * 64 + t] = s[(t + 32) % 64];
    __syncthreads();
  }
}

TEST(CudaEmu, WarpsRunOneAfterAnotherSoCrossWarpRacesShow) {
  auto bad = [](bool sync) {
    vector<int> out(2 * 64, -1);
    if (sync)
      launch(dim3(1), dim3(64), cross_warp_kernel<true>, out.data(), 2);
    else
      launch(dim3(1), dim3(64), cross_warp_kernel<false>, out.data(), 2);
    int n = 0;
    for (int r = 0; r < 2; ++r)
      for (int t = 0; t < 64; ++t) n += out[size_t(r * 64 + t)] != r * 1000 + (t + 32) % 64;
    return n;
  };
  EXPECT_EQ(bad(true), 0);
  // Round 0 runs warp 0 then warp 1: warp 0 reads warp 1's slots unwritten.
  // Round 1 runs warp 1 first: it reads warp 0's round-0 values.
  EXPECT_EQ(bad(false), 64) << "32 wrong reads per round expected";
}

// ---- tensor-core collectives (the PTX attention.cu uses) ----------------------

// One warp: A (16x16 bf16, row-major) and B^T (8x16 bf16, row n = column n of
// B) in dynamic shared memory, loaded with ldmatrix (A without .trans, B^T as
// two 8x8 blocks), C (16x8 fp32) += A B with mma, written from the C fragments.
// Also loads B^T's transpose with .trans (the B operand of a row-major 16x8
// tile) and checks both routes agree.
__global__ void mma_tile_kernel(const uint16_t* A, const uint16_t* Bt, const uint16_t* Brow,
                                float* C, float* C2) {
  uint8_t* smem = rt::emu::dynamic_shared();
  const int lane = int(threadIdx.x), g = lane / 4, t = lane % 4;
  uint16_t* sA = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sB = sA + 256;
  uint16_t* sBr = sB + 128;
  for (int i = lane; i < 256; i += 32) sA[i] = A[i];
  for (int i = lane; i < 128; i += 32) sB[i] = Bt[i], sBr[i] = Brow[i];
  __syncwarp();
  // A: matrices 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
  const int m = lane / 8, r = lane % 8;
  uint32_t a[4];
  rt::emu::ldmatrix_x4(__cvta_generic_to_shared(sA + (r + 8 * (m & 1)) * 16 + 8 * (m >> 1)), false,
                       a);
  // B^T rows n = 0..7: matrix 0 = k 0-7, matrix 1 = k 8-15 (2, 3 repeat them).
  uint32_t b[4];
  rt::emu::ldmatrix_x4(__cvta_generic_to_shared(sB + r * 16 + 8 * (m & 1)), false, b);
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  rt::emu::mma_m16n8k16_bf16(c, a, b[0], b[1]);
  // B row-major (16 x 8): matrix 0 = rows k 0-7, matrix 1 = rows 8-15, with .trans.
  uint32_t bt[4];
  rt::emu::ldmatrix_x4(__cvta_generic_to_shared(sBr + (r + 8 * (m & 1)) * 8), true, bt);
  float c2[4] = {0.f, 0.f, 0.f, 0.f};
  rt::emu::mma_m16n8k16_bf16(c2, a, bt[0], bt[1]);
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    C[row * 8 + col] = c[e];
    C2[row * 8 + col] = c2[e];
  }
}

TEST(CudaEmu, LdmatrixAndMmaFragmentsGiveTheMatrixProduct) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-8, 8);
  auto bf16 = [](float x) {  // x is a small integer: exact in bf16
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t(u >> 16);
  };
  vector<float> A(256), B(128);  // A 16x16, B 16x8 (k x n)
  for (float& x : A) x = float(small(rng));
  for (float& x : B) x = float(small(rng));
  vector<uint16_t> Ab(256), Bt(128), Br(128);
  for (int i = 0; i < 256; ++i) Ab[size_t(i)] = bf16(A[size_t(i)]);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      Bt[size_t(n * 16 + k)] = bf16(B[size_t(k * 8 + n)]);
      Br[size_t(k * 8 + n)] = bf16(B[size_t(k * 8 + n)]);
    }
  vector<float> C(128, -1.f), C2(128, -1.f);
  rt::emu::launch_dynamic(dim3(1), dim3(32), 1024, mma_tile_kernel, Ab.data(), Bt.data(),
                          Br.data(), C.data(), C2.data());
  int bad = 0, bad2 = 0;
  for (int i = 0; i < 16; ++i)
    for (int n = 0; n < 8; ++n) {
      double want = 0;
      for (int k = 0; k < 16; ++k) want += double(A[size_t(i * 16 + k)]) * B[size_t(k * 8 + n)];
      bad += C[size_t(i * 8 + n)] != float(want);
      bad2 += C2[size_t(i * 8 + n)] != float(want);
    }
  EXPECT_EQ(bad, 0) << "ldmatrix / mma fragments disagree with A B";
  EXPECT_EQ(bad2, 0) << "ldmatrix .trans disagrees with the non-transposed route";
}

__global__ void bad_shared_address_kernel(int* out) {
  __shared__ int not_dynamic[4];
  out[0] = int(__cvta_generic_to_shared(not_dynamic));
}

TEST(CudaEmu, SharedAddressesOutsideDynamicSharedMemoryAreReported) {
  int out = 0;
  const std::string msg = launch_error(
      [&] { rt::emu::launch_dynamic(dim3(1), dim3(1), 64, bad_shared_address_kernel, &out); });
  EXPECT_NE(msg.find("dynamic shared memory"), std::string::npos) << msg;
}

TEST(CudaEmu, DivergentSyncthreadsIsReported) {
  vector<int> out(64, 0);
  std::string msg = launch_error([&] { launch(dim3(1), dim3(64), early_return_kernel, out.data()); });
  EXPECT_NE(msg.find("divergent __syncthreads in block (0,0,0)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("48 of 64 threads wait"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 have returned"), std::string::npos) << msg;

  msg = launch_error([&] { launch(dim3(2), dim3(33), loop_divergent_kernel, out.data()); });
  EXPECT_NE(msg.find("divergent __syncthreads"), std::string::npos) << msg;

  // The emulator is usable after an abandoned grid.
  vector<int> ones(4 * 128, 0);
  launch(dim3(4), dim3(128), ones_kernel, ones.data());
  EXPECT_EQ(std::count(ones.begin(), ones.end(), 1), 4 * 128);
}

// s[t] = v; __syncwarp(); read the neighbour in the warp.
__global__ void syncwarp_kernel(const int* in, int* out) {
  __shared__ int s[1024];
  const unsigned t = threadIdx.x;
  s[t] = in[t];
  __syncwarp();
  out[t] = s[t ^ 1u];
}

TEST(CudaEmu, SyncwarpOrdersSharedMemoryInAWarp) {
  vector<int> in(1024), out(1024, -1);
  std::iota(in.begin(), in.end(), 0);
  launch(dim3(1), dim3(1024), syncwarp_kernel, in.data(), out.data());
  for (int t = 0; t < 1024; ++t) EXPECT_EQ(out[size_t(t)], t ^ 1);
}

// ---- indexing ------------------------------------------------------------------

struct Seen {
  dim3 block, thread, block_dim, grid_dim;
  int hits = 0;
};

__global__ void record_index_kernel(Seen* seen, int* block_order, int* counter) {
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned block_lin = blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
  const unsigned thread_lin = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
  Seen& s = seen[block_lin * nthreads + thread_lin];
  s.block = blockIdx;
  s.thread = threadIdx;
  s.block_dim = blockDim;
  s.grid_dim = gridDim;
  ++s.hits;
  if (thread_lin == 0) block_order[block_lin] = (*counter)++;
}

bool same(const dim3& a, const dim3& b) { return a.x == b.x && a.y == b.y && a.z == b.z; }

TEST(CudaEmu, GridsAndBlocksIndexIn1D2D3D) {
  const dim3 cases[][2] = {{dim3(5), dim3(7)},          {dim3(3, 2), dim3(4, 3)},
                           {dim3(3, 2, 2), dim3(4, 3, 2)}, {dim3(2, 1, 3), dim3(8, 8, 16)},
                           {dim3(1, 70), dim3(1, 1, 64)}};
  for (const auto& c : cases) {
    const dim3 g = c[0], b = c[1];
    const unsigned nb = g.x * g.y * g.z, nt = b.x * b.y * b.z;
    vector<Seen> seen(size_t(nb * nt));
    vector<int> order(nb, -1);
    int counter = 0;
    launch(g, b, record_index_kernel, seen.data(), order.data(), &counter);
    // Independent enumeration: blocks x fastest, then y, then z; threads likewise.
    size_t k = 0;
    for (unsigned bz = 0; bz < g.z; ++bz) {
      for (unsigned by = 0; by < g.y; ++by) {
        for (unsigned bx = 0; bx < g.x; ++bx) {
          EXPECT_EQ(order[k / nt], int(k / nt)) << "blocks run x fastest, then y, then z";
          for (unsigned tz = 0; tz < b.z; ++tz) {
            for (unsigned ty = 0; ty < b.y; ++ty) {
              for (unsigned tx = 0; tx < b.x; ++tx, ++k) {
                const Seen& s = seen[k];
                ASSERT_EQ(s.hits, 1) << "element " << k;
                ASSERT_TRUE(same(s.block, dim3(bx, by, bz))) << "element " << k;
                ASSERT_TRUE(same(s.thread, dim3(tx, ty, tz))) << "element " << k;
                ASSERT_TRUE(same(s.block_dim, b));
                ASSERT_TRUE(same(s.grid_dim, g));
              }
            }
          }
        }
      }
    }
    EXPECT_EQ(counter, int(nb));
  }
}

// Every thread gets its own copy of the arguments, as with <<<>>>.
__global__ void param_copy_kernel(int k, int* out) {
  k += int(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = k;
}

template <class T>
__global__ void scale_kernel(T* x, T s) {
  x[blockIdx.x * blockDim.x + threadIdx.x] *= s;
}

TEST(CudaEmu, KernelsAreFunctionsTemplatesOrLambdasWithPerThreadArguments) {
  vector<int> out(64, 0);
  launch(dim3(1), dim3(64), param_copy_kernel, 1000, out.data());
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[size_t(t)], 1000 + t);

  vector<double> x(96, 1.5);
  launch(dim3(3), dim3(32), scale_kernel<double>, x.data(), 2.0);
  for (double v : x) EXPECT_EQ(v, 3.0);

  int total = 0;
  launch(dim3(4), dim3(8, 2), [&total](int add) { total += add + int(threadIdx.y); }, 10);
  EXPECT_EQ(total, 4 * 16 * 10 + 4 * 8 * 1);
}

// ---- atomics -----------------------------------------------------------------

struct AtomicOut {
  int hist[7];
  float fsum;
  double dsum;
  unsigned long long big;
  int imax, imin;
};

__global__ void atomics_kernel(AtomicOut* o, unsigned* counter, unsigned* tickets, unsigned* sum_u) {
  const unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&o->hist[gid % 7], 1);
  tickets[gid] = atomicAdd(counter, 1u);
  __syncthreads();  // the next atomics run in the other thread order
  atomicAdd(&o->fsum, float(gid % 10));
  atomicAdd(&o->dsum, 0.1 * gid);
  atomicAdd(&o->big, (1ull << 33) + gid);
  atomicAdd(sum_u, gid);
  const int signed_val = (int(gid * 2654435761u % 2001u) - 1000);
  atomicMax(&o->imax, signed_val);
  atomicMin(&o->imin, signed_val);
}

TEST(CudaEmu, AtomicsAccumulateAndReturnTheOldValue) {
  const unsigned blocks = 5, bs = 96, n = blocks * bs;
  AtomicOut o{};
  o.imax = -1 << 30;
  o.imin = 1 << 30;
  unsigned counter = 0, sum_u = 0;
  vector<unsigned> tickets(n, ~0u);
  launch(dim3(blocks), dim3(bs), atomics_kernel, &o, &counter, tickets.data(), &sum_u);

  vector<int> hist(7, 0);
  double fsum = 0, dsum = 0;
  unsigned long long big = 0;
  unsigned usum = 0;
  int imax = -1 << 30, imin = 1 << 30;
  for (unsigned g = 0; g < n; ++g) {
    ++hist[g % 7];
    fsum += g % 10;
    dsum += 0.1 * g;
    big += (1ull << 33) + g;
    usum += g;
    const int v = int(g * 2654435761u % 2001u) - 1000;
    imax = std::max(imax, v);
    imin = std::min(imin, v);
  }
  for (int i = 0; i < 7; ++i) EXPECT_EQ(o.hist[i], hist[size_t(i)]);
  EXPECT_EQ(o.fsum, float(fsum));  // small integers: exact in float
  EXPECT_NEAR(o.dsum, dsum, 1e-9 * dsum);
  EXPECT_EQ(o.big, big);
  EXPECT_EQ(sum_u, usum);
  EXPECT_EQ(o.imax, imax);
  EXPECT_EQ(o.imin, imin);
  EXPECT_EQ(counter, n);
  std::sort(tickets.begin(), tickets.end());
  for (unsigned i = 0; i < n; ++i) ASSERT_EQ(tickets[i], i) << "atomicAdd returns each old value once";
}

// ---- shuffles ------------------------------------------------------------------

enum class Shfl { kIdx, kUp, kDown, kXor };

template <class T>
__global__ void shuffle_kernel(const T* in, T* out, Shfl op, int arg, int width) {
  const unsigned t = threadIdx.x;
  const T v = in[t];
  T r{};
  switch (op) {
    case Shfl::kIdx: r = __shfl_sync(kFull, v, arg, width); break;
    case Shfl::kUp: r = __shfl_up_sync(kFull, v, unsigned(arg), width); break;
    case Shfl::kDown: r = __shfl_down_sync(kFull, v, unsigned(arg), width); break;
    case Shfl::kXor: r = __shfl_xor_sync(kFull, v, arg, width); break;
  }
  out[t] = r;
}

// The CUDA programming guide's rules, lane by lane (warp w's lanes read
// within warp w).
int expected_source(Shfl op, int lane, int arg, int width) {
  const int seg = lane / width * width;
  switch (op) {
    case Shfl::kIdx: return seg + arg % width;
    case Shfl::kUp: return lane - seg >= arg ? lane - arg : lane;
    case Shfl::kDown: return lane - seg + arg < width ? lane + arg : lane;
    case Shfl::kXor: {
      const int j = lane ^ arg;
      return j < seg + width ? j : lane;  // earlier segments readable, later ones not
    }
  }
  return -1;
}

template <class T>
void check_shuffles(T (*value)(int)) {
  const int n = 64;  // two warps
  vector<T> in(n), out(n);
  for (int i = 0; i < n; ++i) in[size_t(i)] = value(i);
  struct Case {
    Shfl op;
    vector<int> args;
  };
  const Case cases[] = {{Shfl::kIdx, {0, 1, 7, 31, 33, 40}},
                        {Shfl::kUp, {0, 1, 2, 5, 16, 31}},
                        {Shfl::kDown, {0, 1, 2, 5, 16, 31}},
                        {Shfl::kXor, {0, 1, 2, 3, 8, 16, 17, 31}}};
  for (const Case& c : cases) {
    for (int arg : c.args) {
      for (int width : {32, 16, 8, 4, 2, 1}) {
        launch(dim3(1), dim3(n), shuffle_kernel<T>, in.data(), out.data(), c.op, arg, width);
        for (int t = 0; t < n; ++t) {
          const int src = (t / 32) * 32 + expected_source(c.op, t % 32, arg, width);
          ASSERT_EQ(out[size_t(t)], in[size_t(src)])
              << "op " << int(c.op) << " arg " << arg << " width " << width << " thread " << t;
        }
      }
    }
  }
}

TEST(CudaEmu, ShuffleEdgeLanesFollowCuda) {
  check_shuffles<int>([](int i) { return i * 10 + 1; });
  check_shuffles<unsigned>([](int i) { return 0x80000000u + unsigned(i); });
  check_shuffles<float>([](int i) { return float(i) + 0.25f; });
  check_shuffles<double>([](int i) { return double(i) + 0.125 + 1e12; });  // needs all 64 bits
  check_shuffles<long long>([](int i) { return (1ll << 40) * (i + 1) - i; });
  check_shuffles<unsigned long long>([](int i) { return ~0ull - unsigned(i); });
}

__global__ void shfl_mask_kernel(int* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffu, 1, 1); }
__global__ void shfl_width_kernel(int* out) { out[threadIdx.x] = __shfl_down_sync(kFull, 1, 1u, 3); }
__global__ void shfl_plain_kernel(int* out) { out[threadIdx.x] = __shfl_xor_sync(kFull, 1, 1); }
__global__ void shfl_early_return_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, 1, 1);
}
__global__ void shfl_mixed_kernel(int* out) {
  if (threadIdx.x % 32 < 16) {
    out[threadIdx.x] = __shfl_xor_sync(kFull, 1, 1);
  } else {
    out[threadIdx.x] = __shfl_down_sync(kFull, 1, 1u);
  }
}
__global__ void shfl_vs_barrier_kernel(int* out) {
  if (threadIdx.x == 40) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(kFull, 1, 1);
    __syncthreads();
  }
}

TEST(CudaEmu, MisusedWarpIntrinsicsAreReported) {
  vector<int> out(64);
  std::string msg = launch_error([&] { launch(dim3(1), dim3(64), shfl_mask_kernel, out.data()); });
  EXPECT_NE(msg.find("mask 0x0000ffff"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(64), shfl_width_kernel, out.data()); });
  EXPECT_NE(msg.find("width 3"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(48), shfl_plain_kernel, out.data()); });
  EXPECT_NE(msg.find("warp 1 of a block of 48 threads has only 16 lanes"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(64), shfl_early_return_kernel, out.data()); });
  EXPECT_NE(msg.find("not reached by all 32 lanes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("thread (5,0,0) has returned"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(64), shfl_mixed_kernel, out.data()); });
  EXPECT_NE(msg.find("different warp intrinsics"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(64), shfl_vs_barrier_kernel, out.data()); });
  EXPECT_NE(msg.find("thread (40,0,0) waits at __syncthreads"), std::string::npos) << msg;
}

// ---- errors ----------------------------------------------------------------------

__global__ void throwing_kernel(int* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
  __syncthreads();
  if (blockIdx.x == 2 && threadIdx.x == 5) throw std::invalid_argument("bad value 42");
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 2;
}

TEST(CudaEmu, AKernelThatThrowsStopsTheGrid) {
  vector<int> out(4 * 32, 0);
  try {
    launch(dim3(4), dim3(32), throwing_kernel, out.data());
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("block (2,0,0) thread (5,0,0)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad value 42"), std::string::npos) << msg;
    EXPECT_THROW(std::rethrow_if_nested(e), std::invalid_argument);
  }
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[size_t(t)], 2) << "blocks 0 and 1 finished";
  for (int t = 96; t < 128; ++t) EXPECT_EQ(out[size_t(t)], 0) << "block 3 never ran";
  launch(dim3(4), dim3(32), ones_kernel, out.data());
  EXPECT_EQ(std::count(out.begin(), out.end(), 1), 128);
}

TEST(CudaEmu, BadConfigurationsAndNestedLaunchesAreReported) {
  vector<int> out(2048);
  std::string msg = launch_error([&] { launch(dim3(1), dim3(0), ones_kernel, out.data()); });
  EXPECT_NE(msg.find("a block of 0 threads"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(32, 32, 2), ones_kernel, out.data()); });
  EXPECT_NE(msg.find("a block of 2048 threads: blocks need 1 to 1024 threads"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1), dim3(1, 1, 65), ones_kernel, out.data()); });
  EXPECT_NE(msg.find("block.z = 65"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(0), dim3(32), ones_kernel, out.data()); });
  EXPECT_NE(msg.find("empty grid"), std::string::npos) << msg;
  msg = launch_error([&] { launch(dim3(1, 65536), dim3(32), ones_kernel, out.data()); });
  EXPECT_NE(msg.find("CUDA's limits"), std::string::npos) << msg;
  msg = launch_error([&] {
    launch(dim3(1), dim3(32), [&out] { launch(dim3(1), dim3(32), ones_kernel, out.data()); });
  });
  EXPECT_NE(msg.find("a launch is already running"), std::string::npos) << msg;
  // A second host thread launching while a launch runs.
  std::string other;
  launch(dim3(1), dim3(32), [&out, &other] {
    if (threadIdx.x != 0) return;
    std::thread t([&] { other = launch_error([&] { launch(dim3(1), dim3(32), ones_kernel, out.data()); }); });
    t.join();
  });
  EXPECT_NE(other.find("a launch is already running"), std::string::npos) << other;
  msg = launch_error([] { __syncthreads(); });
  EXPECT_NE(msg.find("outside a kernel"), std::string::npos) << msg;
}

// ---- math and stacks ------------------------------------------------------------

__global__ void math_kernel(const float* x, float* out) {
  const float v = __ldg(x + threadIdx.x);
  float* o = out + 12 * threadIdx.x;
  o[0] = __expf(v) - expf(v);
  o[1] = __logf(v) - logf(v);
  o[2] = __fdividef(v, 3.f) - v / 3.f;
  o[3] = rsqrtf(v) - 1.f / sqrtf(v);
  o[4] = __fmaf_rn(v, v, 1.f) - fmaf(v, v, 1.f);
  o[5] = float(__float_as_uint(v) == std::bit_cast<unsigned>(v));
  o[6] = float(__uint_as_float(__float_as_uint(v)) == v);
  o[7] = float(__int_as_float(__float_as_int(-v)) == -v);
  o[8] = float(isinf(v / 0.f) && isnan(sqrtf(-v)) && !isinf(exp(double(v))));
  o[9] = fmaxf(v, 2.f) + fminf(v, 2.f) - (v + 2.f);
  o[10] = log1pf(v) - float(log(1.0 + double(v)));
  o[11] = powf(v, 2.f) - v * v;
}

TEST(CudaEmu, MathIntrinsicsAreUsableUnqualified) {
  vector<float> x = {0.5f, 1.f, 2.f, 7.25f};
  vector<float> out(12 * x.size(), -1.f);
  launch(dim3(1), dim3(unsigned(x.size())), math_kernel, x.data(), out.data());
  for (size_t t = 0; t < x.size(); ++t) {
    for (int k : {0, 1, 2, 3, 4, 9}) EXPECT_EQ(out[12 * t + size_t(k)], 0.f) << t << " " << k;
    for (int k : {5, 6, 7, 8}) EXPECT_EQ(out[12 * t + size_t(k)], 1.f) << t << " " << k;
    for (int k : {10, 11}) EXPECT_NEAR(out[12 * t + size_t(k)], 0.f, 1e-5f) << t << " " << k;
  }
}

// 48 KiB of locals per thread, live across a barrier, in a block of 1024.
__global__ void big_stack_kernel(int* out) {
  volatile char buf[48 << 10];
  for (unsigned i = 0; i < sizeof buf; i += 512) buf[i] = char(threadIdx.x + i);
  __syncthreads();
  int s = 0;
  for (unsigned i = 0; i < sizeof buf; i += 512) s += buf[i] == char(threadIdx.x + i);
  out[threadIdx.x] = s;
}

TEST(CudaEmu, FibersHave64KiBStacks) {
  vector<int> out(1024, 0);
  launch(dim3(2), dim3(1024), big_stack_kernel, out.data());
  for (int v : out) ASSERT_EQ(v, (48 << 10) / 512);
}

// ---- launch cost (printed, not asserted) ------------------------------------------

__global__ void tiny_kernel(float* x) { x[blockIdx.x * blockDim.x + threadIdx.x] += 1.f; }

__global__ void two_barrier_kernel(const float* x, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  s[t] = x[blockIdx.x * 256 + t];
  __syncthreads();
  const float v = s[255 - t];
  __syncthreads();
  s[t] = v * 2.f;
  out[blockIdx.x * 256 + t] = s[t];
}

TEST(CudaEmu, LaunchCost) {
  using Clock = std::chrono::steady_clock;
  {  // first use maps and faults in the fiber stacks: not part of a launch's cost
    vector<float> warm(256, 0.f), warm_out(256);
    launch(dim3(1), dim3(256), two_barrier_kernel, warm.data(), warm_out.data());
  }
  const unsigned tiny_blocks = 10000;
  vector<float> x(tiny_blocks * 32, 0.f);
  auto t0 = Clock::now();
  launch(dim3(tiny_blocks), dim3(32), tiny_kernel, x.data());
  const double tiny_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(std::count(x.begin(), x.end(), 1.f), std::ptrdiff_t(x.size()));

  const unsigned blocks = 2000;
  vector<float> in(blocks * 256), out(in.size(), 0.f);
  std::iota(in.begin(), in.end(), 0.f);
  t0 = Clock::now();
  launch(dim3(blocks), dim3(256), two_barrier_kernel, in.data(), out.data());
  const double two_s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < 256; ++t) {
      ASSERT_EQ(out[b * 256 + t], 2.f * in[b * 256 + 255 - t]);
    }
  }
  std::printf("{\"tiny_blocks\": %u, \"tiny_threads_per_block\": 32, \"tiny_s\": %.4f, "
              "\"tiny_us_per_block\": %.2f, \"blocks_256_threads_2_barriers\": %u, \"s\": %.4f, "
              "\"us_per_block\": %.2f}\n",
              tiny_blocks, tiny_s, 1e6 * tiny_s / tiny_blocks, blocks, two_s, 1e6 * two_s / blocks);
}

}  // namespace
