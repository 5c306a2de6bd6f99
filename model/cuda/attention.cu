// Fused attention kernels (FlashAttention-2 scheme, FlashAttention-3-style
// warpgroup MMA on Hopper) for sm_80 / sm_90.
//
// Tensor cores through mma.sync.m16n8k16 (bf16 x bf16 -> fp32); tiles move
// global -> shared with cp.async (16 bytes per thread, zero-filled past the
// last row, double-buffered) and shared -> registers with ldmatrix. Shared
// tiles are rows of hd bf16 whose 16-byte chunks are XOR-swizzled by the row
// (chunk c of row r lives at c ^ (r & 7)), so the 8 row addresses of an
// ldmatrix hit 8 different bank groups.
//
// mma.m16n8k16 fragments (g = lane / 4, t = lane % 4), used throughout:
//   A 16x16: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C 16x8:  c0,c1 (g, 2t..2t+1)  c2,c3 (g+8, 2t..2t+1)
// Two adjacent C tiles of a 16-row strip are exactly one A fragment, so the
// probabilities P (and dS) go from accumulators to the next product's A
// operand without touching shared memory.
//
// Forward: one block per (query tile of 16*NW rows, head, batch); warp w owns
// 16 query rows and walks the visible key tiles with an online softmax in the
// log2 domain (scores pre-multiplied by log2 e, exp2). Query tiles are issued
// last-first so that, under a causal mask, the longest ones start first.
//
// Backward: rowsum(dout * out) first (one warp per row), then one block per
// (key tile of 16*NW rows, kv head, batch) that owns those dK, dV rows in
// registers and loops over every query head of its group and every query tile
// that can see the key tile (deterministic dK, dV; no atomics). Both
// kernels can also split a group's query heads over s blocks (the head split,
// attention_backward_head_split: when key tiles x kv heads x batch alone
// would leave SMs idle, e.g. TinyLlama's 4 kv heads at 4K gave 128 blocks on
// 132 SMs, the causal ones uneven); each stores its partial dK, dV and a
// second kernel sums the s parts in order (still deterministic). Its blocks
// are issued key tile first, so under a causal mask the longest start first.
// Per query tile, with the key rows as the M dimension:
//   S^T = K Q^T,  P^T = exp(S^T - lse),  dV += P^T dO,  dP^T = V dO^T,
//   dS^T = P^T (dP^T - D),  dK += dS^T Q,  dQ += dS K (through shared memory,
//   fp32 atomics into the caller's dq).
//
// Hopper (sm_90a, head_dim 64 and 128): the same two algorithms on wgmma
// (warpgroup MMA, operands read from shared memory through descriptors,
// 128-byte swizzled tiles): attn_fwd_wgmma_kernel and attn_bwd_wgmma_kernel
// below, with the same head split. The mma.sync kernels remain for pre-Hopper
// GPUs (and the emulator).
//
// The same source builds for the CPU fiber emulator (model/cuda/emu/, g++ with
// RT_CUDA_EMULATE, namespace rt::cuda_emu): the PTX wrappers below become the
// emulator's warp collectives, so CI runs the mma.sync kernels against the CPU
// attention (test_model_cuda_emu_attention). The wgmma kernels' bodies exist only
// in the sm_90a pass of nvcc.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#ifdef RT_CUDA_EMULATE
#include <stdexcept>

#include "model/cuda/emu/cuda_emu.h"
#include "model/tensor.h"  // f32_to_bf16, bf16_to_f32: the rounding of the bf16 intrinsics
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include "common/errors.h"
#include "model/cuda/attention.h"

namespace rt::RT_CUDA_NS {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// The mma.sync backward's key tile (16 rows per warp, 8 warps).
constexpr int kBwdKeyTile = 128;
// Blocks the mma.sync backward aims for (head split): about 8 waves of one
// block per SM on an H100 / H200 (132 SMs), enough for the causal mask's
// uneven blocks to even out.
constexpr int64_t kBwdTargetBlocks = 1024;
// The head_dim-64 wgmma backward's dQ exchange (attn_bwd_wgmma_kernel, DQX)
// was written after the last GPU run: until a GPU session has run
// test_model_cuda_attention with it and timed it (tools/gpu_check.sh: the
// attention step's "wgmma+dqx" column, --attn-env wgmma-dqx), it runs only
// when asked for (force_attention_backward_dq_exchange,
// RINGTRAIN_CUDA_ATTENTION=wgmma-dqx).
constexpr bool kWgmmaDqExchangeVerified = false;

// Kernel launches and dynamic shared memory, on a GPU or on the emulator.
#ifdef RT_CUDA_EMULATE
using cudaStream_t = void*;
#define RT_DYNAMIC_SMEM(name) uint8_t* const name = ::rt::emu::dynamic_shared()
#define RT_ATTN_LAUNCH(what, kernel, grid, block, smem, stream, ...) \
  ::rt::emu::launch_dynamic(grid, dim3(block), smem, kernel, __VA_ARGS__)
template <class Kernel>
void set_max_dynamic_smem(Kernel, size_t, const char*) {}
[[noreturn]] inline void __trap() { throw std::logic_error("__trap: an sm_90a-only kernel ran"); }
#else
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(kExitOther, std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
#define RT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) uint8_t name[]
#define RT_ATTN_LAUNCH(what, kernel, grid, block, smem, stream, ...) \
  do {                                                             \
    kernel<<<grid, block, smem, stream>>>(__VA_ARGS__);            \
    check_cuda(cudaGetLastError(), what);                          \
  } while (0)
// Allows `bytes` of dynamic shared memory (callers do it once per kernel).
template <class Kernel>
void set_max_dynamic_smem(Kernel kernel, size_t bytes, const char* what) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
             what);
}
#endif

// ---- PTX wrappers ------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifdef RT_CUDA_EMULATE
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  ::rt::emu::cp_async16(dst, src, valid);
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N>
__device__ __forceinline__ void cp_async_wait() {}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
  uint32_t r[4];
  ::rt::emu::ldmatrix_x4(addr, false, r);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
  uint32_t r[4];
  ::rt::emu::ldmatrix_x4(addr, true, r);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  ::rt::emu::mma_m16n8k16_bf16(c, a, b0, b1);
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16);
}
__device__ __forceinline__ float ex2(float x) { return exp2f(x); }
__device__ __forceinline__ float2 bf16x2_to_float2(const uint16_t* p) {
  return make_float2(bf16_to_f32(p[0]), bf16_to_f32(p[1]));
}
#else
// 16 bytes global -> shared; zero-filled when !valid (src must still be a
// mapped address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c += a * b (16x8x16, bf16 operands, fp32 accumulators)
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> packed bf16x2, lo in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x on the special-function unit (flush-to-zero; 2^-inf = 0).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Two bf16 (p 4-byte aligned) -> fp32.
__device__ __forceinline__ float2 bf16x2_to_float2(const uint16_t* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
#endif  // RT_CUDA_EMULATE

// ---- shared tiles ------------------------------------------------------------

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled tile of HD bf16 per row.
template <int HD>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return uint32_t(r * (HD * 2) + ((c ^ (r & 7)) << 4));
}

// Rows [row0, row0 + R) of a (rows, ld) bf16 tensor (head column already
// applied to `base`) into a swizzled shared tile; rows >= nrows read as zero.
template <int HD, int R, int NT>
__device__ __forceinline__ void load_tile(uint32_t dst, const uint16_t* base, int64_t ld,
                                          int row0, int nrows, int tid) {
  // Thread tid always copies chunk c = tid % (HD/8) of rows r0, r0 + kStep, ...;
  // kStep is a multiple of 8, so the swizzle of its chunk never changes.
  constexpr int kChunks = HD / 8, kStep = NT / kChunks;
  static_assert(NT % kChunks == 0 && kStep % 8 == 0 && R % kStep == 0, "tile/thread shape");
  const int c = tid % kChunks, r0 = tid / kChunks;
  const uint32_t d = dst + swz<HD>(r0, c);
  const uint16_t* src = base + int64_t(row0 + r0) * ld + c * 8;
#pragma unroll
  for (int k = 0; k < R / kStep; ++k) {
    const bool valid = row0 + r0 + k * kStep < nrows;
    cp_async16(d + k * kStep * (HD * 2), valid ? src + k * kStep * ld : base, valid);
  }
}

// acc (16 x N) = rows r0 .. r0 + 15 of shared tile A (HD columns) times the
// transpose of shared tile B (N rows x HD columns), both swizzled; one warp.
template <int HD, int N>
__device__ __forceinline__ void rows_times_tile_t(float (&acc)[N / 8][4], uint32_t A, int r0,
                                                  uint32_t B, int lane) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    uint32_t af[4];
    ldsm_x4(A + swz<HD>(r0 + (lane & 15), kk * 2 + (lane >> 4)), af[0], af[1], af[2], af[3]);
#pragma unroll
    for (int nn = 0; nn < N / 16; ++nn) {
      uint32_t b0, b1, b2, b3;
      ldsm_x4(B + swz<HD>(nn * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)),
              b0, b1, b2, b3);
      mma(acc[2 * nn], af, b0, b1);
      mma(acc[2 * nn + 1], af, b2, b3);
    }
  }
}

