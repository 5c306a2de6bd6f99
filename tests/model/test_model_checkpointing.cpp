// Activation checkpointing (model/llama.h, Checkpointing): off, full and
// selective give bitwise the same losses and gradients on the CPU in fp32
// (the attention is deterministic, so its recompute repeats it exactly);
// full runs every layer's attention forward twice per micro-step (forward,
// recompute), selective once, like off (its recompute reuses the kept
// attention output and LSE); and selective's activation arena is full's plus
// one attention output and LSE per layer, less the shared slot's.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/arena.h"
#include "model/llama.h"
#include "model/precision.h"
#include "tiny_model.h"

namespace rt {
namespace {

constexpr Checkpointing kModes[] = {Checkpointing::kOff, Checkpointing::kFull,
                                    Checkpointing::kSelective};

// The model's attention (LocalAttention), counting its calls.
class CountingAttention final : public SequenceAttention {
 public:
  void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf out,
               float* lse, CBuf q, CBuf k, CBuf v) override {
    ++forwards;
    local_.forward(be, shape, pos, out, lse, q, k, v);
  }
  void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf dq,
                Buf dk, Buf dv, CBuf dout, CBuf q, CBuf k, CBuf v, CBuf out,
                const float* lse) override {
    ++backwards;
    local_.backward(be, shape, pos, dq, dk, dv, dout, q, k, v, out, lse);
  }
  int forwards = 0, backwards = 0;

 private:
  LocalAttention local_;
};

struct Outcome {
  std::vector<double> losses;
  std::vector<unsigned char> grads;  // the gradient arena's bytes after all micro-steps
  std::vector<int> forwards, backwards;  // attention calls in each micro-step
};

// Two micro-steps (gradients accumulate) of B x T tokens, then a forward
// without backward.
Outcome train_micro_steps(const ModelConfig& mc, Checkpointing mode) {
  const int B = 2, T = 24, N = B * T;
  auto be = make_cpu_backend();
  LlamaModel model(mc, *be);
  model.init_weights(11);
  model.plan_activations(B, T, mode);
  CountingAttention attention;
  model.set_sequence_attention(&attention);
  Outcome r;
  for (int step = 0; step < 3; ++step) {
    const std::vector<int32_t> in = testing::random_tokens(N, 100 + step, mc.vocab_size);
    const std::vector<int32_t> tg = testing::random_tokens(N, 200 + step, mc.vocab_size);
    attention.forwards = attention.backwards = 0;
    int64_t valid = 0;
    const float dloss_scale = step < 2 ? 1.f / N : 0.f;
    r.losses.push_back(model.forward_backward(in.data(), tg.data(), B, T,
                                              RowPositions::whole(T), dloss_scale, &valid));
    r.forwards.push_back(attention.forwards);
    r.backwards.push_back(attention.backwards);
  }
  const Arena& g = model.grads();
  const auto* p = static_cast<const unsigned char*>(static_cast<const void*>(g.f32_base()));
  r.grads.assign(p, p + g.bytes());
  return r;
}

struct Case {
  const char* name;
  ModelConfig mc;
};

std::vector<Case> cases() {
  ModelConfig three = testing::tiny_llama(64, "rope", 2);
  three.num_hidden_layers = 3;
  return {{"rope_gqa", testing::tiny_llama(64, "rope", 2)},
          {"alibi", testing::tiny_llama(64, "alibi", 4)},
          {"rope_gqa_3_layers", three},
          {"no_positions_mqa", testing::tiny_llama(64, "none", 1)}};
}

TEST(Checkpointing, SameLossesAndGradientsBitwise) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Outcome off = train_micro_steps(c.mc, Checkpointing::kOff);
    for (Checkpointing mode : {Checkpointing::kFull, Checkpointing::kSelective}) {
      SCOPED_TRACE(checkpointing_name(mode));
      const Outcome r = train_micro_steps(c.mc, mode);
      EXPECT_EQ(r.losses, off.losses);  // exact doubles
      ASSERT_EQ(r.grads.size(), off.grads.size());
      EXPECT_EQ(0, std::memcmp(r.grads.data(), off.grads.data(), off.grads.size()))
          << "gradients differ from checkpointing off";
    }
  }
}

TEST(Checkpointing, SelectiveRecomputeSkipsTheAttention) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const int L = c.mc.num_hidden_layers;
    for (Checkpointing mode : kModes) {
      SCOPED_TRACE(checkpointing_name(mode));
      const Outcome r = train_micro_steps(c.mc, mode);
      const int per_step = mode == Checkpointing::kFull ? 2 * L : L;
      EXPECT_EQ(r.forwards, (std::vector<int>{per_step, per_step, L}));
      EXPECT_EQ(r.backwards, (std::vector<int>{L, L, 0}));
    }
  }
}

size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

TEST(Checkpointing, SelectiveKeepsOneAttentionOutputAndLsePerLayer) {
  ModelConfig mc = testing::tiny_llama(64, "rope", 2);
  mc.num_hidden_layers = 5;
  const int B = 3, T = 37;  // sizes that are not multiples of the 64-byte alignment
  for (const Precision& prec : {fp32_precision(), resolve_precision("bf16", Device::kCpu)}) {
    SCOPED_TRACE(prec.name());
    const size_t act = dtype_size(prec.act);
    const size_t N = size_t(B) * T, qd = size_t(mc.num_attention_heads) * mc.head_dim;
    const size_t per_layer =
        align64(N * qd * act) + align64(size_t(B) * mc.num_attention_heads * T * 4);
    size_t bytes[3], scratch[3];
    for (int m = 0; m < 3; ++m) {
      const ActivationSpecs s = activation_specs(mc, prec, B, T, kModes[m]);
      bytes[m] = layout_bytes(s.acts);
      scratch[m] = layout_bytes(s.scratch);
    }
    // L layers' att and lse, less the one of full's shared slot
    EXPECT_EQ(bytes[2], bytes[1] + size_t(mc.num_hidden_layers - 1) * per_layer);
    EXPECT_GT(bytes[0], bytes[2]);
    EXPECT_EQ(scratch[0], scratch[1]);
    EXPECT_EQ(scratch[1], scratch[2]);
    // and the model allocates what the plan says
    auto be = make_cpu_backend();
    LlamaModel model(mc, *be, prec);
    for (int m = 0; m < 3; ++m) {
      model.plan_activations(B, T, kModes[m]);
      EXPECT_EQ(model.activations().bytes(), bytes[m]) << checkpointing_name(kModes[m]);
    }
  }
}

}  // namespace
}  // namespace rt
