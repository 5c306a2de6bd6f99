// The CUDA backend's kernels other than attention (declared in
// model/cuda/kernels.h, which says how this file also builds for the CPU
// emulator). Element-wise kernels are grid-stride loops; row kernels give one
// block (or one warp) to a row and reduce with warp shuffles and one shared
// array; reductions over rows write per-block partials that a second kernel
// sums in block order, so that no result depends on scheduling.
//
// Numerics follow the CPU backend (model/cpu/cpu_backend.cpp): inputs read in
// their dtype, arithmetic in fp32 (fp64 for the cross-entropy normaliser and
// the loss / norm sums), one rounding where a bf16 output is stored.
#include "model/cuda/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#ifdef RT_CUDA_EMULATE
#include <numeric>
#include <vector>

#include "model/cuda/emu/cuda_emu.h"
#define RT_LAUNCH(kernel, grid, block, stream, ...)                    \
  do {                                                                 \
    (void)(stream);                                                    \
    ::rt::emu::launch(dim3(grid), dim3(block), kernel, __VA_ARGS__);   \
  } while (0)
#else
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include "model/cuda/cuda_check.h"
#define RT_LAUNCH(kernel, grid, block, stream, ...)                                  \
  do {                                                                               \
    kernel<<<(grid), (block), 0, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__); \
    RT_CUDA_CHECK(cudaGetLastError());                                               \
  } while (0)
#endif

namespace rt::RT_CUDA_NS::kern {

namespace {

constexpr int kThreads = 256;
#ifdef RT_CUDA_EMULATE
constexpr size_t kMaxBlocks = 3;  // few blocks: grid-stride tails are still exercised
#else
constexpr size_t kMaxBlocks = 4096;
#endif

unsigned blocks_for(size_t n, size_t per_block = kThreads) {
  size_t b = (n + per_block - 1) / per_block;
  return unsigned(std::max<size_t>(1, std::min(b, kMaxBlocks)));
}

// ---- element access ---------------------------------------------------------

__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

// Round to nearest even, NaN kept quiet: the host's f32_to_bf16 (model/tensor.h).
__device__ __forceinline__ uint16_t f2bf(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

__device__ __forceinline__ float ld(CTP x, size_t i) {
  return x.bf16 ? bf2f(static_cast<const uint16_t*>(x.p)[i]) : static_cast<const float*>(x.p)[i];
}
__device__ __forceinline__ float ld(TP x, size_t i) { return ld(CTP{x.p, x.bf16}, i); }

__device__ __forceinline__ void st(TP x, size_t i, float v) {
  if (x.bf16)
    static_cast<uint16_t*>(x.p)[i] = f2bf(v);
  else
    static_cast<float*>(x.p)[i] = v;
}

// V consecutive elements i .. i + V - 1 in fp32. V = 8 (the element-wise
// kernels' fast path): one 16-byte access for bf16, two for fp32, so i must be
// a multiple of 8 and the tensor 16-byte aligned (launchers check, vec_ok).
template <int V>
struct Vec {
  float v[V];
};

template <int V>
__device__ __forceinline__ Vec<V> ldv(CTP x, size_t i) {
  Vec<V> r;
  if constexpr (V == 1) {
    r.v[0] = ld(x, i);
  } else {
    static_assert(V == 8, "vector width 1 or 8");
    if (x.bf16) {
      const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x.p) + i);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        r.v[2 * k] = __uint_as_float(w[k] << 16);
        r.v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
      }
    } else {
      const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(x.p) + i);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float4 f = q[k];
        r.v[4 * k] = f.x, r.v[4 * k + 1] = f.y, r.v[4 * k + 2] = f.z, r.v[4 * k + 3] = f.w;
      }
    }
  }
  return r;
}
template <int V>
__device__ __forceinline__ Vec<V> ldv(TP x, size_t i) {
  return ldv<V>(CTP{x.p, x.bf16}, i);
}

