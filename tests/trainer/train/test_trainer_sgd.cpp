// SGD (train.optimizer.type: sgd): torch.optim.SGD semantics, checked against
// a float64 transcription of torch's algorithm (dampening 0, not Nesterov):
//   d = g + weight_decay * p;  buf = momentum * buf + d  (buf = d on step 1);
//   p -= lr * buf.
// Also: momentum 0 keeps the plain update bit for bit, and the momentum
// buffer survives a checkpoint round trip (resume continues the same run).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"
#include "model/llama.h"
#include "test_util.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config/config.h"
#include "trainer/train/optimizer.h"

namespace rt {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 24;
  return c;
}

std::vector<float> to_host(Backend& be, const Arena& a) {
  std::vector<float> out(a.numel());
  be.copy_to_host(out.data(), a.f32_base(), a.bytes());
  return out;
}

// Gradient of step s (deterministic, varied signs and sizes).
std::vector<float> grads_at(size_t n, int s) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = 0.01f * float(int((i * 7 + size_t(s) * 13) % 23) - 11);
  return g;
}

struct Case {
  double momentum, weight_decay;
};

class SgdTest : public ::testing::TestWithParam<Case> {};

TEST_P(SgdTest, MatchesFloat64TorchAlgorithm) {
  const Case c = GetParam();
  auto be = make_cpu_backend();
  LlamaModel m(tiny(), *be);
  m.init_weights(5);
  OptimizerConfig oc;
  oc.type = "sgd";
  oc.momentum = c.momentum;
  oc.weight_decay = c.weight_decay;
  oc.no_decay = {};
  Optimizer opt(oc, m);
  const size_t n = m.params().numel();
  std::vector<double> p(n), buf(n, 0.0);
  {
    const std::vector<float> p0 = to_host(*be, m.params());
    for (size_t i = 0; i < n; ++i) p[i] = p0[i];
  }
  const double lrs[] = {0.1, 0.05, 0.2, 0.1, 0.07};
  for (int s = 0; s < 5; ++s) {
    const std::vector<float> g = grads_at(n, s);
    be->copy_to_device(m.grads().f32_base(), g.data(), m.grads().bytes());
    opt.step(float(lrs[s]));
    const double lr = double(float(lrs[s]));
    for (size_t i = 0; i < n; ++i) {
      double d = double(g[i]) + double(float(c.weight_decay)) * p[i];
      if (c.momentum > 0) {
        buf[i] = (s == 0) ? d : double(float(c.momentum)) * buf[i] + d;  // torch's first step
        d = buf[i];
      }
      p[i] -= lr * d;
    }
  }
  const std::vector<float> got = to_host(*be, m.params());
  double max_err = 0;
  for (size_t i = 0; i < n; ++i)
    max_err = std::max(max_err, std::abs(double(got[i]) - p[i]) / (std::abs(p[i]) + 1e-3));
  EXPECT_LT(max_err, 1e-5) << "momentum " << c.momentum << " weight_decay " << c.weight_decay;
  // The test can fail: momentum changes the trajectory.
  if (c.momentum > 0) {
    LlamaModel plain(tiny(), *be);
    plain.init_weights(5);
    OptimizerConfig pc = oc;
    pc.momentum = 0;
    Optimizer popt(pc, plain);
    for (int s = 0; s < 5; ++s) {
      const std::vector<float> g = grads_at(n, s);
      be->copy_to_device(plain.grads().f32_base(), g.data(), plain.grads().bytes());
      popt.step(float(lrs[s]));
    }
    EXPECT_NE(to_host(*be, plain.params()), got);
  }
}

INSTANTIATE_TEST_SUITE_P(Torch, SgdTest,
                         ::testing::Values(Case{0.0, 0.0}, Case{0.9, 0.0}, Case{0.9, 0.01},
                                           Case{0.5, 0.1}));

