// Tests for the strict YAML config parser (trainer/config/config.cpp, SPEC §2):
// round trip of the resolved config, defaults, `--set` overrides, and one
// test per class of bad config, each checking that the message names the key
// and where it came from (config.yaml:<line> or the --set).
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "trainer/config/config.h"

namespace {

using rt::Checkpointing;
using rt::Config;
using rt::parse_config;

// Joins lines with '\n', so line numbers in a test read off the list (1-based).
std::string lines(std::initializer_list<const char*> ls) {
  std::string s;
  for (const char* l : ls) s += std::string(l) + "\n";
  return s;
}

// Expects parse_config(yaml, overrides) to throw a UsageError (exit 2) whose
// message contains every needle.
void expect_usage_error(const std::string& yaml, const std::vector<std::string>& needles,
                        const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "config.yaml", overrides);
    ADD_FAILURE() << "no error thrown; expected one containing '" << needles.front() << "'";
  } catch (const rt::UsageError& e) {
    EXPECT_EQ(e.code(), rt::kExitUsage);
    const std::string msg = e.what();
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
  }
}

// Every section with non-default values (and synthetic sources, rope_scaling
// with optional fields, memory, passkey eval).
const std::string kFull = lines({
    "run:",
    "  name: full-test",
    "  dir: /tmp/somewhere/run dir",
    "  seed: 18446744073709551615",
    "model:",
    "  vocab_size: 512",
    "  hidden_size: 96",
    "  intermediate_size: 200",
    "  num_hidden_layers: 3",
    "  num_attention_heads: 6",
    "  num_key_value_heads: 2",
    "  head_dim: 20",
    "  rms_norm_eps: 1.0e-6",
    "  tie_word_embeddings: true",
    "  max_position_embeddings: 2048",
    "  position: rope",
    "  rope_theta: 500000.0",
    "  rope_scaling: {rope_type: yarn, factor: 4, beta_fast: 16, beta_slow: 2, mscale: 0.707,",
    "                 attention_factor: 1.1}",
    "  memory: {type: rmt, num_tokens: 4, segment_length: 64, bptt_segments: 2}",
    "  init_std: 0.01",
    "data:",
    "  train: {synthetic: passkey, loss: answer, num_sequences: 77, depth: 0.3, seed_offset: 5}",
    "  val: val_tokens.h5",
    "  shuffle: false",
    "train:",
    "  seq_len: 256",
    "  micro_batch_size: 2",
    "  global_batch_size: 8",
    "  max_steps: 300",
    "  optimizer: {type: adamw, lr: 1.0e-3, betas: [0.8, 0.999], eps: 1.0e-7,",
    "              weight_decay: 0.05, no_decay: [norms, embeddings]}",
    "  schedule: {type: linear, warmup_steps: 10, min_lr: 0.1e-4}",
    "  grad_clip: 0.5",
    "  precision: fp32",
    "  activation_checkpointing: true",
    "  nonfinite_tolerance: 3",
    "parallel:",
    "  context_parallel: 2",
    "  data_parallel: 2",
    "  ring_layout: contiguous",
    "  device: cpu",
    "checkpoint:",
    "  every_steps: 50",
    "  keep_last: 2",
    "  init_from: base/ckpt.h5",
    "eval:",
    "  every_steps: 25",
    "  seq_lens: [128, 256]",
    "  passkey: {seq_lens: [256], depths: [0.0, 1.0], trials: 3}",
    "  max_sequences: 4",
    "log:",
    "  every_steps: 5",
});

const std::string kMinimal = lines({"data:", "  train: tokens.bin"});

// ---- valid configs -------------------------------------------------------------

TEST(Config, FullConfigParsesEveryField) {
  const Config c = parse_config(kFull, "config.yaml");
  EXPECT_EQ(c.source_path, "config.yaml");
  EXPECT_EQ(c.run.name, "full-test");
  EXPECT_EQ(c.run.dir, "/tmp/somewhere/run dir");
  EXPECT_EQ(c.run.seed, 18446744073709551615ull);
  EXPECT_EQ(c.model.vocab_size, 512);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.head_dim, 20);
  EXPECT_DOUBLE_EQ(c.model.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  ASSERT_TRUE(c.model.rope_scaling);
  EXPECT_EQ(c.model.rope_scaling->rope_type, "yarn");
  EXPECT_EQ(c.model.rope_scaling->factor, 4.0);
  EXPECT_EQ(c.model.rope_scaling->original_max_position_embeddings, 2048);  // resolved
  EXPECT_EQ(c.model.rope_scaling->mscale, 0.707);
  EXPECT_FALSE(c.model.rope_scaling->mscale_all_dim);
  EXPECT_EQ(c.model.rope_scaling->attention_factor, 1.1);
  ASSERT_TRUE(c.model.memory);
  EXPECT_EQ(c.model.memory->segment_length, 64);
  EXPECT_EQ(c.model.memory->bptt_segments, 2);
  EXPECT_TRUE(c.data.train.is_synthetic());
  EXPECT_EQ(c.data.train.loss, "answer");
  EXPECT_EQ(c.data.train.num_sequences, 77);
  EXPECT_EQ(c.data.train.depth, 0.3);
  EXPECT_EQ(c.data.train.seed_offset, 5);
  ASSERT_TRUE(c.data.val);
  EXPECT_EQ(c.data.val->path, "val_tokens.h5");
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.train.optimizer.lr, 1e-3);
  EXPECT_EQ(c.train.optimizer.beta1, 0.8);
  EXPECT_EQ(c.train.optimizer.beta2, 0.999);
  EXPECT_EQ(c.train.optimizer.no_decay, (std::vector<std::string>{"norms", "embeddings"}));
  EXPECT_EQ(c.train.schedule.type, "linear");
  EXPECT_EQ(c.train.schedule.min_lr, 1e-5);
  EXPECT_EQ(c.train.precision, "fp32");
  EXPECT_EQ(c.train.nonfinite_tolerance, 3);
  EXPECT_EQ(c.parallel.data_parallel, 2);
  EXPECT_EQ(c.parallel.ring_layout, "contiguous");
  EXPECT_EQ(c.checkpoint.init_from, "base/ckpt.h5");
  EXPECT_EQ(c.eval.seq_lens, (std::vector<int64_t>{128, 256}));
  ASSERT_TRUE(c.eval.passkey);
  EXPECT_EQ(c.eval.passkey->depths, (std::vector<double>{0.0, 1.0}));
  EXPECT_EQ(c.eval.passkey->trials, 3);
  EXPECT_EQ(c.eval.max_sequences, 4);
  EXPECT_EQ(c.log.every_steps, 5);
}