template <int V>
__device__ __forceinline__ void stv(TP x, size_t i, const Vec<V>& r) {
  if constexpr (V == 1) {
    st(x, i, r.v[0]);
  } else {
    if (x.bf16) {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) w[k] = uint32_t(f2bf(r.v[2 * k])) | (uint32_t(f2bf(r.v[2 * k + 1])) << 16);
      uint4 u;
      u.x = w[0], u.y = w[1], u.z = w[2], u.w = w[3];
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(x.p) + i) = u;
    } else {
      float4* q = reinterpret_cast<float4*>(static_cast<float*>(x.p) + i);
      q[0] = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
      q[1] = make_float4(r.v[4], r.v[5], r.v[6], r.v[7]);
    }
  }
}

__device__ __forceinline__ size_t global_tid() {
  return size_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_threads() { return size_t(gridDim.x) * blockDim.x; }

// ---- reductions (blockDim.x a multiple of 32, at most 1024) -----------------

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread of the block gets the block's sum (the same bits in every
// thread: each warp sums the warps' partials in the same order).
template <class T>
__device__ T block_sum(T v) {
  __shared__ T part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers are done with part
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return warp_sum(lane < nw ? part[lane] : T(0));
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return warp_max(lane < nw ? part[lane] : -INFINITY);
}

// ---- kernels ----------------------------------------------------------------

// Element-wise kernels take V elements per thread and step (V = 1 or 8; with
// 8, n is a multiple of 8 and every tensor 16-byte aligned).
template <int V>
__global__ void cast_kernel(TP dst, CTP src, size_t n) {
  for (size_t i = global_tid() * V; i < n; i += grid_threads() * V) stv<V>(dst, i, ldv<V>(src, i));
}

__global__ void embedding_forward_kernel(TP out, const int32_t* tokens, CTP table, int N, int C) {
  const size_t n = size_t(N) * C;
  for (size_t i = global_tid(); i < n; i += grid_threads()) {
    const size_t row = i / C, c = i % C;
    st(out, i, ld(table, size_t(tokens[row]) * C + c));
  }
}

// keys: token ids sorted (stable), idx: their rows. For each run of equal
// ids, the block's y index picks 32 columns (one per lane); warp w sums the
// run's rows w, w + 8, ... in order and warp 0 adds the 8 warp sums in warp
// order, once: deterministic whatever the grid, and a frequent id's rows (a
// run of thousands: spaces, a synthetic filler) are read by C/32 blocks of 8
// warps rather than by the 256 threads of one block.
__global__ void embedding_backward_sorted_kernel(TP dtable, CTP dout, const int32_t* keys,
                                                 const int32_t* idx, int N, int C) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float part[kWarps][32];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  for (int i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t tok = keys[i];
    if (i > 0 && keys[i - 1] == tok) continue;  // the same for the whole block
    for (int c0 = int(blockIdx.y) * 32; c0 < C; c0 += int(gridDim.y) * 32) {
      const int c = c0 + lane;
      float acc = 0.f;
      if (c < C)
        for (int j = i + warp; j < N && keys[j] == tok; j += kWarps)
          acc += ld(dout, size_t(idx[j]) * C + c);
      part[warp][lane] = acc;
      __syncthreads();
      if (warp == 0 && c < C) {
        float sum = 0.f;
        for (int w = 0; w < kWarps; ++w) sum += part[w][lane];
        const size_t at = size_t(tok) * C + c;
        st(dtable, at, ld(dtable, at) + sum);
      }
      __syncthreads();
    }
  }
}

__global__ void iota_kernel(int32_t* x, int n) {
  for (size_t i = global_tid(); i < size_t(n); i += grid_threads()) x[i] = int32_t(i);
}

