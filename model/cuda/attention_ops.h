// The CUDA attention kernels behind the typed op contract (model/backend.h):
// a CUDA backend's attention_forward / attention_backward are these calls,
// with its stream() and its scratch() as the backward workspace. The typed
// buffers go to the kernels as they are (bf16 q, k, v, out, dout; fp32 lse,
// dq, dk, dv): no copies, no casts. C++17, no CUDA headers.
#pragma once

#include <cstdint>
#include <string>

#include "common/errors.h"
#include "model/backend.h"
#include "model/cuda/attention.h"

namespace rt::RT_CUDA_NS {

inline void require_dtype(CBuf b, DType t, const char* what) {
  if (b.t != t)
    throw UsageError(std::string("CUDA attention: ") + what + " is " + dtype_name(b.t) +
                     ", the kernels take " + dtype_name(t));
}

inline void attention_forward_op(const AttentionParams& p, Buf out, float* lse, CBuf q, CBuf k,
                                 CBuf v, void* stream, AttentionImpl impl = AttentionImpl::kAuto) {
  require_dtype(out, DType::kBF16, "out");
  require_dtype(q, DType::kBF16, "q");
  require_dtype(k, DType::kBF16, "k");
  require_dtype(v, DType::kBF16, "v");
  attention_forward_bf16(p, out.as<uint16_t>(), lse, q.as<uint16_t>(), k.as<uint16_t>(),
                         v.as<uint16_t>(), stream, impl);
}

// workspace: attention_backward_workspace_floats(p) floats (Backend::scratch).
inline void attention_backward_op(const AttentionParams& p, Buf dq, Buf dk, Buf dv, CBuf dout,
                                  CBuf q, CBuf k, CBuf v, CBuf out, const float* lse,
                                  float* workspace, void* stream,
                                  AttentionImpl impl = AttentionImpl::kAuto) {
  require_dtype(dq, DType::kF32, "dq");
  require_dtype(dk, DType::kF32, "dk");
  require_dtype(dv, DType::kF32, "dv");
  for (CBuf b : {dout, q, k, v, out}) require_dtype(b, DType::kBF16, "an activation");
  attention_backward_bf16(p, dq.f32(), dk.f32(), dv.f32(), dout.as<uint16_t>(), q.as<uint16_t>(),
                          k.as<uint16_t>(), v.as<uint16_t>(), out.as<uint16_t>(), lse, workspace,
                          stream, impl);
}

}  // namespace rt::RT_CUDA_NS
