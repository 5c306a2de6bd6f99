// The CUDA backend training a model end to end (model, AdamW, clipping)
// against the CPU backend, from the same initial weights and batches:
//   - the emulated CUDA backend (the kernels of model/cuda/ops.cu run on the
//     CPU by the fiber emulator) in CI: it must follow the CPU's bf16 storage
//     emulation closely (same roundings where the ops store bf16; the GEMM
//     operands of the backward are rounded to bf16 first, as on the GPU);
//   - the real CUDA backend when a device is visible ("skipped: no CUDA
//     device" otherwise): bf16 on the GPU against fp32 on the CPU, 50 steps,
//     per-step loss within 5% and final loss within 1% (the issue's); the
//     CPU running the same bf16 recipe must meet the same bounds (in CI),
//     which shows they are bf16's, not a slack for the GPU.
// Models: rope (GQA), alibi with tied embeddings and activation
// checkpointing, no position encoding, and the three memory types (RMT; kNN
// and compressive, whose stores live on the host); head_dim 64
// (the CUDA attention kernels take 64 and 128).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/rng.h"
#include "model/cuda/cuda_backend.h"
#include "model/llama.h"
#include "model/memory/sequence_runner.h"
#include "model/precision.h"
#include "trainer/train/optimizer.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/device_info.h"
#endif