// Row kernels with V = 8: C is a multiple of 8 and every tensor 16-byte
// aligned; thread t owns columns 8 t .. 8 t + 7 (+ 8 blockDim.x ...).
template <int V>
__global__ void rmsnorm_forward_kernel(TP out, float* rstd, CTP inp, CTP weight, int N, int C,
                                       float eps) {
  for (int row = blockIdx.x; row < N; row += gridDim.x) {
    const size_t base = size_t(row) * C;
    float ss = 0.f;
    for (int c = threadIdx.x * V; c < C; c += blockDim.x * V) {
      const Vec<V> x = ldv<V>(inp, base + c);
#pragma unroll
      for (int k = 0; k < V; ++k) ss += x.v[k] * x.v[k];
    }
    ss = block_sum(ss);
    const float r = 1.f / sqrtf(ss / C + eps);
    for (int c = threadIdx.x * V; c < C; c += blockDim.x * V) {
      Vec<V> x = ldv<V>(inp, base + c);
      const Vec<V> w = ldv<V>(weight, c);
#pragma unroll
      for (int k = 0; k < V; ++k) x.v[k] = x.v[k] * r * w.v[k];
      stv<V>(out, base + c, x);
    }
    if (threadIdx.x == 0) rstd[row] = r;
  }
}

// dinp += per row; partial (gridDim.x, C): this block's rows' dweight terms.
template <int V>
__global__ void rmsnorm_backward_rows_kernel(TP dinp, float* partial, CTP dout, CTP inp,
                                             CTP weight, const float* rstd, int N, int C) {
  float* part = partial + size_t(blockIdx.x) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) part[c] = 0.f;
  __syncthreads();  // part's columns are owned in groups of V below
  for (int row = blockIdx.x; row < N; row += gridDim.x) {
    const size_t base = size_t(row) * C;
    const float r = rstd[row];
    float dot = 0.f;  // sum_c dy*w*x
    for (int c = threadIdx.x * V; c < C; c += blockDim.x * V) {
      const Vec<V> dy = ldv<V>(dout, base + c), x = ldv<V>(inp, base + c), w = ldv<V>(weight, c);
      Vec<V> pw = ldv<V>(CTP{part, false}, c);  // this thread's own columns: no race
#pragma unroll
      for (int k = 0; k < V; ++k) {
        dot += dy.v[k] * w.v[k] * x.v[k];
        pw.v[k] += dy.v[k] * x.v[k] * r;
      }
      stv<V>(TP{part, false}, c, pw);
    }
    dot = block_sum(dot);
    const float kr = dot * r * r * r / C;
    for (int c = threadIdx.x * V; c < C; c += blockDim.x * V) {
      const Vec<V> dy = ldv<V>(dout, base + c), x = ldv<V>(inp, base + c), w = ldv<V>(weight, c);
      Vec<V> d = ldv<V>(dinp, base + c);
#pragma unroll
      for (int k = 0; k < V; ++k) d.v[k] = d.v[k] + dy.v[k] * w.v[k] * r - x.v[k] * kr;
      stv<V>(dinp, base + c, d);
    }
  }
}

// out (R, C): row r is the sum of partial rows [r nb / R, (r + 1) nb / R), in
// order; the first of two passes over the rmsnorm backward's (nb, C) block
// partials, so that nb = 4096 rows are summed by R x C threads, not by C.
__global__ void column_chunk_sum_kernel(float* out, const float* partial, int nb, int C, int R) {
  for (int r = blockIdx.y; r < R; r += gridDim.y) {
    const int b0 = int(int64_t(r) * nb / R), b1 = int(int64_t(r + 1) * nb / R);
    for (size_t c = size_t(blockIdx.x) * blockDim.x + threadIdx.x; c < size_t(C);
         c += size_t(gridDim.x) * blockDim.x) {
      float s = 0.f;
      for (int b = b0; b < b1; ++b) s += partial[size_t(b) * C + c];
      out[size_t(r) * C + c] = s;
    }
  }
}

// dweight (C) += sum over the nb partial rows, in row order.
__global__ void column_sum_kernel(TP dweight, const float* partial, int nb, int C) {
  for (size_t c = global_tid(); c < size_t(C); c += grid_threads()) {
    float s = 0.f;
    for (int b = 0; b < nb; ++b) s += partial[size_t(b) * C + c];
    st(dweight, c, ld(dweight, c) + s);
  }
}