// ---- forward -----------------------------------------------------------------

struct FwdArgs {
  const uint16_t *q, *k, *v;
  uint16_t* out;
  float* lse;
  int B, Tq, Tk, H, G;
  int64_t q_offset, k_offset;
  int dpos;  // q_offset - k_offset (checked to fit, with the lengths, in 31 bits)
  bool causal;
  const float* slopes;
  float scale_log2;  // softmax scale * log2 e
};

// ---- per-block bookkeeping shared by the kernel families ---------------------

// A forward block: query tile q0 (BR rows, issued last-first so that under a
// causal mask the longest tiles start first) of head h, batch b; the key tiles
// it visits (those visible to its last row).
template <int HD>
struct FwdBlock {
  int q0, h, b;
  int64_t ldq, ldk;
  const uint16_t *Qb, *Kb, *Vb;
  int nkt;
  float slope_log2;
  __device__ FwdBlock(const FwdArgs& a, int BR, int BC) {
    const int ntq = (a.Tq + BR - 1) / BR;
    q0 = (ntq - 1 - int(blockIdx.x)) * BR;
    h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (a.H / a.G);
    ldq = int64_t(a.H) * HD, ldk = int64_t(a.G) * HD;
    Qb = a.q + int64_t(b) * a.Tq * ldq + int64_t(h) * HD;
    Kb = a.k + int64_t(b) * a.Tk * ldk + int64_t(kvh) * HD;
    Vb = a.v + int64_t(b) * a.Tk * ldk + int64_t(kvh) * HD;
    int kend = a.Tk;
    if (a.causal) {
      const int64_t last = a.q_offset + min(q0 + BR, a.Tq) - 1 - a.k_offset + 1;
      kend = int(last < 0 ? 0 : (last > a.Tk ? a.Tk : last));
    }
    nkt = (kend + BC - 1) / BC;
    slope_log2 = a.slopes ? a.slopes[h] * kLog2e : 0.f;
  }
};

// Final rows of a 16-row strip: thread (g8, t4) holds rows row0 (r = 0) and
// row0 + 8 (r = 1), columns 8 n + 2 t4 + {0, 1} of o (C-fragment layout).
// Normalises by the quad's summed l and writes out (bf16) and lse.
template <int HD>
__device__ __forceinline__ void store_out_rows(const FwdArgs& a, const FwdBlock<HD>& blk, int row0,
                                               int t4, const float (&o)[HD / 8][4],
                                               const float (&m)[2], const float (&l)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row0 + 8 * r;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    if (row < a.Tq) {
      uint16_t* orow = a.out + (int64_t(blk.b) * a.Tq + row) * blk.ldq + int64_t(blk.h) * HD;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        *reinterpret_cast<uint32_t*>(orow + n * 8 + 2 * t4) =
            pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      if (t4 == 0)
        a.lse[(int64_t(blk.b) * a.H + blk.h) * a.Tq + row] =
            sum > 0.f ? (m[r] + log2f(sum)) * kLn2 : -INFINITY;
    }
  }
}


// One forward softmax step for a 16-row strip and key tile j: the strip's
// scores s (C-fragment layout: element (n, e) is row row0 + g8 + 8 (e >> 1),
// column j BC + 8 n + 2 t4 + (e & 1)) -> P as bf16 A fragments p, with the
// running row max m, sum l (this thread's part) and the rescaled accumulator o.
// Scores go to the log2 domain: tiles with masked entries or ALiBi are
// rewritten in place (x = scale log2e s + bias, -inf where masked; factor
// sc = 1 below); other tiles stay raw and the scale is folded into the
// exponent's FMA (sc = scale log2e > 0, which keeps the row maximum). The
// distance qpos - kpos of element (n, e) is d0 + 8 (e >> 1) - 8 n - (e & 1).
template <int HD, int BC>
__device__ __forceinline__ void softmax_strip(float (&s)[BC / 8][4], float (&o)[HD / 8][4],
                                              float (&m)[2], float (&l)[2],
                                              uint32_t (&p)[BC / 16][4], const FwdArgs& a, int j,
                                              int row0, int g8, int t4, float slope_log2) {
  const int kcol0 = j * BC;
  const bool need_mask =
      kcol0 + BC > a.Tk || (a.causal && a.k_offset + kcol0 + BC - 1 > a.q_offset + row0);
  const bool general = need_mask || a.slopes;
  if (general) {
    const int d0 = a.dpos + row0 + g8 - kcol0 - 2 * t4;
    const int climit = a.Tk - kcol0 - 2 * t4;  // columns 8 n + (e & 1) >= climit are past Tk
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = d0 + 8 * (e >> 1) - 8 * n - (e & 1);
        float x = s[n][e] * a.scale_log2;
        if (a.slopes) x -= slope_log2 * float(d);
        if (need_mask && (8 * n + (e & 1) >= climit || (a.causal && d < 0))) x = -INFINITY;
        s[n][e] = x;
      }
    }
  }
  const float sc = general ? 1.f : a.scale_log2;
  // Online softmax: rows r = 0 (g8) and 1 (g8 + 8); a row's BC columns are
  // spread over the 4 threads of a quad.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx = fmaxf(m[r], mx * sc);
    const float use = mx == -INFINITY ? 0.f : mx;
    const float corr = ex2(m[r] - use);
    m[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
      s[n][2 * r] = ex2(fmaf(s[n][2 * r], sc, -use));
      s[n][2 * r + 1] = ex2(fmaf(s[n][2 * r + 1], sc, -use));
      sum += s[n][2 * r] + s[n][2 * r + 1];
    }
    l[r] = l[r] * corr + sum;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      o[n][2 * r] *= corr;
      o[n][2 * r + 1] *= corr;
    }
  }
#pragma unroll
  for (int kk = 0; kk < BC / 16; ++kk) {
    p[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    p[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    p[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    p[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// MT: 16-row m-tiles per warp (each K/V fragment from shared memory feeds MT
// products); QREG: keep the Q fragments in registers instead of re-reading
// them from shared memory for every key tile.
template <int HD, int NW, int BC, int MT, bool QREG>
__global__ void __launch_bounds__(NW * 32) attn_fwd_kernel(const FwdArgs a) {
  constexpr int BR = 16 * MT * NW, NT = NW * 32;
  constexpr int kTileQ = BR * HD * 2, kTileK = BC * HD * 2;
  RT_DYNAMIC_SMEM(smem);
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + kTileQ;           // 2 stages
  const uint32_t sV = sK + 2 * kTileK;       // 2 stages

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g8 = lane >> 2, t4 = lane & 3;
  const FwdBlock<HD> blk(a, BR, BC);
  const int q0 = blk.q0, nkt = blk.nkt;
  const float slope_log2 = blk.slope_log2;
  const int wrow = warp * 16 * MT;  // the warp's first row in the tile

  float o[MT][HD / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;
  uint32_t qf[QREG ? MT : 1][QREG ? HD / 16 : 1][4];

  if (nkt > 0) {
    load_tile<HD, BR, NT>(sQ, blk.Qb, blk.ldq, q0, a.Tq, tid);
    load_tile<HD, BC, NT>(sK, blk.Kb, blk.ldk, 0, a.Tk, tid);
    load_tile<HD, BC, NT>(sV, blk.Vb, blk.ldk, 0, a.Tk, tid);
    cp_async_commit();
  }
  for (int j = 0; j < nkt; ++j) {
    const int st = j & 1;
    if (j + 1 < nkt) {
      load_tile<HD, BC, NT>(sK + (st ^ 1) * kTileK, blk.Kb, blk.ldk, (j + 1) * BC, a.Tk, tid);
      load_tile<HD, BC, NT>(sV + (st ^ 1) * kTileK, blk.Vb, blk.ldk, (j + 1) * BC, a.Tk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if constexpr (QREG) {
      if (j == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kk = 0; kk < HD / 16; ++kk)
            ldsm_x4(sQ + swz<HD>(wrow + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)),
                    qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3]);
      }
    }
    const uint32_t k_st = sK + st * kTileK, v_st = sV + st * kTileK;

    // S = Q K^T for the warp's 16 MT rows x BC keys.
    float s[MT][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t qs[QREG ? 1 : MT][4];
      if constexpr (!QREG) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldsm_x4(sQ + swz<HD>(wrow + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)), qs[mt][0],
                  qs[mt][1], qs[mt][2], qs[mt][3]);
      }
#pragma unroll
      for (int nn = 0; nn < BC / 16; ++nn) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(k_st + swz<HD>(nn * 16 + (lane & 7) + ((lane >> 4) << 3),
                               kk * 2 + ((lane >> 3) & 1)),
                b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (QREG) {
            mma(s[mt][2 * nn], qf[mt][kk], b0, b1);
            mma(s[mt][2 * nn + 1], qf[mt][kk], b2, b3);
          } else {
            mma(s[mt][2 * nn], qs[mt], b0, b1);
            mma(s[mt][2 * nn + 1], qs[mt], b2, b3);
          }
        }
      }
    }

    uint32_t p[MT][BC / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      softmax_strip<HD, BC>(s[mt], o[mt], m[mt], l[mt], p[mt], a, j, q0 + wrow + 16 * mt, g8, t4,
                            slope_log2);

    // O += P V
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
      for (int dn = 0; dn < HD / 16; ++dn) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(v_st + swz<HD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                 dn * 2 + (lane >> 4)),
                  b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma(o[mt][2 * dn], p[mt][kk], b0, b1);
          mma(o[mt][2 * dn + 1], p[mt][kk], b2, b3);
        }
      }
    }
    __syncthreads();  // this stage is refilled two iterations on
  }

  // Normalise and store.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    store_out_rows<HD>(a, blk, q0 + wrow + 16 * mt + g8, t4, o[mt], m[mt], l[mt]);
}

