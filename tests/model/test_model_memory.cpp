// knn and compressive memory (docs/memory.md) beyond the PyTorch parity
// cases of test_trainer_torch_parity.cpp: each property below is checked
// against an independent run of the same model, never against stored numbers.
//   - a document starting at a segment boundary: the rest of the sequence
//     equals that rest run alone as a new sequence (the stores were cleared);
//   - --memory-reset: every segment equals that segment run alone;
//   - the store stays bounded (knn: memory_size rows; compressive: the FIFO
//     plus compressed_size slots) however long the sequence;
//   - activation memory is one segment's whatever the number of segments;
//   - generation (SegmentDecoder) gives the training forward's logits;
//   - the memory matters: with it carried, later segments differ.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>

#include "common/rng.h"
#include "model/decode/decoder.h"
#include "model/llama.h"
#include "model/memory/knn_store.h"
#include "model/memory/sequence_runner.h"
#include "tiny_model.h"

namespace rt {
namespace {

constexpr int kS = 8;  // segment length

ModelConfig tiny(const std::string& type, const std::string& position) {
  ModelConfig mc = testing::tiny_llama(48, position);
  MemoryConfig m;
  m.type = type;
  m.segment_length = kS;
  m.layers = {1};
  m.memory_size = 20;  // knn: 2.5 segments, so the FIFO drops rows
  m.top_k = 6;
  m.memory_segments = 1;  // compressive: one segment at full resolution,
  m.rate = 2;             // then 2 levels of 4 slots each
  m.levels = 2;
  m.compressed_size = 8;
  m.compression = "conv";
  mc.memory = m;
  return mc;
}

using testing::random_tokens;

struct Fixture {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<SequenceRunner> runner;
  Fixture(const std::string& type, const std::string& position) {
    model = std::make_unique<LlamaModel>(tiny(type, position), *be);
    model->init_weights(5);
    // gates away from 0, so that the memory weighs differently per head
    for (const TensorSpec& s : model->params().specs())
      if (s.name.find("memory_gate") != std::string::npos)
        for (size_t i = 0; i < s.numel; ++i) model->params().f32(s.name)[i] = 0.5f * float(i) - 0.5f;
    runner = make_sequence_runner(*model);
  }
  // per-token losses of B sequences of T tokens
  std::vector<float> losses(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int B,
                            int64_t T, const std::vector<std::vector<int64_t>>* docs = nullptr) {
    std::vector<float> out(size_t(B) * T);
    SequenceBatch b;
    b.inputs = in.data();
    b.targets = tg.data();
    b.B = B;
    b.T = T;
    b.doc_starts = docs ? docs->data() : nullptr;
    runner->forward_backward(b, 0.f, nullptr, out.data());
    return out;
  }
};

class LayerMemoryTest : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(LayerMemoryTest, DocumentBoundaryClearsTheStore) {
  Fixture f(GetParam().first, GetParam().second);
  const int n = 5, T = n * kS, start = 3 * kS;
  const auto in = random_tokens(T, 1, 48), tg = random_tokens(T, 2, 48);
  const std::vector<std::vector<int64_t>> docs = {{0, start}};
  const std::vector<float> with_docs = f.losses(in, tg, 1, T, &docs);
  const std::vector<float> no_docs = f.losses(in, tg, 1, T);
  const std::vector<int32_t> in2(in.begin() + start, in.end()), tg2(tg.begin() + start, tg.end());
  const std::vector<float> alone = f.losses(in2, tg2, 1, T - start);
  double diff_docs = 0;
  for (int t = 0; t < T; ++t) {
    if (t >= start) {
      EXPECT_NEAR(with_docs[size_t(t)], alone[size_t(t - start)], 1e-5) << t;
    } else {
      EXPECT_EQ(with_docs[size_t(t)], no_docs[size_t(t)]) << t;
    }
    diff_docs = std::max(diff_docs, double(std::abs(with_docs[size_t(t)] - no_docs[size_t(t)])));
  }
  EXPECT_GT(diff_docs, 1e-4) << "without the boundary the store must change the later segments";
}

TEST_P(LayerMemoryTest, MemoryResetEqualsEverySegmentAlone) {
  Fixture f(GetParam().first, GetParam().second);
  const int n = 4, T = n * kS;
  const auto in = random_tokens(T, 3, 48), tg = random_tokens(T, 4, 48);
  const std::vector<float> carried = f.losses(in, tg, 1, T);
  f.runner->set_memory_reset(true);
  const std::vector<float> reset = f.losses(in, tg, 1, T);
  f.runner->set_memory_reset(false);
  double diff = 0;
  for (int k = 0; k < n; ++k) {
    const std::vector<int32_t> si(in.begin() + k * kS, in.begin() + (k + 1) * kS),
        st(tg.begin() + k * kS, tg.begin() + (k + 1) * kS);
    const std::vector<float> alone = f.losses(si, st, 1, kS);
    for (int i = 0; i < kS; ++i) {
      EXPECT_EQ(reset[size_t(k * kS + i)], alone[size_t(i)]) << "segment " << k << " row " << i;
      if (k == 0) {
        EXPECT_EQ(carried[size_t(i)], alone[size_t(i)]);
      }
      diff = std::max(diff, double(std::abs(carried[size_t(k * kS + i)] - alone[size_t(i)])));
    }
  }
  EXPECT_GT(diff, 1e-4) << "the carried store must change later segments";
}

TEST_P(LayerMemoryTest, StoreBoundedAndActivationsOneSegment) {
  Fixture f(GetParam().first, GetParam().second);
  const bool knn = GetParam().first == "knn";
  const MemoryConfig& m = *f.model->config().memory;
  const int kvd = 2 * 8;
  // rows kept per sequence and memory layer: knn memory_size; compressive
  // the FIFO's segments plus every level's slots
  const size_t bound_rows = knn ? size_t(m.memory_size) : size_t(m.memory_segments * kS + m.compressed_size);
  size_t act[2];
  int i = 0;
  for (int n : {2, 40}) {
    const int64_t T = int64_t(n) * kS;
    const auto in = random_tokens(size_t(T), 5, 48), tg = random_tokens(size_t(T), 6, 48);
    SequenceBatch b;
    b.inputs = in.data();
    b.targets = tg.data();
    b.B = 1;
    b.T = T;
    double loss = f.runner->forward_backward(b, 1.f / float(T), nullptr);
    EXPECT_TRUE(std::isfinite(loss));
    act[i++] = f.model->activation_bytes();
    // keys and values in fp32 (knn also keeps positions: allow 2x)
    const size_t rows_bytes = bound_rows * kvd * 2 * sizeof(float);
    EXPECT_LE(f.runner->memory_bytes(), 2 * rows_bytes) << n << " segments";
    if (n == 40) {
      EXPECT_GE(f.runner->memory_bytes(), rows_bytes / 2) << "the store must fill";
    }
  }
  EXPECT_EQ(act[0], act[1]) << "activations are one segment's";
}

TEST_P(LayerMemoryTest, GenerationMatchesTheTrainingForward) {
  Fixture f(GetParam().first, GetParam().second);
  const int n = 3, T = n * kS;
  const auto in = random_tokens(T, 7, 48);
  const std::vector<int32_t> no_targets(T, -1);
  f.losses(in, no_targets, 1, T);
  std::vector<std::vector<float>> want;
  for (int r = T - kS; r < T; ++r) want.push_back(f.runner->logits(0, r));
  f.runner.reset();  // one memory on the model at a time
  const std::unique_ptr<Decoder> dec = make_decoder(*f.model, T);
  std::vector<float> got = dec->append(in.data(), T - kS + 1);  // prompt through row T-S
  for (int r = T - kS; r < T; ++r) {
    if (r > T - kS) got = dec->append(&in[size_t(r)], 1);
    double err = 0;
    for (size_t v = 0; v < got.size(); ++v)
      err = std::max(err, double(std::abs(got[v] - want[size_t(r - (T - kS))][v])));
    EXPECT_LT(err, 1e-5) << "row " << r;
  }
  EXPECT_NE(dec->describe().find("2 segments stored"), std::string::npos) << dec->describe();
}

// What approximate retrieval costs in loss: the same knn model and sequence
// with the store searched exactly (BLAS), by FAISS's exact index, and by
// its approximate ones. The store fills to 1024 rows of 8 dims per kv head
// (32 segments of 32 rows, then FIFO), top_k 6: ivf then probes 16 of its
// 32 lists, hnsw searches a graph (below ~600 rows both are exhaustive).
TEST(KnnIndex, ApproximateRetrievalCostInLoss) {
  if (!knn_have_faiss()) GTEST_SKIP() << "skipped: built without FAISS";
  const int S = 32, n = 40, T = n * S;
  const auto in = random_tokens(T, 9, 48), tg = random_tokens(T, 10, 48);
  auto mean_loss = [&](const std::string& index) {
    ModelConfig mc = tiny("knn", "rope");
    mc.memory->segment_length = S;
    mc.memory->memory_size = 1024;
    mc.memory->index = index;
    auto be = make_cpu_backend();
    LlamaModel model(mc, *be);
    model.init_weights(5);
    for (const TensorSpec& s : model.params().specs())  // lean on the memory: a = 0.88
      if (s.name.find("memory_gate") != std::string::npos)
        for (size_t i = 0; i < s.numel; ++i) model.params().f32(s.name)[i] = 2.f;
    const std::unique_ptr<SequenceRunner> r = make_sequence_runner(model);
    SequenceBatch b;
    b.inputs = in.data();
    b.targets = tg.data();
    b.B = 1;
    b.T = T;
    int64_t valid = 0;
    return r->forward_backward(b, 0.f, &valid) / double(valid);
  };
  const double exact = mean_loss("exact"), flat = mean_loss("flat"), ivf = mean_loss("ivf"),
               hnsw = mean_loss("hnsw");
  std::printf("knn mean loss over %d segments: exact %.6f, flat %+.2e, ivf %+.2e, hnsw %+.2e "
              "(relative to exact)\n",
              n, exact, flat / exact - 1, ivf / exact - 1, hnsw / exact - 1);
  EXPECT_NEAR(flat, exact, 1e-5 * exact) << "FAISS's exact index is exact";
  EXPECT_NEAR(ivf, exact, 0.02 * exact);
  EXPECT_NEAR(hnsw, exact, 0.02 * exact);
}

// The detail a compression loses (LayerMemory::stats, evaluation): zero when
// every group of `rate` rows is identical (mean pooling then keeps the
// attention output exactly: duplicated keys carry the same softmax mass),
// clearly above zero for random text.
TEST(CompressiveStats, RelativeErrorZeroForRepeatedRowsPositiveForRandom) {
  auto rel_err = [](const std::vector<int32_t>& in) {
    ModelConfig mc = tiny("compressive", "rope");
    mc.memory->layers = {0};  // keys and values are functions of the token alone
    mc.memory->compression = "mean";
    mc.memory->levels = 1;
    mc.memory->compressed_size = 8;
    auto be = make_cpu_backend();
    LlamaModel model(mc, *be);
    model.init_weights(5);
    const std::unique_ptr<SequenceRunner> r = make_sequence_runner(model);
    const std::vector<int32_t> tg(in.size(), -1);
    SequenceBatch b;
    b.inputs = in.data();
    b.targets = tg.data();
    b.B = 1;
    b.T = int64_t(in.size());
    r->forward_backward(b, 0.f, nullptr);
    double err = -1, n = 0;
    for (const auto& [name, v] : r->memory_stats()) {
      if (name == "level1_relative_error") err = v;
      if (name == "level1_compressions") n = v;
    }
    EXPECT_GT(n, 0) << "compressions must have happened";
    return err;
  };
  const int T = 6 * kS;
  std::vector<int32_t> pairs = random_tokens(T, 11, 48);
  for (int i = 1; i < T; i += 2) pairs[size_t(i)] = pairs[size_t(i - 1)];  // a a b b ...
  const double same = rel_err(pairs), random = rel_err(random_tokens(T, 12, 48));
  std::printf("compression relative error: repeated pairs %.2e, random tokens %.3f\n", same, random);
  EXPECT_LT(same, 1e-5);
  EXPECT_GT(random, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(
    Memory, LayerMemoryTest,
    ::testing::Values(std::make_pair(std::string("knn"), std::string("rope")),
                      std::make_pair(std::string("knn"), std::string("alibi")),
                      std::make_pair(std::string("compressive"), std::string("rope")),
                      std::make_pair(std::string("compressive"), std::string("none"))),
    [](const auto& i) { return i.param.first + "_" + i.param.second; });

}  // namespace
}  // namespace rt