// V = 8: hd / 2 a multiple of 8 and x, cos, sin 16-byte aligned.
template <int V>
__global__ void rope_kernel(TP x, const float* cos, const float* sin, int B, int T, int nh, int hd,
                            float sign) {
  const int half = hd / 2, groups = half / V;
  const size_t n = size_t(B) * T * nh * groups;
  for (size_t i = global_tid(); i < n; i += grid_threads()) {
    const int j = int(i % groups) * V;
    const size_t bth = i / groups;  // (b*T + t)*nh + h
    const int t = int((bth / nh) % T);
    const size_t row = bth * hd;
    Vec<V> x1 = ldv<V>(x, row + j), x2 = ldv<V>(x, row + j + half);
    const Vec<V> c = ldv<V>(CTP{cos, false}, size_t(t) * half + j);
    const Vec<V> s = ldv<V>(CTP{sin, false}, size_t(t) * half + j);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float a = x1.v[k], b = x2.v[k], sk = sign * s.v[k];
      x1.v[k] = a * c.v[k] - b * sk;
      x2.v[k] = b * c.v[k] + a * sk;
    }
    stv<V>(x, row + j, x1);
    stv<V>(x, row + j + half, x2);
  }
}

// One warp per (t, h) row.
__global__ void attention_merge_kernel(TP out, float* lse, CTP blk, const float* blk_lse, int Tq,
                                       int H, int hd) {
  const size_t rows = size_t(Tq) * H;
  const int lane = threadIdx.x % 32;
  const size_t warps = grid_threads() / 32;
  for (size_t r = global_tid() / 32; r < rows; r += warps) {
    const int t = int(r / H), h = int(r % H);
    const size_t li = size_t(h) * Tq + t;
    const float a = lse[li], b = blk_lse[li];
    if (b == -INFINITY) continue;  // the block adds nothing to this row
    const float mx = fmaxf(a, b), mn = fminf(a, b);
    const float merged = a == -INFINITY ? b : mx + log1pf(expf(mn - mx));
    const float wa = a == -INFINITY ? 0.f : expf(a - merged);
    const float wb = expf(b - merged);
    const size_t base = r * hd;
    for (int j = lane; j < hd; j += 32)
      st(out, base + j, ld(out, base + j) * wa + ld(blk, base + j) * wb);
    __syncwarp();  // every lane has read lse[li]
    if (lane == 0) lse[li] = merged;
  }
}

template <int V>
__global__ void swiglu_forward_kernel(TP out, CTP gate, CTP up, size_t n) {
  for (size_t i = global_tid() * V; i < n; i += grid_threads() * V) {
    Vec<V> g = ldv<V>(gate, i);
    const Vec<V> u = ldv<V>(up, i);
#pragma unroll
    for (int k = 0; k < V; ++k) g.v[k] = g.v[k] / (1.f + expf(-g.v[k])) * u.v[k];
    stv<V>(out, i, g);
  }
}

template <int V>
__global__ void swiglu_backward_kernel(TP dgate, TP dup, CTP dout, CTP gate, CTP up, size_t n) {
  for (size_t i = global_tid() * V; i < n; i += grid_threads() * V) {
    const Vec<V> g = ldv<V>(gate, i), u = ldv<V>(up, i);
    const Vec<V> d = ldv<V>(dout, i);  // read first: dgate may alias dout
    Vec<V> dg, du;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float sig = 1.f / (1.f + expf(-g.v[k]));
      dg.v[k] = d.v[k] * u.v[k] * sig * (1.f + g.v[k] * (1.f - sig));
      du.v[k] = d.v[k] * (g.v[k] * sig);
    }
    stv<V>(dgate, i, dg);
    stv<V>(dup, i, du);
  }
}

template <int V>
__global__ void add_inplace_kernel(TP x, CTP y, size_t n) {
  for (size_t i = global_tid() * V; i < n; i += grid_threads() * V) {
    Vec<V> a = ldv<V>(x, i);
    const Vec<V> b = ldv<V>(y, i);
#pragma unroll
    for (int k = 0; k < V; ++k) a.v[k] += b.v[k];
    stv<V>(x, i, a);
  }
}

