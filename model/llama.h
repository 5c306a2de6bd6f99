// The LLaMA-style decoder (SPEC §3) over the op layer: parameters,
// gradients and activations live in arenas; forward saves what backward
// needs; backward accumulates parameter gradients (+=).
//
// The model knows nothing of ranks. Context parallelism plugs in through
// SequenceAttention (the one call that needs the whole sequence) and through
// RowPositions (the global positions of the rows this process holds).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/arena.h"
#include "model/backend.h"
#include "model/model_config.h"
#include "model/precision.h"

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
  // q (B,T,H,hd), k,v (B,T,G,hd) -> out (B,T,H,hd), lse (B,H,T) fp32
  virtual void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                       Buf out, float* lse, CBuf q, CBuf k, CBuf v) = 0;
  // dq, dk, dv (+=) from dout and the saved out, lse
  virtual void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                        Buf dq, Buf dk, Buf dv, CBuf dout, CBuf q, CBuf k, CBuf v, CBuf out,
                        const float* lse) = 0;
};

class LocalAttention final : public SequenceAttention {
 public:
  void forward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf out,
               float* lse, CBuf q, CBuf k, CBuf v) override;
  void backward(Backend& be, const AttentionParams& shape, const RowPositions& pos, Buf dq,
                Buf dk, Buf dv, CBuf dout, CBuf q, CBuf k, CBuf v, CBuf out,
                const float* lse) override;
};

// The attention call of this model's layers: B batch rows, Tq query rows at
// global positions [q_offset, q_offset + Tq), Tk key rows from k_offset,
// causal, the model's heads and head_dim, scale 1/sqrt(head_dim), ALiBi
// slopes (device, H floats) or null. The one place these fields are filled.
AttentionParams model_attention_params(const ModelConfig& cfg, int B, int Tq, int Tk,
                                       int64_t q_offset, int64_t k_offset,
                                       const float* alibi_slopes);

// One decoder layer's tensors in an arena laid out by llama_param_specs
// (weights in the compute dtype, or their gradients), resolved once.
struct LayerTensors {
  Buf ln1, wq, wk, wv, wo, ln2, gate, up, down;
};
LayerTensors layer_tensors(const Arena& a, int layer);

// What one decoder layer's forward writes. ln1 and ln2 (and their rstd) may
// be one buffer when nothing is kept for a backward (decoding).
struct LayerForwardBufs {
  Buf ln1, q, k, v, att, ln2, gate, up, act;
  float *ln1_rstd, *lse, *ln2_rstd;
};

// A layer's attention call: "local" (one blocked-attention call), "ring"
// (SequenceAttention across ranks) or "cache" (q attends over a KV cache that
// k and v were just written into). att (B,T,H,hd), lse (B,H,T).
// q and k may be changed in place (a memory layer rotates them itself).
using LayerAttention = std::function<void(Buf att, float* lse, Buf q, Buf k, CBuf v)>;

// The decoder layer, written once for training and decoding:
//   x_mid = x_in + o_proj(attend(rope(q), rope(k), v)),
//   x_out = x_mid + down(silu(gate(ln2)) * up(ln2)),
// over B x T rows; rope_cos/sin (T, hd/2) for those rows (RoPE models), or
// null: q and k reach attend unrotated (a memory layer that encodes
// positions itself, model/memory/layer_memory.h). x_out may alias x_in.
void decoder_layer_forward(Backend& be, const ModelConfig& cfg, const LayerTensors& w,
                           const LayerForwardBufs& a, int B, int T, const float* rope_cos,
                           const float* rope_sin, CBuf x_in, Buf x_mid, Buf x_out,
                           const LayerAttention& attend);

// Parameter groups, for weight-decay exclusion.
// kMemory: RMT's memory embeddings; kMemoryLayer: a memory layer's gate or
// compression weights (docs/memory.md: no weight decay).
enum class ParamKind { kMatrix, kNorm, kEmbedding, kMemory, kMemoryLayer };

// HF Llama parameter table for a config, in arena order (SPEC §3 names).
std::vector<TensorSpec> llama_param_specs(const ModelConfig& cfg);
ParamKind param_kind(const std::string& name);
// Non-embedding parameter count (for FLOPs per token, SPEC §11).
int64_t non_embedding_params(const ModelConfig& cfg);
// FLOPs per token of one training step: 6*N_nonembed + 6*L*d*T (SPEC §11).
double train_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

// The activation arena and the backward scratch for micro-batches of B x T
// rows (what plan_activations allocates; memory plans size them here too).
struct ActivationSpecs {
  std::vector<TensorSpec> acts, scratch;
};
// logits_rows: rows of the head's logits chunk (0: logits_chunk_rows).
ActivationSpecs activation_specs(const ModelConfig& cfg, const Precision& prec, int B, int T,
                                 Checkpointing checkpointing, int64_t logits_rows = 0);