// parse -> to_yaml -> parse gives the same values. config_to_yaml writes every
// field (shortest round-trip doubles), so equal YAML text means equal configs;
// a few fields are also compared directly, doubles exactly.
void expect_round_trip(const std::string& yaml) {
  const Config a = parse_config(yaml, "config.yaml");
  const std::string text = rt::config_to_yaml(a);
  const Config b = parse_config(text, "resolved.yaml");
  EXPECT_EQ(rt::config_to_yaml(b), text);
  EXPECT_EQ(a.run.seed, b.run.seed);
  EXPECT_EQ(a.run.dir, b.run.dir);
  EXPECT_EQ(a.model.head_dim, b.model.head_dim);
  EXPECT_EQ(a.model.rms_norm_eps, b.model.rms_norm_eps);
  EXPECT_EQ(a.model.rope_theta, b.model.rope_theta);
  EXPECT_EQ(a.model.rope_scaling.has_value(), b.model.rope_scaling.has_value());
  EXPECT_EQ(a.model.memory.has_value(), b.model.memory.has_value());
  EXPECT_EQ(a.data.train.path, b.data.train.path);
  EXPECT_EQ(a.data.train.depth, b.data.train.depth);
  EXPECT_EQ(a.data.val.has_value(), b.data.val.has_value());
  EXPECT_EQ(a.train.optimizer.lr, b.train.optimizer.lr);
  EXPECT_EQ(a.train.optimizer.beta2, b.train.optimizer.beta2);
  EXPECT_EQ(a.train.schedule.min_lr, b.train.schedule.min_lr);
  EXPECT_EQ(a.parallel.data_parallel, b.parallel.data_parallel);
  EXPECT_EQ(a.checkpoint.init_from, b.checkpoint.init_from);
  EXPECT_EQ(a.eval.passkey.has_value(), b.eval.passkey.has_value());
}

TEST(Config, RoundTripFull) { expect_round_trip(kFull); }
TEST(Config, RoundTripMinimal) { expect_round_trip(kMinimal); }

TEST(Config, RoundTripAwkwardValues) {
  // Doubles without a short decimal form, a string that reads as null, longrope lists.
  expect_round_trip(lines({
      "run: {name: 'null', seed: 0}",
      "model:",
      "  hidden_size: 64",
      "  num_attention_heads: 4",
      "  rms_norm_eps: 0.1",
      "  init_std: 0.30000000000000004",
      "  rope_scaling: {rope_type: longrope, factor: 0.5, short_factor: [1, 1.5, 2, 2.5, 3, 3.5, "
      "4, 4.5],",
      "                 long_factor: [1e-3, 2, 3, 4, 5, 6, 7, 8]}",
      "data: {train: a.txt, val: {synthetic: passkey}}",
      "train: {optimizer: {type: sgd, lr: 1.0e-300}, schedule: {min_lr: 0}}",
  }));
}

TEST(Config, WrittenYamlIsTheSchema) {
  const std::string text = rt::config_to_yaml(parse_config(kMinimal, "config.yaml"));
  for (const char* needle : {"run:", "model:", "  head_dim: 64",
                             "  rope_scaling: null", "  rms_norm_eps: 1.0e-05", "data:",
                             "  val: null", "betas: [0.9, 0.95]", "data_parallel: auto",
                             "init_from: null", "passkey: null", "log:"})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << " not in\n" << text;
}

// train.activation_checkpointing: false, true, full (= true) and selective;
// written back as false, true, true, selective, which parse to the same
// config (old configs with true/false too).
TEST(Config, ActivationCheckpointingValues) {
  struct Case {
    const char* value;
    Checkpointing mode;
    const char* written;
  };
  for (const Case& k :
       {Case{"false", Checkpointing::kOff, "activation_checkpointing: false"},
        Case{"true", Checkpointing::kFull, "activation_checkpointing: true"},
        Case{"full", Checkpointing::kFull, "activation_checkpointing: true"},
        Case{"selective", Checkpointing::kSelective, "activation_checkpointing: selective"}}) {
    SCOPED_TRACE(k.value);
    const std::string yaml = kMinimal + "train:\n  activation_checkpointing: " + k.value + "\n";
    const Config c = parse_config(yaml, "config.yaml");
    EXPECT_EQ(c.train.activation_checkpointing, k.mode);
    const std::string text = rt::config_to_yaml(c);
    EXPECT_NE(text.find(k.written), std::string::npos) << text;
    const Config back = parse_config(text, "resolved.yaml");
    EXPECT_EQ(back.train.activation_checkpointing, k.mode);
    EXPECT_EQ(rt::config_to_yaml(back), text);
    // the same through --set
    const Config o = parse_config(kMinimal, "config.yaml",
                                  {std::string("train.activation_checkpointing=") + k.value});
    EXPECT_EQ(o.train.activation_checkpointing, k.mode);
  }
  const Config d = parse_config(kMinimal, "config.yaml");
  EXPECT_EQ(d.train.activation_checkpointing, Checkpointing::kOff);
}

TEST(Config, DefaultsFilled) {
  const Config c = parse_config(kMinimal, "config.yaml");
  const Config d;  // struct defaults
  EXPECT_EQ(c.run.name, "run");
  EXPECT_EQ(c.run.dir, "runs/run");
  EXPECT_EQ(c.run.seed, 1234u);
  EXPECT_EQ(c.model.hidden_size, 256);
  EXPECT_EQ(c.model.num_key_value_heads, c.model.num_attention_heads);
  EXPECT_EQ(c.model.head_dim, 256 / 4);
  EXPECT_EQ(c.model.position, "rope");
  EXPECT_FALSE(c.model.rope_scaling);
  EXPECT_FALSE(c.model.memory);
  EXPECT_EQ(c.data.train.path, "tokens.bin");
  EXPECT_FALSE(c.data.train.is_synthetic());
  EXPECT_FALSE(c.data.val);
  EXPECT_TRUE(c.data.shuffle);
  EXPECT_EQ(c.train.seq_len, d.train.seq_len);
  EXPECT_EQ(c.train.optimizer.lr, d.train.optimizer.lr);
  EXPECT_EQ(c.train.optimizer.no_decay, std::vector<std::string>{"norms"});
  EXPECT_EQ(c.train.schedule.warmup_steps, 100);
  EXPECT_EQ(c.parallel.data_parallel, 0);  // auto
  EXPECT_EQ(c.parallel.device, "auto");
  EXPECT_EQ(c.checkpoint.init_from, "");
  EXPECT_FALSE(c.eval.passkey);
  EXPECT_EQ(c.log.every_steps, 10);
}

