// Hugging Face interop pieces that need no Python (trainer/hf/): the
// TinyLlama recipe validates for 8 ranks and is what `ringtrain extend`
// writes for TinyLlama's config.json; config.json <-> ModelConfig (defaults,
// rope_parameters, the export form of each rope_scaling type); F16 decoding;
// --max-shard-size parsing. The end-to-end checks against transformers are
// tests/reference/hf_interop.py (cli_hf_interop) and tests/cli/cli_hf_errors.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "common/errors.h"
#include "trainer/config/config.h"
#include "trainer/config/extend.h"
#include "trainer/hf/hf_config.h"
#include "trainer/hf/hf_io.h"
#include "trainer/hf/safetensors.h"

namespace {

namespace fs = std::filesystem;

const char* kTinyLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.35.0",
  "use_cache": true, "vocab_size": 32000})";

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() /
               ("rt_test_hf_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(HfRecipe, TinyLlamaValidatesForEightRanks) {
  rt::Config cfg =
      rt::load_config(std::string(RT_SOURCE_DIR) + "/configs/recipes/tinyllama-32k-yarn.yaml");
  rt::validate_layout(cfg, 8);
  EXPECT_EQ(cfg.parallel.context_parallel, 8);
  EXPECT_EQ(cfg.parallel.data_parallel, 1);
  EXPECT_EQ(cfg.train.seq_len, 32768);
  ASSERT_TRUE(cfg.model.rope_scaling);
  EXPECT_EQ(cfg.model.rope_scaling->rope_type, "yarn");
  EXPECT_EQ(cfg.model.rope_scaling->factor, 16.0);
  EXPECT_EQ(cfg.model.rope_scaling->original_max_position_embeddings, 2048);
  // The same model as TinyLlama's config.json imports to (init_from accepts it).
  rt::HfModelConfig hf = rt::parse_hf_config(kTinyLlamaConfig, "TinyLlama/config.json");
  for (const auto& d : rt::model_config_differences(hf.model, cfg.model))
    EXPECT_TRUE(d.key == "max_position_embeddings" || d.key == "rope_scaling")
        << d.key << ": " << d.a << " vs " << d.b;
}

TEST(HfRecipe, IsWhatExtendWritesForTinyLlama) {
  const fs::path dir = temp_dir("tinyllama");
  std::ofstream(dir / "config.json") << kTinyLlamaConfig;
  rt::ExtendOptions o;
  o.checkpoint = dir.string();
  o.to = 32768;
  o.method = "yarn";
  rt::Config ext = rt::parse_config(rt::extend_config_yaml(o), "extend output");
  rt::Config recipe =
      rt::load_config(std::string(RT_SOURCE_DIR) + "/configs/recipes/tinyllama-32k-yarn.yaml");
  EXPECT_TRUE(rt::model_config_differences(ext.model, recipe.model).empty());
  EXPECT_EQ(ext.train.seq_len, recipe.train.seq_len);
  EXPECT_EQ(ext.train.global_batch_size, recipe.train.global_batch_size);
  EXPECT_EQ(ext.train.micro_batch_size, recipe.train.micro_batch_size);
  EXPECT_EQ(ext.train.max_steps, recipe.train.max_steps);
  EXPECT_EQ(ext.train.max_steps, 420);  // 0.1 x 1.1e9 parameters / (8 x 32768) tokens
  EXPECT_DOUBLE_EQ(ext.train.optimizer.lr, recipe.train.optimizer.lr);
  EXPECT_DOUBLE_EQ(ext.train.schedule.min_lr, recipe.train.schedule.min_lr);
  EXPECT_EQ(ext.checkpoint.init_from, fs::absolute(dir).lexically_normal().string());
  fs::remove_all(dir);
}

TEST(HfConfig, LlamaConfigDefaultsAndRopeParameters) {
  // Absent keys take LlamaConfig's defaults, as transformers does.
  rt::HfModelConfig c = rt::parse_hf_config(
      R"({"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
          "num_hidden_layers": 1, "num_attention_heads": 4})", "c.json");
  EXPECT_EQ(c.model.num_key_value_heads, 4);
  EXPECT_EQ(c.model.head_dim, 16);
  EXPECT_EQ(c.model.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.model.max_position_embeddings, 2048);
  EXPECT_FALSE(c.model.tie_word_embeddings);
  EXPECT_FALSE(c.model.rope_scaling);
  // transformers 5: theta and scaling in rope_parameters.
  rt::HfModelConfig c5 = rt::parse_hf_config(
      R"({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 4096,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 512}})", "c5.json");
  EXPECT_EQ(c5.model.rope_theta, 500000.0);
  ASSERT_TRUE(c5.model.rope_scaling);
  EXPECT_EQ(c5.model.rope_scaling->rope_type, "llama3");
  EXPECT_EQ(c5.model.rope_scaling->original_max_position_embeddings, 512);
  rt::HfModelConfig d = rt::parse_hf_config(
      R"({"hidden_size": 64, "num_attention_heads": 4,
          "rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}})", "d.json");
  EXPECT_FALSE(d.model.rope_scaling);
  EXPECT_EQ(d.model.rope_theta, 20000.0);
  EXPECT_THROW(rt::parse_hf_config(R"({"rope_scaling": {"type": "yarn", "factor": 2,
                                        "mystery": 1}})", "e.json"),
               rt::UsageError);
  EXPECT_THROW(rt::parse_hf_config("[1, 2]", "f.json"), rt::UsageError);
  EXPECT_THROW(rt::parse_hf_config(R"({"hidden_size": "big"})", "g.json"), rt::UsageError);
}

