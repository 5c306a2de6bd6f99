// parallel.device resolution (trainer/train/device.h, SPEC §1 and §12) on
// posed machines: which device, which local GPU index, what train.precision
// auto means there, and every refusal (exit 2) naming its key. The real
// machine's path (this_device_environment) is checked by tests/cli/cli_device.sh.
#include <gtest/gtest.h>

#include <string>

#include "common/errors.h"
#include "test_util.h"
#include "trainer/config/config.h"
#include "trainer/train/device.h"

namespace rt {
namespace {

Config config(const std::string& device, const std::string& precision = "auto") {
  Config c;
  c.parallel.device = device;
  c.train.precision = precision;
  c.model.hidden_size = 256;
  c.model.num_attention_heads = 4;
  c.model.head_dim = 64;
  return c;
}

const DeviceEnvironment kNoCudaBuild{false, 0};
const DeviceEnvironment kCudaNoDevice{true, 0};
const DeviceEnvironment kTwoGpus{true, 2};

std::string usage_error(const Config& c, const DeviceEnvironment& env, int local_rank = 0) {
  return rt::testing::error_of<UsageError>([&] { resolve_device(c, local_rank, env); });
}

TEST(Device, AutoWithoutCudaIsTheCpuInFp32) {
  for (const DeviceEnvironment& env : {kNoCudaBuild, kCudaNoDevice}) {
    const DeviceChoice d = resolve_device(config("auto"), 0, env);
    EXPECT_EQ(d.device, Device::kCpu);
    EXPECT_EQ(d.index, -1);
    EXPECT_EQ(d.name, "cpu");
    EXPECT_EQ(d.precision.act, DType::kF32);
    EXPECT_EQ(d.peak_bf16_flops, 0);
  }
  // the CPU runs what CUDA refuses: head_dim 32, bf16 storage emulation
  Config c = config("auto", "bf16");
  c.model.head_dim = 32;
  EXPECT_EQ(resolve_device(c, 0, kCudaNoDevice).precision.act, DType::kBF16);
}

TEST(Device, AutoWithGpusIsCudaInBf16AndRanksShareDevicesRoundRobin) {
  for (int local_rank = 0; local_rank < 5; ++local_rank) {
    const DeviceChoice d = resolve_device(config("auto"), local_rank, kTwoGpus);
    EXPECT_EQ(d.device, Device::kCuda);
    EXPECT_EQ(d.index, local_rank % 2) << "local rank " << local_rank;
    EXPECT_EQ(d.count, 2);
    EXPECT_EQ(d.precision.act, DType::kBF16);
    EXPECT_EQ(d.precision.param, DType::kBF16);
    EXPECT_TRUE(d.precision.master_weights);
    EXPECT_EQ(d.precision.grad, DType::kF32);
  }
  EXPECT_EQ(resolve_device(config("cpu"), 0, kTwoGpus).device, Device::kCpu);
  EXPECT_EQ(resolve_device(config("cuda", "bf16"), 1, kTwoGpus).index, 1);
}

TEST(Device, CudaRefusalsNameTheKeyAndTheFix) {
  EXPECT_NE(usage_error(config("cuda"), kNoCudaBuild).find("built without CUDA"),
            std::string::npos);
  EXPECT_NE(usage_error(config("cuda"), kNoCudaBuild).find("-DRINGTRAIN_CUDA=ON"),
            std::string::npos);
  EXPECT_NE(usage_error(config("cuda"), kCudaNoDevice).find("no CUDA device is visible"),
            std::string::npos);

  const std::string fp32 = usage_error(config("cuda", "fp32"), kTwoGpus);
  EXPECT_NE(fp32.find("train.precision: fp32"), std::string::npos) << fp32;
  EXPECT_NE(fp32.find("set train.precision: bf16 or auto"), std::string::npos) << fp32;
  // auto on a GPU with an fp32 config: the same refusal (train.precision says fp32)
  EXPECT_NE(usage_error(config("auto", "fp32"), kTwoGpus).find("train.precision: fp32"),
            std::string::npos);

  for (int hd : {32, 80, 96, 256}) {
    Config c = config("cuda");
    c.model.head_dim = hd;
    const std::string e = usage_error(c, kTwoGpus);
    EXPECT_NE(e.find("model.head_dim is " + std::to_string(hd)), std::string::npos) << e;
    EXPECT_NE(e.find("64 or 128"), std::string::npos) << e;
  }
  for (int hd : {64, 128}) {
    Config c = config("cuda");
    c.model.head_dim = hd;
    EXPECT_EQ(resolve_device(c, 0, kTwoGpus).device, Device::kCuda);
  }

  // every memory type runs on the CUDA backend (kNN and compressive stores on the host)
  for (const char* type : {"rmt", "knn", "compressive"}) {
    Config c = config("cuda");
    c.model.memory = MemoryConfig{};
    c.model.memory->type = type;
    EXPECT_EQ(resolve_device(c, 0, kTwoGpus).device, Device::kCuda) << type;
  }

  // context parallelism runs on CUDA (bf16 ring attention)
  Config cp = config("cuda");
  cp.parallel.context_parallel = 2;
  EXPECT_EQ(resolve_device(cp, 0, kTwoGpus).device, Device::kCuda);
}

TEST(Device, ConfigRefusalsComeBeforeTheMachineCheck) {
  // a config the GPU cannot run is named even where no GPU exists
  Config c = config("cuda");
  c.model.head_dim = 32;
  EXPECT_NE(usage_error(c, kNoCudaBuild).find("model.head_dim"), std::string::npos);
}

TEST(Device, PeakFromTheGpuName) {
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA H200"), 989e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA GH200 480GB"), 989e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA H100 NVL"), 835e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA A100 80GB PCIe"), 312e12);
  EXPECT_EQ(peak_bf16_flops_for("NVIDIA GeForce RTX 4090"), 0);
  EXPECT_EQ(peak_bf16_flops_for("unknown"), 0);
  EXPECT_EQ(peak_bf16_flops_for("cpu"), 0);
}

}  // namespace
}  // namespace rt
