#include "model/precision.h"

#include "common/errors.h"

namespace rt {

std::string Precision::name() const {
  if (param == DType::kF32 && act == DType::kF32 && !master_weights) return "fp32";
  return std::string(dtype_name(param)) + " weights, " + dtype_name(act) + " activations, " +
         dtype_name(grad) + " gradients" + (master_weights ? ", fp32 master weights" : "");
}

Precision resolve_precision(const std::string& name, Device device) {
  std::string n = name;
  if (n == "auto") n = device == Device::kCuda ? "bf16" : "fp32";
  if (n == "fp32") return {};
  if (n == "bf16") return {DType::kBF16, DType::kBF16, DType::kF32, true};
  throw UsageError("train.precision: must be auto, fp32 or bf16, got '" + name + "'");
}

}  // namespace rt
