// A CUDA-on-CPU fiber emulator: the CUDA backend's kernel source
// (model/cuda/ops.cu), compiled by g++ with -DRT_CUDA_EMULATE=1, includes this
// header instead of the CUDA headers and runs on the CPU, so that CI (no GPU)
// checks the kernels' index arithmetic, reductions and barriers. It says
// nothing about speed, races between blocks, or the hardware's rounding of
// fused and approximate operations (__expf here is expf).
//
// What kernel code may use (exactly this surface):
//   keywords      __global__, __device__, __host__ (nothing), __forceinline__
//                 (inline), __launch_bounds__(...) (nothing), __restrict__
//                 (g++'s own), __shared__ (= static: one copy, shared by the
//                 threads of the block; correct because blocks run one at a
//                 time on the calling thread). No dynamic (extern) shared
//                 memory, no __constant__.
//   types         dim3 {x, y, z}: dim3(x), dim3(x, y), dim3(x, y, z), unset
//                 extents are 1.
//   built-ins     threadIdx (per thread), blockIdx, blockDim, gridDim
//                 (read .x .y .z), warpSize (32).
//   barriers      __syncthreads(); __syncwarp(mask = 0xffffffff).
//   shuffles      __shfl_sync(mask, v, srcLane, width = 32),
//                 __shfl_xor_sync(mask, v, laneMask, width = 32),
//                 __shfl_down_sync(mask, v, delta, width = 32),
//                 __shfl_up_sync(mask, v, delta, width = 32), for float,
//                 double, int, unsigned, long, unsigned long, long long,
//                 unsigned long long. Lane = linear thread id % 32, warp =
//                 linear id / 32, linear id = x + y*blockDim.x +
//                 z*blockDim.x*blockDim.y. Source lanes follow PTX shfl.sync
//                 exactly: a source outside the caller's width-segment (up,
//                 down) or beyond its end (xor) yields the caller's own
//                 value; srcLane is taken modulo width; delta/laneMask use
//                 their low 5 bits.
//   atomics       atomicAdd on float*, double*, int*, unsigned*,
//                 unsigned long long*; atomicMax, atomicMin on int*. Each
//                 returns the old value.
//   math          __expf, __logf, __fdividef, rsqrtf, __fmaf_rn,
//                 __float_as_uint, __uint_as_float, __float_as_int,
//                 __int_as_float, __ldg(const T*); <cmath> unqualified: expf,
//                 logf, sqrtf, fmaxf, fminf, log1pf, powf, exp, log, isinf,
//                 isnan, ...
//   launch        rt::emu::launch(grid, block, kernel, args...) in place of
//                 kernel<<<grid, block>>>(args...): kernel is a pointer to a
//                 __global__ function or a callable (lambda); each thread
//                 calls kernel(args...) with its own copies of the arguments.
//                 rt::emu::launch_dynamic(grid, block, bytes, kernel, args...)
//                 in place of kernel<<<grid, block, bytes>>>(args...): the
//                 block's dynamic shared memory is rt::emu::dynamic_shared()
//                 (`extern __shared__ T name[]` on a GPU), bytes of it,
//                 256-byte aligned, filled with 0xFF before every block
//                 (uninitialised on a GPU; 0xFF reads as NaN in fp32 and bf16).
//   tensor-core PTX (model/cuda/attention.cu's wrappers), as warp collectives
//                 (all 32 lanes must reach them, as with a shuffle):
//                 rt::emu::ldmatrix_x4(addr, trans, r) for
//                 ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16,
//                 rt::emu::mma_m16n8k16_bf16(c, a, b0, b1) for
//                 mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (fp32
//                 accumulation in k order; the hardware's order is not
//                 specified), rt::emu::cp_async16(addr, src, valid) for
//                 cp.async.cg.shared.global of 16 bytes (copied at once here:
//                 commit and wait do nothing). A shared address is
//                 __cvta_generic_to_shared(p): p's offset in the dynamic
//                 shared memory (only there). Also float2 / make_float2, float4 /
//                 make_float4, uint4,
//                 global min / max, __align__(n).
//
// How it runs: blocks one after another (blockIdx.x fastest, then y, then z)
// on the calling thread; the threads of a block as fibers (64 KiB stacks with
// a guard page below, pooled and reused across launches; up to 1024 threads).
// Between two __syncthreads the warps run one after another, each until all
// its threads reach the next __syncthreads (or return); within a warp a thread
// runs until it reaches a barrier or a warp intrinsic, which suspends a lane
// until all 32 lanes of its warp have arrived. The order of the warps, and of
// the threads within each, alternates between forward and reverse from one
// barrier phase to the next (and block to block: block b's phase p runs
// forward when b + p is even), so a missing __syncthreads shows up as a wrong
// result: a thread (or a whole warp) reads shared memory before (or after) the
// thread that should have written it first.
//
// Cost (x86-64, this project's 2-core CI machine): ~1.5 us per block of 32
// threads without barriers, ~30-40 us per block of 256 threads with two
// __syncthreads (each suspension ~40 ns); about 10x more where ucontext is
// used. Size emulated test cases in thousands of blocks, not millions.
//
// Errors: launch() throws std::runtime_error (after abandoning the grid: no
// further block runs; suspended threads are discarded without unwinding, so
// kernels should hold only trivially destructible locals, as device code
// does) for: a block of 0 or more than 1024 threads, or extents past CUDA's
// limits; a __syncthreads not reached by every thread of the block (some
// returned while others wait: a divergent barrier, undefined on a GPU); a
// warp intrinsic without the full mask 0xffffffff, in a warp of fewer than 32
// threads, or not reached by all 32 lanes (or lanes at different intrinsics);
// a width that is not a power of two in [1, 32]; a kernel that throws (the
// first exception, caught inside its fiber, is nested in the error, whose
// message names the block and thread). Not detected: barriers at different
// __syncthreads call sites that all threads reach, races between blocks.
//
// Not thread-safe and not reentrant: one launch at a time per process (a
// second concurrent or nested launch throws). A stack overflow (> 64 KiB of
// locals) hits the guard page: SIGSEGV.
#pragma once