// One block per row: losses[row] = logsumexp - z[target]; with dloss_scale
// the row is overwritten with (softmax - onehot) * dloss_scale.
__global__ void cross_entropy_kernel(TP logits, float* losses, const int32_t* targets, int N, int V,
                                     float dloss_scale) {
  for (int row = blockIdx.x; row < N; row += gridDim.x) {
    const size_t base = size_t(row) * V;
    const int t = targets[row];
    if (t < 0) {
      if (threadIdx.x == 0) losses[row] = 0.f;
      if (dloss_scale != 0.f)
        for (int i = threadIdx.x; i < V; i += blockDim.x) st(logits, base + i, 0.f);
      continue;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, ld(logits, base + i));
    mx = block_max(mx);
    double sum = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += double(expf(ld(logits, base + i) - mx));
    sum = block_sum(sum);
    const float lse = mx + float(log(sum));
    if (threadIdx.x == 0) losses[row] = lse - ld(logits, base + t);
    __syncthreads();  // z[t] is read before any thread overwrites it
    if (dloss_scale != 0.f)
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = expf(ld(logits, base + i) - lse) * dloss_scale;
        if (i == t) g -= dloss_scale;
        st(logits, base + i, g);
      }
  }
}

// One block: acc += sum of losses (fp64, fixed order).
__global__ void loss_sum_kernel(double* acc, const float* losses, int N) {
  double s = 0.0;
  for (int i = threadIdx.x; i < N; i += blockDim.x) s += double(losses[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) *acc += s;
}

__global__ void sum_squares_partial_kernel(double* partial, const float* x, size_t n) {
  double s = 0.0;
  for (size_t i = global_tid(); i < n; i += grid_threads()) s += double(x[i]) * x[i];
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* out, const double* partial, int nb) {
  double s = 0.0;
  for (int i = threadIdx.x; i < nb; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

__global__ void scale_kernel(float* x, size_t n, float s) {
  for (size_t i = global_tid(); i < n; i += grid_threads()) x[i] *= s;
}

// One element of an AdamW step, torch.optim.AdamW order (decay the weight,
// then the Adam step): the CPU's formula, operation for operation.
__device__ __forceinline__ void adamw_element(float* master, TP compute, const float* grad,
                                              float* m, float* v, size_t j, float lr,
                                              float beta1, float beta2, float eps, float decay,
                                              float bc1, float bc2, float gscale) {
  const float g = grad[j] * gscale;
  const float mi = beta1 * m[j] + (1.f - beta1) * g;
  const float vi = beta2 * v[j] + (1.f - beta2) * g * g;
  m[j] = mi;
  v[j] = vi;
  const float denom = sqrtf(vi / bc2) + eps;
  const float p = master[j] * decay - lr * (mi / bc1) / denom;
  master[j] = p;
  if (compute.p) st(compute, j, p);
}

__global__ void adamw_kernel(float* master, TP compute, const float* grad, float* m, float* v,
                             size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float bc1, float bc2, float gscale) {
  const float decay = 1.f - lr * weight_decay;
  for (size_t i = global_tid(); i < n; i += grid_threads())
    adamw_element(master, compute, grad, m, v, i, lr, beta1, beta2, eps, decay, bc1, bc2, gscale);
}

// Each thread finds the segment of its first element by bisection, then
// walks forward as its grid-stride index grows.
__global__ void adamw_segments_kernel(const AdamSeg* segs, int nseg, size_t total, float lr,
                                      float beta1, float beta2, float eps, float bc1, float bc2,
                                      float gscale) {
  size_t i = global_tid();
  if (i >= total) return;
  int lo = 0, hi = nseg - 1;
  while (lo < hi) {  // the last segment with begin <= i
    const int mid = (lo + hi + 1) / 2;
    if (segs[mid].begin <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  int s = lo;
  for (; i < total; i += grid_threads()) {
    while (i >= segs[s].begin + segs[s].n) ++s;
    const AdamSeg& g = segs[s];
    adamw_element(g.master, g.compute, g.grad, g.m, g.v, i - g.begin, lr, beta1, beta2, eps,
                  1.f - lr * g.weight_decay, bc1, bc2, gscale);
  }
}

__global__ void sgd_kernel(float* master, TP compute, const float* grad, size_t n, float lr,
                           float weight_decay) {
  const float decay = 1.f - lr * weight_decay;
  for (size_t i = global_tid(); i < n; i += grid_threads()) {
    const float p = master[i] * decay - lr * grad[i];
    master[i] = p;
    if (compute.p) st(compute, i, p);
  }
}

__global__ void sgd_momentum_kernel(float* master, TP compute, const float* grad, float* buf,
                                    size_t n, float lr, float weight_decay, float momentum) {
  for (size_t i = global_tid(); i < n; i += grid_threads()) {
    const float d = grad[i] + weight_decay * master[i];
    const float b = momentum * buf[i] + d;
    buf[i] = b;
    const float p = master[i] - lr * b;
    master[i] = p;
    if (compute.p) st(compute, i, p);
  }
}

// Whether the element-wise kernels can take 8 elements at a time: n a
// multiple of 8 and every pointer 16-byte aligned.
bool vec_ok(size_t n, std::initializer_list<const void*> ptrs) {
  if (n % 8) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}

// An element-wise kernel over `items` (elements, or RoPE pairs): k8 (width
// 8) over groups of 8 when vec, else k1 (width 1).
template <class... P, class... A>
void launch_elementwise(void (*k8)(P...), void (*k1)(P...), bool vec, size_t items, void* stream,
                        A... args) {
  if (vec)
    RT_LAUNCH(k8, blocks_for(items / 8), kThreads, stream, args...);
  else
    RT_LAUNCH(k1, blocks_for(items), kThreads, stream, args...);
}

// rows per block for the row kernels: one block per row up to the cap
unsigned row_blocks(int N) { return unsigned(std::max(1, std::min<int>(N, int(kMaxBlocks)))); }

// A row kernel over N rows (row_blocks): k8 (width 8) when vec, else k1.
template <class... P, class... A>
void launch_rows(void (*k8)(P...), void (*k1)(P...), bool vec, int N, void* stream, A... args) {
  if (vec)
    RT_LAUNCH(k8, row_blocks(N), kThreads, stream, args...);
  else
    RT_LAUNCH(k1, row_blocks(N), kThreads, stream, args...);
}

// chunks of the rmsnorm backward's partial rows (column_chunk_sum_kernel): of
// 64 rows (2 in the emulator, whose 3 blocks would otherwise make one chunk)
#ifdef RT_CUDA_EMULATE
constexpr unsigned kChunkRows = 2;
#else
constexpr unsigned kChunkRows = 64;
#endif
unsigned column_chunks(int N) { return (row_blocks(N) + kChunkRows - 1) / kChunkRows; }

}  // namespace

// ---- launchers -------------------------------------------------------------------

// the rmsnorm backward's dweight terms: row_blocks(N) partial rows, then
// column_chunks(N) sums of chunks of them
size_t rmsnorm_backward_scratch_bytes(int N, int C) {
  return (size_t(row_blocks(N)) + column_chunks(N)) * C * sizeof(float);
}

size_t sum_squares_scratch_bytes(size_t n) {
  return align256((blocks_for(n) + 1) * sizeof(double));
}

#ifndef RT_CUDA_EMULATE
static size_t radix_sort_temp_bytes(int N) {
  size_t bytes = 0;
  RT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr),
                                                static_cast<const int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr), N));
  return bytes;
}
#endif

