// Recurrent memory (SPEC §5) beyond the PyTorch parity cases in
// test_trainer_torch_parity.cpp: activation memory independent of the number
// of segments, one segment equals the plain model on [mem; tokens; mem], the
// BPTT detach rule, and training through the Trainer.
#include <gtest/gtest.h>

#include <cmath>

#include "common/errors.h"
#include "common/rng.h"
#include "model/memory/rmt.h"
#include "trainer/config/config.h"
#include "trainer/eval/evaluate.h"
#include "trainer/train/trainer.h"
#include "tiny_model.h"

namespace rt {
namespace {

ModelConfig tiny_memory_model(int bptt) {
  ModelConfig mc = testing::tiny_llama(64);
  mc.memory = MemoryConfig::rmt(4, 16, bptt);
  return mc;
}

using testing::random_tokens;

TEST(Rmt, ActivationMemoryDoesNotGrowWithSegments) {
  auto be = make_cpu_backend();
  LlamaModel model(tiny_memory_model(-1), *be);
  model.init_weights(1);
  RmtRunner rmt(model);
  const int B = 1, S = 16;
  size_t planned[2];
  int i = 0;
  for (int segments : {2, 16}) {
    const int64_t T = int64_t(segments) * S;
    auto in = random_tokens(size_t(B) * T, 2, 64), tg = random_tokens(size_t(B) * T, 3, 64);
    double loss = rmt.forward_backward(in.data(), tg.data(), B, T, 1.f / float(B * T), nullptr);
    EXPECT_TRUE(std::isfinite(loss));
    planned[i++] = model.activation_bytes();
  }
  // the activation arenas are sized for one segment of S + 2M rows, whatever
  // the number of segments; only the memories (n+1) x B x M x d grow
  EXPECT_EQ(planned[0], planned[1]);
  EXPECT_LT(planned[1], size_t(3) << 20);
}

TEST(Rmt, OneSegmentEqualsThePlainModelOnMemTokensMem) {
  auto be = make_cpu_backend();
  ModelConfig mc = tiny_memory_model(-1);
  LlamaModel model(mc, *be);
  model.init_weights(4);
  RmtRunner rmt(model);
  const int S = 16, M = 4, d = mc.hidden_size, R = S + 2 * M;
  auto in = random_tokens(S, 5, 64), tg = random_tokens(S, 6, 64);
  int64_t valid = 0;
  const double loss = rmt.forward_backward(in.data(), tg.data(), 1, S, 0.f, &valid);
  EXPECT_EQ(valid, S);
  // by hand: [mem; embed(tokens); mem] through the plain model, loss on token rows
  std::vector<float> x0(size_t(R) * d);
  const float* mem = model.params().f32("model.memory.embeddings");
  const float* emb = model.params().f32("model.embed_tokens.weight");
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < d; ++c)
      x0[size_t(r) * d + c] = r < M ? mem[size_t(r) * d + c]
                              : r < M + S ? emb[size_t(in[r - M]) * d + c]
                                          : mem[size_t(r - M - S) * d + c];
  std::vector<int32_t> targets(R, -1);
  for (int i = 0; i < S; ++i) targets[M + i] = tg[i];
  const double direct = model.forward_backward_embeddings(
      x0.data(), targets.data(), 1, R, RowPositions::whole(R), 0.f, nullptr, nullptr, nullptr);
  EXPECT_DOUBLE_EQ(loss, direct);
}

TEST(Rmt, DetachRule) {
  auto be = make_cpu_backend();
  LlamaModel m_all(tiny_memory_model(-1), *be), m_none(tiny_memory_model(0), *be),
      m_two(tiny_memory_model(2), *be);
  RmtRunner all(m_all), none(m_none), two(m_two);
  for (int k = 1; k < 6; ++k) {
    EXPECT_FALSE(all.detached_before(k));
    EXPECT_TRUE(none.detached_before(k));
    EXPECT_EQ(two.detached_before(k), k % 2 == 0) << k;
  }
  EXPECT_FALSE(none.detached_before(0)) << "the learned memory always gets its gradient";
}

TEST(Rmt, TrainerTrainsAMemoryModel) {
  const char* yaml = R"(
run: {name: rmt, seed: 2}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 1,
        num_attention_heads: 4, memory: {type: rmt, num_tokens: 4, segment_length: 64, bptt_segments: -1}}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 256, micro_batch_size: 2, global_batch_size: 2, max_steps: 3,
        optimizer: {type: adamw, lr: 1.0e-2}, schedule: {type: constant, warmup_steps: 0}}
)";
  Config c = parse_config(yaml, "rmt.yaml");
  validate_layout(c, 1);
  Trainer t(c, {.write_outputs = false, .quiet = true});
  const double first = t.train_step().loss;
  t.train_step();
  const double third = t.train_step().loss;
  EXPECT_LT(third, first);

}

}  // namespace
}  // namespace rt

