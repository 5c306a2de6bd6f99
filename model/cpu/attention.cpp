// Blocked (flash-style) attention on the CPU, fp32.
//
// Forward: one task per (b, h, query tile of tq <= kBq rows). The task walks the key
// tiles (kBk rows) its queries can see, keeping a running max m, running sum
// l and an unnormalised output accumulator O (tq x hd) per row (online
// softmax). Causal key tiles entirely in the future are never visited; tiles
// that cross the diagonal are masked per row (only the first `nvis` columns
// of a row are visible). Memory: per-thread tiles only, never Tq x Tk.
//
// Backward (given the final out and lse, merged over all key blocks):
//   P = exp(S - lse), D_i = rowsum(dout_i * out_i), dS = P * (dP - D),
//   dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K,  with dP = dO V^T.
// Race-free and deterministic with two passes:
//   pass A: one task per (b, kv head g, key tile) owns those dK, dV rows and
//           loops over every query head of the group and every query tile
//           that can see the key tile;
//   pass B: one task per (b, h, query tile) owns those dQ rows and loops over
//           the key tiles (recomputing S and dP).
// Every output element is produced by the same sequence of float operations
// whatever the thread count or schedule, so results are bitwise reproducible
// across OMP_NUM_THREADS (SPEC §6 equivalence). The price is recomputing S and
// dP in pass B (7 tile GEMMs instead of 5); atomics or locked dQ accumulation
// would save that but make the summation order schedule-dependent.
//
// Tile products use cblas_sgemm directly on the strided (B,T,H,hd) tensors
// (lda = H*hd or G*hd, no packing copies); called inside our OpenMP region,
// the OpenMP-flavoured OpenBLAS runs single-threaded. sgemm rather than
// hand-written loops: a single-threaded 64x64x64 OpenBLAS call runs at
// ~110 GFLOP/s here (AVX-512), more than compiler-vectorised loops reach.
// The softmax work between the GEMMs (mask, max, exp, sum) is done on whole
// 16-float chunks with a branch-free Cephes-style exp; with scalar expf it
// cost as much as all the GEMMs (forward+backward 2x slower, measured).
// The row sums use a fixed summation order, so results do not depend on
// the thread count.
#include "model/cpu/attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/errors.h"

