// Fused attention on CUDA (bf16 in, fp32 accumulation): the GPU twin of the
// CPU block attention (model/cpu/attention.cpp), with the same contract so
// that ring attention can call either for any (local Q, travelling KV) block.
//
// Layout (the CPU layout, bf16 instead of fp32; rows are contiguous):
//   q, out      (B, Tq, H, hd)   bf16
//   k, v        (B, Tk, G, hd)   bf16   (G kv heads; query head h reads h / (H/G))
//   lse         (B, H, Tq)       fp32   natural log; -inf for rows that see no key
//   dq          (B, Tq, H, hd)   fp32   accumulated (+=)
//   dk, dv      (B, Tk, G, hd)   fp32   accumulated (+=), so a ring can sum blocks
// bf16 values are passed as their bit patterns (uint16_t), so this header
// needs no CUDA headers. All pointers are device pointers, 16-byte aligned.
//
// Semantics (AttentionParams, model/backend.h): score(i, j) =
//   scale * q_i . k_j  - slope_h * (qpos_i - kpos_j)   [ALiBi, when slopes given]
// with qpos_i = q_offset + i, kpos_j = k_offset + j; under `causal` key j is
// visible to query i iff kpos_j <= qpos_i. alibi_slopes, when set, is a
// DEVICE pointer to H floats. head_dim must be 64 or 128.
//
// Forward writes out (softmax over visible keys, normalised, rounded to bf16)
// and lse. Backward takes dout and the *final* out and lse of these query rows
// (merged over all key blocks, as in the ring) and accumulates this key
// block's dq, dk, dv. Within one call dk and dv are summed in a fixed order
// (deterministic); dq is accumulated with fp32 atomics across key tiles, so its
// last bits may vary from run to run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/backend.h"
#include "model/cuda/cuda_ns.h"  // rt::cuda, or rt::cuda_emu (model/cuda/emu/attention_emu.cpp)

namespace rt::RT_CUDA_NS {

// Kernel family. kAuto: wgmma (warpgroup MMA, Hopper only) on an sm_90
// device, mma.sync otherwise; the environment variable
// RINGTRAIN_CUDA_ATTENTION=mma|wgmma|wgmma-dqx overrides what kAuto picks (a
// bad value is a UsageError). kMma forces the portable mma.sync kernels (sm_80+);
// kWgmma forces wgmma (UsageError where it cannot run).
enum class AttentionImpl { kAuto, kMma, kWgmma };

// Whether this build has the sm_90a kernels and the current device is sm_90.
bool wgmma_available();
// The family kAuto (or impl) runs on the current device (either head_dim):
// kMma or kWgmma. UsageError where impl cannot run.
AttentionImpl resolve_attention_impl(AttentionImpl impl);

// Throws UsageError naming the problem when the kernels cannot run p.
void check_attention_params(const AttentionParams& p);

// stream: a cudaStream_t (nullptr = default stream). Asynchronous.
void attention_forward_bf16(const AttentionParams& p, uint16_t* out, float* lse,
                            const uint16_t* q, const uint16_t* k, const uint16_t* v,
                            void* stream = nullptr, AttentionImpl impl = AttentionImpl::kAuto);

// Floats of device scratch the backward needs: rowsum(dout * out) (B*H*Tq,
// rounded up to a multiple of 4), and with a head split s > 1 the per-part
// dK, dV (2 s B Tk G hd).
size_t attention_backward_workspace_floats(const AttentionParams& p,
                                           AttentionImpl impl = AttentionImpl::kAuto);

// The backward (either kernel family) gives each block one key tile of 128
// rows of one kv head and 1/s of that head's H/G query heads, s (a divisor of
// H/G) chosen so that the grid has about 1024 blocks where key tiles x kv
// heads x batch alone would leave SMs idle (short sequences, few kv heads);
// the s partial dK, dV are then summed in a fixed order (deterministic). The
// wgmma kernels take the same split.
int attention_backward_head_split(const AttentionParams& p,
                                  AttentionImpl impl = AttentionImpl::kAuto);
// Tests and benchmarks: s > 0 makes every backward use head split s (which
// must divide H/G); 0 restores the automatic, grid-based choice (the same for
// both kernel families). Not thread-safe.
void force_attention_backward_head_split(int s);

// Tests and benchmarks: true makes the head_dim-64 wgmma backward sum its two
// warpgroups' dQ halves in shared memory before its atomics (not yet run on
// a GPU, so off by default; RINGTRAIN_CUDA_ATTENTION=wgmma-dqx also turns it
// on). Not thread-safe.
void force_attention_backward_dq_exchange(bool on);

void attention_backward_bf16(const AttentionParams& p, float* dq, float* dk, float* dv,
                             const uint16_t* dout, const uint16_t* q, const uint16_t* k,
                             const uint16_t* v, const uint16_t* out, const float* lse,
                             float* workspace, void* stream = nullptr,
                             AttentionImpl impl = AttentionImpl::kAuto);

}  // namespace rt::RT_CUDA_NS
