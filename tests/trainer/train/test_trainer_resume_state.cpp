// What a resume restores beyond weights and moments (issue 18 item 7): the
// non-finite streak continues, so a diverging run that is restarted still
// stops at train.nonfinite_tolerance instead of getting a fresh allowance.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/errors.h"
#include "test_util.h"
#include "trainer/config/config.h"
#include "trainer/train/trainer.h"

namespace rt {
namespace {

Config diverging_config(const std::string& dir) {
  // lr 1e30 without clipping: the first update blows the weights up, the
  // following losses are non-finite.
  const std::string yaml = R"(
run: {name: streak, seed: 5, dir: )" + dir + R"(}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2}
data: {train: {synthetic: passkey, loss: all}, shuffle: false}
train: {seq_len: 250, micro_batch_size: 1, global_batch_size: 2, max_steps: 10,
        grad_clip: 0, nonfinite_tolerance: 2,
        optimizer: {type: adamw, lr: 1.0e30}, schedule: {type: constant, warmup_steps: 0}}
)";
  Config c = parse_config(yaml, "streak.yaml", {});
  validate_layout(c, 1);
  return c;
}

TEST(TrainerResume, NonFiniteStreakContinuesAfterResume) {
  const std::string dir = rt::testing::fresh_test_dir("rt_resume_state") + "/run";
  {
    Trainer t(diverging_config(dir), {.quiet = true});
    EXPECT_FALSE(t.train_step().skipped);
    EXPECT_TRUE(t.train_step().skipped);  // streak 1
    EXPECT_TRUE(t.train_step().skipped);  // streak 2 = tolerance
    t.save_checkpoint_now();
  }
  Trainer t(diverging_config(dir), {.quiet = true});
  ASSERT_EQ(t.step(), 3);
  ASSERT_FALSE(t.resumed_from().empty());
  try {
    t.train_step();  // streak 3 > tolerance 2
    FAIL() << "the resumed run got a fresh non-finite allowance (streak reset to 0)";
  } catch (const NumericalError& e) {
    EXPECT_NE(std::string(e.what()).find("3 consecutive non-finite steps"), std::string::npos)
        << e.what();
  }
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path(), ec);
}

}  // namespace
}  // namespace rt
