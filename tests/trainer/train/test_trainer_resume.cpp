// Resume, init_from and stop-on-signal in the trainer (SPEC §8, §4.4): a run
// stopped and resumed from a checkpoint reproduces the uninterrupted run bit
// for bit (losses, weights, AdamW moments; the schedule position comes back
// with the step); unusable checkpoints are skipped with the previous one
// used; init_from loads weights only and rejects shape changes.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config/config.h"
#include "trainer/train/trainer.h"

namespace rt {
namespace {

namespace fs = std::filesystem;

std::vector<float> host_copy(Backend& be, const Arena& a) {
  std::vector<float> out(a.f32_numel());
  if (a.f32_numel()) be.copy_to_host(out.data(), a.f32_base(), a.bytes());
  return out;
}

using rt::testing::error_of;

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = rt::testing::fresh_test_dir("rt_resume");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A tiny model on shuffled synthetic data with a warm-up + cosine schedule
  // over 6 steps, so the learning rate differs at every step.
  Config config(const std::string& run, const std::vector<std::string>& overrides = {}) {
    const std::string yaml = "run: {name: r, dir: " + dir_ + "/" + run + ", seed: 11}\n" +
                             R"(model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32,
        num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}
data: {train: {synthetic: passkey}, shuffle: true}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 2, max_steps: 6,
        schedule: {type: cosine, warmup_steps: 2, min_lr: 1.0e-5}}
checkpoint: {every_steps: 0, keep_last: 5}
log: {every_steps: 1}
)";
    Config c = parse_config(yaml, "test.yaml", overrides);
    validate_layout(c, 1);
    return c;
  }

  std::string dir_;
};

TEST_F(ResumeTest, ResumedRunMatchesUninterruptedBitForBit) {
  std::vector<double> ref_loss, ref_lr;
  std::vector<float> ref_w, ref_m, ref_v;
  {
    Trainer a(config("a"), {});
    for (int i = 0; i < 6; ++i) {
      StepStats s = a.train_step();
      ref_loss.push_back(s.loss);
      ref_lr.push_back(s.lr);
    }
    Backend& be = a.model().backend();
    ref_w = host_copy(be, a.model().params());
    ref_m = host_copy(be, a.optimizer().exp_avg());
    ref_v = host_copy(be, a.optimizer().exp_avg_sq());
  }
  {
    Trainer b(config("b"), {});
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.train_step().loss, ref_loss[size_t(i)]);
    b.save_checkpoint_now();
  }
  Trainer c(config("b"), {});
  EXPECT_EQ(c.step(), 3);
  EXPECT_EQ(c.tokens_seen(), 3 * 2 * 256);
  EXPECT_EQ(c.optimizer().steps_taken(), 3);
  EXPECT_EQ(c.resumed_from(), checkpoint_path(dir_ + "/b", 3));
  for (int i = 3; i < 6; ++i) {
    StepStats s = c.train_step();
    EXPECT_EQ(s.loss, ref_loss[size_t(i)]) << "step " << i + 1;
    EXPECT_EQ(s.lr, ref_lr[size_t(i)]) << "step " << i + 1;
  }
  Backend& be = c.model().backend();
  EXPECT_EQ(host_copy(be, c.model().params()), ref_w);
  EXPECT_EQ(host_copy(be, c.optimizer().exp_avg()), ref_m);
  EXPECT_EQ(host_copy(be, c.optimizer().exp_avg_sq()), ref_v);

  // The trainer state records the data order and RNG inputs.
  const std::string st = read_checkpoint_meta(checkpoint_path(dir_ + "/b", 3)).trainer_state_json;
  EXPECT_NE(st.find("\"data_order\""), std::string::npos) << st;
  EXPECT_NE(st.find("\"rng\""), std::string::npos) << st;
}