namespace rt::cpu {
namespace {

// Tile sizes. OpenBLAS (0.3.21, AVX-512) runs GEMMs with m*n*k <= 64^3 on
// its "small matrix" path; bigger ones take a path that allocates its
// packing buffer under a global lock, and two threads each calling 128x64x64
// GEMMs then fall from ~125 to ~25 GFLOP/s per thread (measured). So tiles
// are 64 x 64 for hd <= 64 and the query tile shrinks for larger heads to keep
// every tile GEMM (bq x bk x hd, bk x hd x bq) within 64^3.
constexpr int kBq = 64;   // query rows per tile (maximum)
constexpr int kBk = 64;   // key rows per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rows of a score tile are processed 16 floats at a time with GCC/Clang
// vector extensions (portable; lowered to AVX-512 / AVX2 / SSE as available).
// The tile row stride kBk is a multiple of 16 and every row is processed in
// full: columns past the visible ones are set to -inf first, so they come out
// of the exponential as exact zeros.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
static_assert(kBk % 16 == 0, "tile rows are processed in 16-float chunks");

inline v16f splat(float x) { return v16f{} + x; }
inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }

// exp(x) for x <= 88: Cephes expf polynomial after range reduction
// x = n ln2 + r, |r| <= ln2/2 (relative error ~2 ulp). Exactly 0 for
// x < -87 (and -inf); NaN propagates. Branch-free.
inline v16f exp16(v16f x) {
  const v16f lo = splat(-87.0f), hi = splat(88.0f);
  v16f xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const v16f magic = splat(12582912.0f);  // 1.5 * 2^23: round to nearest
  const v16f n = (xc * 1.44269504088896341f + magic) - magic;
  v16f r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16f p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  const v16f y = p * (v16f)bits;  // vector cast: bit reinterpretation
  return x < lo ? splat(0.0f) : y;
}

// s[c] = -inf for c in [nvis, kBk).
inline void mask_tail(float* s, int nvis) {
  for (int c = nvis; c < kBk; ++c) s[c] = kNegInf;
}

// max over a full row of kBk floats.
inline float row_max(const float* s) {
  v16f m = load16(s);
  for (int c = 16; c < kBk; c += 16) {
    const v16f x = load16(s + c);
    m = x > m ? x : m;
  }
  float r = m[0];
  for (int i = 1; i < 16; ++i) r = std::max(r, m[i]);
  return r;
}

// s <- exp(s - shift) over a full row; returns the row sum (fixed order).
inline float row_exp(float* s, float shift) {
  v16f acc = splat(0.0f);
  for (int c = 0; c < kBk; c += 16) {
    const v16f e = exp16(load16(s + c) - shift);
    store16(s + c, e);
    acc += e;
  }
  float r = 0.0f;
  for (int i = 0; i < 16; ++i) r += acc[i];
  return r;
}

struct Dims {
  int B, Tq, Tk, H, G, hd, rep;
  int64_t ldq, ldk;  // row strides of q/out (H*hd) and k/v (G*hd)
  int tq;            // query rows per tile (<= kBq)
  int nqt, nkt;      // tile counts
  explicit Dims(const AttentionParams& p)
      : B(p.B), Tq(p.Tq), Tk(p.Tk), H(p.H), G(p.G), hd(p.hd), rep(p.H / p.G),
        ldq(int64_t(p.H) * p.hd), ldk(int64_t(p.G) * p.hd),
        tq(p.hd <= 64 ? kBq : std::max(8, (kBq * 64 / p.hd) / 8 * 8)),
        nqt((p.Tq + tq - 1) / tq), nkt((p.Tk + kBk - 1) / kBk) {}
  size_t qoff(int b, int i, int h) const {  // element offset of q/out row
    return (size_t(b) * Tq + size_t(i)) * size_t(ldq) + size_t(h) * hd;
  }
  size_t koff(int b, int j, int g) const {  // element offset of k/v row
    return (size_t(b) * Tk + size_t(j)) * size_t(ldk) + size_t(g) * hd;
  }
};

void check_params(const AttentionParams& p) {
  RT_CHECK(p.B >= 0 && p.Tq >= 0 && p.Tk >= 0 && p.hd > 0, "attention: bad shape");
  RT_CHECK(p.H > 0 && p.G > 0 && p.H % p.G == 0, "attention: G must divide H");
}

// Keys of a tile starting at global position kbase (bk columns) visible to
// the query at global position qpos: the first nvis columns.
inline int visible_cols(bool causal, int64_t qpos, int64_t kbase, int bk) {
  if (!causal) return bk;
  return int(std::clamp<int64_t>(qpos - kbase + 1, 0, bk));
}

// Number of keys of the block any query in [qpos0, qpos0 + bq) can see.
inline int key_limit(const AttentionParams& p, int64_t qpos_last) {
  if (!p.causal) return p.Tk;
  return int(std::clamp<int64_t>(qpos_last - p.k_offset + 1, 0, p.Tk));
}

// ALiBi bias on one row's visible scores, fp32 from the integer distance.
// Shared by forward and backward so both see bit-identical scores.
inline void add_alibi(float* s, int nvis, float slope, int64_t qpos, int64_t kbase) {
  const int64_t d0 = qpos - kbase;
  for (int c = 0; c < nvis; ++c) s[c] += -slope * float(d0 - c);
}

// S = scale * Q K^T for a (bq x bk) tile, row stride kBk.
inline void scores(const Dims& d, float scale, const float* Q, const float* K, int bq, int bk,
                   float* S) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, d.hd, scale, Q, int(d.ldq), K,
              int(d.ldk), 0.0f, S, kBk);
}

// Backward tile: S <- P = exp(S + bias - lse) on visible entries, 0 elsewhere.
// Returns false when the whole tile is zero.
bool probs_from_lse(const AttentionParams& p, const Dims& d, const float* Q, const float* K,
                    int bq, int bk, int64_t qpos0, int64_t kbase, float slope, const float* L,
                    float* S) {
  scores(d, p.scale, Q, K, bq, bk, S);
  bool any = false;
  for (int r = 0; r < bq; ++r) {
    float* s = S + size_t(r) * kBk;
    const int64_t qpos = qpos0 + r;
    const int nvis = visible_cols(p.causal, qpos, kbase, bk);
    const float lse = L[r];
    if (nvis == 0 || lse == kNegInf) {
      std::memset(s, 0, sizeof(float) * size_t(bk));
      continue;
    }
    if (p.alibi_slopes) add_alibi(s, nvis, slope, qpos, kbase);
    mask_tail(s, nvis);
    row_exp(s, lse);
    any = true;
  }
  return any;
}

