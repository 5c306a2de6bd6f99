// train.precision resolved once for a device (SPEC §12): the dtype of the
// compute weights, of the activations and of the gradients, and whether an
// fp32 master copy of the weights exists beside the compute copy.
#pragma once

#include <string>

#include "model/backend.h"
#include "model/tensor.h"

namespace rt {

struct Precision {
  DType param = DType::kF32;  // compute weights (the copy the ops read)
  DType act = DType::kF32;    // activations saved or passed between ops
  DType grad = DType::kF32;   // parameter and activation gradients, reductions
  bool master_weights = false;  // fp32 master arena updated by the optimizer
  std::string name() const;     // "fp32", "bf16 (fp32 master weights, ...)"
};

// name: fp32 | bf16 | auto (fp32 on CPU, bf16 on CUDA). Throws UsageError
// for anything else.
Precision resolve_precision(const std::string& name, Device device);

inline Precision fp32_precision() { return {}; }

}  // namespace rt