// The LM head and its loss run over chunks of this many rows (of N = B*T),
// so that the logits of all N rows never exist at once: at most
// kLogitsChunkElems logits (2^26: 128 MiB in bf16, 256 MiB in fp32) and at
// least one row. A 128K-vocabulary model at 32K tokens would otherwise hold
// 8 GiB of bf16 logits (16 GiB in fp32).
constexpr int64_t kLogitsChunkElems = int64_t(1) << 26;
int64_t logits_chunk_rows(int64_t N, int64_t vocab_size);

class LayerMemory;

class LlamaModel {
 public:
  // prec: the dtypes of weights, activations and gradients (fp32 by default).
  LlamaModel(const ModelConfig& cfg, Backend& be, const Precision& prec = fp32_precision());
  ~LlamaModel();

  const ModelConfig& config() const { return cfg_; }
  const Precision& precision() const { return prec_; }
  Backend& backend() { return be_; }
  // The compute weights (prec.param), which the ops read.
  Arena& params() { return params_; }
  // The fp32 weights the optimizer updates and checkpoints hold: a separate
  // arena with master weights, otherwise the compute weights themselves.
  Arena& master() { return prec_.master_weights ? master_ : params_; }
  // After writing master(): the compute copy = master rounded (no-op
  // without master weights).
  void sync_compute_weights();
  // A sharded optimizer (ZeRO-1) holds its shard of the master weights:
  // the full master copy is dropped, and brought back (zeroed) only around
  // checkpoint I/O. master() is unallocated in between. No-ops without
  // master weights.
  void release_master() {
    if (prec_.master_weights) master_ = Arena();
  }
  void restore_master();
  Arena& grads() { return grads_; }
  int64_t num_params() const { return int64_t(params_.numel()); }
  const LayerTensors& layer_weights(int l) const { return layer_w_[size_t(l)]; }

  // Normal(0, init_std) for matrices and embeddings, ones for norms.
  // Deterministic for the seed on any platform.
  void init_weights(uint64_t seed);

  // Plans (or grows) the activation arena for micro-batches of B x T rows;
  // checkpointing decides what the backward recomputes (Checkpointing).
  void plan_activations(int B, int T, Checkpointing checkpointing);
  size_t activation_bytes() const { return acts_.bytes() + scratch_.bytes(); }
  const Arena& activations() const { return acts_; }
  const Arena& backward_scratch() const { return scratch_; }

  // Gradient readiness for overlapped reduction (parallel/grad_reducer.h):
  // during a backward, hook(b) says every gradient at byte offset >= b of
  // grads() is final for this backward (after the head, after each layer,
  // and 0 after the token embeddings). Only forward_backward's gradients are
  // then complete; a model with memory (RMT) must not use it. Empty: none.
  void set_grad_ready_hook(std::function<void(size_t)> hook) { grad_ready_ = std::move(hook); }

  // The attention over the sequence (default LocalAttention). Not owned.
  void set_sequence_attention(SequenceAttention* a) { attention_ = a; }
  // The memory that provides the attention of its layers (knn,
  // compressive), or null. Not owned; set by SegmentRunner / SegmentDecoder.
  void set_layer_memory(LayerMemory* m) { layer_memory_ = m; }
  // The RoPE tables (T, hd/2) of the prepared rows (RoPE models), else null.
  const float* rope_cos() const { return rope_cos_ ? rope_cos_.f32() : nullptr; }
  const float* rope_sin() const { return rope_sin_ ? rope_sin_.f32() : nullptr; }
  // ALiBi slopes on the device (H), else null.
  const float* alibi_device() const { return alibi_dev_ ? alibi_dev_.f32() : nullptr; }