// ---- Hopper (sm_90a) warpgroup MMA --------------------------------------------
//
// wgmma.mma_async m64n128k16 (bf16 in, fp32 accumulators in registers): one
// warpgroup (4 warps) multiplies 64 rows at a time. B (and A when not in
// registers) are read from shared memory through 64-bit descriptors. Tiles use
// the 128-byte swizzle: a tile of R rows x 128 columns is two column blocks of
// 64 bf16 (128 B per row), block cb at cb * R * 128; chunk c (16 B) of row r
// sits at chunk c ^ (r % 8) of its row, atoms of 8 rows x 128 B are 1024 B.
// The accumulator of m64nNk16 gives warp w of the warpgroup rows 16 w .. 16 w + 15
// in the mma.sync C layout, repeated every 8 columns, and a register A operand
// uses the mma.sync A layout, so P goes from S's accumulators to the second
// product's A registers directly (as in FlashAttention-3).

// A wgmma accumulator float[N] is the C-fragment layout of N / 4 column
// groups of 8 (element (n, e) = d[4 n + e]); this views it as float[N / 4][4],
// the shape the mma.sync helpers take.
template <int N>
__device__ __forceinline__ float (&as_frags(float (&d)[N]))[N / 4][4] {
  return reinterpret_cast<float(&)[N / 4][4]>(d);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the wgmma helpers exist in the sm_90a pass only
// Descriptor: start address, leading/stride byte offsets (>> 4), 128-byte swizzle.
__device__ __forceinline__ uint64_t gmma_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = uint64_t((saddr & 0x3FFFFu) >> 4);
  d |= uint64_t((lbo >> 4) & 0x3FFFu) << 16;
  d |= uint64_t((sbo >> 4) & 0x3FFFu) << 32;
  d |= uint64_t(1) << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait0() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Keeps the compiler from moving register reads/writes across a wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64xN) = (scale_d ? d : 0) + A B, A and B K-major in shared memory (N = 64, 128).
__device__ __forceinline__ void wgmma_ss(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(scale_d));
}
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

// d (64x64) = (scale_d ? d : 0) + A B, A M-major and B N-major (both transposed)
// in shared memory.
__device__ __forceinline__ void wgmma_ss_tt(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(scale_d));
}

// d (64xN) += A B, A (64x16) in registers, B N-major (transposed) in shared memory
// (N = 64, 128).
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// Shared tile for wgmma: rows [row0, row0 + R) of a (rows, ld) bf16 tensor with
// 128 columns, in the two-column-block 128-byte-swizzled layout above; rows
// >= nrows read as zero.
template <int R, int NT>
__device__ __forceinline__ void load_tile_sw128(uint32_t dst, const uint16_t* base, int64_t ld,
                                                int row0, int nrows, int tid) {
  // As load_tile: fixed chunk per thread, rows 16 apart (same swizzle).
  constexpr int kStep = NT / 16;
  static_assert(NT % 16 == 0 && kStep % 8 == 0 && R % kStep == 0, "tile/thread shape");
  const int c = tid & 15, r0 = tid >> 4;
  const uint32_t d = dst + (c >> 3) * (R * 128) + r0 * 128 + (((c & 7) ^ (r0 & 7)) << 4);
  const uint16_t* src = base + int64_t(row0 + r0) * ld + c * 8;
#pragma unroll
  for (int k = 0; k < R / kStep; ++k) {
    const bool valid = row0 + r0 + k * kStep < nrows;
    cp_async16(d + k * kStep * 128, valid ? src + k * kStep * ld : base, valid);
  }
}

// A wgmma tile of R rows x HD columns: for head_dim 64 one column block, which
// is exactly load_tile's swizzled layout (rows of 128 B, chunk c ^ (r % 8)).
template <int HD, int R, int NT>
__device__ __forceinline__ void load_tile_wg(uint32_t dst, const uint16_t* base, int64_t ld,
                                             int row0, int nrows, int tid) {
  static_assert(HD == 64 || HD == 128, "wgmma tiles: head_dim 64 or 128");
  if constexpr (HD == 128)
    load_tile_sw128<R, NT>(dst, base, ld, row0, nrows, tid);
  else
    load_tile<64, R, NT>(dst, base, ld, row0, nrows, tid);
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL



// Forward for head_dim 64 and 128 on sm_90a: 2 warpgroups x 64 query rows, key tiles
// of 128, S = Q K^T and O += P V both on wgmma (P from registers); masking,
// online softmax and outputs as in attn_fwd_kernel. Ping-pong: warpgroup 1
// runs half an iteration behind warpgroup 0 -- at iteration j it does the
// softmax and P V of tile j - 1, then S of tile j -- so one warpgroup's softmax
// overlaps the other's products (+11% over running them in step, measured).
// V therefore has 3 shared stages (tile j - 1 is still read at iteration j).
constexpr int kWfBC = 128, kWfThreads = 256, kWfVStages = 3;
// Q (128 rows), K (2 stages), V (kWfVStages) of hd bf16 per row, 1024 B alignment.
constexpr size_t wf_smem(int hd) {
  return size_t(128) * hd * 2 + (2 + kWfVStages) * size_t(kWfBC) * hd * 2 + 1024;
}

template <int HD>
__global__ void __launch_bounds__(kWfThreads) attn_fwd_wgmma_kernel(const FwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BR = 128, BC = kWfBC, NT = kWfThreads, kVStages = kWfVStages;
  constexpr int kTileQ = BR * HD * 2, kTileK = BC * HD * 2;
  RT_DYNAMIC_SMEM(smem);
  const uint32_t sQ = (smem_addr(smem) + 1023u) & ~1023u;  // swizzle atoms need 1024 B alignment
  const uint32_t sK = sQ + kTileQ;      // 2 stages
  const uint32_t sV = sK + 2 * kTileK;  // kVStages stages

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, g8 = lane >> 2, t4 = lane & 3;
  const FwdBlock<HD> blk(a, BR, BC);
  const int q0 = blk.q0, nkt = blk.nkt;
  const float slope_log2 = blk.slope_log2;
  const int wrow = wg * 64 + (warp & 3) * 16;  // this warp's first row in the tile

  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  // S = Q K^T for the K tile in stage k_st (HD / 16 k-steps of 16 over the head
  // dim; column block kk / 4).
  auto issue_s = [&](float (&acc)[BC / 2], uint32_t k_st) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const uint64_t da =
          gmma_desc(sQ + (kk >> 2) * (BR * 128) + wg * 64 * 128 + (kk & 3) * 32, 16, 1024);
      const uint64_t db = gmma_desc(k_st + (kk >> 2) * (BC * 128) + (kk & 3) * 32, 16, 1024);
      wgmma_ss(acc, da, db, kk > 0);
    }
    wgmma_commit();
  };
  // O += P V for the V tile in stage v_st (k-steps of 16 keys; V is N-major).
  auto issue_pv = [&](const uint32_t (&p)[BC / 16][4], uint32_t v_st) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
      wgmma_rs_tb(o, p[kk], gmma_desc(v_st + kk * 16 * 128, BC * 128, 1024));
    wgmma_commit();
  };

  float s[BC / 2];
  uint32_t p[BC / 16][4];
  if (nkt > 0) {
    load_tile_wg<HD, BR, NT>(sQ, blk.Qb, blk.ldq, q0, a.Tq, tid);
    load_tile_wg<HD, BC, NT>(sK, blk.Kb, blk.ldk, 0, a.Tk, tid);
    load_tile_wg<HD, BC, NT>(sV, blk.Vb, blk.ldk, 0, a.Tk, tid);
    cp_async_commit();
  }
  const bool lag = wg == 1;  // this warpgroup runs half an iteration behind
  for (int j = 0; j < nkt; ++j) {
    if (j + 1 < nkt) {
      load_tile_wg<HD, BC, NT>(sK + ((j + 1) & 1) * kTileK, blk.Kb, blk.ldk, (j + 1) * BC, a.Tk,
                               tid);
      load_tile_wg<HD, BC, NT>(sV + ((j + 1) % kVStages) * kTileK, blk.Vb, blk.ldk, (j + 1) * BC,
                               a.Tk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async data -> wgmma
    __syncthreads();
    if (!lag) {
      issue_s(s, sK + (j & 1) * kTileK);
      wgmma_wait0();
      fence_regs(s);
      softmax_strip<HD, BC>(as_frags(s), as_frags(o), m, l, p, a, j, q0 + wrow, g8, t4,
                            slope_log2);
      issue_pv(p, sV + (j % kVStages) * kTileK);
      wgmma_wait0();
      fence_regs(o);
    } else {
      if (j > 0) {
        softmax_strip<HD, BC>(as_frags(s), as_frags(o), m, l, p, a, j - 1, q0 + wrow, g8, t4,
                              slope_log2);
        issue_pv(p, sV + ((j - 1) % kVStages) * kTileK);
      }
      issue_s(s, sK + (j & 1) * kTileK);
      wgmma_wait0();
      fence_regs(o);
      fence_regs(s);
    }
    __syncthreads();  // stages are refilled on the next iterations
  }
  if (lag && nkt > 0) {
    softmax_strip<HD, BC>(as_frags(s), as_frags(o), m, l, p, a, nkt - 1, q0 + wrow, g8, t4,
                          slope_log2);
    issue_pv(p, sV + ((nkt - 1) % kVStages) * kTileK);
    wgmma_wait0();
    fence_regs(o);
  }

  store_out_rows<HD>(a, blk, q0 + wrow + g8, t4, as_frags(o), m, l);
#else
  __trap();  // launched only on sm_90 devices, for which the sm_90a code exists
#endif
}


// ---- backward ----------------------------------------------------------------

// D[b,h,i] = sum_d dout * out, one warp per (b, i, h) row.
template <int HD>
__global__ void attn_bwd_dot_kernel(float* D, const uint16_t* dout, const uint16_t* out, int B,
                                    int Tq, int H) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= int64_t(B) * Tq * H) return;
  const uint16_t* x = dout + row * HD;
  const uint16_t* y = out + row * HD;
  float acc = 0.f;
