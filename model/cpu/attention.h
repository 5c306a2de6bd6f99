// Blocked (flash-style) causal attention on the CPU: forward with
// log-sum-exp, backward from the final output and LSE. O(T) extra memory:
// never a Tq x Tk buffer, only per-thread tiles. Shapes and semantics are
// those of Backend::attention_forward / attention_backward (model/backend.h).
#pragma once

#include "model/backend.h"

namespace rt::cpu {

void attention_forward(const AttentionParams& p, float* out, float* lse, const float* q,
                       const float* k, const float* v);

void attention_backward(const AttentionParams& p, float* dq, float* dk, float* dv,
                        const float* dout, const float* q, const float* k, const float* v,
                        const float* out, const float* lse);

}  // namespace rt::cpu