size_t embedding_backward_scratch_bytes(int N) {
  size_t b = 3 * align256(size_t(N) * sizeof(int32_t));
#ifndef RT_CUDA_EMULATE
  b += align256(radix_sort_temp_bytes(N));
#endif
  return b;
}

void cast(TP dst, CTP src, size_t n, void* stream) {
  if (!n) return;
  launch_elementwise(cast_kernel<8>, cast_kernel<1>, vec_ok(n, {dst.p, src.p}), n, stream, dst, src,
                     n);
}

void embedding_forward(TP out, const int32_t* tokens, CTP table, int N, int C, void* stream) {
  const size_t n = size_t(N) * C;
  if (!n) return;
  RT_LAUNCH(embedding_forward_kernel, blocks_for(n), kThreads, stream, out, tokens, table, N, C);
}

void embedding_backward(TP dtable, CTP dout, const int32_t* tokens, int N, int C, void* scratch,
                        void* stream) {
  if (N <= 0 || C <= 0) return;
  char* s = static_cast<char*>(scratch);
  const size_t ib = align256(size_t(N) * sizeof(int32_t));
  int32_t* keys = reinterpret_cast<int32_t*>(s);
  int32_t* idx_in = reinterpret_cast<int32_t*>(s + ib);
  int32_t* idx = reinterpret_cast<int32_t*>(s + 2 * ib);
  RT_LAUNCH(iota_kernel, blocks_for(size_t(N)), kThreads, stream, idx_in, N);
#ifdef RT_CUDA_EMULATE
  std::vector<int32_t> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
  for (int i = 0; i < N; ++i) {
    keys[i] = tokens[order[size_t(i)]];
    idx[i] = idx_in[order[size_t(i)]];
  }
#else
  size_t temp = radix_sort_temp_bytes(N);
  RT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s + 3 * ib, temp, tokens, keys, idx_in, idx, N, 0,
                                                int(sizeof(int32_t) * 8),
                                                static_cast<cudaStream_t>(stream)));