#pragma unroll
  for (int d = 2 * lane; d < HD; d += 64) {
    const float2 xf = bf16x2_to_float2(x + d), yf = bf16x2_to_float2(y + d);
    acc += xf.x * yf.x + xf.y * yf.y;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    // row = (b * Tq + i) * H + h  ->  D index (b * H + h) * Tq + i
    const int64_t h = row % H, bi = row / H, i = bi % Tq, b = bi / Tq;
    D[(b * H + h) * Tq + i] = acc;
  }
}

struct BwdArgs {
  const uint16_t *q, *k, *v, *dout;
  const float *lse, *D;
  float *dq, *dk, *dv;
  int B, Tq, Tk, H, G;
  int64_t q_offset, k_offset;
  int dpos;  // q_offset - k_offset
  bool causal;
  const float* slopes;
  float scale, scale_log2;
  // mma.sync kernel only: each kv head's query heads are split over hsplit
  // blocks (a divisor of H / G); with hsplit > 1 block part s stores its dK
  // (scaled), dV into dk_part, dv_part + s * B * Tk * G * hd (the layout of
  // dk), which bwd_sum_parts_kernel then adds to dk, dv in part order.
  int hsplit;
  float *dk_part, *dv_part;
};

// Backward: scores S^T of this warp's 16 key rows (kr + g8, + 8) x BRQ queries
// (columns 8 n + 2 t4 + {0, 1}) -> P^T = 2^(scale log2e S + bias - lse_log2),
// 0 where masked. Tiles with masked entries or ALiBi take the general path;
// the distance qpos - kpos of element (n, e) is d0 + 8 n + (e & 1) - 8 (e >> 1).
template <int BRQ>
__device__ __forceinline__ void probs_t(float (&s)[BRQ / 8][4], const BwdArgs& a, int k0, int BCK,
                                        int kr, int q0, int g8, int t4, const float* L,
                                        float slope_log2) {
  const bool need_mask =
      k0 + BCK > a.Tk || (a.causal && a.k_offset + k0 + BCK - 1 > a.q_offset + q0);
  if (need_mask || a.slopes) {
    const int d0 = a.dpos + q0 - k0 - kr - g8 + 2 * t4;
    const int klimit = a.Tk - k0 - kr - g8;  // rows with 8 (e >> 1) >= klimit are past Tk
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = d0 + 8 * n + (e & 1) - 8 * (e >> 1);
        float x = s[n][e] * a.scale_log2;
        if (a.slopes) x -= slope_log2 * float(d);
        float p = ex2(x - L[8 * n + 2 * t4 + (e & 1)]);
        if (need_mask && (8 * (e >> 1) >= klimit || (a.causal && d < 0))) p = 0.f;
        s[n][e] = p;
      }
    }
  } else {
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[n][e] = ex2(fmaf(s[n][e], a.scale_log2, -L[8 * n + 2 * t4 + (e & 1)]));
  }
}

// A backward block: key tile k0 (BCK rows) of kv head kvh, batch b; it visits
// the query heads of its group and, of each, the query tiles (BRQ rows) from
// i_start on (under a causal mask the earlier ones see none of its keys):
// iteration it is head h0 + it / nq, query tile i_start + it % nq.
//
// The grid is one dimension of key tiles x G x hsplit x B blocks (both kernel
// families), key tile slowest, so that under a causal mask the blocks with the
// most query tiles (the first key tiles) start first; each block takes
// rep / hsplit of the group's rep = H / G query heads: part `part` of its group.
template <int HD>
struct BwdBlock {
  int k0, kvh, b, rep, i_start, nq;
  int part = 0, h0, nh;  // query heads h0 .. h0 + nh - 1
  int64_t ldq, ldk;
  const uint16_t *Kb, *Vb;
  __device__ BwdBlock(const BwdArgs& a, int BCK, int BRQ) {
    const int64_t per_tile = int64_t(a.G) * a.hsplit * a.B;
    const int64_t r = int64_t(blockIdx.x) % per_tile;
    k0 = int(int64_t(blockIdx.x) / per_tile) * BCK;
    b = int(r / (int64_t(a.G) * a.hsplit));
    const int ys = int(r % (int64_t(a.G) * a.hsplit));
    kvh = ys / a.hsplit, part = ys % a.hsplit;
    rep = a.H / a.G, nh = rep / a.hsplit, h0 = kvh * rep + part * nh;
    ldq = int64_t(a.H) * HD, ldk = int64_t(a.G) * HD;
    Kb = a.k + int64_t(b) * a.Tk * ldk + int64_t(kvh) * HD;
    Vb = a.v + int64_t(b) * a.Tk * ldk + int64_t(kvh) * HD;
    i_start = 0;
    if (a.causal) {
      const int64_t first_row = a.k_offset + k0 - a.q_offset;  // first query with qpos >= kpos(k0)
      i_start = first_row >= a.Tq ? (a.Tq + BRQ - 1) / BRQ
                : first_row > 0     ? int(first_row / BRQ)
                                    : 0;
    }
    nq = (a.Tq + BRQ - 1) / BRQ - i_start;  // <= 0: nothing to accumulate
  }
  __device__ int head(int it) const { return h0 + it / nq; }
  __device__ int q0(int it, int BRQ) const { return (i_start + it % nq) * BRQ; }
};

// lse (in the log2 domain) and D of query rows q0 .. q0 + BRQ - 1 of head h
// into shared memory; rows past Tq or without any visible key get +inf, so
// P = 2^(x - inf) = 0 there.
__device__ __forceinline__ void load_lse_d(const BwdArgs& a, int b, int h, int q0, int BRQ,
                                           float* sL, float* sD, int tid, int NT) {
  for (int r = tid; r < BRQ; r += NT) {
    const int row = q0 + r;
    float lse_l2 = INFINITY, d = 0.f;
    if (row < a.Tq) {
      const int64_t idx = (int64_t(b) * a.H + h) * a.Tq + row;
      const float lse = a.lse[idx];
      if (lse != -INFINITY) lse_l2 = lse * kLog2e;
      d = a.D[idx];
    }
    sL[r] = lse_l2;
    sD[r] = d;
  }
}

// dK (times the softmax scale) and dV of key rows row0, row0 + 8 stored (not
// added) into this block's part of dk_part, dv_part (hsplit > 1).
template <int HD>
__device__ __forceinline__ void store_dk_dv_part(const BwdArgs& a, const BwdBlock<HD>& blk,
                                                 int row0, int t4, const float (&dk)[HD / 8][4],
                                                 const float (&dv)[HD / 8][4]) {
  const int64_t part_off = int64_t(blk.part) * a.B * a.Tk * blk.ldk;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= a.Tk) continue;
    const int64_t off =
        part_off + (int64_t(blk.b) * a.Tk + row) * blk.ldk + int64_t(blk.kvh) * HD + 2 * t4;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      *reinterpret_cast<float2*>(a.dk_part + off + n * 8) =
          make_float2(dk[n][2 * r] * a.scale, dk[n][2 * r + 1] * a.scale);
      *reinterpret_cast<float2*>(a.dv_part + off + n * 8) =
          make_float2(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// dk += the hsplit parts of dk_part (dv likewise), summed in part order:
// n = B * Tk * G * hd elements each.
__global__ void bwd_sum_parts_kernel(float* dk, float* dv, const float* dk_part,
                                     const float* dv_part, int64_t n, int hsplit) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float sk = dk_part[i], sv = dv_part[i];
    for (int s = 1; s < hsplit; ++s) {
      sk += dk_part[s * n + i];
      sv += dv_part[s * n + i];
    }
    dk[i] += sk;
    dv[i] += sv;
  }
}