TEST(Config, NullMeansAuto) {
  const Config c = parse_config(
      lines({"run: {name: x, dir: null}", "model: {hidden_size: 48, num_attention_heads: 3,",
             "  num_key_value_heads: null, head_dim: null, rope_scaling: null, memory: ~}",
             "data: {train: t.h5, val: null}", "parallel: {data_parallel: auto}",
             "checkpoint: {init_from: null}", "eval: {passkey: null}"}),
      "config.yaml");
  EXPECT_EQ(c.run.dir, "runs/x");
  EXPECT_EQ(c.model.num_key_value_heads, 3);
  EXPECT_EQ(c.model.head_dim, 16);
  EXPECT_EQ(c.parallel.data_parallel, 0);
  EXPECT_EQ(c.checkpoint.init_from, "");
}

TEST(Config, SyntheticValGetsItsOwnSeedStream) {
  const Config c = parse_config(
      lines({"data:", "  train: {synthetic: passkey}", "  val: {synthetic: passkey}"}),
      "config.yaml");
  EXPECT_EQ(c.data.train.seed_offset, 0);
  EXPECT_EQ(c.data.val->seed_offset, 1);
  EXPECT_FALSE(c.data.train.depth);
}

TEST(Config, SyntheticRecall) {
  const std::string yaml =
      lines({"data:", "  train: {synthetic: recall, pairs: 7, loss: answer}",
             "  val: {synthetic: recall}"});
  const Config c = parse_config(yaml, "config.yaml");
  EXPECT_EQ(c.data.train.synthetic, "recall");
  EXPECT_EQ(c.data.train.pairs, 7);
  EXPECT_EQ(c.data.train.loss, "answer");
  EXPECT_EQ(c.data.val->pairs, 4);  // the default
  EXPECT_EQ(c.data.val->seed_offset, 1);
  // the resolved config names pairs for recall and depth for passkey only
  const std::string text = rt::config_to_yaml(c);
  EXPECT_NE(text.find("pairs: 7"), std::string::npos) << text;
  EXPECT_EQ(text.find("depth"), std::string::npos) << text;
  expect_round_trip(yaml);
  EXPECT_EQ(parse_config("", "config.yaml", {"data.train={synthetic: recall, pairs: 2}"})
                .data.train.pairs,
            2);
}

TEST(Config, LegacyRopeScalingTypeKey) {
  const Config c = parse_config(kMinimal + "model: {rope_scaling: {type: dynamic, factor: 2}}",
                                "config.yaml");
  EXPECT_EQ(c.model.rope_scaling->rope_type, "dynamic");
}

TEST(Config, WarmupLongerThanTrainingOnlyWarns) {
  EXPECT_NO_THROW(parse_config(kMinimal + "train: {max_steps: 10}", "config.yaml"));
}

TEST(Config, OverridesOfEveryType) {
  const Config c = parse_config(
      kFull, "config.yaml",
      {"train.optimizer.lr=1e-4", "train.max_steps=77", "model.tie_word_embeddings=false",
       "run.name=renamed", "train.optimizer.betas=[0.5, 0.6]",
       "model.rope_scaling.factor=8",  // into an existing mapping
       "model.memory=null", "data.train=other.bin", "parallel.data_parallel=auto",
       "eval.passkey={seq_lens: [64, 128], trials: 2}", "log.every_steps = 3"});
  EXPECT_EQ(c.train.optimizer.lr, 1e-4);
  EXPECT_EQ(c.train.max_steps, 77);
  EXPECT_FALSE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.run.name, "renamed");
  EXPECT_EQ(c.run.dir, "/tmp/somewhere/run dir");  // the file's explicit dir stays
  EXPECT_EQ(c.train.optimizer.beta1, 0.5);
  EXPECT_EQ(c.train.optimizer.beta2, 0.6);
  EXPECT_EQ(c.model.rope_scaling->rope_type, "yarn");  // from the file
  EXPECT_EQ(c.model.rope_scaling->factor, 8.0);
  EXPECT_EQ(c.model.rope_scaling->mscale, 0.707);
  EXPECT_FALSE(c.model.memory);
  EXPECT_EQ(c.data.train.path, "other.bin");
  EXPECT_FALSE(c.data.train.is_synthetic());
  EXPECT_EQ(c.parallel.data_parallel, 0);
  EXPECT_EQ(c.eval.passkey->seq_lens, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(c.log.every_steps, 3);
}

TEST(Config, OverrideCreatesMissingSections) {
  const Config c = parse_config(
      kMinimal, "config.yaml",
      {"model.rope_scaling={rope_type: yarn, factor: 4}", "model.memory.segment_length=128",
       "checkpoint.init_from=base.h5"});
  ASSERT_TRUE(c.model.rope_scaling);
  EXPECT_EQ(c.model.rope_scaling->rope_type, "yarn");
  EXPECT_EQ(c.model.rope_scaling->factor, 4.0);
  ASSERT_TRUE(c.model.memory);
  EXPECT_EQ(c.model.memory->segment_length, 128);
  EXPECT_EQ(c.checkpoint.init_from, "base.h5");
  // Also onto an empty file.
  EXPECT_EQ(parse_config("", "config.yaml", {"data.train={synthetic: passkey}"}).data.train.synthetic,
            "passkey");
}

TEST(Config, LoadConfigReadsFileAndOverrides) {
  const std::string path = ::testing::TempDir() + "/ringtrain_test_config.yaml";
  {
    std::ofstream f(path);
    f << kFull;
  }
  const Config c = rt::load_config(path, {"train.seq_len=512"});
  EXPECT_EQ(c.source_path, path);
  EXPECT_EQ(c.train.seq_len, 512);
  std::remove(path.c_str());
}

