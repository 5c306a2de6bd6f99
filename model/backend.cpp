#include "model/backend.h"

#include "common/errors.h"

namespace rt {

const char* device_name(Device d) { return d == Device::kCpu ? "cpu" : "cuda"; }

const char* op_name(Op op) {
  switch (op) {
    case Op::kCast: return "cast";
    case Op::kZero: return "zero";
    case Op::kCopy: return "copy";
    case Op::kEmbeddingForward: return "embedding_forward";
    case Op::kEmbeddingBackward: return "embedding_backward";
    case Op::kRmsnormForward: return "rmsnorm_forward";
    case Op::kRmsnormBackward: return "rmsnorm_backward";
    case Op::kMatmulForward: return "matmul_forward";
    case Op::kMatmulBackward: return "matmul_backward";
    case Op::kRopeForward: return "rope_forward";
    case Op::kRopeBackward: return "rope_backward";
    case Op::kAttentionForward: return "attention_forward";
    case Op::kAttentionBackward: return "attention_backward";
    case Op::kAttentionMerge: return "attention_merge";
    case Op::kSwigluForward: return "swiglu_forward";
    case Op::kSwigluBackward: return "swiglu_backward";
    case Op::kAddInplace: return "add_inplace";
    case Op::kCrossEntropy: return "cross_entropy_forward_backward";
    case Op::kLossSum: return "loss_sum";
    case Op::kSumSquares: return "sum_squares";
    case Op::kScale: return "scale";
    case Op::kAdamwUpdate: return "adamw_update";
    case Op::kAdamwUpdateSegments: return "adamw_update_segments";
    case Op::kSgdUpdate: return "sgd_update";
    case Op::kSgdMomentumUpdate: return "sgd_momentum_update";
    case Op::kCount: break;
  }
  return "?";
}

float* DeviceBuffer::f32() const {
  RT_CHECK(t_ == DType::kF32, std::string("DeviceBuffer holds ") + dtype_name(t_) + ", not fp32");
  return static_cast<float*>(p_);
}

}  // namespace rt