// dK (times the softmax scale) and dV += into the caller's fp32 buffers for key
// rows row0 and row0 + 8 (C-fragment layout, as store_out_rows); the block
// owns these rows, so plain read-modify-write.
template <int HD>
__device__ __forceinline__ void add_dk_dv_rows(const BwdArgs& a, const BwdBlock<HD>& blk, int row0,
                                               int t4, const float (&dk)[HD / 8][4],
                                               const float (&dv)[HD / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= a.Tk) continue;
    const int64_t off = (int64_t(blk.b) * a.Tk + row) * blk.ldk + int64_t(blk.kvh) * HD + 2 * t4;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      float2* pk = reinterpret_cast<float2*>(a.dk + off + n * 8);
      float2* pv = reinterpret_cast<float2*>(a.dv + off + n * 8);
      float2 xk = *pk, xv = *pv;
      xk.x += dk[n][2 * r] * a.scale;
      xk.y += dk[n][2 * r + 1] * a.scale;
      xv.x += dv[n][2 * r];
      xv.y += dv[n][2 * r + 1];
      *pk = xk;
      *pv = xv;
    }
  }
}


template <int HD, int NW, int BRQ>
__global__ void __launch_bounds__(NW * 32) attn_bwd_kernel(const BwdArgs a) {
  constexpr int BCK = 16 * NW, NT = NW * 32;
  constexpr int kTileK = BCK * HD * 2, kTileQ = BRQ * HD * 2;
  RT_DYNAMIC_SMEM(smem);
  const uint32_t sK = smem_addr(smem);
  const uint32_t sV = sK + kTileK;
  const uint32_t sQ = sV + kTileK;            // 2 stages
  const uint32_t sO = sQ + 2 * kTileQ;        // dout, 2 stages
  const uint32_t sS = sO + 2 * kTileQ;        // dS^T (BCK x BRQ bf16, swizzled)
  float* sL = reinterpret_cast<float*>(smem + 2 * kTileK + 4 * kTileQ + BCK * BRQ * 2);  // 2 x BRQ
  float* sD = sL + 2 * BRQ;                                                           // 2 x BRQ
  static_assert(BRQ % 16 == 0 && BRQ >= 64, "dS^T rows must hold >= 8 swizzle chunks");

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g8 = lane >> 2, t4 = lane & 3;
  const BwdBlock<HD> blk(a, BCK, BRQ);
  const int k0 = blk.k0, nq = blk.nq, n_it = nq * blk.nh;
  const int kr = warp * 16;  // this warp's key rows within the tile

  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  if (nq <= 0) {  // no query sees these keys: a part is still written (zeros)
    if (a.hsplit > 1) store_dk_dv_part<HD>(a, blk, k0 + kr + g8, t4, dk, dv);
    return;
  }

  // Per-iteration operands: Q, dO tiles and lse, D rows into stage st.
  auto issue = [&](int it, int st) {
    const int h = blk.head(it), q0 = blk.q0(it, BRQ);
    const int64_t hoff = int64_t(blk.b) * a.Tq * blk.ldq + int64_t(h) * HD;
    load_tile<HD, BRQ, NT>(sQ + st * kTileQ, a.q + hoff, blk.ldq, q0, a.Tq, tid);
    load_tile<HD, BRQ, NT>(sO + st * kTileQ, a.dout + hoff, blk.ldq, q0, a.Tq, tid);
    load_lse_d(a, blk.b, h, q0, BRQ, sL + st * BRQ, sD + st * BRQ, tid, NT);
  };

  load_tile<HD, BCK, NT>(sK, blk.Kb, blk.ldk, k0, a.Tk, tid);
  load_tile<HD, BCK, NT>(sV, blk.Vb, blk.ldk, k0, a.Tk, tid);
  issue(0, 0);
  cp_async_commit();

  for (int it = 0; it < n_it; ++it) {
    const int st = it & 1;
    if (it + 1 < n_it) issue(it + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int h = blk.head(it), q0 = blk.q0(it, BRQ);
    const uint32_t q_st = sQ + st * kTileQ, o_st = sO + st * kTileQ;
    const float* L = sL + st * BRQ;
    const float* Dd = sD + st * BRQ;
    const float slope_log2 = a.slopes ? a.slopes[h] * kLog2e : 0.f;

    // S^T = K Q^T (16 key rows x BRQ queries per warp).
    float s[BRQ / 8][4];
    rows_times_tile_t<HD, BRQ>(s, sK, kr, q_st, lane);

    // P^T, then kept as bf16 A fragments (pk[kk] covers queries 16 kk .. 16 kk + 15)
    // to free registers.
    probs_t<BRQ>(s, a, k0, BCK, kr, q0, g8, t4, L, slope_log2);
    uint32_t pk[BRQ / 16][4];
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      pk[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pk[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pk[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pk[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }

    // dV += P^T dO (queries are the K dimension).
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
#pragma unroll
      for (int dn = 0; dn < HD / 16; ++dn) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(o_st + swz<HD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                 dn * 2 + (lane >> 4)),
                  b0, b1, b2, b3);
        mma(dv[2 * dn], pk[kk], b0, b1);
        mma(dv[2 * dn + 1], pk[kk], b2, b3);
      }
    }

    // dP^T = V dO^T, then dS^T = P^T (dP^T - D) (P from its bf16 copy).
    float dp[BRQ / 8][4];
    rows_times_tile_t<HD, BRQ>(dp, sV, kr, o_st, lane);
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t u = pk[n / 2][(n & 1) * 2 + (e >> 1)];
        const float p = __uint_as_float((e & 1) ? (u & 0xffff0000u) : (u << 16));
        dp[n][e] = p * (dp[n][e] - Dd[n * 8 + 2 * t4 + (e & 1)]);
      }
    }

    // dK += dS^T Q; dS^T rows of this warp -> shared (bf16) for dQ below.
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      const uint32_t da[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]),
                              pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                              pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                              pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < HD / 16; ++dn) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(q_st + swz<HD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                 dn * 2 + (lane >> 4)),
                  b0, b1, b2, b3);
        mma(dk[2 * dn], da, b0, b1);
        mma(dk[2 * dn + 1], da, b2, b3);
      }
      // dS^T rows of this warp -> shared (bf16), for dQ = dS K below.
      const int r0 = kr + g8;
      uint8_t* base = smem + (sS - sK);
      *reinterpret_cast<uint32_t*>(base + swz<BRQ>(r0, kk * 2) + 4 * t4) = da[0];
      *reinterpret_cast<uint32_t*>(base + swz<BRQ>(r0 + 8, kk * 2) + 4 * t4) = da[1];
      *reinterpret_cast<uint32_t*>(base + swz<BRQ>(r0, kk * 2 + 1) + 4 * t4) = da[2];
      *reinterpret_cast<uint32_t*>(base + swz<BRQ>(r0 + 8, kk * 2 + 1) + 4 * t4) = da[3];
    }
    __syncthreads();

    // dQ (BRQ x HD) += scale * dS K: units of 16 query rows x 32 columns
    // (16 accumulators) are dealt out to the warps.
    for (int u = warp; u < (BRQ / 16) * (HD / 32); u += NW) {
      const int mq = u / (HD / 32), dc = u % (HD / 32);
      float acc[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BCK / 16; ++kk) {
        uint32_t af[4];
        ldsm_x4_t(sS + swz<BRQ>(kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                mq * 2 + ((lane >> 3) & 1)),
                  af[0], af[1], af[2], af[3]);
#pragma unroll
        for (int dn = 0; dn < 2; ++dn) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_t(sK + swz<HD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                 dc * 4 + dn * 2 + (lane >> 4)),
                    b0, b1, b2, b3);
          mma(acc[2 * dn], af, b0, b1);
          mma(acc[2 * dn + 1], af, b2, b3);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = q0 + mq * 16 + g8 + 8 * r;
        if (row >= a.Tq) continue;
        float* dst =
            a.dq + (int64_t(blk.b) * a.Tq + row) * blk.ldq + int64_t(h) * HD + dc * 32 + 2 * t4;
#pragma unroll
        for (int n = 0; n < 4; ++n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float2*>(dst + n * 8),
                    make_float2(acc[n][2 * r] * a.scale, acc[n][2 * r + 1] * a.scale));
#else
          atomicAdd(dst + n * 8, acc[n][2 * r] * a.scale);
          atomicAdd(dst + n * 8 + 1, acc[n][2 * r + 1] * a.scale);
#endif
        }
      }
    }
    __syncthreads();  // stages and dS^T are rewritten next iteration
  }

  // dK (scaled), dV += into the caller's fp32 buffers, or into this block's part.
  if (a.hsplit > 1)
    store_dk_dv_part<HD>(a, blk, k0 + kr + g8, t4, dk, dv);
  else
    add_dk_dv_rows<HD>(a, blk, k0 + kr + g8, t4, dk, dv);
}

