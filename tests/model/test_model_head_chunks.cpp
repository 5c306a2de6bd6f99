// The LM head and its loss in chunks of rows (model/llama.h
// logits_chunk_rows): the logits of all B*T rows never exist at once, and the
// result is the one-chunk result up to the summation order of the head's
// weight gradient. Logits of rows outside the last chunk are recomputed.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/rng.h"
#include "model/cuda/cuda_backend.h"
#include "model/llama.h"
#include "model/precision.h"
#include "tiny_model.h"

namespace rt {
namespace {

ModelConfig tiny(bool tied) {
  ModelConfig mc = testing::tiny_llama(77);
  mc.tie_word_embeddings = tied;
  return mc;
}

struct Out {
  double loss = 0;
  std::vector<float> grads, losses, logits_first_rows;
  int64_t logits_rows = 0;
};

Out run(Backend& be, const ModelConfig& mc, const Precision& prec, int64_t chunk_rows) {
  LlamaModel model(mc, be, prec);
  model.init_weights(3);
  const int B = 2, T = 23, N = B * T;
  model.set_logits_chunk_rows(chunk_rows);
  model.plan_activations(B, T, Checkpointing::kOff);
  Rng r(5);
  std::vector<int32_t> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  for (int i = 0; i < N; ++i) {
    in[size_t(i)] = int32_t(r.below(77));
    tg[size_t(i)] = i % 9 == 4 ? -1 : int32_t(r.below(77));
  }
  Out o;
  int64_t valid = 0;
  model.grads().zero();
  o.loss = model.forward_backward(in.data(), tg.data(), B, T, RowPositions::whole(T),
                                   1.f / float(N), &valid);
  o.grads.resize(model.grads().f32_numel());
  be.copy_to_host(o.grads.data(), model.grads().f32_base(), model.grads().bytes());
  // a forward without backward: per-row losses and the logits of rows 0..2
  model.forward_backward(in.data(), tg.data(), B, T, RowPositions::whole(T), 0.f, &valid);
  o.losses = model.losses_to_host(0, N);
  o.logits_first_rows = model.logits_to_host(0, 3);
  o.logits_rows = model.logits_to_host(N - 1, 1).size() == size_t(mc.vocab_size) ? N : 0;
  return o;
}

double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(HeadChunks, ChunkRowsFromTheBudget) {
  EXPECT_EQ(logits_chunk_rows(100, 77), 100);                     // small: one chunk
  EXPECT_EQ(logits_chunk_rows(32768, 131072), kLogitsChunkElems / 131072);  // 512 rows
  EXPECT_EQ(logits_chunk_rows(10, int64_t(1) << 30), 1);          // at least one row
  // the activation plan holds one chunk of logits, not B*T rows
  ModelConfig mc = tiny(false);
  mc.vocab_size = 131072;
  const ActivationSpecs a =
      activation_specs(mc, fp32_precision(), 1, 32768, Checkpointing::kOff);
  for (const TensorSpec& s : a.acts)
    if (s.name == "logits") {
      EXPECT_EQ(s.shape[0], 512);
    }
}

// fp32 on the CPU: 5-row chunks (46 rows: 9 full chunks and one of 1) give
// the one-chunk loss, gradients, per-row losses and (recomputed) logits.
TEST(HeadChunks, ChunkedEqualsOneChunkFp32) {
  for (bool tied : {false, true}) {
    auto be = make_cpu_backend();
    const Out one = run(*be, tiny(tied), fp32_precision(), 0);
    const Out chunked = run(*be, tiny(tied), fp32_precision(), 5);
    EXPECT_NEAR(chunked.loss, one.loss, 1e-6 * std::fabs(one.loss)) << tied;
    EXPECT_LT(rel_rms(chunked.grads, one.grads), 1e-6) << tied;
    EXPECT_LT(rel_rms(chunked.losses, one.losses), 1e-6) << tied;  // sgemm blocking differs
    EXPECT_LT(rel_rms(chunked.logits_first_rows, one.logits_first_rows), 1e-6) << tied;
    EXPECT_EQ(chunked.logits_rows, one.logits_rows);
  }
}

// The same on the emulated CUDA backend in bf16.
TEST(HeadChunks, ChunkedEqualsOneChunkCudaEmuBf16) {
  auto be = make_cuda_emu_backend();
  const Precision bf = resolve_precision("bf16", Device::kCuda);
  const Out one = run(*be, tiny(false), bf, 0);
  const Out chunked = run(*be, tiny(false), bf, 5);
  EXPECT_NEAR(chunked.loss, one.loss, 1e-5 * std::fabs(one.loss));
  EXPECT_LT(rel_rms(chunked.grads, one.grads), 1e-5);
  EXPECT_LT(rel_rms(chunked.logits_first_rows, one.logits_first_rows), 1e-2);
}

}  // namespace
}  // namespace rt
