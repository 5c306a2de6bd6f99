// Generation with a KV cache (model/decode/kv_cache.h) equals recomputing the full
// forward for every new token: the same greedy tokens and the same last-row
// logits, for RoPE, ALiBi and no positions, with grouped-query attention and
// a prompt prefilled in one call or fed token by token. And the sampler:
// greedy is the argmax, top-k 1 is greedy, draws stay in the top k. For
// memory models, the segment-wise decoder gives the logits of the training
// forward (RmtRunner) at every position of every segment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "common/rng.h"
#include "model/decode/kv_cache.h"
#include "model/llama.h"
#include "model/memory/rmt.h"
#include "model/memory/rmt_decoder.h"
#include "trainer/config/config.h"
#include "trainer/eval/generate.h"
#include "trainer/train/trainer.h"

namespace rt {
namespace {

ModelConfig tiny_model(const std::string& position) {
  const std::string yaml = R"(
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, init_std: 0.3, position: )" +
                           position + "}\ndata: {train: {synthetic: passkey}}\n";
  return parse_config(yaml, "generate.yaml").model;
}

// Logits (V) of the last position of a full forward over `tokens`.
std::vector<float> full_forward_last(LlamaModel& m, const std::vector<int32_t>& tokens) {
  const int T = int(tokens.size());
  std::vector<int32_t> targets(size_t(T), -1);
  m.forward_backward(tokens.data(), targets.data(), 1, T, RowPositions::whole(T), 0.f, nullptr);
  return m.logits_to_host(T - 1, 1);
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return diff / scale;
}

int32_t argmax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

class KvCacheGenerate : public ::testing::TestWithParam<std::string> {};

TEST_P(KvCacheGenerate, EqualsFullForwardForEveryNewToken) {
  const ModelConfig cfg = tiny_model(GetParam());
  std::unique_ptr<Backend> be = make_cpu_backend();
  LlamaModel model(cfg, *be);
  model.init_weights(11);
  const std::string prompt_text = "The pass key is 12345. ";
  std::vector<int32_t> seq(prompt_text.begin(), prompt_text.end());
  const int new_tokens = 16;
  KvCacheDecoder dec(model, int(seq.size()) + new_tokens);
  std::vector<float> cached = dec.append(seq.data(), int(seq.size()));  // prefill
  std::vector<int32_t> produced;
  for (int i = 0; i < new_tokens; ++i) {
    const std::vector<float> full = full_forward_last(model, seq);
    ASSERT_LT(max_rel_diff(cached, full), 1e-4) << GetParam() << ", new token " << i;
    const int32_t next = argmax(cached);
    ASSERT_EQ(next, argmax(full)) << GetParam() << ", new token " << i;
    produced.push_back(next);
    seq.push_back(next);
    cached = dec.append(&next, 1);
  }
  EXPECT_EQ(dec.length(), int(prompt_text.size()) + new_tokens);
  // not a degenerate model: it does not repeat one token
  EXPECT_GT(std::count_if(produced.begin(), produced.end(),
                          [&](int32_t t) { return t != produced[0]; }),
            0);
}

TEST_P(KvCacheGenerate, PrefillEqualsTokenByToken) {
  const ModelConfig cfg = tiny_model(GetParam());
  std::unique_ptr<Backend> be = make_cpu_backend();
  LlamaModel model(cfg, *be);
  model.init_weights(3);
  const std::string text = "There and back again. The sky is blue.";
  const std::vector<int32_t> tokens(text.begin(), text.end());
  KvCacheDecoder a(model, int(tokens.size())), b(model, int(tokens.size()));
  const std::vector<float> la = a.append(tokens.data(), int(tokens.size()));
  std::vector<float> lb;
  for (int32_t t : tokens) lb = b.append(&t, 1);
  EXPECT_LT(max_rel_diff(lb, la), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Positions, KvCacheGenerate, ::testing::Values("rope", "alibi", "none"));

TEST(KvCacheGenerate, CapacityIsAUsageError) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  LlamaModel model(tiny_model("rope"), *be);
  model.init_weights(1);
  KvCacheDecoder dec(model, 4);
  const int32_t t[5] = {1, 2, 3, 4, 5};
  EXPECT_THROW(dec.append(t, 5), UsageError);
}

// The training forward of T = n*S tokens keeps the logits of its last
// segment: row i of them belongs to token (n-1)*S + i. The decoder, fed the
// tokens one at a time or a prompt of several segments at once, returns
// the same logits after each token.
TEST(RmtDecoder, EqualsTheTrainingForwardAtEveryPosition) {
  const std::string yaml = R"(
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, init_std: 0.3,
        memory: {type: rmt, num_tokens: 4, segment_length: 16}}
data: {train: {synthetic: passkey}}
)";
  const ModelConfig cfg = parse_config(yaml, "generate.yaml").model;
  std::unique_ptr<Backend> be = make_cpu_backend();
  LlamaModel model(cfg, *be);
  model.init_weights(5);
  const int S = 16, n = 3, V = 256;
  Rng rng(6);
  std::vector<int32_t> tokens(size_t(n * S));
  for (auto& t : tokens) t = int32_t(rng.below(256));
  std::vector<std::vector<float>> reference;  // [segment] (S, V)
  {
    RmtRunner runner(model);
    for (int k = 1; k <= n; ++k) {
      const std::vector<int32_t> targets(size_t(k * S), -1);
      runner.forward_backward(tokens.data(), targets.data(), 1, int64_t(k) * S, 0.f, nullptr);
      std::vector<float> seg;  // (S, V): the last segment's rows
      for (int64_t row = int64_t(k - 1) * S; row < int64_t(k) * S; ++row) {
        const std::vector<float> l = runner.logits(0, row);
        seg.insert(seg.end(), l.begin(), l.end());
      }
      reference.push_back(seg);
    }
  }
  auto expected = [&](int j) {  // logits after token j
    const auto& seg = reference[size_t(j / S)];
    return std::vector<float>(seg.begin() + (j % S) * V, seg.begin() + (j % S + 1) * V);
  };

  RmtDecoder one_by_one(model);
  for (int j = 0; j < n * S; ++j) {
    const std::vector<float> got = one_by_one.append(&tokens[size_t(j)], 1);
    ASSERT_LT(max_rel_diff(got, expected(j)), 1e-5) << "token " << j;
    EXPECT_EQ(one_by_one.segments_done(), j / S);
  }
  EXPECT_EQ(one_by_one.length(), n * S);

  RmtDecoder prefilled(model);  // a prompt of 1.5 segments, then token by token
  const int prompt = S + S / 2;
  ASSERT_LT(max_rel_diff(prefilled.append(tokens.data(), prompt), expected(prompt - 1)), 1e-5);
  for (int j = prompt; j < n * S; ++j)
    ASSERT_LT(max_rel_diff(prefilled.append(&tokens[size_t(j)], 1), expected(j)), 1e-5) << j;

  // the memory carries something: the last segment alone, from the initial
  // memory, predicts differently
  RmtDecoder alone(model);
  const std::vector<float> fresh = alone.append(&tokens[size_t((n - 1) * S)], S);
  EXPECT_GT(max_rel_diff(fresh, expected(n * S - 1)), 1e-3);
}

TEST(Sampler, GreedyTopKAndTemperature) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f};
  Rng rng(9);
  EXPECT_EQ(sample_token(logits, 0.0, 0, rng), 1);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits, 1.0, 1, rng), 1);
  int seen3 = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t t = sample_token(logits, 1.0, 2, rng);
    ASSERT_TRUE(t == 1 || t == 3) << t;
    seen3 += t == 3;
  }
  EXPECT_GT(seen3, 40);  // p(3) = 1/(1+e^0.1) ~ 0.475 among the top 2
}

}  // namespace
}  // namespace rt
