// The training loop: gradient accumulation is exact, the schedule follows its
// formula, and the non-finite guard skips then stops with exit code 4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/errors.h"
#include "trainer/config/config.h"
#include "trainer/train/memory_plan.h"
#include "trainer/train/trainer.h"

namespace rt {
namespace {

Config tiny_config(const std::vector<std::string>& overrides = {}) {
  const char* yaml = R"(
run: {name: loop, seed: 5}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2}
data: {train: {synthetic: passkey, loss: all}, shuffle: false}
train: {seq_len: 250, micro_batch_size: 1, global_batch_size: 4, max_steps: 4,
        optimizer: {type: adamw, lr: 1.0e-2}, schedule: {type: cosine, warmup_steps: 1, min_lr: 1.0e-3}}
)";
  Config c = parse_config(yaml, "loop.yaml", overrides);
  validate_layout(c, 1);
  return c;
}

std::vector<double> run_losses(Config c, int steps, std::vector<float>* final_weights = nullptr) {
  Trainer t(c, {.write_outputs = false, .quiet = true});
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) losses.push_back(t.train_step().loss);
  if (final_weights) {
    Arena& p = t.model().params();
    final_weights->assign(p.f32_base(), p.f32_base() + p.f32_numel());
  }
  return losses;
}

TEST(TrainerLoop, MicroBatchSizeDoesNotChangeLossesOrWeights) {
  std::vector<float> w1, w2, w4;
  auto l1 = run_losses(tiny_config({"train.micro_batch_size=1"}), 3, &w1);
  auto l2 = run_losses(tiny_config({"train.micro_batch_size=2"}), 3, &w2);
  auto l4 = run_losses(tiny_config({"train.micro_batch_size=4"}), 3, &w4);
  for (int s = 0; s < 3; ++s) {
    EXPECT_NEAR(l2[s], l1[s], 1e-5 * l1[s]) << "step " << s;
    EXPECT_NEAR(l4[s], l1[s], 1e-5 * l1[s]) << "step " << s;
  }
  ASSERT_EQ(w1.size(), w4.size());
  double max_diff = 0, scale = 0;
  for (size_t i = 0; i < w1.size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(w1[i] - w4[i])));
    scale = std::max(scale, double(std::abs(w1[i])));
  }
  EXPECT_LT(max_diff / scale, 1e-5);
  EXPECT_LT(l1[2], l1[0]) << "training should reduce the loss on repeated data patterns";
}

TEST(TrainerLoop, SameSeedSameRunDifferentSeedDifferentRun) {
  auto a = run_losses(tiny_config(), 2);
  auto b = run_losses(tiny_config(), 2);
  auto c = run_losses(tiny_config({"run.seed=6"}), 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a[0], c[0]);
}

TEST(TrainerLoop, ScheduleWarmupThenDecayToMinLr) {
  TrainConfig t;
  t.max_steps = 110;
  t.optimizer.lr = 1.0;
  t.schedule = {"cosine", 10, 0.1};
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 10), 1.0);
  EXPECT_NEAR(learning_rate_at(t, 60), 0.55, 1e-12);  // half way: mean of lr and min_lr
  EXPECT_NEAR(learning_rate_at(t, 110), 0.1, 1e-12);
  t.schedule.type = "linear";
  EXPECT_NEAR(learning_rate_at(t, 60), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate_at(t, 35), 1.0 - 0.9 * 0.25, 1e-12);
  t.schedule.type = "constant";
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 100), 1.0);
}

TEST(TrainerLoop, NonFiniteStepsAreSkippedWithinToleranceThenExitCode4) {
  // lr 1e30 without clipping: the first update blows the weights up, the
  // following losses are non-finite.
  Config c = tiny_config({"train.optimizer.lr=1.0e30", "train.grad_clip=0",
                          "train.schedule.warmup_steps=0", "train.nonfinite_tolerance=2",
                          "train.max_steps=10"});
  Trainer t(c, {.write_outputs = false, .quiet = true});
  EXPECT_FALSE(t.train_step().skipped);
  EXPECT_TRUE(t.train_step().skipped);
  std::vector<float> frozen(t.model().params().f32_base(),
                            t.model().params().f32_base() + t.model().params().f32_numel());
  EXPECT_TRUE(t.train_step().skipped);
  // skipped steps leave the weights alone
  EXPECT_EQ(0, std::memcmp(frozen.data(), t.model().params().f32_base(), frozen.size() * 4));
  try {
    t.train_step();
    FAIL() << "third consecutive non-finite step must throw";
  } catch (const NumericalError& e) {
    EXPECT_EQ(e.code(), kExitNumerical);
    EXPECT_NE(std::string(e.what()).find("nonfinite_tolerance"), std::string::npos) << e.what();
  }
}

