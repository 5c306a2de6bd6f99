// docs/config.md lists exactly the keys of the resolved config: every key
// the writer emits (with every optional section present, for both optimizers
// and every memory type) has a row, and every row is such a key (or HF's
// legacy `type` alias), so the reference cannot fall behind the schema in
// config.cpp.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <regex>
#include <set>
#include <string>

#include "trainer/config/config.h"

namespace rt {
namespace {

void flatten(const YAML::Node& n, const std::string& prefix, std::set<std::string>& out) {
  if (!n.IsMap()) return;
  for (const auto& kv : n) {
    std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    // data.val has the same keys as data.train (documented once).
    if (key.rfind("data.val.", 0) == 0) key = "data.train." + key.substr(9);
    if (key == "data.val") out.insert(key);
    // Sections are headings, not keys; optional mappings (null by default) are keys.
    static const std::set<std::string> optional_maps = {"model.rope_scaling", "model.memory",
                                                        "eval.passkey", "data.train"};
    if (!kv.second.IsMap() || optional_maps.count(key)) out.insert(key);
    flatten(kv.second, key, out);
  }
}

std::set<std::string> resolved_keys() {
  const std::string full = R"(
run: {dir: elsewhere/run}
model:
  position: rope
  rope_scaling: {rope_type: yarn, factor: 4}
  memory: {type: rmt, num_tokens: 4, segment_length: 64}
data:
  train: {synthetic: passkey, depth: 0.5}
  val: {synthetic: recall, pairs: 3}
train: {seq_len: 128}
eval: {passkey: {seq_lens: [128]}}
)";
  std::set<std::string> keys;
  flatten(YAML::Load(config_to_yaml(parse_config(full, "full.yaml"))), "", keys);
  flatten(YAML::Load(config_to_yaml(parse_config(
              full + "\n", "sgd.yaml", {"train.optimizer={type: sgd, lr: 0.1}",
                                        "train.schedule.min_lr=0"}))),
          "", keys);
  // Each memory type writes only its own keys: the other two types too.
  for (const char* memory : {"model.memory={type: knn, segment_length: 64}",
                             "model.memory={type: compressive, segment_length: 64}"})
    flatten(YAML::Load(config_to_yaml(parse_config(full, "memory.yaml", {memory}))), "", keys);
  return keys;
}

std::set<std::string> documented_keys() {
  std::ifstream f(std::string(RT_SOURCE_DIR) + "/docs/config.md");
  EXPECT_TRUE(f.good()) << "docs/config.md missing";
  std::set<std::string> keys;
  const std::regex row(R"(^\| `([a-z_.]+)` \|)");
  std::smatch m;
  for (std::string line; std::getline(f, line);)
    if (std::regex_search(line, m, row)) keys.insert(m[1]);
  return keys;
}

TEST(ConfigDocs, ReferenceListsEveryKeyOfTheSchema) {
  const std::set<std::string> code = resolved_keys(), docs = documented_keys();
  ASSERT_GT(code.size(), 60u);
  for (const std::string& k : code)
    EXPECT_TRUE(docs.count(k)) << "docs/config.md has no row for `" << k << "`";
  for (const std::string& k : docs)
    EXPECT_TRUE(code.count(k) || k == "model.rope_scaling.type")
        << "docs/config.md documents `" << k << "`, which the config does not have";
}

// The other direction of the same check, from the parser's side: every key
// the schema tables accept (config_keys(), including keys that are never
// written, such as those of the other optimizer or memory types) has a row,
// and every row is such a key.
TEST(ConfigDocs, ReferenceListsEveryKeyTheParserAccepts) {
  std::set<std::string> schema;
  for (std::string key : config_keys()) {
    if (key.rfind("data.val.", 0) == 0) key = "data.train." + key.substr(9);
    schema.insert(key);
  }
  const std::set<std::string> docs = documented_keys();
  ASSERT_GT(schema.size(), 60u);
  EXPECT_TRUE(schema.count("model.memory.top_k") && schema.count("train.optimizer.momentum") &&
              schema.count("data.train.pairs") && !schema.count("train.optimizer"));
  for (const std::string& k : schema)
    EXPECT_TRUE(docs.count(k) || k == "model.rope_scaling.type")  // in rope_type's row
        << "docs/config.md has no row for `" << k << "`, which the parser accepts";
  for (const std::string& k : docs)
    EXPECT_TRUE(schema.count(k)) << "docs/config.md documents `" << k
                                 << "`, which the parser does not accept";
}

}  // namespace
}  // namespace rt
