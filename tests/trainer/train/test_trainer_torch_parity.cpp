// Whole-model parity with the independent PyTorch reference
// (tests/reference/torch_reference.py, float64): logits, loss, every parameter
// gradient, and the losses and weights after a few AdamW steps with
// clipping, for each position scheme, MHA/GQA, tied/untied head.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "h5_test_io.h"
#include "common/rng.h"
#include "model/llama.h"
#include "model/memory/sequence_runner.h"
#include "trainer/train/optimizer.h"
#include "tiny_model.h"

namespace rt {
namespace {

namespace fs = std::filesystem;
using testing::H5File;

bool torch_available() {
  static int ok = -1;
  if (ok < 0) ok = std::system("/usr/bin/python3 -c 'import torch, h5py' >/dev/null 2>&1") == 0;
  return ok == 1;
}

struct Case {
  std::string name;
  std::string position;
  int heads, kv_heads;
  bool tied;
  int mem_tokens = 0;  // > 0: recurrent memory (SPEC §5) with these:
  int segment = 0;
  int bptt = -1;
  // knn or compressive memory (docs/memory.md) when layer_memory.type is set
  MemoryConfig layer_memory = no_layer_memory();
  bool doc_starts = false;  // document boundaries inside the sequences
  int segments = 4;         // knn/compressive: sequence length in segments
  static MemoryConfig no_layer_memory() {
    MemoryConfig m;
    m.type = "";
    return m;
  }
};

Case knn_case(const std::string& name, const std::string& position, std::vector<int> layers,
              int memory_size, int top_k, bool docs = false, int segments = 4) {
  Case c{name, position, 4, 2, false};
  c.segments = segments;
  MemoryConfig& m = c.layer_memory;
  m.type = "knn";
  m.segment_length = 6;
  m.layers = std::move(layers);
  m.memory_size = memory_size;
  m.top_k = top_k;
  c.doc_starts = docs;
  return c;
}

Case compressive_case(const std::string& name, const std::string& position,
                      const std::string& compression, int levels, int segments = 4) {
  Case c{name, position, 4, 2, false};
  c.segments = segments;
  MemoryConfig& m = c.layer_memory;
  m.type = "compressive";
  m.segment_length = 8;
  m.layers = {0, 1};
  m.memory_segments = 1;
  m.rate = 2;
  m.levels = levels;
  m.compressed_size = 4 * levels;
  m.compression = compression;
  return c;
}
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// max |a - b| / max |b|  (relative to the reference's scale)
double rel_err(const float* a, const std::vector<double>& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

class TorchParity : public ::testing::TestWithParam<Case> {};

TEST_P(TorchParity, LogitsLossGradsAndAdamwSteps) {
  if (!torch_available()) GTEST_SKIP() << "skipped: /usr/bin/python3 with torch and h5py not found "
                                          "(apt-get install python3-torch python3-h5py)";
  const Case& c = GetParam();
  ModelConfig mc = testing::tiny_llama(64, c.position, c.kv_heads);
  mc.num_attention_heads = c.heads;
  mc.tie_word_embeddings = c.tied;
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.weight_decay = 0.1;
  oc.no_decay = {"norms"};
  const double grad_clip = 0.5;
  const bool layer_mem = !c.layer_memory.type.empty();
  const int steps = 4, B = 2,
            T = c.mem_tokens  ? 4 * c.segment
                : layer_mem   ? c.segments * c.layer_memory.segment_length
                              : 37;
  if (c.mem_tokens) mc.memory = MemoryConfig::rmt(c.mem_tokens, c.segment, c.bptt);
  if (layer_mem) mc.memory = c.layer_memory;

  auto be = make_cpu_backend();
  LlamaModel model(mc, *be);
  model.init_weights(7);
  {  // memory-layer parameters away from their neutral init (gate 0, mean pooling)
    Rng prng(11);
    for (const TensorSpec& s : model.params().specs()) {
      if (param_kind(s.name) != ParamKind::kMemoryLayer) continue;
      float* p = model.params().f32(s.name);
      const double sd = s.shape.size() == 1 ? 1.0 : 0.05;
      for (size_t i = 0; i < s.numel; ++i) p[i] += float(prng.normal() * sd);
    }
  }
  model.plan_activations(B, layer_mem ? c.layer_memory.segment_length : T,
                         Checkpointing::kOff);


  std::vector<int32_t> inputs(B * T), targets(B * T);
  Rng rng(3);
  for (int i = 0; i < B * T; ++i) inputs[i] = int32_t(rng.below(mc.vocab_size));
  for (int i = 0; i < B * T; ++i)
    targets[i] = (i % T == T - 1) ? inputs[(i + 1) % (B * T)] : inputs[i + 1];
  targets[5] = -1;  // an ignored target
  // document starts (row 0: two documents, row 1: three)
  std::vector<std::vector<int64_t>> docs = {{0, T / 2 + 1}, {0, T / 4 - 1, 3 * T / 4}};
  const std::unique_ptr<SequenceRunner> runner = make_sequence_runner(model);
  const bool memory = c.mem_tokens || layer_mem;
  // one training forward (+ backward when scale != 0) of the batch
  auto run = [&](float scale, int64_t* valid) {
    SequenceBatch b;
    b.inputs = inputs.data();
    b.targets = targets.data();
    b.B = B;
    b.T = T;
    if (c.doc_starts) b.doc_starts = docs.data();
    return runner->forward_backward(b, scale, valid);
  };
  const fs::path dir = fs::path(RT_BINARY_DIR) / ("torch_parity_" + c.name);
  fs::create_directories(dir);
  {
    H5File f((dir / "in.h5").string(), true);
    f.attr_int("vocab_size", mc.vocab_size);
    f.attr_int("hidden_size", mc.hidden_size);
    f.attr_int("intermediate_size", mc.intermediate_size);
    f.attr_int("num_hidden_layers", mc.num_hidden_layers);
    f.attr_int("num_attention_heads", mc.num_attention_heads);
    f.attr_int("num_key_value_heads", mc.num_key_value_heads);
    f.attr_int("head_dim", mc.head_dim);
    f.attr_double("rms_norm_eps", mc.rms_norm_eps);
    f.attr_int("tie_word_embeddings", mc.tie_word_embeddings);
    f.attr_double("rope_theta", mc.rope_theta);
    f.attr_string("position", mc.position);
    f.attr_double("lr", oc.lr);
    f.attr_double("beta1", oc.beta1);
    f.attr_double("beta2", oc.beta2);
    f.attr_double("eps", oc.eps);
    f.attr_double("weight_decay", oc.weight_decay);
    f.attr_double("grad_clip", grad_clip);
    f.attr_int("steps", steps);
    f.attr_int("no_decay_norms", 1);
    f.attr_int("no_decay_embeddings", 0);
    if (c.mem_tokens) {
      f.attr_int("memory_tokens", c.mem_tokens);
      f.attr_int("segment_length", c.segment);
      f.attr_int("bptt_segments", c.bptt);
    }
    if (layer_mem) {
      const MemoryConfig& m = c.layer_memory;
      f.attr_string("memory_type", m.type);
      f.attr_int("segment_length", m.segment_length);
      std::string layers;
      for (int l : m.layers) layers += (layers.empty() ? "" : ",") + std::to_string(l);
      f.attr_string("memory_layers", layers);
      if (m.type == "knn") {
        f.attr_int("memory_size", m.memory_size);
        f.attr_int("top_k", m.top_k);
      } else {
        f.attr_int("memory_segments", m.memory_segments);
        f.attr_int("rate", m.rate);
        f.attr_int("levels", m.levels);
        f.attr_int("compressed_size", m.compressed_size);
        f.attr_string("compression", m.compression);
      }
    }
    if (c.doc_starts) {
      std::vector<int32_t> d(size_t(B) * 3, -1);
      for (int b = 0; b < B; ++b)
        for (size_t i = 0; i < docs[size_t(b)].size(); ++i) d[size_t(b) * 3 + i] = int32_t(docs[size_t(b)][i]);
      f.write_ints("/doc_starts", d.data(), {hsize_t(B), 3});
    }
    for (const TensorSpec& s : model.params().specs()) {
      std::vector<hsize_t> shape(s.shape.begin(), s.shape.end());
      f.write_floats("/model/" + s.name, model.params().f32(s.name), shape);
    }
    f.write_ints("/inputs", inputs.data(), {hsize_t(B), hsize_t(T)});
    f.write_ints("/targets", targets.data(), {hsize_t(B), hsize_t(T)});
  }
  const std::string cmd = "/usr/bin/python3 " + std::string(RT_SOURCE_DIR) +
                          "/tests/reference/torch_reference.py golden " + (dir / "in.h5").string() + " " +
                          (dir / "out.h5").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  H5File ref((dir / "out.h5").string(), false);

  // logits and loss (forward only)
  int64_t n_valid = 0;
  double loss_sum = run(0.f, &n_valid);
  EXPECT_EQ(n_valid, B * T - 1);
  double logits_err = 0;
  if (!memory) {  // (with memory the reference's logits are its last segment's)
    std::vector<float> logits = model.logits_to_host(0, B * T);
    logits_err = rel_err(logits.data(), ref.read_doubles("/logits"));
    EXPECT_LT(logits_err, 2e-5) << "logits";
  }
  const double ref_loss = ref.read_doubles("/loss")[0];
  EXPECT_NEAR(loss_sum / n_valid, ref_loss, 2e-5 * std::abs(ref_loss)) << "loss";

  // every parameter gradient
  run(1.f / float(n_valid), nullptr);
  double worst_grad = 0;
  for (const TensorSpec& s : model.params().specs()) {
    double e = rel_err(model.grads().f32(s.name), ref.read_doubles("/grad/" + s.name));
    EXPECT_LT(e, 1e-5) << "grad of " << s.name;
    worst_grad = std::max(worst_grad, e);
  }
  EXPECT_NEAR(grad_global_norm(model), ref.read_doubles("/grad_norm")[0],
              1e-4 * ref.read_doubles("/grad_norm")[0]);

  // AdamW steps on the same batch: losses before each step, then final weights
  std::vector<double> ref_losses = ref.read_doubles("/adamw_losses");
  ASSERT_EQ(ref_losses.size(), size_t(steps));
  model.grads().zero();
  Optimizer opt(oc, model);
  for (int s = 0; s < steps; ++s) {
    double l = run(1.f / float(n_valid), nullptr) / double(n_valid);
    EXPECT_NEAR(l, ref_losses[s], 1e-4 * std::abs(ref_losses[s])) << "AdamW step " << s;
    double norm = grad_global_norm(model);
    opt.step(float(oc.lr), clip_coefficient(norm, grad_clip));  // the trainer's clipping
    model.grads().zero();
  }
  // Adam divides by sqrt(v): fp32 round-off in near-zero gradients is
  // amplified, so weights get a looser bound than gradients.
  double worst_weight = 0;
  for (const TensorSpec& s : model.params().specs()) {
    double e = rel_err(model.params().f32(s.name), ref.read_doubles("/final/" + s.name));
    EXPECT_LT(e, 5e-4) << "weights after AdamW of " << s.name;
    worst_weight = std::max(worst_weight, e);
  }
  std::printf("parity %s: max rel err logits %.2e, gradients %.2e, weights after %d AdamW steps %.2e\n",
              c.name.c_str(), logits_err, worst_grad, steps, worst_weight);
}

INSTANTIATE_TEST_SUITE_P(
    Model, TorchParity,
    ::testing::Values(Case{"rope_mha_untied", "rope", 4, 4, false},
                      Case{"rope_gqa_tied", "rope", 4, 2, true},
                      Case{"rope_mqa", "rope", 4, 1, false},
                      Case{"alibi_gqa", "alibi", 6, 3, false},
                      Case{"nope_mha", "none", 4, 4, true},
                      // recurrent memory: full BPTT, detached, windows of 2
                      Case{"rmt_bptt_all", "rope", 4, 2, false, 3, 12, -1},
                      Case{"rmt_bptt_detached", "rope", 4, 2, false, 3, 12, 0},
                      Case{"rmt_bptt_2", "rope", 4, 2, false, 3, 12, 2},
                      Case{"rmt_alibi_bptt_all", "alibi", 4, 4, true, 2, 10, -1},
                      Case{"rmt_nope_bptt_2", "none", 4, 2, false, 3, 12, 2},
                      // external vector memory: FIFO dropping rows, two layers, top_k = store
                      knn_case("knn_rope", "rope", {1}, 10, 4),
                      knn_case("knn_rope_2seg", "rope", {1}, 10, 4, false, 2),
                      knn_case("knn_alibi_two_layers", "alibi", {0, 1}, 12, 12),
                      knn_case("knn_nope_docs", "none", {1}, 14, 5, true),
                      // compressive: mean and learned (conv) compression, one and two levels
                      compressive_case("compressive_rope_mean", "rope", "mean", 2),
                      compressive_case("compressive_alibi_conv", "alibi", "conv", 1),
                      compressive_case("compressive_alibi_conv_6seg", "alibi", "conv", 1, 6),
                      compressive_case("compressive_nope_conv_2levels", "none", "conv", 2)),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace rt