TEST(Config, ModelConfigToYaml) {
  const Config c = parse_config(kFull, "config.yaml");
  const std::string model = rt::model_config_to_yaml(c.model);
  EXPECT_EQ(model.rfind("model:", 0), 0u) << model;
  EXPECT_EQ(model.find("\ndata:"), std::string::npos);
  // The section reads back as the same model.
  const Config back = parse_config(model + "data: {train: t.bin}\n", "ckpt.h5");
  EXPECT_EQ(rt::model_config_to_yaml(back.model), model);
}

TEST(Config, ValidateLayoutResolvesAutoDataParallel) {
  Config c = parse_config(kMinimal + "parallel: {context_parallel: 2}", "config.yaml");
  rt::validate_layout(c, 4);
  EXPECT_EQ(c.parallel.data_parallel, 2);
}

// ---- bad configs: each names the key and where it is -----------------------------

TEST(ConfigErrors, UnknownTopLevelKey) {
  expect_usage_error(lines({"data:", "  train: t.bin", "modle:", "  hidden_size: 8"}),
                     {"config.yaml:3:", "unknown key 'modle'", "did you mean 'model'?"});
}

TEST(ConfigErrors, UnknownNestedKeyDidYouMean) {
  expect_usage_error(lines({"data:", "  train: t.bin", "model:", "  vocab_size: 256",
                            "  hiden_size: 300"}),
                     {"config.yaml:5:", "unknown key 'model.hiden_size'",
                      "did you mean 'model.hidden_size'?"});
}

TEST(ConfigErrors, UnknownKeyDeepInside) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer:", "    lr: 1e-4",
                            "    wieght_decay: 0.1"}),
                     {"config.yaml:5:", "'train.optimizer.wieght_decay'",
                      "did you mean 'train.optimizer.weight_decay'?"});
}

TEST(ConfigErrors, DuplicateKey) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  hidden_size: 64",
                            "  hidden_size: 128"}),
                     {"config.yaml:4:", "duplicate key 'model.hidden_size'", "config.yaml:3"});
}

TEST(ConfigErrors, WrongTypeInt) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  hidden_size: abc"}),
                     {"config.yaml:3:", "model.hidden_size: expected an integer, got 'abc'"});
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  seq_len: 1.5"}),
                     {"config.yaml:3:", "train.seq_len: expected an integer, got '1.5'"});
}

TEST(ConfigErrors, WrongTypeBool) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  tie_word_embeddings: maybe"}),
                     {"config.yaml:3:", "model.tie_word_embeddings: expected true or false",
                      "'maybe'"});
}

TEST(ConfigErrors, ActivationCheckpointingUnknownValue) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  activation_checkpointing: some"}),
                     {"config.yaml:3:",
                      "train.activation_checkpointing: expected false, true, full or selective, "
                      "got 'some'"});
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  activation_checkpointing: [1]"}),
                     {"config.yaml:3:", "train.activation_checkpointing: expected false, true, "
                                        "full or selective, got a list of 1"});
  expect_usage_error(kMinimal, {"--set train.activation_checkpointing=Selective",
                                "expected false, true, full or selective, got 'Selective'"},
                     {"train.activation_checkpointing=Selective"});
}

TEST(ConfigErrors, StringForDouble) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer:", "    lr: fast"}),
                     {"config.yaml:4:", "train.optimizer.lr: expected a number, got 'fast'"});
}

TEST(ConfigErrors, ListWhereScalarExpected) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  grad_clip: [1, 2]"}),
                     {"config.yaml:3:", "train.grad_clip: expected a number, got a list"});
}

TEST(ConfigErrors, NullWhereNotAllowed) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  vocab_size: null"}),
                     {"config.yaml:3:", "model.vocab_size: expected an integer, got null"});
}

TEST(ConfigErrors, NegativeLearningRate) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer: {lr: -1e-4}"}),
                     {"config.yaml:3:", "train.optimizer.lr: must be > 0, got -1e-4"});
}

TEST(ConfigErrors, IntBelowMinimum) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  vocab_size: 1"}),
                     {"config.yaml:3:", "model.vocab_size: must be >= 2, got 1"});
  expect_usage_error(lines({"data: {train: t.bin}", "model:",
                            "  memory: {segment_length: 16, bptt_segments: -2}"}),
                     {"config.yaml:3:", "model.memory.bptt_segments: must be >= -1, got -2"});
}

TEST(ConfigErrors, InvalidPositionEnum) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  position: rotary"}),
                     {"config.yaml:3:", "model.position: must be one of rope | alibi | none",
                      "'rotary'"});
}

TEST(ConfigErrors, HeadsNotDivisibleByKvHeads) {
  expect_usage_error(
      lines({"data: {train: t.bin}", "model:", "  hidden_size: 96", "  num_attention_heads: 6",
             "  num_key_value_heads: 4"}),
      {"config.yaml:4:",
       "model.num_attention_heads(6) is not a multiple of model.num_key_value_heads(4)"});
}

TEST(ConfigErrors, HiddenNotDivisibleByHeads) {
  expect_usage_error(
      lines({"data: {train: t.bin}", "model:", "  hidden_size: 100", "  num_attention_heads: 3"}),
      {"config.yaml:3:", "model.hidden_size(100) is not a multiple of model.num_attention_heads(3)"});
}

TEST(ConfigErrors, OddHeadDimWithRope) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  head_dim: 15"}),
                     {"config.yaml:3:", "model.head_dim(15) must be even", "position: rope"});
}

TEST(ConfigErrors, GlobalBatchNotMultipleOfMicroBatch) {
  expect_usage_error(
      lines({"data: {train: t.bin}", "train:", "  micro_batch_size: 4", "  global_batch_size: 6"}),
      {"config.yaml:4:",
       "train.global_batch_size(6) is not a multiple of train.micro_batch_size(4)"});
}

TEST(ConfigErrors, MinLrAboveLr) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer: {lr: 1e-4}",
                            "  schedule: {min_lr: 1e-3}"}),
                     {"config.yaml:4:", "train.schedule.min_lr(0.001) must be <= "
                                        "train.optimizer.lr(1e-04)"});
}

