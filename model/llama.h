// The LLaMA-style decoder (SPEC §3) over the op layer: parameters,
// gradients and activations live in arenas; forward saves what backward
// needs; backward accumulates parameter gradients (+=).
//
// The model knows nothing of ranks. Context parallelism plugs in through
// SequenceAttention (the one call that needs the whole sequence) and through
// RowPositions (the global positions of the rows this process holds).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/arena.h"
#include "model/backend.h"
#include "model/model_config.h"

namespace rt {

// Global positions of the T local rows: consecutive chunks (begin, length)
// whose lengths sum to T, inside a sequence of global_len tokens.
struct RowPositions {
  int64_t global_len = 0;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  static RowPositions whole(int64_t T) { return {T, {{0, T}}}; }
};

// Attention over the whole sequence for the local rows. The local version
// is one blocked-attention call; ring attention (parallel/) implements the
// same interface across ranks.
class SequenceAttention {
 public:
  virtual ~SequenceAttention() = default;
  // q (B,T,H,hd), k,v (B,T,G,hd) -> out (B,T,H,hd), lse (B,H,T)
  virtual void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                       float* out, float* lse, const float* q, const float* k,
                       const float* v) = 0;
  // dq, dk, dv (+=) from dout and the saved out, lse
  virtual void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                        float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse) = 0;
};

class LocalAttention final : public SequenceAttention {
 public:
  void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos, float* out,
               float* lse, const float* q, const float* k, const float* v) override;
  void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos, float* dq,
                float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v, const float* out, const float* lse) override;
};

// Parameter groups, for weight-decay exclusion.
enum class ParamKind { kMatrix, kNorm, kEmbedding, kMemory };

// HF Llama parameter table for a config, in arena order (SPEC §3 names).
std::vector<TensorSpec> llama_param_specs(const ModelConfig& cfg);
ParamKind param_kind(const std::string& name);
// Non-embedding parameter count (for FLOPs per token, SPEC §11).
int64_t non_embedding_params(const ModelConfig& cfg);
// FLOPs per token of one training step: 6*N_nonembed + 6*L*d*T (SPEC §11).
double train_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

class LlamaModel {
 public:
  LlamaModel(const ModelConfig& cfg, Backend& be);
  ~LlamaModel();

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return be_; }
  Arena& params() { return params_; }
  Arena& grads() { return grads_; }
  int64_t num_params() const { return int64_t(params_.numel()); }

  // Normal(0, init_std) for matrices and embeddings, ones for norms.
  // Deterministic for the seed on any platform.
  void init_weights(uint64_t seed);

  // Plans (or grows) the activation arena for micro-batches of B x T rows.
  // checkpointing: keep only each layer's input, recompute in backward.
  void plan_activations(int B, int T, bool checkpointing);
  size_t activation_bytes() const { return acts_.bytes() + scratch_.bytes(); }

  // The attention over the sequence (default LocalAttention). Not owned.
  void set_sequence_attention(SequenceAttention* a) { attention_ = a; }

  // Forward over B x T tokens (host arrays). targets < 0 are ignored. When
  // dloss_scale != 0 also runs backward with d(loss_sum) scaled by
  // dloss_scale, accumulating into grads(). Returns the sum of the per-token
  // losses over valid targets; *n_valid gets their count.
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T,
                          const RowPositions& pos, float dloss_scale, int64_t* n_valid);

  // Same from input embeddings x0 (B*T, d) on the device instead of tokens
  // (RMT feeds memory rows this way). dfinal_extra (B*T, d) or null: an
  // extra gradient at the last layer's output (the residual stream before
  // the final norm). With backward, dx0 (B*T, d) gets d(loss)/d(x0); the
  // backward also runs when only dfinal_extra is given (dloss_scale 0).
  double forward_backward_embeddings(const float* x0, const int32_t* targets, int B, int T,
                                     const RowPositions& pos, float dloss_scale,
                                     int64_t* n_valid, const float* dfinal_extra, float* dx0);
  // The last layer's output (B*T, d) of the last forward (device).
  const float* final_residual() const;
  // Token embeddings (host tokens) into out (n, d) on the device, and the
  // matching backward accumulating into the embedding gradient.
  void embed_tokens(const int32_t* tokens, int n, float* out);
  void embed_tokens_backward(const int32_t* tokens, int n, const float* dout);

  // Logits (B*T, V) of the last forward when it ran without backward (host
  // pointer on CPU; copied to host on other devices).
  std::vector<float> logits_to_host(int64_t row_begin, int64_t rows);
  const float* logits_device() const;
  // Per-row losses (-log p(target), 0 for ignored rows) of the last forward.
  std::vector<float> losses_to_host(int64_t row_begin, int64_t rows);

 private:
  struct LayerActs;
  void layer_forward(int l, LayerActs& a, const float* x_in, float* x_mid, float* x_out);
  void layer_backward(int l, LayerActs& a, const float* x_in, const float* x_mid, float* dresid);
  LayerActs layer_acts(int slot) const;
  void build_positions(const RowPositions& pos, int T);
  void prepare_batch(int B, int T, const RowPositions& pos, const int32_t* targets,
                     int64_t* n_valid);
  void ensure_token_capacity(int n);
  double run_layers_and_head(float dloss_scale, const float* dfinal_extra);

  ModelConfig cfg_;
  Backend& be_;
  Arena params_, grads_;
  Arena acts_, scratch_;
  int planned_B_ = 0, planned_T_ = 0;
  bool checkpointing_ = false;
  int B_ = 0, T_ = 0;  // current micro-batch
  LocalAttention local_attention_;
  SequenceAttention* attention_ = &local_attention_;
  RowPositions pos_;
  std::vector<float> alibi_;  // host copy of slopes; device copy below
  float* alibi_dev_ = nullptr;
  float* rope_cos_ = nullptr;  // device (T, hd/2)
  float* rope_sin_ = nullptr;
  size_t rope_capacity_ = 0;
  int32_t* tokens_dev_ = nullptr;
  int32_t* targets_dev_ = nullptr;
  size_t token_capacity_ = 0;
};

}  // namespace rt