TEST(Sgd, MomentumBufferRoundTripsThroughCheckpoint) {
  const std::string dir = rt::testing::fresh_test_dir("rt_sgd");
  auto be = make_cpu_backend();
  OptimizerConfig oc;
  oc.type = "sgd";
  oc.momentum = 0.9;
  oc.weight_decay = 0;
  // Run A: 4 steps straight. Run B: 2 steps, checkpoint, new optimizer, 2 steps.
  LlamaModel a(tiny(), *be), b(tiny(), *be);
  a.init_weights(3);
  b.init_weights(3);
  Optimizer oa(oc, a);
  auto ob = std::make_unique<Optimizer>(oc, b);
  const size_t n = a.params().numel();
  auto step = [&](LlamaModel& m, Optimizer& o, int s) {
    const std::vector<float> g = grads_at(n, s);
    be->copy_to_device(m.grads().f32_base(), g.data(), m.grads().bytes());
    o.step(0.1f);
  };
  for (int s = 0; s < 4; ++s) step(a, oa, s);
  for (int s = 0; s < 2; ++s) step(b, *ob, s);
  const std::string path = dir + "/sgd.h5";
  CheckpointMeta meta;
  meta.step = 2;
  meta.config_yaml = "model: {}\n";
  save_checkpoint(path, b, ob.get(), meta);
  EXPECT_EQ(inspect_checkpoint(path).optimizer_tensors, int64_t(b.params().specs().size()));
  ob = std::make_unique<Optimizer>(oc, b);
  load_optimizer_state(path, b, *ob);
  EXPECT_EQ(to_host(*be, ob->momentum_buffer()).size(), n);
  for (int s = 2; s < 4; ++s) step(b, *ob, s);
  EXPECT_EQ(to_host(*be, a.params()), to_host(*be, b.params()));
  std::filesystem::remove_all(dir);
}

TEST(Sgd, ConfigDefaultsAndOwnKeys) {
  const std::string base = "data: {train: {synthetic: passkey}}\n";
  Config c = parse_config(base + "train: {optimizer: {type: sgd, lr: 0.1}, schedule: {min_lr: 0}}",
                          "c.yaml");
  EXPECT_EQ(c.train.optimizer.weight_decay, 0.0);  // torch's default
  EXPECT_EQ(c.train.optimizer.momentum, 0.0);
  const std::string y = config_to_yaml(c);
  EXPECT_NE(y.find("momentum: 0.0"), std::string::npos) << y;
  EXPECT_EQ(y.find("betas"), std::string::npos) << y;
  EXPECT_EQ(y.find(" eps:"), std::string::npos) << y;
  EXPECT_EQ(config_to_yaml(parse_config(y, "resolved.yaml")), y);
  Config adam = parse_config(base, "c.yaml");
  EXPECT_EQ(adam.train.optimizer.weight_decay, 0.1);
  const std::string ya = config_to_yaml(adam);
  EXPECT_EQ(ya.find("momentum"), std::string::npos) << ya;
  EXPECT_NE(ya.find("betas"), std::string::npos) << ya;
  Config m = parse_config(
      base + "train: {optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.01}, "
             "schedule: {min_lr: 0}}",
      "c.yaml");
  EXPECT_EQ(m.train.optimizer.momentum, 0.9);
  EXPECT_EQ(m.train.optimizer.weight_decay, 0.01);
  std::string msg = rt::testing::error_of<UsageError>([&] {
    parse_config(base + "train: {optimizer: {type: adamw, momentum: 0.9}}", "c.yaml");
  });
  EXPECT_NE(msg.find("train.optimizer.momentum applies to type: sgd only"), std::string::npos)
      << msg;
  msg = rt::testing::error_of<UsageError>([&] {
    parse_config(base + "train: {optimizer: {type: sgd, betas: [0.9, 0.9]}}", "c.yaml");
  });
  EXPECT_NE(msg.find("train.optimizer.betas applies to type: adamw only"), std::string::npos)
      << msg;
  msg = rt::testing::error_of<UsageError>([&] {
    parse_config(base + "train: {optimizer: {type: sgd, momentum: 1.0}}", "c.yaml");
  });
  EXPECT_NE(msg.find("train.optimizer.momentum"), std::string::npos) << msg;
}

}  // namespace
}  // namespace rt