#endif
  // x: runs (grid-stride over the sorted positions), y: 32-column tiles
  const unsigned runs = unsigned(std::min<size_t>(size_t(N), std::min<size_t>(256, kMaxBlocks)));
  const unsigned tiles = unsigned(std::min<size_t>((size_t(C) + 31) / 32, kMaxBlocks));
  RT_LAUNCH(embedding_backward_sorted_kernel, dim3(runs, tiles), kThreads, stream, dtable, dout,
            static_cast<const int32_t*>(keys), static_cast<const int32_t*>(idx), N, C);
}

void rmsnorm_forward(TP out, float* rstd, CTP inp, CTP weight, int N, int C, float eps,
                     void* stream) {
  if (N <= 0) return;
  launch_rows(rmsnorm_forward_kernel<8>, rmsnorm_forward_kernel<1>,
              vec_ok(size_t(C), {out.p, inp.p, weight.p}), N, stream, out, rstd, inp, weight, N, C,
              eps);
}

void rmsnorm_backward(TP dinp, TP dweight, CTP dout, CTP inp, CTP weight, const float* rstd, int N,
                      int C, void* scratch, void* stream) {
  if (N <= 0) return;
  const unsigned nb = row_blocks(N);
  float* partial = static_cast<float*>(scratch);
  launch_rows(rmsnorm_backward_rows_kernel<8>, rmsnorm_backward_rows_kernel<1>,
              vec_ok(size_t(C), {dinp.p, dout.p, inp.p, weight.p, partial}), N, stream, dinp,
              partial, dout, inp, weight, rstd, N, C);
  const unsigned R = column_chunks(N);
  float* chunks = partial + size_t(nb) * C;
  RT_LAUNCH(column_chunk_sum_kernel, dim3(blocks_for(size_t(C)), unsigned(std::min<size_t>(R, kMaxBlocks))),
            kThreads, stream, chunks, static_cast<const float*>(partial), int(nb), C, int(R));
  RT_LAUNCH(column_sum_kernel, blocks_for(size_t(C)), kThreads, stream, dweight,
            static_cast<const float*>(chunks), int(R), C);
}

void rope(TP x, const float* cos, const float* sin, int B, int T, int nh, int hd, float sign,
          void* stream) {
  const size_t pairs = size_t(B) * T * nh * (hd / 2);
  if (!pairs) return;
  launch_elementwise(rope_kernel<8>, rope_kernel<1>, vec_ok(size_t(hd / 2), {x.p, cos, sin}), pairs,
                     stream, x, cos, sin, B, T, nh, hd, sign);
}