// dP (bq x bk, in place) <- P * (dO V^T - D).
inline void dscores(const Dims& d, const float* dO, const float* V, const float* P,
                    const float* Drow, int bq, int bk, float* dP) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, d.hd, 1.0f, dO, int(d.ldq), V,
              int(d.ldk), 0.0f, dP, kBk);
  for (int r = 0; r < bq; ++r) {
    float* dp = dP + size_t(r) * kBk;
    const float* pr = P + size_t(r) * kBk;
    const float Di = Drow[r];
    for (int c = 0; c < bk; ++c) dp[c] = pr[c] * (dp[c] - Di);
  }
}

}  // namespace

void attention_forward(const AttentionParams& p, float* out, float* lse, const float* q,
                       const float* k, const float* v) {
  check_params(p);
  const Dims d(p);
  if (d.B == 0 || d.Tq == 0) return;
  const int hd = d.hd;
  const int ntasks = d.B * d.H * d.nqt;

#pragma omp parallel
  {
    std::vector<float> S(size_t(kBq) * kBk), O(size_t(kBq) * hd), m(kBq), l(kBq);
    // Task order: heaviest (last) query tiles first, so dynamic scheduling
    // balances the uneven causal work.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; ++t) {
      const int qt = d.nqt - 1 - t / (d.B * d.H);
      const int bh = t % (d.B * d.H);
      const int b = bh / d.H, h = bh % d.H, g = h / d.rep;
      const int i0 = qt * d.tq, bq = std::min(d.tq, d.Tq - i0);
      const int64_t qpos0 = p.q_offset + i0;
      const float slope = p.alibi_slopes ? p.alibi_slopes[h] : 0.0f;
      const float* Q = q + d.qoff(b, i0, h);
      std::fill(m.begin(), m.begin() + bq, kNegInf);
      std::fill(l.begin(), l.begin() + bq, 0.0f);
      std::fill(O.begin(), O.begin() + size_t(bq) * hd, 0.0f);

      const int jend = key_limit(p, qpos0 + bq - 1);
      for (int j0 = 0; j0 < jend; j0 += kBk) {
        const int bk = std::min(kBk, jend - j0);
        const int64_t kbase = p.k_offset + j0;
        scores(d, p.scale, Q, k + d.koff(b, j0, g), bq, bk, S.data());
        for (int r = 0; r < bq; ++r) {
          float* s = S.data() + size_t(r) * kBk;
          const int64_t qpos = qpos0 + r;
          const int nvis = visible_cols(p.causal, qpos, kbase, bk);
          if (nvis == 0) {
            std::memset(s, 0, sizeof(float) * size_t(bk));
            continue;
          }
          if (p.alibi_slopes) add_alibi(s, nvis, slope, qpos, kbase);
          mask_tail(s, nvis);
          const float m_old = m[size_t(r)];
          const float m_new = std::max(m_old, row_max(s));
          const float sum = row_exp(s, m_new);
          const float corr = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
          l[size_t(r)] = l[size_t(r)] * corr + sum;
          m[size_t(r)] = m_new;
          if (corr != 1.0f) {
            float* o = O.data() + size_t(r) * hd;
            for (int e = 0; e < hd; ++e) o[e] *= corr;
          }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, hd, bk, 1.0f, S.data(), kBk,
                    v + d.koff(b, j0, g), int(d.ldk), 1.0f, O.data(), hd);
      }

      float* L = lse + (size_t(b) * d.H + size_t(h)) * size_t(d.Tq) + size_t(i0);
      for (int r = 0; r < bq; ++r) {
        float* o = out + d.qoff(b, i0 + r, h);
        const float lr = l[size_t(r)];
        if (lr == 0.0f) {  // no visible key
          std::memset(o, 0, sizeof(float) * size_t(hd));
          L[r] = kNegInf;
          continue;
        }
        const float inv = 1.0f / lr;
        const float* acc = O.data() + size_t(r) * hd;
        for (int e = 0; e < hd; ++e) o[e] = acc[e] * inv;
        L[r] = m[size_t(r)] + std::log(lr);
      }
    }
  }
}