TEST(ConfigErrors, BetasWrongLength) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer:",
                            "    betas: [0.9, 0.95, 0.99]"}),
                     {"config.yaml:4:", "train.optimizer.betas: expected a list of 2 numbers",
                      "got 3 entries"});
}

TEST(ConfigErrors, BetaOutOfRange) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer:",
                            "    betas: [0.9, 1.5]"}),
                     {"config.yaml:4:", "train.optimizer.betas[1]: must be in [0, 1), got 1.5"});
}

TEST(ConfigErrors, NoDecayUnknownGroup) {
  expect_usage_error(lines({"data: {train: t.bin}", "train:", "  optimizer:",
                            "    no_decay: [norms, biases]"}),
                     {"config.yaml:4:", "train.optimizer.no_decay[1]: must be one of norms | "
                                        "embeddings, got 'biases'"});
}

TEST(ConfigErrors, UnknownSyntheticGenerator) {
  expect_usage_error(lines({"data:", "  train: {synthetic: needle}"}),
                     {"config.yaml:2:", "data.train.synthetic: must be one of passkey | recall",
                      "'needle'"});
}

TEST(ConfigErrors, SyntheticOptionOfTheOtherGenerator) {
  expect_usage_error(lines({"data:", "  train: {synthetic: recall, depth: 0.5}"}),
                     {"config.yaml:2:", "data.train.depth applies to synthetic: passkey only",
                      "recall"});
  expect_usage_error(lines({"data:", "  train: {synthetic: passkey}", "  val:",
                            "    synthetic: passkey", "    pairs: 3"}),
                     {"config.yaml:5:", "data.val.pairs applies to synthetic: recall only"});
}

TEST(ConfigErrors, RecallPairsOutOfRangeOrMisspelt) {
  expect_usage_error(lines({"data:", "  train: {synthetic: recall, pairs: 27}"}),
                     {"config.yaml:2:", "data.train.pairs", "27"});
  expect_usage_error(lines({"data:", "  train: {synthetic: recall, pairs: 0}"}),
                     {"config.yaml:2:", "data.train.pairs"});
  expect_usage_error(lines({"data:", "  train: {synthetic: recall, pair: 3}"}),
                     {"config.yaml:2:", "unknown key 'data.train.pair'", "did you mean",
                      "'data.train.pairs'"});
}

TEST(ConfigErrors, SyntheticSourceWithoutGenerator) {
  expect_usage_error(lines({"data:", "  train:", "    loss: answer"}),
                     {"config.yaml:2:", "data.train.synthetic is required"});
}

TEST(ConfigErrors, TokenFileWithUnknownExtension) {
  expect_usage_error(lines({"data:", "  train: tokens.csv"}),
                     {"config.yaml:2:", "data.train: 'tokens.csv' is not a token file",
                      ".h5 | .bin | .txt"});
}

TEST(ConfigErrors, MissingDataTrain) {
  expect_usage_error(lines({"model: {hidden_size: 64}", "data:", "  shuffle: false"}),
                     {"config.yaml:2:", "data.train is required", "synthetic: passkey"});
  expect_usage_error("", {"config.yaml", "data.train is required"});
}

TEST(ConfigErrors, RopeScalingWithAlibi) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  position: alibi",
                            "  rope_scaling: {rope_type: linear, factor: 2}"}),
                     {"config.yaml:4:", "model.rope_scaling is set but model.position is 'alibi'"});
}

TEST(ConfigErrors, RopeScalingWithoutType) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  rope_scaling: {factor: 2}"}),
                     {"config.yaml:3:", "model.rope_scaling.rope_type is required",
                      "linear | ntk | dynamic | yarn | llama3 | longrope"});
}

TEST(ConfigErrors, LongropeFactorListLength) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:", "  hidden_size: 32",
                            "  num_attention_heads: 4",
                            "  rope_scaling: {rope_type: longrope, factor: 2,",
                            "                 short_factor: [1, 1, 1, 1], long_factor: [1, 2]}"}),
                     {"config.yaml:6:", "model.rope_scaling.long_factor has 2 entries",
                      "head_dim / 2 = 4"});
}

TEST(ConfigErrors, SegmentLengthDoesNotDivideSeqLen) {
  expect_usage_error(lines({"data: {train: t.bin}", "model:",
                            "  memory: {type: rmt, num_tokens: 4, segment_length: 100}",
                            "train: {seq_len: 1024}"}),
                     {"config.yaml:3:",
                      "train.seq_len(1024) is not a multiple of model.memory.segment_length(100)"});
}

TEST(ConfigErrors, PasskeyDepthOutOfRange) {
  expect_usage_error(lines({"data: {train: t.bin}", "eval:", "  passkey:",
                            "    depths: [0, 0.5, 1.2]"}),
                     {"config.yaml:4:", "eval.passkey.depths[2]: must be in [0, 1], got 1.2"});
}

TEST(ConfigErrors, DataParallelNeitherIntNorAuto) {
  expect_usage_error(lines({"data: {train: t.bin}", "parallel:", "  data_parallel: many"}),
                     {"config.yaml:3:", "parallel.data_parallel: expected an integer >= 1 or auto"});
}

TEST(ConfigErrors, SectionNotAMapping) {
  expect_usage_error(lines({"data: {train: t.bin}", "model: 3"}),
                     {"config.yaml:2:", "model: expected a mapping", "got '3'"});
}

TEST(ConfigErrors, YamlSyntaxError) {
  expect_usage_error(lines({"data:", "  train: t.bin", "model:", "  hidden_size: [64, 128",
                            "  vocab_size: 8"}),
                     {"config.yaml:", "invalid YAML"});
  expect_usage_error(lines({"data:", "  train: t.bin", "  - oops"}),
                     {"config.yaml:3:", "invalid YAML"});
}

TEST(ConfigErrors, MissingFile) {
  try {
    rt::load_config("/nonexistent/dir/cfg.yaml");
    ADD_FAILURE() << "no error";
  } catch (const rt::UsageError& e) {
    EXPECT_EQ(e.code(), rt::kExitUsage);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/cfg.yaml"), std::string::npos);
  }
}

// ---- bad overrides: named by their --set instead of a line -------------------------

TEST(ConfigErrors, OverrideUnknownKey) {
  expect_usage_error(kMinimal, {"--set model.hiden_size=8", "unknown key 'model.hiden_size'",
                                "did you mean 'model.hidden_size'?"},
                     {"model.hiden_size=8"});
  expect_usage_error(kMinimal, {"--set modle.hidden_size=8", "did you mean 'model'?"},
                     {"modle.hidden_size=8"});
}