// Checkpointing off, true, full and selective: bitwise the same losses and
// final weights (the CPU's fp32 attention is deterministic, so recomputing
// it, or keeping it, changes nothing), with GQA (tiny_config) and with ALiBi.
TEST(TrainerLoop, ActivationCheckpointingGivesTheSameGradients) {
  for (const char* position : {"rope", "alibi"}) {
    SCOPED_TRACE(position);
    const std::string pos = std::string("model.position=") + position;
    std::vector<float> w_off;
    const auto off = run_losses(tiny_config({pos}), 3, &w_off);
    for (const char* mode : {"true", "full", "selective"}) {
      SCOPED_TRACE(mode);
      std::vector<float> w;
      const auto l = run_losses(
          tiny_config({pos, std::string("train.activation_checkpointing=") + mode}), 3, &w);
      EXPECT_EQ(l, off);  // exact doubles
      ASSERT_EQ(w.size(), w_off.size());
      EXPECT_EQ(0, std::memcmp(w.data(), w_off.data(), w.size() * sizeof(float)))
          << "final weights differ from checkpointing off";
    }
  }
}

// Memory models: RMT (whole segments through forward_backward_embeddings),
// kNN and compressive memory (their layers' attention is the memory's, so
// selective recomputes those layers whole, the others without attention).
// selective trains them to bitwise the losses and weights of true.
TEST(TrainerLoop, SelectiveCheckpointingTrainsMemoryModelsLikeFull) {
  const char* memories[] = {
      "{type: rmt, num_tokens: 4, segment_length: 32, bptt_segments: -1}",
      "{type: knn, segment_length: 32, layers: [1], memory_size: 96, top_k: 8}",
      "{type: compressive, segment_length: 32, layers: [1], memory_segments: 1, rate: 2, "
      "levels: 2, compressed_size: 32, compression: conv}"};
  for (const char* memory : memories) {
    SCOPED_TRACE(memory);
    auto config = [&](const char* mode) {
      return tiny_config({"train.seq_len=256", "model.max_position_embeddings=512",
                          std::string("model.memory=") + memory,
                          std::string("train.activation_checkpointing=") + mode});
    };
    std::vector<float> w_full, w_sel, w_off;
    const auto full = run_losses(config("true"), 2, &w_full);
    const auto sel = run_losses(config("selective"), 2, &w_sel);
    const auto off = run_losses(config("false"), 2, &w_off);
    EXPECT_EQ(sel, full);
    EXPECT_EQ(sel, off);
    ASSERT_EQ(w_sel.size(), w_full.size());
    EXPECT_EQ(0, std::memcmp(w_sel.data(), w_full.data(), w_sel.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(w_sel.data(), w_off.data(), w_sel.size() * sizeof(float)));
  }
}

// The memory plan (`ringtrain plan`, memory_plan.cpp) of selective equals the
// trainer's arenas, and is true's plus, per layer but one (true's shared slot
// holds one), an attention output (N x heads*head_dim, activation dtype) and
// an LSE (B*heads*T fp32), each 64-byte aligned in the arena.
TEST(TrainerLoop, MemoryPlanOfSelectiveCheckpointing) {
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const std::string prec = std::string("train.precision=") + precision;
    const Config full = tiny_config({prec, "train.activation_checkpointing=true",
                                     "train.micro_batch_size=2"});
    const Config sel = tiny_config({prec, "train.activation_checkpointing=selective",
                                    "train.micro_batch_size=2"});
    const MemoryPlan pf = plan_memory(full, 1, Device::kCpu);
    const MemoryPlan ps = plan_memory(sel, 1, Device::kCpu);
    const int64_t B = 2, T = 250, H = 4, hd = 8, L = 2;
    const int64_t act = std::string(precision) == "bf16" ? 2 : 4;
    auto align64 = [](int64_t b) { return (b + 63) / 64 * 64; };
    const int64_t per_layer = align64(B * T * H * hd * act) + align64(B * H * T * 4);
    EXPECT_EQ(ps.ranks[0].activations, pf.ranks[0].activations + (L - 1) * per_layer);
    EXPECT_EQ(ps.ranks[0].workspace, pf.ranks[0].workspace);
    // the plan's alternatives are the other two settings, with their bytes
    ASSERT_EQ(ps.other_checkpointing.size(), 2u);
    EXPECT_EQ(ps.other_checkpointing[0].checkpointing, Checkpointing::kOff);
    EXPECT_EQ(ps.other_checkpointing[1].checkpointing, Checkpointing::kFull);
    EXPECT_EQ(ps.other_checkpointing[1].activations, pf.ranks[0].activations);
    ASSERT_EQ(pf.other_checkpointing.size(), 2u);
    EXPECT_EQ(pf.other_checkpointing[1].checkpointing, Checkpointing::kSelective);
    EXPECT_EQ(pf.other_checkpointing[1].activations, ps.ranks[0].activations);
    // what the trainer allocates (its start-up memory lines)
    Trainer t(sel, {.write_outputs = false, .quiet = true});
    EXPECT_EQ(t.rank_memory().activations, ps.ranks[0].activations);
    EXPECT_EQ(t.rank_memory().workspace, ps.ranks[0].workspace);
  }
}

}  // namespace
}  // namespace rt