TEST_F(ResumeTest, UnusableNewestFallsBackToPreviousAndIsMovedAside) {
  {
    Trainer b(config("b"), {});
    b.train_step();
    b.save_checkpoint_now();
    b.train_step();
    b.save_checkpoint_now();
  }
  const std::string newest = checkpoint_path(dir_ + "/b", 2);
  fs::resize_file(newest, fs::file_size(newest) / 2);  // truncated
  Trainer c(config("b"), {});
  EXPECT_EQ(c.step(), 1);
  EXPECT_EQ(c.resumed_from(), checkpoint_path(dir_ + "/b", 1));
  EXPECT_TRUE(fs::exists(newest + ".corrupt"));
  EXPECT_FALSE(fs::exists(newest));
}

TEST_F(ResumeTest, NoUsableCheckpointIsIoError) {
  {
    Trainer b(config("b"), {});
    b.train_step();
    b.save_checkpoint_now();
  }
  const std::string only = checkpoint_path(dir_ + "/b", 1);
  fs::resize_file(only, 1000);
  std::string msg = error_of<IoError>([&] { Trainer c(config("b"), {}); });
  EXPECT_NE(msg.find("no usable checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find(only), std::string::npos) << msg;
  EXPECT_TRUE(fs::exists(only)) << "a failed resume must not move or delete files";
}

TEST_F(ResumeTest, ResumeWithAnotherModelShapeIsUsageErrorNamingTheKey) {
  {
    Trainer b(config("b"), {});
    b.train_step();
    b.save_checkpoint_now();
  }
  std::string msg = error_of<UsageError>(
      [&] { Trainer c(config("b", {"model.intermediate_size=48"}), {}); });
  EXPECT_NE(msg.find("model.intermediate_size is 32 in the checkpoint but 48 in the config"),
            std::string::npos)
      << msg;
  msg = error_of<UsageError>([&] { Trainer c(config("b", {"train.optimizer.type=sgd"}), {}); });
  EXPECT_NE(msg.find("adamw"), std::string::npos) << msg;
}

TEST_F(ResumeTest, InitFromLoadsWeightsOnly) {
  std::vector<float> w;
  {
    Trainer b(config("b"), {});
    b.train_step();
    b.train_step();
    b.save_checkpoint_now();
    w = host_copy(b.model().backend(), b.model().params());
  }
  const std::string src = checkpoint_path(dir_ + "/b", 2);
  Trainer d(config("d", {"checkpoint.init_from=" + src, "model.rope_theta=500000",
                         "model.max_position_embeddings=4096"}),
            {});
  EXPECT_EQ(d.step(), 0);
  EXPECT_EQ(d.tokens_seen(), 0);
  EXPECT_EQ(d.optimizer().steps_taken(), 0);
  EXPECT_TRUE(d.resumed_from().empty());
  Backend& be = d.model().backend();
  EXPECT_EQ(host_copy(be, d.model().params()), w);
  for (float m : host_copy(be, d.optimizer().exp_avg())) ASSERT_EQ(m, 0.f);

  std::string msg = error_of<UsageError>([&] {
    Trainer e(config("e", {"checkpoint.init_from=" + src, "model.num_hidden_layers=3"}), {});
  });
  EXPECT_NE(msg.find("checkpoint.init_from " + src +
                     ": model.num_hidden_layers is 2 in the checkpoint but 3 in the config; the "
                     "config may change only max_position_embeddings, rope_theta, rope_scaling, "
                     "position, memory"),
            std::string::npos)
      << msg;
}

TEST_F(ResumeTest, StopSignalAbandonsTheStepSavesAndReturns) {
  install_stop_signal_handlers();
  Trainer b(config("b"), {});
  std::raise(SIGTERM);  // the handler only records it
  b.fit();
  clear_stop_signal();
  EXPECT_EQ(b.stopped_by_signal(), SIGTERM);
  // Two micro-batches per step: the stop is seen before the second, the
  // step is abandoned before its update, and the last completed step (0,
  // the initial state) is saved.
  EXPECT_EQ(b.step(), 0);
  EXPECT_TRUE(fs::exists(checkpoint_path(dir_ + "/b", 0)));
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
}

}  // namespace
}  // namespace rt