void attention_backward(const AttentionParams& p, float* dq, float* dk, float* dv,
                        const float* dout, const float* q, const float* k, const float* v,
                        const float* out, const float* lse) {
  check_params(p);
  const Dims d(p);
  if (d.B == 0 || d.Tq == 0 || d.Tk == 0) return;
  const int hd = d.hd;

  // D (B,H,Tq) = rowsum(dout * out), accumulated in double.
  std::vector<float> D(size_t(d.B) * d.H * d.Tq);
  const int64_t nrows = int64_t(d.B) * d.Tq;
#pragma omp parallel for schedule(static)
  for (int64_t bi = 0; bi < nrows; ++bi) {
    const int b = int(bi / d.Tq), i = int(bi % d.Tq);
    for (int h = 0; h < d.H; ++h) {
      const float* a = dout + d.qoff(b, i, h);
      const float* o = out + d.qoff(b, i, h);
      double acc = 0.0;
      for (int e = 0; e < hd; ++e) acc += double(a[e]) * double(o[e]);
      D[(size_t(b) * d.H + size_t(h)) * size_t(d.Tq) + size_t(i)] = float(acc);
    }
  }

#pragma omp parallel
  {
    std::vector<float> P(size_t(kBq) * kBk), dS(size_t(kBq) * kBk);

    // Pass A: dK, dV. Task (b, g, key tile); under causal masking the first
    // key tiles see the most queries, so they come first.
    const int ntA = d.B * d.G * d.nkt;
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntA; ++t) {
      const int kt = t / (d.B * d.G);
      const int bg = t % (d.B * d.G);
      const int b = bg / d.G, g = bg % d.G;
      const int j0 = kt * kBk, bk = std::min(kBk, d.Tk - j0);
      const int64_t kbase = p.k_offset + j0;
      const float* K = k + d.koff(b, j0, g);
      const float* V = v + d.koff(b, j0, g);
      float* dK = dk + d.koff(b, j0, g);
      float* dV = dv + d.koff(b, j0, g);
      int istart = 0;
      if (p.causal) istart = int(std::clamp<int64_t>(kbase - p.q_offset, 0, d.Tq));
      for (int h = g * d.rep; h < (g + 1) * d.rep; ++h) {
        const float slope = p.alibi_slopes ? p.alibi_slopes[h] : 0.0f;
        const size_t lrow = (size_t(b) * d.H + size_t(h)) * size_t(d.Tq);
        for (int i0 = (istart / d.tq) * d.tq; i0 < d.Tq; i0 += d.tq) {
          const int bq = std::min(d.tq, d.Tq - i0);
          const float* Q = q + d.qoff(b, i0, h);
          const float* dO = dout + d.qoff(b, i0, h);
          if (!probs_from_lse(p, d, Q, K, bq, bk, p.q_offset + i0, kbase, slope,
                              lse + lrow + size_t(i0), P.data()))
            continue;
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, hd, bq, 1.0f, P.data(), kBk,
                      dO, int(d.ldq), 1.0f, dV, int(d.ldk));
          dscores(d, dO, V, P.data(), D.data() + lrow + size_t(i0), bq, bk, dS.data());
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, hd, bq, p.scale, dS.data(),
                      kBk, Q, int(d.ldq), 1.0f, dK, int(d.ldk));
        }
      }
    }

    // Pass B: dQ. Task (b, h, query tile), heaviest (last) tiles first.
    const int ntB = d.B * d.H * d.nqt;
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntB; ++t) {
      const int qt = d.nqt - 1 - t / (d.B * d.H);
      const int bh = t % (d.B * d.H);
      const int b = bh / d.H, h = bh % d.H, g = h / d.rep;
      const int i0 = qt * d.tq, bq = std::min(d.tq, d.Tq - i0);
      const int64_t qpos0 = p.q_offset + i0;
      const float slope = p.alibi_slopes ? p.alibi_slopes[h] : 0.0f;
      const size_t lrow = (size_t(b) * d.H + size_t(h)) * size_t(d.Tq) + size_t(i0);
      const float* Q = q + d.qoff(b, i0, h);
      const float* dO = dout + d.qoff(b, i0, h);
      float* dQ = dq + d.qoff(b, i0, h);
      const int jend = key_limit(p, qpos0 + bq - 1);
      for (int j0 = 0; j0 < jend; j0 += kBk) {
        const int bk = std::min(kBk, jend - j0);
        const float* K = k + d.koff(b, j0, g);
        if (!probs_from_lse(p, d, Q, K, bq, bk, qpos0, p.k_offset + j0, slope, lse + lrow,
                            P.data()))
          continue;
        dscores(d, dO, v + d.koff(b, j0, g), P.data(), D.data() + lrow, bq, bk, dS.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, hd, bk, p.scale, dS.data(),
                    kBk, K, int(d.ldk), 1.0f, dQ, int(d.ldq));
      }
    }
  }
}

}  // namespace rt::cpu