TEST(ConfigErrors, OverrideUnknownKeyInsideMappingValue) {
  expect_usage_error(kMinimal, {"--set model.rope_scaling={rope_type: yarn, factr: 4}",
                                "did you mean 'model.rope_scaling.factor'?"},
                     {"model.rope_scaling={rope_type: yarn, factr: 4}"});
}

TEST(ConfigErrors, OverrideBadValueType) {
  expect_usage_error(kFull, {"--set train.max_steps=lots",
                             "train.max_steps: expected an integer, got 'lots'"},
                     {"train.max_steps=lots"});
}

TEST(ConfigErrors, OverrideOutOfRangeFailsCrossCheck) {
  // The override is validated exactly like the file: same cross-field check.
  expect_usage_error(kMinimal, {"--set train.global_batch_size=6",
                                "train.global_batch_size(6) is not a multiple of "
                                "train.micro_batch_size(4)"},
                     {"train.micro_batch_size=4", "train.global_batch_size=6"});
}

TEST(ConfigErrors, MalformedOverride) {
  expect_usage_error(kMinimal, {"--set train.max_steps", "missing '='", "e.g. --set"},
                     {"train.max_steps"});
  expect_usage_error(kMinimal, {"--set =5", "empty key"}, {"=5"});
  expect_usage_error(kMinimal, {"--set a..b=5", "empty key"}, {"a..b=5"});
  expect_usage_error(kMinimal, {"--set train.lr=[1,", "not valid YAML"}, {"train.lr=[1,"});
}

TEST(ConfigErrors, OverrideIntoScalar) {
  expect_usage_error(kMinimal, {"--set data.train.loss=all", "data.train is 't.bin'",
                                "not a mapping"},
                     {"data.train=t.bin", "data.train.loss=all"});
}

// ---- model.memory: rmt, knn, compressive (docs/memory.md) --------------------------

// A model of `layers` layers with the given memory mapping (flow YAML) and a
// seq_len of 256.
std::string memory_config(const std::string& memory, int layers = 4) {
  return lines({"data: {train: t.bin}", "train: {seq_len: 256}"}) + "model:\n" +
         "  num_hidden_layers: " + std::to_string(layers) + "\n" + "  memory: " + memory + "\n";
}

// The keys of model.memory in the resolved config, in order.
std::vector<std::string> written_memory_keys(const Config& c) {
  const YAML::Node mem = YAML::Load(rt::config_to_yaml(c))["model"]["memory"];
  std::vector<std::string> keys;
  for (const auto& kv : mem) keys.push_back(kv.first.Scalar());
  return keys;
}

TEST(ConfigMemory, KnnParsesAndWritesExactlyItsKeys) {
  const std::string yaml = memory_config(
      "{type: knn, segment_length: 64, layers: [3, 1], memory_size: 512, top_k: 8, index: hnsw}");
  const Config c = parse_config(yaml, "config.yaml");
  ASSERT_TRUE(c.model.memory);
  const rt::MemoryConfig& m = *c.model.memory;
  EXPECT_EQ(m.type, "knn");
  EXPECT_EQ(m.segment_length, 64);
  EXPECT_EQ(m.layers, (std::vector<int>{3, 1}));
  EXPECT_EQ(m.memory_size, 512);
  EXPECT_EQ(m.top_k, 8);
  EXPECT_EQ(m.index, "hnsw");
  EXPECT_EQ(written_memory_keys(c),
            (std::vector<std::string>{"type", "segment_length", "layers", "memory_size", "top_k",
                                      "index"}));
  expect_round_trip(yaml);
  const Config back = parse_config(rt::config_to_yaml(c), "resolved.yaml");
  EXPECT_EQ(back.model.memory->layers, m.layers);
  EXPECT_EQ(back.model.memory->memory_size, 512);
  EXPECT_EQ(back.model.memory->top_k, 8);
  EXPECT_EQ(back.model.memory->index, "hnsw");
  // Defaults: every knn key but the type may be left out.
  const Config d = parse_config(memory_config("{type: knn, segment_length: 128}"), "config.yaml");
  const rt::MemoryConfig defaults;
  EXPECT_EQ(d.model.memory->memory_size, defaults.memory_size);
  EXPECT_EQ(d.model.memory->top_k, defaults.top_k);
  EXPECT_EQ(d.model.memory->index, "exact");
  for (const char* index : {"exact", "flat", "ivf", "hnsw"})
    EXPECT_EQ(parse_config(memory_config(std::string("{type: knn, segment_length: 64, index: ") +
                                         index + "}"),
                           "config.yaml")
                  .model.memory->index,
              index);
}

TEST(ConfigMemory, CompressiveParsesAndWritesExactlyItsKeys) {
  const std::string yaml = memory_config(
      "{type: compressive, segment_length: 32, layers: [0, 2], memory_segments: 0, rate: 2, "
      "levels: 3, compressed_size: 48, compression: conv}");
  const Config c = parse_config(yaml, "config.yaml");
  ASSERT_TRUE(c.model.memory);
  const rt::MemoryConfig& m = *c.model.memory;
  EXPECT_EQ(m.type, "compressive");
  EXPECT_EQ(m.segment_length, 32);
  EXPECT_EQ(m.layers, (std::vector<int>{0, 2}));
  EXPECT_EQ(m.memory_segments, 0);
  EXPECT_EQ(m.rate, 2);
  EXPECT_EQ(m.levels, 3);
  EXPECT_EQ(m.compressed_size, 48);
  EXPECT_EQ(m.compression, "conv");
  EXPECT_EQ(written_memory_keys(c),
            (std::vector<std::string>{"type", "segment_length", "layers", "memory_segments",
                                      "rate", "levels", "compressed_size", "compression"}));
  expect_round_trip(yaml);
  const Config back = parse_config(rt::config_to_yaml(c), "resolved.yaml");
  EXPECT_EQ(back.model.memory->layers, m.layers);
  EXPECT_EQ(back.model.memory->memory_segments, 0);
  EXPECT_EQ(back.model.memory->rate, 2);
  EXPECT_EQ(back.model.memory->levels, 3);
  EXPECT_EQ(back.model.memory->compressed_size, 48);
  EXPECT_EQ(back.model.memory->compression, "conv");
  // The defaults (S 128, rate 4, one level of 64 slots) are a valid memory.
  const Config d = parse_config(memory_config("{type: compressive}"), "config.yaml");
  EXPECT_EQ(d.model.memory->compression, "mean");
  EXPECT_EQ(d.model.memory->compressed_size, 64);
  expect_round_trip(memory_config("{type: compressive}"));
  // Edge: compressed_size / levels == segment_length / rate exactly.
  EXPECT_NO_THROW(parse_config(
      memory_config("{type: compressive, segment_length: 64, rate: 4, levels: 2, "
                    "compressed_size: 32}"),
      "config.yaml"));
}