#if defined(__CUDACC__)
#error "model/cuda/emu/cuda_emu.h is the CPU emulation of CUDA: include it only without nvcc (RT_CUDA_EMULATE)"
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

// ---- keywords ---------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

// ---- dim3 and the built-in variables ---------------------------------------
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace rt::emu::detail {
// Set by the scheduler before it switches to a thread (threadIdx) or starts a
// block (blockIdx) or launch (blockDim, gridDim). Kernel code reads them
// through the const references below; every switch is an opaque call, so the
// compiler reloads them after each barrier or warp intrinsic.
extern dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;
}  // namespace rt::emu::detail

inline const dim3& threadIdx = rt::emu::detail::g_thread_idx;
inline const dim3& blockIdx = rt::emu::detail::g_block_idx;
inline const dim3& blockDim = rt::emu::detail::g_block_dim;
inline const dim3& gridDim = rt::emu::detail::g_grid_dim;
constexpr int warpSize = 32;

// ---- the emulator's entry points (model/cuda/emu/cuda_emu.cpp) -------------
namespace rt::emu::detail {

enum class WarpOp : int { kSyncWarp, kShflIdx, kShflUp, kShflDown, kShflXor };

// Suspends the calling thread at a block barrier until every thread of the
// block has arrived.
void sync_threads();

// Suspends the calling lane until all 32 lanes of its warp are at the same
// warp intrinsic, then returns the bits of the value of the lane PTX
// shfl.sync selects (lane_arg: srcLane, delta or laneMask).
std::uint64_t warp_exchange(WarpOp op, unsigned mask, std::uint64_t bits, int size, int lane_arg,
                            int width);

using KernelThunk = void (*)(void* body);

// Runs body on every thread of the grid; throws std::runtime_error on the
// errors listed at the top of this file.
// dynamic_smem: bytes of dynamic shared memory per block (launch_dynamic).
void run_grid(dim3 grid, dim3 block, KernelThunk thunk, void* body,
              std::size_t dynamic_smem = 0);

template <class T>
std::uint64_t to_bits(T v) {
  if constexpr (sizeof(T) == 4) {
    return std::bit_cast<std::uint32_t>(v);
  } else {
    return std::bit_cast<std::uint64_t>(v);
  }
}
template <class T>
T from_bits(std::uint64_t b) {
  if constexpr (sizeof(T) == 4) {
    return std::bit_cast<T>(static_cast<std::uint32_t>(b));
  } else {
    return std::bit_cast<T>(b);
  }
}
template <class T>
T shuffle(WarpOp op, unsigned mask, T v, int lane_arg, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8);
  return from_bits<T>(warp_exchange(op, mask, to_bits(v), int(sizeof(T)), lane_arg, width));
}

}  // namespace rt::emu::detail

// ---- barriers -----------------------------------------------------------------
inline void __syncthreads() { rt::emu::detail::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  rt::emu::detail::warp_exchange(rt::emu::detail::WarpOp::kSyncWarp, mask, 0, 4, 0, 32);
}