  // Forward over B x T tokens (host arrays). targets < 0 are ignored. When
  // dloss_scale != 0 also runs backward with d(loss_sum) scaled by
  // dloss_scale, accumulating into grads(). Returns the sum of the per-token
  // losses over valid targets (0 while the loss is deferred, below); *n_valid
  // gets their count.
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T,
                          const RowPositions& pos, float dloss_scale, int64_t* n_valid);

  // Same from input embeddings x0 (B*T, d) on the device instead of tokens
  // (RMT feeds memory rows this way). dfinal_extra (B*T, d) or null: an
  // extra gradient at the last layer's output (the residual stream before
  // the final norm). With backward, dx0 (B*T, d) gets d(loss)/d(x0); the
  // backward also runs when only dfinal_extra is given (dloss_scale 0).
  // x0 and final_residual are in prec.act, dfinal_extra and dx0 in prec.grad.
  double forward_backward_embeddings(CBuf x0, const int32_t* targets, int B, int T,
                                     const RowPositions& pos, float dloss_scale,
                                     int64_t* n_valid, CBuf dfinal_extra, Buf dx0);
  // The loss is summed on the device where it is computed. By default every
  // forward reads its own sum back (one scalar); deferred, the sums of
  // every forward accumulate until take_loss_sum() reads them once (the
  // training step). Counting off: forwards leave the sum alone (RMT's
  // replay pass recomputes losses already counted).
  void set_defer_loss(bool defer) { defer_loss_ = defer; }
  void set_count_loss(bool count) { count_loss_ = count; }
  double take_loss_sum();
  // The last layer's output (B*T, d) of the last forward (device).
  CBuf final_residual() const;
  // Token embeddings (host tokens) into out (n, d) on the device, and the
  // matching backward accumulating into the embedding gradient.
  void embed_tokens(const int32_t* tokens, int n, Buf out);
  void embed_tokens_backward(const int32_t* tokens, int n, CBuf dout);

  // Logits (B*T, V) of the last forward when it ran without backward, as
  // fp32 on the host (converted from the activation dtype). Rows outside the
  // head's last chunk (logits_chunk_rows) are recomputed from the final norm.
  std::vector<float> logits_to_host(int64_t row_begin, int64_t rows);
  // Rows per chunk of the head (0: logits_chunk_rows(B*T, V)); takes effect
  // at the next plan_activations (tests force several chunks with it).
  void set_logits_chunk_rows(int64_t rows) { logits_rows_wanted_ = rows; }
  // Per-row losses (-log p(target), 0 for ignored rows) of the last forward.
  std::vector<float> losses_to_host(int64_t row_begin, int64_t rows);

 private:
  // Pointers into the activation arena for one layer (resolved once by
  // plan_activations: layers share one slot when checkpointing, with their
  // own att and lse when selective), and the backward temporaries.
  struct LayerActs {
    Buf ln1, q, k, v, att, mid, ln2, gate, up;
    float *ln1_rstd, *lse, *ln2_rstd;
  };
  struct Scratch {
    Buf dresid, dln, datt, dq, dk, dv, dgate, dup, act, xtmp;
  };
  // recompute: the backward's second forward (checkpointing), which skips
  // the attention when selective checkpointing kept its output.
  void layer_forward(int l, LayerActs& a, CBuf x_in, Buf x_mid, Buf x_out, bool recompute);
  void layer_backward(int l, LayerActs& a, CBuf x_in, CBuf x_mid, Buf dresid);
  AttentionParams attention_params() const;
  void build_positions(const RowPositions& pos, int T);
  void prepare_batch(int B, int T, const RowPositions& pos, const int32_t* targets,
                     int64_t* n_valid);
  void ensure_token_capacity(int n);
  double run_layers_and_head(float dloss_scale, CBuf dfinal_extra);
  // The LM head's weight (lm_head, or the embeddings when tied) in an arena.
  Buf head_weight(const Arena& a) const {
    return a.buf(cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  }

  ModelConfig cfg_;
  Precision prec_;
  Backend& be_;
  Arena params_, master_, grads_;
  std::vector<LayerTensors> layer_w_, layer_g_;
  Arena acts_, scratch_;
  std::vector<LayerActs> layer_acts_;  // one per layer
  std::vector<Buf> x_;  // x.0 .. x.L, the residual stream
  Buf lnf_, logits_;
  int64_t logits_rows_ = 0;   // rows the logits buffer holds (one chunk)
  int64_t logits_first_ = 0;  // first row of the chunk it holds now
  int64_t logits_rows_wanted_ = 0;
  float *lnf_rstd_ = nullptr, *losses_ = nullptr;
  Scratch s_;
  int planned_B_ = 0, planned_T_ = 0;
  Checkpointing checkpointing_ = Checkpointing::kOff;
  int B_ = 0, T_ = 0;  // current micro-batch
  LocalAttention local_attention_;
  SequenceAttention* attention_ = &local_attention_;
  LayerMemory* layer_memory_ = nullptr;
  std::function<void(size_t)> grad_ready_;
  RowPositions pos_;
  std::vector<float> alibi_;  // host copy of slopes; device copy below
  DeviceBuffer alibi_dev_;
  DeviceBuffer rope_cos_, rope_sin_;  // device (T, hd/2)
  DeviceBuffer tokens_dev_, targets_dev_;  // int32
  DeviceBuffer loss_acc_;                  // one fp64: summed losses not yet read
  bool defer_loss_ = false, count_loss_ = true;
};

}  // namespace rt