TEST(ConfigMemory, RmtWritesExactlyItsKeys) {
  const Config c = parse_config(kFull, "config.yaml");
  EXPECT_EQ(written_memory_keys(c),
            (std::vector<std::string>{"type", "num_tokens", "segment_length", "bptt_segments"}));
  EXPECT_TRUE(c.model.memory->layers.empty());
}

TEST(ConfigMemory, DefaultLayerIsThreeQuartersDeep) {
  // (3L-1)/4 with integer division, for knn and compressive alike; absent,
  // null and [] all resolve to it.
  const std::pair<int, int> expected[] = {{1, 0}, {2, 1}, {4, 2}, {12, 8}};
  for (const auto& [L, layer] : expected)
    for (const char* type : {"knn", "compressive"})
      for (const char* layers : {"", ", layers: null", ", layers: []"}) {
        const std::string memory =
            std::string("{type: ") + type + ", segment_length: 64" + layers + "}";
        const Config c = parse_config(memory_config(memory, L), "config.yaml");
        EXPECT_EQ(c.model.memory->layers, std::vector<int>{layer})
            << "num_hidden_layers " << L << ", " << memory;
        // Written resolved, so the dump pins it.
        EXPECT_NE(rt::config_to_yaml(c).find("layers: [" + std::to_string(layer) + "]"),
                  std::string::npos);
      }
}

TEST(ConfigMemory, RmtOverARingIsLeftToTheTrainer) {
  // rmt with context_parallel > 1 is refused by the trainer (with its own
  // reason), as before; the config itself is valid.
  EXPECT_NO_THROW(parse_config(memory_config("{type: rmt, segment_length: 64}") +
                                   "parallel: {context_parallel: 2}\n",
                               "config.yaml"));
}

TEST(ConfigMemoryErrors, KnnAndCompressiveRefuseContextParallel) {
  for (const char* type : {"knn", "compressive"})
    expect_usage_error(
        memory_config(std::string("{type: ") + type + ", segment_length: 64}") +
            "parallel:\n  context_parallel: 2\n",
        {"config.yaml:7:", std::string("model.memory.type: ") + type +
                               " with parallel.context_parallel(2) > 1 is not supported",
         "every segment needs the store written by all earlier ones",
         "a ring over the sequence would serialize", "parallel.data_parallel"});
  expect_usage_error(memory_config("{type: knn, segment_length: 64}"),
                     {"--set parallel.context_parallel=4", "not supported"},
                     {"parallel.context_parallel=4"});
}

TEST(ConfigMemoryErrors, KeyOfAnotherType) {
  // config.yaml:5 is the memory line of memory_config().
  expect_usage_error(memory_config("{type: rmt, segment_length: 64, top_k: 4}"),
                     {"config.yaml:5:", "model.memory.top_k is a knn key; this memory is rmt",
                      "set model.memory.type: knn"});
  // No type: rmt, the default.
  expect_usage_error(memory_config("{segment_length: 64, rate: 2}"),
                     {"model.memory.rate is a compressive key; this memory is rmt"});
  expect_usage_error(memory_config("{type: knn, segment_length: 64, num_tokens: 4}"),
                     {"model.memory.num_tokens is a rmt key; this memory is knn"});
  expect_usage_error(memory_config("{type: knn, segment_length: 64, compression: conv}"),
                     {"model.memory.compression is a compressive key; this memory is knn"});
  expect_usage_error(memory_config("{type: compressive, segment_length: 64, index: flat}"),
                     {"model.memory.index is a knn key; this memory is compressive"});
  expect_usage_error(memory_config("{type: compressive, segment_length: 64, bptt_segments: 1}"),
                     {"model.memory.bptt_segments is a rmt key; this memory is compressive"});
  expect_usage_error(memory_config("{type: rmt, segment_length: 64, layers: [1]}"),
                     {"model.memory.layers is a knn and compressive key; this memory is rmt"});
  // The line of the key itself, and a --set names itself.
  expect_usage_error(
      lines({"data: {train: t.bin}", "model:", "  memory:", "    type: knn",
             "    segment_length: 64", "    num_tokens: 4"}),
      {"config.yaml:6:", "model.memory.num_tokens is a rmt key; this memory is knn"});
  expect_usage_error(memory_config("{type: rmt, segment_length: 64}"),
                     {"--set model.memory.top_k=4", "model.memory.top_k is a knn key"},
                     {"model.memory.top_k=4"});
}

TEST(ConfigMemoryErrors, TyposStillGetADidYouMean) {
  expect_usage_error(memory_config("{type: knn, segment_length: 64, top_kk: 4}"),
                     {"unknown key 'model.memory.top_kk'", "did you mean 'model.memory.top_k'?",
                      "valid keys in model.memory: type, segment_length, layers, memory_size, "
                      "top_k, index"});
  expect_usage_error(memory_config("{type: compressive, segment_length: 64, level: 2}"),
                     {"unknown key 'model.memory.level'", "did you mean 'model.memory.levels'?"});
  expect_usage_error(memory_config("{type: rmt, num_token: 4}"),
                     {"unknown key 'model.memory.num_token'",
                      "did you mean 'model.memory.num_tokens'?"});
  expect_usage_error(memory_config("{type: knnn}"),
                     {"config.yaml:5:", "model.memory.type: must be one of rmt | knn | "
                                        "compressive, got 'knnn'"});
}

