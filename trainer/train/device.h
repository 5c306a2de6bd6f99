// parallel.device resolved once per rank (SPEC §1, §12): the one place that
// decides CPU or CUDA, which GPU, what train.precision means there, and which
// config keys the chosen device cannot run. train, eval, generate, bench and
// plan all go through it, so they agree.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "model/backend.h"
#include "model/precision.h"
#include "trainer/config/config.h"

namespace rt {

struct DeviceChoice {
  Device device = Device::kCpu;
  int index = -1;               // CUDA device index (local_rank % device_count), -1 on the CPU
  int count = 0;                // CUDA devices visible to this process
  std::string name = "cpu";     // "cpu" or the GPU's name ("NVIDIA H200")
  size_t total_memory = 0;      // GPU memory in bytes (0 on the CPU)
  int compute_capability = 0;   // major*10 + minor (0 on the CPU)
  double peak_bf16_flops = 0;   // dense bf16 peak FLOP/s from the name; 0 unknown / CPU
  Precision precision;          // train.precision resolved for this device
  std::string describe() const;  // the start-up log line's text
};

// What the build and the machine offer, passed in so that tests can pose
// any machine (resolve_device below reads the real ones).
struct DeviceEnvironment {
  bool built_with_cuda = false;
  int device_count = 0;  // visible CUDA devices
};
DeviceEnvironment this_device_environment();
// Whether parallel.device `want` means CUDA on that machine: cuda, or auto
// with a CUDA build and a visible device.
bool wants_cuda(const std::string& want, const DeviceEnvironment& env);

// parallel.device for the rank with this local rank: auto -> CUDA when the
// build has it and a device is visible, else the CPU; cuda -> UsageError when
// the build has no CUDA (rebuild with nvcc) or no device is visible; then
// check_device_config. Names the GPU from cuda::device_name.
DeviceChoice resolve_device(const Config& cfg, int local_rank);
DeviceChoice resolve_device(const Config& cfg, int local_rank, const DeviceEnvironment& env);
// eval and generate: the device training would choose, at that device's own
// precision (fp32 on the CPU, bf16 on CUDA) whatever the checkpoint was
// trained in (it holds fp32 master weights either way); logs a GPU's name.
DeviceChoice resolve_inference_device(const Config& cfg, int local_rank);

// Refuses (UsageError naming the key) what the device cannot run: on CUDA
// train.precision fp32 and head_dim other than 64 or 128 (the attention
// kernels). Memory models of every type run (the kNN and compressive stores
// stay on the host), and so does context parallelism (bf16 ring attention). Returns the resolved precision. Also used by `plan
// --device cuda` on machines without a GPU.
Precision check_device_config(const Config& cfg, Device device);

// Dense bf16 tensor-core peak FLOP/s of a GPU from its name (H100 SXM and
// H200 989e12, H100 PCIe 756e12, H100/H200 NVL 835e12, A100 312e12); 0 when
// the name is not known.
double peak_bf16_flops_for(const std::string& gpu_name);

// The backend of a choice (make_cpu_backend or make_cuda_backend(index)).
std::unique_ptr<Backend> make_device_backend(const DeviceChoice& d);

}  // namespace rt