namespace rt {
namespace {

struct Variant {
  std::string name;
  std::string position;
  bool tied = false, checkpointing = false;
  std::string memory;  // "", rmt, knn, compressive
};

ModelConfig model_config(const Variant& v) {
  ModelConfig mc;
  mc.vocab_size = 96;
  mc.hidden_size = 128;
  mc.intermediate_size = 192;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = 2;
  mc.num_key_value_heads = 1;
  mc.head_dim = 64;
  mc.position = v.position;
  mc.tie_word_embeddings = v.tied;
  mc.init_std = 0.05;
  if (v.memory == "rmt") mc.memory = MemoryConfig::rmt(4, 16, -1);
  if (v.memory == "knn" || v.memory == "compressive") {
    MemoryConfig m;
    m.type = v.memory;
    m.segment_length = 16;
    m.layers = {1};
    m.memory_size = 32;
    m.top_k = 8;
    m.memory_segments = 1;
    m.rate = 2;
    m.levels = 1;
    m.compressed_size = 8;
    mc.memory = m;
  }
  return mc;
}

struct Trained {
  std::vector<double> loss, norm;
  std::vector<float> master;  // final fp32 weights
};

// steps of AdamW on batches with a learnable pattern (target = f(input))
// so that the loss falls; 1/8 of the targets ignored and 1/4 random, so that
// the loss settles near 2 instead of collapsing towards 0. (Near 0 a relative
// loss gap measures only how bf16 rounds near-certain probabilities: with
// every target learnable the CPU's own bf16 recipe was 1.4% to 8.3% off fp32
// at its worst step, at losses of 0.01 to 0.7, and the H200 1.3% to 9.1%.)
Trained train(Backend& be, const Precision& prec, const Variant& v, int steps) {
  const ModelConfig mc = model_config(v);
  LlamaModel model(mc, be, prec);
  model.init_weights(7);
  const bool mem = !v.memory.empty();
  const int B = mem ? 1 : 2, T = mem ? 48 : 64;
  model.plan_activations(B, v.memory == "rmt" ? 16 + 8 : mem ? 16 : T,
                         v.checkpointing ? Checkpointing::kFull : Checkpointing::kOff);
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.weight_decay = 0.1;
  Optimizer opt(oc, model);
  std::unique_ptr<SequenceRunner> runner = make_sequence_runner(model);
  Rng rng(11);
  const size_t n = size_t(B) * T;
  Trained r;
  for (int step = 0; step < steps; ++step) {
    std::vector<int32_t> in(n), tg(n);
    for (size_t i = 0; i < n; ++i) in[i] = int32_t(rng.below(mc.vocab_size));
    for (size_t i = 0; i < n; ++i)
      tg[i] = i % 8 == 5   ? -1
              : i % 4 == 2 ? int32_t(rng.below(mc.vocab_size))
                           : int32_t((in[i] * 7 + 3) % mc.vocab_size);
    model.grads().zero();
    int64_t valid = 0;
    const float scale = 1.f / float(n);
    SequenceBatch batch;
    batch.inputs = in.data();
    batch.targets = tg.data();
    batch.B = B;
    batch.T = T;
    const double loss = runner->forward_backward(batch, scale, &valid, nullptr);
    const double norm = grad_global_norm(model);
    opt.step(float(oc.lr), clip_coefficient(norm, 1.0));  // the trainer's clipping
    r.loss.push_back(loss / double(valid));
    r.norm.push_back(norm);
  }
  Arena& w = prec.master_weights ? model.master() : model.params();
  r.master.resize(w.f32_numel());
  be.copy_to_host(r.master.data(), w.f32_base(), w.bytes());
  return r;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(1e-12, std::fabs(b)); }

double weight_rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

const std::vector<Variant> kVariants = {
    {"rope GQA", "rope", false, false, ""},
    {"alibi tied checkpointing", "alibi", true, true, ""},
    {"none", "none", false, false, ""},
    {"rope rmt", "rope", false, false, "rmt"},
    {"rope knn", "rope", false, false, "knn"},
    {"alibi compressive", "alibi", false, false, "compressive"},
};

// Emulated CUDA vs the CPU's bf16 storage emulation: the same bf16 roundings
// of stored activations, different summation orders and the GPU's rounding
// of the backward's GEMM operands (the fp32 activation gradients). Measured
// (8 steps): largest per-step loss gap 2.6e-4 to 9.2e-4 relative (knn
// 1.2e-3), final weights 3.3e-3 to 5.5e-3 relative RMS; bounds 5e-3 and 1e-2.
TEST(CudaTrain, EmulatedCudaFollowsCpuBf16) {
  const Precision bf = resolve_precision("bf16", Device::kCuda);
  for (const Variant& v : kVariants) {
    auto cpu = make_cpu_backend();
    auto emu = make_cuda_emu_backend();
    const Trained ref = train(*cpu, bf, v, 8);
    const Trained got = train(*emu, bf, v, 8);
    double worst = 0;
    for (size_t s = 0; s < ref.loss.size(); ++s) {
      ASSERT_TRUE(std::isfinite(got.loss[s])) << v.name << " step " << s;
      worst = std::max(worst, rel(got.loss[s], ref.loss[s]));
    }
    const double w = weight_rel_rms(got.master, ref.master);
    std::printf("%-26s cuda-emu vs cpu bf16: loss %.4f -> %.4f (cpu %.4f -> %.4f), worst step "
                "gap %.2e, weights rel rms %.2e\n",
                v.name.c_str(), got.loss.front(), got.loss.back(), ref.loss.front(),
                ref.loss.back(), worst, w);
    EXPECT_LT(worst, 5e-3) << v.name;
    EXPECT_LT(w, 1e-2) << v.name;
    EXPECT_LT(got.loss.back(), got.loss.front()) << v.name << ": the loss must fall";
  }
}

// bf16 training on `be` against fp32 on the CPU, 50 steps from the same
// init and batches: per-step loss within 5%, final loss within 1%. Measured
// with the CPU running the bf16 recipe: per step 0.4% to 0.5% (knn 1.2%,
// rmt 3.1%: its memory state carries the rounding from segment to segment),
// final 0.03% to 0.35% (rmt 0.6%).
void expect_bf16_follows_fp32(Backend& be, const char* label) {
  const Precision bf = resolve_precision("bf16", Device::kCuda);
  for (const Variant& v : kVariants) {
    auto cpu = make_cpu_backend();
    const Trained ref = train(*cpu, fp32_precision(), v, 50);
    const Trained got = train(be, bf, v, 50);
    double worst = 0;
    for (size_t s = 0; s < ref.loss.size(); ++s) {
      ASSERT_TRUE(std::isfinite(got.loss[s])) << v.name << " step " << s;
      worst = std::max(worst, rel(got.loss[s], ref.loss[s]));
    }
    std::printf("%-26s %s bf16 vs cpu fp32: loss %.4f -> %.4f (cpu %.4f -> %.4f), worst step "
                "gap %.2e, final gap %.2e, weights rel rms %.2e\n",
                v.name.c_str(), label, got.loss.front(), got.loss.back(), ref.loss.front(),
                ref.loss.back(), worst, rel(got.loss.back(), ref.loss.back()),
                weight_rel_rms(got.master, ref.master));
    EXPECT_LT(worst, 5e-2) << v.name;
    EXPECT_LT(rel(got.loss.back(), ref.loss.back()), 1e-2) << v.name;
    EXPECT_LT(got.loss.back(), 0.7 * got.loss.front()) << v.name << ": the loss must fall";
  }
}

// The bounds are bf16's: the CPU running the bf16 recipe meets them.
TEST(CudaTrain, CpuBf16RecipeFollowsCpuFp32) {
  auto cpu = make_cpu_backend();
  expect_bf16_follows_fp32(*cpu, "cpu");
}

// The real GPU: bf16 on CUDA against fp32 on the CPU.
TEST(CudaTrain, GpuBf16FollowsCpuFp32) {
#ifdef RINGTRAIN_HAVE_CUDA
  if (cuda::device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    GTEST_SKIP() << "no CUDA device";
  }
  auto gpu = make_cuda_backend(0);
  expect_bf16_follows_fp32(*gpu, "cuda");
#else
  std::printf("skipped: no CUDA device (this build has no CUDA)\n");
  GTEST_SKIP() << "no CUDA in this build";
#endif
}

}  // namespace
}  // namespace rt