// ---- warp shuffles --------------------------------------------------------------
#define RT_EMU_SHUFFLES(T)                                                                    \
  inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {                  \
    return rt::emu::detail::shuffle(rt::emu::detail::WarpOp::kShflIdx, mask, v, src_lane,   \
                                    width);                                                  \
  }                                                                                          \
  inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {             \
    return rt::emu::detail::shuffle(rt::emu::detail::WarpOp::kShflUp, mask, v, int(delta),  \
                                    width);                                                  \
  }                                                                                          \
  inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {           \
    return rt::emu::detail::shuffle(rt::emu::detail::WarpOp::kShflDown, mask, v,            \
                                    int(delta), width);                                      \
  }                                                                                          \
  inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {             \
    return rt::emu::detail::shuffle(rt::emu::detail::WarpOp::kShflXor, mask, v, lane_mask,   \
                                    width);                                                  \
  }
RT_EMU_SHUFFLES(float)
RT_EMU_SHUFFLES(double)
RT_EMU_SHUFFLES(int)
RT_EMU_SHUFFLES(unsigned)
RT_EMU_SHUFFLES(long)
RT_EMU_SHUFFLES(unsigned long)
RT_EMU_SHUFFLES(long long)
RT_EMU_SHUFFLES(unsigned long long)
#undef RT_EMU_SHUFFLES

// ---- atomics (threads never run concurrently: plain read-modify-write) ----------
#define RT_EMU_ATOMIC_ADD(T)                 \
  inline T atomicAdd(T* address, T value) { \
    T old = *address;                        \
    *address = old + value;                  \
    return old;                              \
  }
RT_EMU_ATOMIC_ADD(float)
RT_EMU_ATOMIC_ADD(double)
RT_EMU_ATOMIC_ADD(int)
RT_EMU_ATOMIC_ADD(unsigned)
RT_EMU_ATOMIC_ADD(unsigned long long)
#undef RT_EMU_ATOMIC_ADD
inline int atomicMax(int* address, int value) {
  int old = *address;
  *address = old > value ? old : value;
  return old;
}
inline int atomicMin(int* address, int value) {
  int old = *address;
  *address = old < value ? old : value;
  return old;
}

// ---- math ---------------------------------------------------------------------
using std::isinf;
using std::isnan;
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// ---- launch ---------------------------------------------------------------------
namespace rt::emu {

// kernel<<<grid, block, dynamic_smem_bytes>>>(args...) on the CPU: every
// thread of every block calls kernel(args...) (its own copies, as CUDA passes
// kernel arguments by value). Returns when the grid has finished; throws
// std::runtime_error on a bad configuration or a kernel error (top of this
// file). Not reentrant, not thread-safe.
template <class Kernel, class... Args>
void launch_dynamic(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, Kernel kernel,
                    Args... args) {
  static_assert(std::is_invocable_v<Kernel&, Args&...>,
                "rt::emu::launch: the kernel cannot be called with these arguments");
  static_assert(std::is_void_v<std::invoke_result_t<Kernel&, Args&...>>,
                "rt::emu::launch: a kernel returns void");
  auto body = [&kernel, &args...]() { kernel(args...); };
  using Body = decltype(body);
  detail::run_grid(grid, block, [](void* b) { (*static_cast<Body*>(b))(); }, &body,
                   dynamic_smem_bytes);
}
// kernel<<<grid, block>>>(args...): no dynamic shared memory.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  launch_dynamic(grid, block, 0, kernel, args...);
}

// The running block's dynamic shared memory (launch_dynamic's bytes).
std::uint8_t* dynamic_shared();
// p's offset in the dynamic shared memory; throws (failing the launch) for a
// pointer outside it.
std::uint32_t shared_offset(const void* p);

// ---- tensor-core PTX, as warp collectives -------------------------------------
// ldmatrix .x4: lane l gives the shared address of row l % 8 of matrix l / 8
// (8 bf16 = 16 bytes). r[j] of lane l: without trans, elements 2 (l % 4) and
// 2 (l % 4) + 1 of row l / 4 of matrix j; with trans, elements (row 2 (l % 4),
// column l / 4) and (row 2 (l % 4) + 1, column l / 4). The lower element is in
// the low half.
void ldmatrix_x4(std::uint32_t addr, bool trans, std::uint32_t (&r)[4]);
// c += a b for a 16x16 (row) by 16x8 (col) bf16 product into fp32, in the
// fragments of PTX's mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   a[0] (g, 2t..2t+1)  a[1] (g+8, 2t..)  a[2] (g, 2t+8..)  a[3] (g+8, 2t+8..)
//   b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   c[0], c[1] (g, 2t..2t+1)  c[2], c[3] (g+8, 2t..2t+1)
void mma_m16n8k16_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                       std::uint32_t b1);
// 16 bytes from src to shared address dst (zeros when !valid), at once.
void cp_async16(std::uint32_t dst, const void* src, bool valid);
}  // namespace rt::emu

// ---- CUDA's vector type and global helpers the kernels use ----------------------
struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
using std::max;
using std::min;
inline std::uint32_t __cvta_generic_to_shared(const void* p) { return rt::emu::shared_offset(p); }