// Backward for head_dim 64 and 128 on sm_90a: 2 warpgroups x 64 key rows (a
// key tile of 128), query tiles of 64, all five products on wgmma. Per (query
// head, query tile), warpgroup w with its key rows K_w, V_w:
//   S^T = K_w Q^T, dP^T = V_w dO^T            (A, B from shared memory)
//   P^T, dS^T in registers (as attn_bwd_kernel); dS^T also to shared memory
//   dV_w += P^T dO, dK_w += dS^T Q            (A from registers, B N-major)
//   head_dim 128: dQ[:, 64 w : 64 w + 64] += dS K[:, 64 w : 64 w + 64] over
//                 both warpgroups' keys   (A M-major, B N-major)
//   head_dim 64:  dQ += dS_w K_w, each warpgroup over its own 64 keys, both
//                 through fp32 atomics; with DQX (the dQ exchange) the two
//                 halves are summed through shared memory first, warpgroup w
//                 adding columns 32 w .. 32 w + 31 (one atomic per element
//                 instead of two, and one barrier less per query tile)
// dK, dV stay in registers for the whole block (deterministic); dQ goes out
// through fp32 atomics. DQX has not run on a GPU yet: opt-in
// (kWgmmaDqExchangeVerified) until it has. Blocks come from the mma.sync
// kernel's linear grid, head split included (BwdBlock, bwd_sum_parts_kernel).
constexpr int kWbBCK = 128, kWbBRQ = 64, kWbThreads = 256;
// head_dim 64: the dQ halves the warpgroups hand each other, 64 query rows x
// 32 columns each, rows padded to 40 floats (float2 accesses of a half warp
// then fall on 32 distinct banks).
constexpr int kWbXRow = 40;
constexpr size_t wb_smem(int hd, bool dqx) {
  return 2 * size_t(kWbBCK) * hd * 2        // K, V
         + 4 * size_t(kWbBRQ) * hd * 2      // Q, dO: 2 stages each
         + size_t(kWbBCK) * kWbBRQ * 2      // dS^T
         + 4 * size_t(kWbBRQ) * 4           // lse, D: 2 stages each
         + (dqx ? 2 * size_t(kWbBRQ) * kWbXRow * 4 : 0)  // dQ exchange
         + 1024;                            // alignment
}