namespace rt {
namespace {

// Evaluation runs memory models with their memory: perplexity equals the
// runner's forward, loss by position covers every token, passkey works on
// whole segments and explains other lengths.
TEST(Rmt, EvaluationUsesTheMemory) {
  auto be = make_cpu_backend();
  ModelConfig mc = tiny_memory_model(-1);
  mc.vocab_size = 256;
  mc.memory->segment_length = 128;
  LlamaModel model(mc, *be);
  model.init_weights(9);
  DataSourceConfig src;
  src.synthetic = "passkey";
  auto data = make_source(src, 1);
  const int64_t T = 256;
  LossByPosition lbp;
  lbp.bucket = 64;
  PerplexityResult r = evaluate_perplexity(model, *data, T, 2, nullptr, &lbp);
  // the same two sequences through the runner
  RmtRunner rmt(model);
  double nll = 0;
  int64_t tokens = 0;
  for (int64_t i = 0; i < 2; ++i) {
    std::vector<int32_t> in(T), tg(T);
    data->read(i, T, 0, T, in.data(), tg.data());
    int64_t v = 0;
    nll += rmt.forward_backward(in.data(), tg.data(), 1, T, 0.f, &v);
    tokens += v;
  }
  EXPECT_EQ(r.tokens, tokens);
  EXPECT_NEAR(r.mean_nll, nll / double(tokens), 1e-9);
  ASSERT_EQ(lbp.mean_nll.size(), 4u);
  double weighted = 0;
  for (size_t b = 0; b < 4; ++b) weighted += lbp.mean_nll[b] * double(lbp.tokens[b]);
  EXPECT_NEAR(weighted / double(tokens), r.mean_nll, 1e-6);

  PasskeyResult pk = evaluate_passkey(model, {256, 512}, {0.0, 1.0}, 2, 3);
  for (auto& row : pk.accuracy)
    for (double a : row) EXPECT_TRUE(a >= 0.0 && a <= 1.0);
  try {
    evaluate_passkey(model, {300}, {0.0}, 1, 3);
    FAIL() << "a length of partial segments must be refused";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("segment_length"), std::string::npos) << e.what();
  }
}

// --memory-reset (eval ablation): each segment starts from the learned initial
// memory, so segment k's losses are those of segment k's tokens run alone;
// with the memory carried they differ.
TEST(Rmt, MemoryResetRunsEverySegmentFromTheInitialMemory) {
  auto be = make_cpu_backend();
  LlamaModel model(tiny_memory_model(-1), *be);
  model.init_weights(11);
  const int S = 16;
  const int64_t T = 3 * S;
  auto in = random_tokens(size_t(T), 12, 64), tg = random_tokens(size_t(T), 13, 64);
  RmtRunner carried(model), reset(model), alone(model);
  reset.set_memory_reset(true);
  std::vector<float> l_carry(static_cast<size_t>(T)), l_reset(l_carry.size()), l_alone(static_cast<size_t>(S));
  carried.forward_backward(in.data(), tg.data(), 1, T, 0.f, nullptr, l_carry.data());
  reset.forward_backward(in.data(), tg.data(), 1, T, 0.f, nullptr, l_reset.data());
  double diff = 0;
  for (int64_t k = 0; k < 3; ++k) {
    alone.forward_backward(in.data() + k * S, tg.data() + k * S, 1, S, 0.f, nullptr,
                           l_alone.data());
    for (int i = 0; i < S; ++i) {
      EXPECT_FLOAT_EQ(l_reset[size_t(k * S + i)], l_alone[size_t(i)]) << k << " " << i;
      diff += std::fabs(l_carry[size_t(k * S + i)] - l_reset[size_t(k * S + i)]);
    }
  }
  EXPECT_GT(diff, 1e-3) << "the carried memory must change later segments";
  // the first segment is the same either way
  for (int i = 0; i < S; ++i) EXPECT_FLOAT_EQ(l_carry[size_t(i)], l_reset[size_t(i)]);
}

}  // namespace
}  // namespace rt