TEST(HfConfig, ExportForms) {
  rt::ModelConfig m;
  m.hidden_size = 64;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.head_dim = 16;
  m.max_position_embeddings = 1024;
  // Static NTK has no HF type: the equivalent base, no rope_scaling.
  rt::RopeScalingConfig ntk;
  ntk.rope_type = "ntk";
  ntk.factor = 4;
  ntk.original_max_position_embeddings = 256;
  m.rope_scaling = ntk;
  auto j = rt::hf_config_json(m, "float32", nlohmann::json::object());
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_DOUBLE_EQ(j["rope_theta"].get<double>(), 10000.0 * std::pow(4.0, 16.0 / 14.0));
  // yarn extended by `ringtrain extend`: the original length is written.
  rt::RopeScalingConfig yarn;
  yarn.rope_type = "yarn";
  yarn.factor = 4;
  yarn.original_max_position_embeddings = 256;
  m.rope_scaling = yarn;
  j = rt::hf_config_json(m, "bfloat16", {{"eos_token_id", 2}});
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "yarn");
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 256);
  EXPECT_EQ(j["eos_token_id"], 2);
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  // ...and omitted when it is max_position_embeddings (transformers 4.44
  // reads yarn's original length from there).
  yarn.original_max_position_embeddings = 1024;
  m.rope_scaling = yarn;
  j = rt::hf_config_json(m, "bfloat16", nlohmann::json::object());
  EXPECT_FALSE(j["rope_scaling"].contains("original_max_position_embeddings"));
  m.position = "alibi";
  m.rope_scaling.reset();
  EXPECT_THROW(rt::hf_config_json(m, "bfloat16", nlohmann::json::object()), rt::UsageError);
}

TEST(Safetensors, HalfPrecisionDecodesExactly) {
  const fs::path dir = temp_dir("f16");
  const uint16_t h[] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0x3555};
  const float want[] = {1.0f, -2.0f, std::ldexp(1.0f, -24), std::ldexp(1023.0f, -24), 65504.0f,
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity(), -0.0f, 0.333251953125f};
  const std::string header = R"({"x":{"dtype":"F16","shape":[9],"data_offsets":[0,18]}})";
  {
    std::ofstream f(dir / "a.safetensors", std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header;
    f.write(reinterpret_cast<const char*>(h), sizeof h);
  }
  rt::SafetensorsReader r((dir / "a.safetensors").string());
  ASSERT_EQ(r.tensors().size(), 1u);
  float out[9];
  r.read_f32(r.tensors()[0], out);
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(std::memcmp(&out[i], &want[i], 4), 0) << i << ": " << out[i] << " vs " << want[i];
  }
  fs::remove_all(dir);
}

TEST(Safetensors, WriteReadRoundTripBf16) {
  const fs::path dir = temp_dir("rt");
  const std::vector<float> v = {1.0f, -1.5f, 3.14159f, 1e-3f, 65504.0f, -0.0f};
  rt::write_safetensors((dir / "b.safetensors").string(), rt::StDType::kBF16,
                        {{"w", {2, 3}, [&](std::vector<float>& o) { o = v; }}}, {{"format", "pt"}});
  rt::SafetensorsReader r((dir / "b.safetensors").string());
  ASSERT_NE(r.find("w"), nullptr);
  EXPECT_EQ(r.find("w")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.metadata().at("format"), "pt");
  float out[6];
  r.read_f32(*r.find("w"), out);
  // Round to nearest even, as torch's .to(torch.bfloat16) gives.
  const float want[] = {1.0f, -1.5f, 3.140625f, 0.00099945068359375f, 65536.0f, -0.0f};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(std::memcmp(&out[i], &want[i], 4), 0) << i << ": " << out[i];
  fs::remove_all(dir);
}

TEST(HfExport, MaxShardSize) {
  EXPECT_EQ(rt::parse_byte_size("5GB", "x"), 5000000000ull);
  EXPECT_EQ(rt::parse_byte_size("2GiB", "x"), 2147483648ull);
  EXPECT_EQ(rt::parse_byte_size("40kb", "x"), 40000ull);
  EXPECT_EQ(rt::parse_byte_size("1000", "x"), 1000ull);
  EXPECT_THROW(rt::parse_byte_size("5 GB", "x"), rt::UsageError);
  EXPECT_THROW(rt::parse_byte_size("GB", "x"), rt::UsageError);
  EXPECT_THROW(rt::parse_byte_size("0", "x"), rt::UsageError);
}

}  // namespace