template <int HD, bool DQX>
__global__ void __launch_bounds__(kWbThreads, 1) attn_bwd_wgmma_kernel(const BwdArgs a) {
  static_assert(!DQX || HD == 64, "the dQ exchange is for head_dim 64");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BCK = kWbBCK, BRQ = kWbBRQ, NT = kWbThreads;
  constexpr int kTileK = BCK * HD * 2, kTileQ = BRQ * HD * 2;
  RT_DYNAMIC_SMEM(smem);
  const uint32_t s0 = smem_addr(smem);
  const uint32_t sK = (s0 + 1023u) & ~1023u;
  const uint32_t sV = sK + kTileK;
  const uint32_t sQ = sV + kTileK;      // 2 stages
  const uint32_t sO = sQ + 2 * kTileQ;  // dout, 2 stages
  const uint32_t sS = sO + 2 * kTileQ;  // dS^T: BCK rows x 64 queries (128 B), swizzled
  uint8_t* sS_ptr = smem + (sS - s0);
  float* sL = reinterpret_cast<float*>(sS_ptr + BCK * BRQ * 2);  // 2 x BRQ
  float* sD = sL + 2 * BRQ;                                       // 2 x BRQ
  float* sX = sD + 2 * BRQ;  // DQX: 2 x BRQ x kWbXRow (the dQ exchange)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, g8 = lane >> 2, t4 = lane & 3;
  const BwdBlock<HD> blk(a, BCK, BRQ);
  const int k0 = blk.k0, nq = blk.nq, n_it = nq * blk.nh;
  const int kr = wg * 64 + (warp & 3) * 16;  // this warp's key rows within the tile
  float dk[HD / 2], dv[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dk[i] = dv[i] = 0.f;
  if (nq <= 0) {  // no query sees these keys: a part is still written (zeros)
    if (a.hsplit > 1) store_dk_dv_part<HD>(a, blk, k0 + kr + g8, t4, as_frags(dk), as_frags(dv));
    return;
  }

  auto issue = [&](int it, int st) {
    const int h = blk.head(it), q0 = blk.q0(it, BRQ);
    const int64_t hoff = int64_t(blk.b) * a.Tq * blk.ldq + int64_t(h) * HD;
    load_tile_wg<HD, BRQ, NT>(sQ + st * kTileQ, a.q + hoff, blk.ldq, q0, a.Tq, tid);
    load_tile_wg<HD, BRQ, NT>(sO + st * kTileQ, a.dout + hoff, blk.ldq, q0, a.Tq, tid);
    load_lse_d(a, blk.b, h, q0, BRQ, sL + st * BRQ, sD + st * BRQ, tid, NT);
  };

  load_tile_wg<HD, BCK, NT>(sK, blk.Kb, blk.ldk, k0, a.Tk, tid);
  load_tile_wg<HD, BCK, NT>(sV, blk.Vb, blk.ldk, k0, a.Tk, tid);
  issue(0, 0);
  cp_async_commit();

  for (int it = 0; it < n_it; ++it) {
    const int st = it & 1;
    if (it + 1 < n_it) issue(it + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    const int h = blk.head(it), q0 = blk.q0(it, BRQ);
    const uint32_t q_st = sQ + st * kTileQ, o_st = sO + st * kTileQ;
    const float* L = sL + st * BRQ;
    const float* Dd = sD + st * BRQ;
    const float slope_log2 = a.slopes ? a.slopes[h] * kLog2e : 0.f;

    // S^T = K_w Q^T and dP^T = V_w dO^T (64 keys x 64 queries per warpgroup).
    float s[32], dp[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const uint32_t koff = (kk >> 2) * (BCK * 128) + wg * 64 * 128 + (kk & 3) * 32;
      const uint32_t qoff = (kk >> 2) * (BRQ * 128) + (kk & 3) * 32;
      wgmma_ss(s, gmma_desc(sK + koff, 16, 1024), gmma_desc(q_st + qoff, 16, 1024), kk > 0);
      wgmma_ss(dp, gmma_desc(sV + koff, 16, 1024), gmma_desc(o_st + qoff, 16, 1024), kk > 0);
    }
    wgmma_commit();
    wgmma_wait0();
    fence_regs(s);
    fence_regs(dp);

    probs_t<BRQ>(as_frags(s), a, k0, BCK, kr, q0, g8, t4, L, slope_log2);
    // dS^T = P^T (dP^T - D); both as bf16 A fragments, dS^T also to shared memory.
    uint32_t pk[BRQ / 16][4], da[BRQ / 16][4];
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dp[4 * n + e] = s[4 * n + e] * (dp[4 * n + e] - Dd[8 * n + 2 * t4 + (e & 1)]);
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      pk[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pk[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pk[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pk[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
      da[kk][0] = pack_bf16(dp[8 * kk + 0], dp[8 * kk + 1]);
      da[kk][1] = pack_bf16(dp[8 * kk + 2], dp[8 * kk + 3]);
      da[kk][2] = pack_bf16(dp[8 * kk + 4], dp[8 * kk + 5]);
      da[kk][3] = pack_bf16(dp[8 * kk + 6], dp[8 * kk + 7]);
      // rows kr + g8 (+8), query chunks 2 kk (+1), 4 t4 bytes in
      const int r0 = kr + g8, r1 = r0 + 8;
      *reinterpret_cast<uint32_t*>(sS_ptr + r0 * 128 + (((2 * kk) ^ (r0 & 7)) << 4) + 4 * t4) = da[kk][0];
      *reinterpret_cast<uint32_t*>(sS_ptr + r1 * 128 + (((2 * kk) ^ (r1 & 7)) << 4) + 4 * t4) = da[kk][1];
      *reinterpret_cast<uint32_t*>(sS_ptr + r0 * 128 + (((2 * kk + 1) ^ (r0 & 7)) << 4) + 4 * t4) = da[kk][2];
      *reinterpret_cast<uint32_t*>(sS_ptr + r1 * 128 + (((2 * kk + 1) ^ (r1 & 7)) << 4) + 4 * t4) = da[kk][3];
    }

    // dV += P^T dO, dK += dS^T Q (k-steps of 16 queries; dO, Q N-major).
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      wgmma_rs_tb(dv, pk[kk], gmma_desc(o_st + kk * 16 * 128, BRQ * 128, 1024));
      wgmma_rs_tb(dk, da[kk], gmma_desc(q_st + kk * 16 * 128, BRQ * 128, 1024));
    }
    wgmma_commit();

    // head_dim 128: dQ[:, 64 wg ..] = dS K over the 128 keys of both warpgroups;
    // head_dim 64: each warpgroup's part of dQ over its own 64 keys.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // dS^T stores -> wgmma
    __syncthreads();
    float dq[32];
    if constexpr (HD == 128) {
#pragma unroll
      for (int kk = 0; kk < BCK / 16; ++kk)
        wgmma_ss_tt(dq, gmma_desc(sS + kk * 16 * 128, BCK * 128, 1024),
                    gmma_desc(sK + wg * (BCK * 128) + kk * 16 * 128, BCK * 128, 1024), kk > 0);
    } else {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t rows = (wg * 64 + kk * 16) * 128;
        wgmma_ss_tt(dq, gmma_desc(sS + rows, BCK * 128, 1024),
                    gmma_desc(sK + rows, BCK * 128, 1024), kk > 0);
      }
    }
    wgmma_commit();
    wgmma_wait0();
    fence_regs(dk);
    fence_regs(dv);
    fence_regs(dq);
    // element (n, e) = dq[4 n + e]: query row 16 (warp & 3) + g8 + 8 (e >> 1),
    // column c0 + 8 n + 2 t4 + (e & 1), c0 = 64 wg for head_dim 128, else 0
    const int c0 = HD == 128 ? wg * 64 : 0;
    // DQX: both warpgroups hold all 64 columns (over their own keys).
    // Warpgroup w hands the other its columns 32 (1 - w) .. 32 (1 - w) + 31
    // (n = 4 (1 - w) .. 4 (1 - w) + 3) and adds the other's part of its own
    // columns 32 w ..; the fragment layout is the same in both, so rows and
    // columns match. (Loops over all n with a test, not from 4 w: indices
    // into dq must be compile-time, or dq goes to local memory.)
    if constexpr (DQX) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float* x = sX + wg * (BRQ * kWbXRow) + ((warp & 3) * 16 + g8 + 8 * r) * kWbXRow + 2 * t4;
#pragma unroll
        for (int n = 0; n < 8; ++n)
          if ((n >> 2) != wg)
            *reinterpret_cast<float2*>(x + 8 * (n & 3)) =
                make_float2(dq[4 * n + 2 * r], dq[4 * n + 2 * r + 1]);
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float* x =
            sX + (1 - wg) * (BRQ * kWbXRow) + ((warp & 3) * 16 + g8 + 8 * r) * kWbXRow + 2 * t4;
#pragma unroll
        for (int n = 0; n < 8; ++n)
          if ((n >> 2) == wg) {
            const float2 o = *reinterpret_cast<const float2*>(x + 8 * (n & 3));
            dq[4 * n + 2 * r] += o.x;
            dq[4 * n + 2 * r + 1] += o.y;
          }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = q0 + (warp & 3) * 16 + g8 + 8 * r;
      if (row >= a.Tq) continue;
      float* dst = a.dq + (int64_t(blk.b) * a.Tq + row) * blk.ldq + int64_t(h) * HD + c0 + 2 * t4;
#pragma unroll
      for (int n = 0; n < 8; ++n)
        if (!DQX || (n >> 2) == wg)
          atomicAdd(reinterpret_cast<float2*>(dst + n * 8),
                    make_float2(dq[4 * n + 2 * r] * a.scale, dq[4 * n + 2 * r + 1] * a.scale));
    }
    // Stages and dS^T are rewritten next iteration: wait here for both
    // warpgroups. With DQX, both passed the exchange's barrier after every
    // wgmma of this iteration had finished (stages and dS^T are free), and
    // the exchange buffer is written next only after the next dQ barrier,
    // which each warpgroup reaches after its reads of it here.
    if constexpr (!DQX) __syncthreads();
  }

  if (a.hsplit > 1)
    store_dk_dv_part<HD>(a, blk, k0 + kr + g8, t4, as_frags(dk), as_frags(dv));
  else
    add_dk_dv_rows<HD>(a, blk, k0 + kr + g8, t4, as_frags(dk), as_frags(dv));
#else
  __trap();  // launched only on sm_90 devices, for which the sm_90a code exists
#endif
}

// ---- launchers -----------------------------------------------------------------

template <int HD, int NW, int BC, int MT, bool QREG>
void launch_fwd(const FwdArgs& a, cudaStream_t stream) {
  constexpr int BR = 16 * MT * NW;
  constexpr size_t smem = size_t(BR) * HD * 2 + 4 * size_t(BC) * HD * 2;
  auto kernel = attn_fwd_kernel<HD, NW, BC, MT, QREG>;
  static bool configured = false;  // per instantiation
  if (!configured) {
    set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(attention forward)");
    configured = true;
  }
  const dim3 grid((a.Tq + BR - 1) / BR, a.H, a.B);
  RT_ATTN_LAUNCH("attention forward launch", kernel, grid, NW * 32, smem, stream, a);
}

template <int HD>
void launch_fwd_wgmma(const FwdArgs& a, cudaStream_t stream) {
  constexpr size_t smem = wf_smem(HD);
  auto kernel = attn_fwd_wgmma_kernel<HD>;
  static bool configured = false;  // per instantiation
  if (!configured) {
    set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(attention forward, wgmma)");
    configured = true;
  }
  const dim3 grid((a.Tq + 127) / 128, a.H, a.B);
  RT_ATTN_LAUNCH("attention forward (wgmma) launch", kernel, grid, kWfThreads, smem, stream, a);
}

// Whether the current device runs the sm_90a code (Hopper) of this build.
bool device_has_wgmma() {
#if defined(RT_CUDA_SM90A)
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();  // clear "no device"
    return false;
  }
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

// With a head split, dk, dv += the parts the backward blocks stored.
void sum_bwd_parts(const BwdArgs& a, int hd, cudaStream_t stream) {
  if (a.hsplit <= 1) return;
  const int64_t n = int64_t(a.B) * a.Tk * a.G * hd;
#ifdef RT_CUDA_EMULATE
  const unsigned sum_blocks = 3;  // few blocks: the grid-stride loop is exercised
#else
  const unsigned sum_blocks = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
#endif
  RT_ATTN_LAUNCH("attention backward (sum of head parts) launch", bwd_sum_parts_kernel,
                 dim3(sum_blocks), 256, 0, stream, a.dk, a.dv, a.dk_part, a.dv_part, n, a.hsplit);
}

// Both backward kernels take key tiles of kBwdKeyTile rows on the linear grid.
unsigned bwd_blocks(const BwdArgs& a) {
  return unsigned(int64_t((a.Tk + kBwdKeyTile - 1) / kBwdKeyTile) * a.G * a.hsplit * a.B);
}

template <int HD, bool DQX>
void launch_bwd_wgmma(const BwdArgs& a, cudaStream_t stream) {
  static_assert(kWbBCK == kBwdKeyTile, "head_split_for counts key tiles of kBwdKeyTile rows");
  constexpr size_t smem = wb_smem(HD, DQX);
  auto kernel = attn_bwd_wgmma_kernel<HD, DQX>;
  static bool configured = false;  // per instantiation
  if (!configured) {
    set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(attention backward, wgmma)");
    configured = true;
  }
  RT_ATTN_LAUNCH("attention backward (wgmma) launch", kernel, dim3(bwd_blocks(a)), kWbThreads,
                 smem, stream, a);
  sum_bwd_parts(a, HD, stream);
}

template <int HD, int NW, int BRQ>
void launch_bwd(const BwdArgs& a, cudaStream_t stream) {
  constexpr int BCK = 16 * NW;
  static_assert(BCK == kBwdKeyTile, "head_split_for counts key tiles of kBwdKeyTile rows");
  constexpr size_t smem = 2 * size_t(BCK) * HD * 2 + 4 * size_t(BRQ) * HD * 2 +
                          size_t(BCK) * BRQ * 2 + 4 * size_t(BRQ) * sizeof(float);
  auto kernel = attn_bwd_kernel<HD, NW, BRQ>;
  static bool configured = false;
  if (!configured) {
    set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(attention backward)");
    configured = true;
  }
  RT_ATTN_LAUNCH("attention backward launch", kernel, dim3(bwd_blocks(a)), NW * 32, smem, stream,
                 a);
  sum_bwd_parts(a, HD, stream);
}

}  // namespace

void check_attention_params(const AttentionParams& p) {
  if (p.hd != 64 && p.hd != 128)
    throw UsageError("CUDA attention supports head_dim 64 or 128, got " + std::to_string(p.hd) +
                     ": choose model.hidden_size / model.num_heads in {64, 128}");
  if (p.B < 0 || p.Tq < 0 || p.Tk < 0 || p.H <= 0 || p.G <= 0 || p.H % p.G != 0)
    throw UsageError("CUDA attention: bad shape (B=" + std::to_string(p.B) +
                     ", Tq=" + std::to_string(p.Tq) + ", Tk=" + std::to_string(p.Tk) +
                     ", H=" + std::to_string(p.H) + ", G=" + std::to_string(p.G) +
                     "): G must divide H and sizes must be non-negative");
  const int64_t span = (p.q_offset > p.k_offset ? p.q_offset - p.k_offset : p.k_offset - p.q_offset) +
                       int64_t(p.Tq) + int64_t(p.Tk);
  if (span >= (int64_t(1) << 30))
    throw UsageError("CUDA attention: query/key positions span " + std::to_string(span) +
                     " >= 2^30 (positions are handled as 32-bit distances)");
  if (!(p.scale > 0.f))
    throw UsageError("CUDA attention: the softmax scale must be positive, got " +
                     std::to_string(p.scale));
  if (p.B > 65535 || p.H > 65535)
    throw UsageError("CUDA attention: batch and heads must each be <= 65535");
}

bool wgmma_available() { return device_has_wgmma(); }

namespace {
// RINGTRAIN_CUDA_ATTENTION (unset or auto, mma, wgmma, wgmma-dqx): what kAuto
// runs, to compare the kernels end to end (tools/gpu_check.sh --attn-env);
// wgmma-dqx is wgmma with the head_dim-64 backward's dQ exchange, whatever
// impl is asked for (kWgmmaDqExchangeVerified). Read at every call (a
// getenv): tests set and unset it.
enum class EnvAttention { kAuto, kMma, kWgmma, kWgmmaDqx };
EnvAttention env_attention() {
  const char* v = std::getenv("RINGTRAIN_CUDA_ATTENTION");
  const std::string_view s = v ? v : "";
  EnvAttention e;
  if (s.empty() || s == "auto")
    return EnvAttention::kAuto;
  else if (s == "mma")
    e = EnvAttention::kMma;
  else if (s == "wgmma")
    e = EnvAttention::kWgmma;
  else if (s == "wgmma-dqx")
    e = EnvAttention::kWgmmaDqx;
  else
    throw UsageError("RINGTRAIN_CUDA_ATTENTION=" + std::string(s) +
                     ": expected auto, mma, wgmma or wgmma-dqx (or leave it unset)");
  static bool said = false;  // once per process, so that a run's log shows it
  if (!said) {
    said = true;
    std::fprintf(stderr, "ringtrain: RINGTRAIN_CUDA_ATTENTION=%s: attention runs the %s kernels\n",
                 v, v);
  }
  return e;
}

// The kernel family: wgmma on Hopper unless asked otherwise, mma.sync
// everywhere else. (The head_dim-64 wgmma kernels and their head split first
// ran, and passed, on an H200 in session 14: docs/gpu.md.)
bool use_wgmma(AttentionImpl impl) {
  if (impl == AttentionImpl::kAuto) {
    const EnvAttention e = env_attention();
    if (e == EnvAttention::kMma) impl = AttentionImpl::kMma;
    if (e == EnvAttention::kWgmma || e == EnvAttention::kWgmmaDqx) impl = AttentionImpl::kWgmma;
  }
  if (impl == AttentionImpl::kWgmma) {
    if (!device_has_wgmma())
      throw UsageError("CUDA attention: the wgmma kernels need an sm_90 (Hopper) GPU; use "
                       "AttentionImpl::kAuto or kMma");
    return true;
  }
  return impl == AttentionImpl::kAuto && device_has_wgmma();
}
}  // namespace

AttentionImpl resolve_attention_impl(AttentionImpl impl) {
  return use_wgmma(impl) ? AttentionImpl::kWgmma : AttentionImpl::kMma;
}

void attention_forward_bf16(const AttentionParams& p, uint16_t* out, float* lse,
                            const uint16_t* q, const uint16_t* k, const uint16_t* v,
                            void* stream, AttentionImpl impl) {
  check_attention_params(p);
  const bool wg = use_wgmma(impl);
  if (p.B == 0 || p.Tq == 0) return;
  FwdArgs a{q,      k,        v,           out,  lse, p.B, p.Tq, p.Tk, p.H, p.G, p.q_offset,
            p.k_offset, int(p.q_offset - p.k_offset), p.causal, p.alibi_slopes, p.scale * kLog2e};
  auto s = static_cast<cudaStream_t>(stream);
  // Tile shapes measured on an H100 (tests/bench/bench_cuda_attention.cpp, README).
  if (wg && p.hd == 128)
    launch_fwd_wgmma<128>(a, s);
  else if (wg)
    launch_fwd_wgmma<64>(a, s);
  else if (p.hd == 128)
    launch_fwd<128, 4, 64, 2, false>(a, s);
  else
    launch_fwd<64, 4, 64, 2, true>(a, s);
}

namespace {
int g_forced_head_split = 0;  // force_attention_backward_head_split: > 0 or 0 (automatic)
bool g_forced_dq_exchange = false;  // force_attention_backward_dq_exchange

// Whether the head_dim-64 wgmma backward sums its warpgroups' dQ halves in
// shared memory (attn_bwd_wgmma_kernel's DQX).
bool dq_exchange() {
  return kWgmmaDqExchangeVerified || g_forced_dq_exchange ||
         env_attention() == EnvAttention::kWgmmaDqx;
}

// Floats of the workspace before the parts (D), rounded up to 16 bytes.
size_t d_floats(const AttentionParams& p) {
  return (size_t(p.B) * size_t(p.H) * size_t(p.Tq) + 3) / 4 * 4;
}

// The head split of a backward (either kernel family: both take key tiles of
// kBwdKeyTile rows).
int head_split_for(const AttentionParams& p) {
  const int rep = p.H / p.G;
  if (g_forced_head_split > 0) {
    if (rep % g_forced_head_split != 0)
      throw UsageError("attention backward head split " + std::to_string(g_forced_head_split) +
                       " does not divide the " + std::to_string(rep) +
                       " query heads per kv head");
    return g_forced_head_split;
  }
  // The smallest divisor of rep that reaches the target, unless that
  // overshoots it by 4x (the parts' memory), then the divisor below it.
  const int64_t blocks = int64_t((p.Tk + kBwdKeyTile - 1) / kBwdKeyTile) * p.G * p.B;
  int prev = 1;
  for (int d = 1; d <= rep; ++d) {
    if (rep % d != 0) continue;
    if (blocks * d >= kBwdTargetBlocks) return d > 1 && blocks * d > 4 * kBwdTargetBlocks ? prev : d;
    prev = d;
  }
  return rep;
}
}  // namespace

void force_attention_backward_dq_exchange(bool on) { g_forced_dq_exchange = on; }

void force_attention_backward_head_split(int s) {
  if (s < 0) throw UsageError("force_attention_backward_head_split: s must be >= 0");
  g_forced_head_split = s;
}

int attention_backward_head_split(const AttentionParams& p, AttentionImpl impl) {
  check_attention_params(p);
  (void)use_wgmma(impl);  // a UsageError where impl cannot run
  return head_split_for(p);
}

size_t attention_backward_workspace_floats(const AttentionParams& p, AttentionImpl impl) {
  const int split = attention_backward_head_split(p, impl);
  const size_t parts = split > 1 ? 2 * size_t(split) * p.B * p.Tk * p.G * p.hd : 0;
  return d_floats(p) + parts;
}

void attention_backward_bf16(const AttentionParams& p, float* dq, float* dk, float* dv,
                             const uint16_t* dout, const uint16_t* q, const uint16_t* k,
                             const uint16_t* v, const uint16_t* out, const float* lse,
                             float* workspace, void* stream, AttentionImpl impl) {
  check_attention_params(p);
  const bool wg = use_wgmma(impl);
  if (p.B == 0 || p.Tq == 0 || p.Tk == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = int64_t(p.B) * p.Tq * p.H;
  constexpr int kWarps = 8;
  const unsigned blocks = unsigned((rows + kWarps - 1) / kWarps);
  if (p.hd == 128)
    RT_ATTN_LAUNCH("attention backward (rowsum) launch", attn_bwd_dot_kernel<128>, blocks,
                   kWarps * 32, 0, s, workspace, dout, out, p.B, p.Tq, p.H);
  else
    RT_ATTN_LAUNCH("attention backward (rowsum) launch", attn_bwd_dot_kernel<64>, blocks,
                   kWarps * 32, 0, s, workspace, dout, out, p.B, p.Tq, p.H);
  const int split = head_split_for(p);
  float* parts = workspace + d_floats(p);
  const size_t part_floats = size_t(split) * p.B * p.Tk * p.G * p.hd;
  BwdArgs a{q,      k,      v,     dout, lse,        workspace, dq,      dk, dv,
            p.B,    p.Tq,   p.Tk,  p.H,  p.G,        p.q_offset, p.k_offset,
            int(p.q_offset - p.k_offset), p.causal, p.alibi_slopes, p.scale, p.scale * kLog2e,
            split, split > 1 ? parts : nullptr, split > 1 ? parts + part_floats : nullptr};
  if (wg && p.hd == 128)
    launch_bwd_wgmma<128, false>(a, s);
  else if (wg && dq_exchange())
    launch_bwd_wgmma<64, true>(a, s);
  else if (wg)
    launch_bwd_wgmma<64, false>(a, s);
  else if (p.hd == 128)
    launch_bwd<128, 8, 64>(a, s);
  else
    launch_bwd<64, 8, 64>(a, s);
}

}  // namespace rt::RT_CUDA_NS
