// LlamaModel::init_weights draws each tensor from its own stream keyed by the
// tensor's name, tensors in parallel (OpenMP): the weights must not depend on
// the thread count, and must equal a serial draw of each tensor's stream.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <vector>

#include "common/rng.h"
#include "model/backend.h"
#include "model/llama.h"
#include "model/precision.h"
#include "tiny_model.h"

namespace rt {
namespace {

std::vector<float> init_with_threads(int threads) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto be = make_cpu_backend();
  const ModelConfig mc = testing::tiny_llama(77);
  LlamaModel model(mc, *be, fp32_precision());
  model.init_weights(11);
  omp_set_num_threads(saved);
  std::vector<float> w(model.master().f32_numel());
  be->copy_to_host(w.data(), model.master().f32_base(), model.master().bytes());
  return w;
}

TEST(ModelInit, SameWeightsWhateverTheThreadCount) {
  const std::vector<float> one = init_with_threads(1);
  for (int threads : {2, 3, 8}) {
    const std::vector<float> many = init_with_threads(threads);
    ASSERT_EQ(many.size(), one.size());
    EXPECT_EQ(many, one) << threads << " threads";
  }
}

TEST(ModelInit, EachTensorIsItsOwnStream) {
  auto be = make_cpu_backend();
  const ModelConfig mc = testing::tiny_llama(77);
  LlamaModel model(mc, *be, fp32_precision());
  model.init_weights(11);
  std::vector<float> w(model.master().f32_numel());
  be->copy_to_host(w.data(), model.master().f32_base(), model.master().bytes());
  // The first projection's values, drawn serially here from the stream
  // keyed by its name (FNV-1a, mixed with the seed).
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  const TensorSpec& s = model.master().spec(name);
  uint64_t h = 1469598103934665603ull;
  for (char ch : name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
  Rng rng(mix_seed(11, h));
  const float* got = w.data() + s.offset_bytes / sizeof(float);
  for (size_t i = 0; i < s.numel; ++i)
    ASSERT_EQ(got[i], float(rng.normal() * mc.init_std)) << name << "[" << i << "]";
}

}  // namespace
}  // namespace rt