TEST(ConfigMemoryErrors, EveryBadSettingNamesItsKey) {
  const std::pair<std::string, std::vector<std::string>> cases[] = {
      // every type
      {"{type: knn, segment_length: 0}", {"model.memory.segment_length: must be >= 1, got 0"}},
      {"{type: compressive, segment_length: -4}",
       {"model.memory.segment_length: must be >= 1, got -4"}},
      // layers
      {"{type: knn, segment_length: 64, layers: [1, 4]}",
       {"model.memory.layers[1]: must be in [0, 3]", "model.num_hidden_layers(4)", "got 4"}},
      {"{type: compressive, segment_length: 64, layers: [-1]}",
       {"model.memory.layers[0]: must be in [0, 3]", "got -1"}},
      {"{type: knn, segment_length: 64, layers: [2, 0, 2]}",
       {"model.memory.layers[2]: layer 2 is listed twice (also at [0])"}},
      {"{type: knn, segment_length: 64, layers: 2}",
       {"model.memory.layers: expected a list, got '2'"}},
      {"{type: knn, segment_length: 64, layers: [one]}",
       {"model.memory.layers[0]: expected an integer, got 'one'"}},
      // knn
      {"{type: knn, segment_length: 64, memory_size: 0}",
       {"model.memory.memory_size: must be >= 1, got 0"}},
      {"{type: knn, segment_length: 64, top_k: 0}", {"model.memory.top_k: must be >= 1, got 0"}},
      {"{type: knn, segment_length: 64, memory_size: 16, top_k: 17}",
       {"model.memory.top_k(17) is larger than the store: model.memory.memory_size(16)"}},
      {"{type: knn, segment_length: 64, memory_size: 16}",  // the default top_k, 32
       {"model.memory.top_k(32) is larger than the store"}},
      {"{type: knn, segment_length: 64, index: faiss}",
       {"model.memory.index: must be one of exact | flat | ivf | hnsw, got 'faiss'"}},
      // compressive
      {"{type: compressive, segment_length: 64, memory_segments: -1}",
       {"model.memory.memory_segments: must be >= 0, got -1"}},
      {"{type: compressive, segment_length: 64, rate: 1}",
       {"model.memory.rate: must be >= 2, got 1"}},
      {"{type: compressive, segment_length: 64, levels: 0}",
       {"model.memory.levels: must be >= 1, got 0"}},
      {"{type: compressive, segment_length: 64, compressed_size: 0}",
       {"model.memory.compressed_size: must be >= 1, got 0"}},
      {"{type: compressive, segment_length: 64, rate: 2, levels: 3, compressed_size: 100}",
       {"model.memory.compressed_size(100) is not a multiple of model.memory.levels(3)"}},
      {"{type: compressive, segment_length: 64, rate: 4, levels: 2, compressed_size: 30}",
       {"model.memory.compressed_size(30) / levels(2) = 15 slots per level is fewer than "
        "segment_length(64) / rate(4) = 16",
        "at least 32"}},
      {"{type: compressive, segment_length: 64, rate: 3}",
       {"model.memory.segment_length(64) is not a multiple of rate^levels = 3^1 = 3",
        "change segment_length to a multiple of 3^1, or lower rate or levels"}},
      {"{type: compressive, segment_length: 64, rate: 4, levels: 4}",
       {"model.memory.segment_length(64) is not a multiple of rate^levels = 4^4 = more than 64"}},
      {"{type: compressive, segment_length: 64, rate: 1000, levels: 1000000}",
       {"model.memory.segment_length(64) is not a multiple of rate^levels = 1000^1000000"}},
      {"{type: compressive, segment_length: 64, compression: max}",
       {"model.memory.compression: must be one of mean | conv, got 'max'"}},
  };
  for (const auto& [memory, needles] : cases) {
    SCOPED_TRACE(memory);
    std::vector<std::string> all = {"config.yaml:5:"};
    all.insert(all.end(), needles.begin(), needles.end());
    expect_usage_error(memory_config(memory), all);
  }
}

TEST(ConfigMemoryErrors, SeqLenMultipleOfSegmentForEveryType) {
  for (const char* type : {"rmt", "knn", "compressive"})
    expect_usage_error(memory_config(std::string("{type: ") + type + ", segment_length: 96}"),
                       {"config.yaml:5:", "train.seq_len(256) is not a multiple of "
                                          "model.memory.segment_length(96)"});
}

// ---- validate_layout ---------------------------------------------------------------

void expect_layout_error(const std::string& yaml, int world,
                         const std::vector<std::string>& needles) {
  Config c = parse_config(yaml, "config.yaml");
  try {
    rt::validate_layout(c, world);
    ADD_FAILURE() << "no error thrown; expected one containing '" << needles.front() << "'";
  } catch (const rt::UsageError& e) {
    EXPECT_EQ(e.code(), rt::kExitUsage);
    const std::string msg = e.what();
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
  }
}

TEST(ConfigLayout, DataTimesContextParallelMustBeWorld) {
  expect_layout_error(kMinimal + "parallel: {data_parallel: 2, context_parallel: 3}", 4,
                      {"config.yaml", "data_parallel(2) * context_parallel(3) != world size(4)"});
}

TEST(ConfigLayout, ZigzagNeedsSeqLenMultipleOfTwoCp) {
  expect_layout_error(kMinimal + "train: {seq_len: 100}\nparallel: {context_parallel: 4}", 4,
                      {"train.seq_len(100) is not a multiple of 2 * parallel.context_parallel(4)",
                       "zigzag"});
  // The same length is fine with the contiguous layout.
  Config c = parse_config(
      kMinimal + "train: {seq_len: 100}\nparallel: {context_parallel: 4, ring_layout: contiguous}",
      "config.yaml");
  EXPECT_NO_THROW(rt::validate_layout(c, 4));
}

TEST(ConfigLayout, ContiguousNeedsSeqLenMultipleOfCp) {
  expect_layout_error(
      kMinimal + "train: {seq_len: 99}\nparallel: {context_parallel: 2, ring_layout: contiguous}",
      2, {"train.seq_len(99) is not a multiple of parallel.context_parallel(2)"});
}

TEST(ConfigLayout, GlobalBatchMultipleOfDataParallelTimesMicroBatch) {
  expect_layout_error(kMinimal + "train: {micro_batch_size: 2, global_batch_size: 8}", 3,
                      {"train.global_batch_size(8) is not a multiple of data_parallel(3) * "
                       "train.micro_batch_size(2) = 6"});
}

}  // namespace