void attention_merge(TP out, float* lse, CTP blk, const float* blk_lse, int Tq, int H, int hd,
                     void* stream) {
  const size_t rows = size_t(Tq) * H;
  if (!rows) return;
  RT_LAUNCH(attention_merge_kernel, blocks_for(rows, kThreads / 32), kThreads, stream, out, lse,
            blk, blk_lse, Tq, H, hd);
}

void swiglu_forward(TP out, CTP gate, CTP up, size_t n, void* stream) {
  if (!n) return;
  launch_elementwise(swiglu_forward_kernel<8>, swiglu_forward_kernel<1>,
                     vec_ok(n, {out.p, gate.p, up.p}), n, stream, out, gate, up, n);
}

void swiglu_backward(TP dgate, TP dup, CTP dout, CTP gate, CTP up, size_t n, void* stream) {
  if (!n) return;
  launch_elementwise(swiglu_backward_kernel<8>, swiglu_backward_kernel<1>,
                     vec_ok(n, {dgate.p, dup.p, dout.p, gate.p, up.p}), n, stream, dgate, dup,
                     dout, gate, up, n);
}

void add_inplace(TP x, CTP y, size_t n, void* stream) {
  if (!n) return;
  launch_elementwise(add_inplace_kernel<8>, add_inplace_kernel<1>, vec_ok(n, {x.p, y.p}), n, stream,
                     x, y, n);
}

void cross_entropy(TP logits, float* losses, const int32_t* targets, int N, int V,
                   float dloss_scale, void* stream) {
  if (N <= 0) return;
  RT_LAUNCH(cross_entropy_kernel, row_blocks(N), kThreads, stream, logits, losses, targets, N, V,
            dloss_scale);
}

void loss_sum(double* acc, const float* losses, int N, void* stream) {
  if (N <= 0) return;
  RT_LAUNCH(loss_sum_kernel, 1u, kThreads, stream, acc, losses, N);
}

void sum_squares(double* out, const float* x, size_t n, void* scratch, void* stream) {
  const unsigned nb = blocks_for(n);
  double* partial = static_cast<double*>(scratch);
  RT_LAUNCH(sum_squares_partial_kernel, nb, kThreads, stream, partial, x, n);
  RT_LAUNCH(sum_partials_kernel, 1u, kThreads, stream, out, static_cast<const double*>(partial),
            int(nb));
}

void scale(float* x, size_t n, float s, void* stream) {
  if (!n) return;
  RT_LAUNCH(scale_kernel, blocks_for(n), kThreads, stream, x, n, s);
}

void adamw(float* master, TP compute, const float* grad, float* m, float* v, size_t n, float lr,
           float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
           float grad_scale, void* stream) {
  if (!n) return;
  RT_LAUNCH(adamw_kernel, blocks_for(n), kThreads, stream, master, compute_copy(master, compute),
            grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale);
}

void adamw_segments(const AdamSeg* segs, int nseg, size_t total, float lr, float beta1,
                    float beta2, float eps, float bc1, float bc2, float grad_scale, void* stream) {
  if (!total || nseg <= 0) return;
  RT_LAUNCH(adamw_segments_kernel, blocks_for(total), kThreads, stream, segs, nseg, total, lr,
            beta1, beta2, eps, bc1, bc2, grad_scale);
}

void sgd(float* master, TP compute, const float* grad, size_t n, float lr, float weight_decay,
         void* stream) {
  if (!n) return;
  RT_LAUNCH(sgd_kernel, blocks_for(n), kThreads, stream, master, compute_copy(master, compute),
            grad, n, lr, weight_decay);
}

void sgd_momentum(float* master, TP compute, const float* grad, float* buf, size_t n, float lr,
                  float weight_decay, float momentum, void* stream) {
  if (!n) return;
  RT_LAUNCH(sgd_momentum_kernel, blocks_for(n), kThreads, stream, master,
            compute_copy(master, compute), grad, buf, n, lr, weight_decay, momentum);
}

}  // namespace rt::RT_CUDA_NS::kern
