#include "trainer/train/device.h"

#include <cstdio>

#include "common/errors.h"
#include "common/log.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#include "model/cuda/device_info.h"
#endif

namespace rt {

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

std::string DeviceChoice::describe() const {
  if (device == Device::kCpu) return "cpu";
  char buf[384];
  std::snprintf(buf, sizeof buf, "CUDA device %d of %d: %s, %s, compute capability %d.%d", index,
                count, name.c_str(), format_bytes(double(total_memory)).c_str(),
                compute_capability / 10, compute_capability % 10);
  return buf;
}

DeviceEnvironment this_device_environment() {
  DeviceEnvironment env;
#ifdef RINGTRAIN_HAVE_CUDA
  env.built_with_cuda = true;
  env.device_count = cuda::device_count();
#endif
  return env;
}

double peak_bf16_flops_for(const std::string& n) {
  // Vendor datasheets, dense (no 2:4 sparsity) bf16 tensor-core rates.
  if (contains(n, "H100") || contains(n, "H200") || contains(n, "GH200")) {
    if (contains(n, "PCIe")) return 756e12;
    if (contains(n, "NVL")) return 835e12;
    return 989e12;  // SXM (nvidia-smi names it plainly: "NVIDIA H100 80GB HBM3", "NVIDIA H200")
  }
  if (contains(n, "A100")) return 312e12;
  return 0;
}

Precision check_device_config(const Config& cfg, Device device) {
  const Precision prec = resolve_precision(cfg.train.precision, device);
  if (device != Device::kCuda) return prec;
  if (prec.act != DType::kBF16)
    throw UsageError("train.precision: " + cfg.train.precision +
                     " on parallel.device cuda: the CUDA backend trains in bf16 (fp32 master "
                     "weights and optimizer state); set train.precision: bf16 or auto, or "
                     "parallel.device: cpu for fp32");
  const int hd = cfg.model.head_dim;
  if (hd != 64 && hd != 128)
    throw UsageError("model.head_dim is " + std::to_string(hd) +
                     " (hidden_size / num_attention_heads unless set) on parallel.device "
                     "cuda: the CUDA attention kernels take head_dim 64 or 128 only; choose num_attention_heads so that "
                     "head_dim is 64 or 128, or use parallel.device: cpu");
  return prec;
}

bool wants_cuda(const std::string& want, const DeviceEnvironment& env) {
  return want == "cuda" || (want == "auto" && env.built_with_cuda && env.device_count > 0);
}

DeviceChoice resolve_device(const Config& cfg, int local_rank) {
  return resolve_device(cfg, local_rank, this_device_environment());
}

DeviceChoice resolve_inference_device(const Config& cfg, int local_rank) {
  Config c = cfg;
  c.train.precision = "auto";
  const DeviceChoice d = resolve_device(c, local_rank);
  if (d.device == Device::kCuda) log_info("device: %s", d.describe().c_str());
  return d;
}

DeviceChoice resolve_device(const Config& cfg, int local_rank, const DeviceEnvironment& env) {
  const std::string& want = cfg.parallel.device;
  DeviceChoice d;
  if (want == "cuda") {
    // the config first: its refusals hold whatever machine runs it
    check_device_config(cfg, Device::kCuda);
    if (!env.built_with_cuda)
      throw UsageError("parallel.device: cuda, but this ringtrain was built without CUDA (nvcc "
                       "was not found when cmake ran): install the CUDA toolkit and rebuild "
                       "with -DRINGTRAIN_CUDA=ON, or set parallel.device: cpu or auto");
    if (env.device_count <= 0)
      throw UsageError("parallel.device: cuda, but no CUDA device is visible to this process "
                       "(no driver, no GPU, or CUDA_VISIBLE_DEVICES hides them; nvidia-smi "
                       "lists what the driver sees); set parallel.device: cpu or auto");
  } else if (want != "auto" && want != "cpu") {
    throw UsageError("parallel.device must be one of auto | cpu | cuda, got '" + want + "'");
  }
  if (!wants_cuda(want, env)) {
    d.precision = check_device_config(cfg, Device::kCpu);
    return d;
  }
  d.device = Device::kCuda;
  d.count = env.device_count;
  d.index = (local_rank < 0 ? 0 : local_rank) % env.device_count;
  d.precision = check_device_config(cfg, Device::kCuda);
#ifdef RINGTRAIN_HAVE_CUDA
  if (env.built_with_cuda && env.device_count <= cuda::device_count()) {
    d.name = cuda::device_name(d.index);
    d.total_memory = cuda::device_total_memory(d.index);
    d.compute_capability = cuda::device_compute_capability(d.index);
  } else {
    d.name = "unknown";
  }
#else
  d.name = "unknown";  // only a test's posed environment gets here
#endif
  d.peak_bf16_flops = peak_bf16_flops_for(d.name);
  return d;
}

std::unique_ptr<Backend> make_device_backend(const DeviceChoice& d) {
  if (d.device == Device::kCpu) return make_cpu_backend();
#ifdef RINGTRAIN_HAVE_CUDA
  return make_cuda_backend(d.index);
#else
  throw UsageError("parallel.device: cuda, but this ringtrain was built without CUDA: rebuild "
                   "with -DRINGTRAIN_CUDA=ON where nvcc is installed");
#endif
}

}  // namespace rt
