#include "model/llama.h"

#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "common/log.h"
#include "common/rng.h"
#include "model/alibi.h"
#include "model/rope.h"

namespace rt {

// ---- parameter table --------------------------------------------------------

std::vector<TensorSpec> llama_param_specs(const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size, f = c.intermediate_size;
  const int64_t qd = int64_t(c.num_attention_heads) * c.head_dim;
  const int64_t kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  std::vector<TensorSpec> s;
  s.push_back({"model.embed_tokens.weight", {V, d}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "input_layernorm.weight", {d}});
    s.push_back({p + "self_attn.q_proj.weight", {qd, d}});
    s.push_back({p + "self_attn.k_proj.weight", {kvd, d}});
    s.push_back({p + "self_attn.v_proj.weight", {kvd, d}});
    s.push_back({p + "self_attn.o_proj.weight", {d, qd}});
    s.push_back({p + "post_attention_layernorm.weight", {d}});
    s.push_back({p + "mlp.gate_proj.weight", {f, d}});
    s.push_back({p + "mlp.up_proj.weight", {f, d}});
    s.push_back({p + "mlp.down_proj.weight", {d, f}});
  }
  s.push_back({"model.norm.weight", {d}});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {V, d}});
  if (c.memory) s.push_back({"model.memory.embeddings", {c.memory->num_tokens, d}});
  return s;
}

ParamKind param_kind(const std::string& name) {
  auto ends_with = [&](const char* suf) {
    size_t n = std::strlen(suf);
    return name.size() >= n && name.compare(name.size() - n, n, suf) == 0;
  };
  if (ends_with("layernorm.weight") || name == "model.norm.weight") return ParamKind::kNorm;
  if (name == "model.embed_tokens.weight") return ParamKind::kEmbedding;
  if (name == "model.memory.embeddings") return ParamKind::kMemory;
  return ParamKind::kMatrix;
}

int64_t non_embedding_params(const ModelConfig& c) {
  int64_t n = 0;
  for (const TensorSpec& s : llama_param_specs(c)) {
    if (s.name == "model.embed_tokens.weight") continue;
    int64_t k = 1;
    for (int64_t x : s.shape) k *= x;
    n += k;
  }
  return n;
}

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  return 6.0 * double(non_embedding_params(c)) +
         6.0 * c.num_hidden_layers * double(c.hidden_size) * double(seq_len);
}

// ---- local attention --------------------------------------------------------

static AttentionParams whole_sequence(const AttentionParams& shape, const RowPositions& pos) {
  RT_CHECK(pos.chunks.size() == 1, "LocalAttention needs one contiguous chunk of rows");
  AttentionParams p = shape;
  p.q_offset = p.k_offset = pos.chunks[0].first;
  return p;
}

void LocalAttention::forward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                             float* out, float* lse, const float* q, const float* k,
                             const float* v) {
  be.attention_forward(whole_sequence(shape, pos), out, lse, q, k, v);
}

void LocalAttention::backward(Backend& be, const AttentionParams& shape,
                              const RowPositions& pos, float* dq, float* dk, float* dv,
                              const float* dout, const float* q, const float* k, const float* v,
                              const float* out, const float* lse) {
  be.attention_backward(whole_sequence(shape, pos), dq, dk, dv, dout, q, k, v, out, lse);
}

// ---- model ----------------------------------------------------------------------

// Pointers into the activation arena for one layer slot.
struct LlamaModel::LayerActs {
  float *ln1, *ln1_rstd, *q, *k, *v, *att, *lse, *mid, *ln2, *ln2_rstd, *gate, *up;
};

LlamaModel::LlamaModel(const ModelConfig& cfg, Backend& be) : cfg_(cfg), be_(be) {
  RT_CHECK(cfg_.head_dim > 0, "head_dim must be resolved by the config parser");
  std::vector<TensorSpec> specs = llama_param_specs(cfg_);
  params_ = Arena(be_, "parameters", specs);
  grads_ = Arena(be_, "gradients", specs);
  grads_.zero();
  if (cfg_.position == "alibi") {
    alibi_ = alibi_slopes(cfg_.num_attention_heads);
    alibi_dev_ = static_cast<float*>(be_.alloc_bytes(alibi_.size() * sizeof(float)));
    be_.copy_to_device(alibi_dev_, alibi_.data(), alibi_.size() * sizeof(float));
  }
}

LlamaModel::~LlamaModel() {
  be_.free_bytes(alibi_dev_);
  be_.free_bytes(rope_cos_);
  be_.free_bytes(rope_sin_);
  be_.free_bytes(tokens_dev_);
  be_.free_bytes(targets_dev_);
}

void LlamaModel::init_weights(uint64_t seed) {
  std::vector<float> host(params_.numel(), 0.f);
  for (const TensorSpec& s : params_.specs()) {
    float* p = host.data() + s.offset;
    if (param_kind(s.name) == ParamKind::kNorm) {
      for (size_t i = 0; i < s.numel; ++i) p[i] = 1.f;
      continue;
    }
    // One stream per tensor, keyed by its name: adding a tensor elsewhere
    // does not change this one's values.
    uint64_t h = 1469598103934665603ull;
    for (char ch : s.name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
    Rng rng(mix_seed(seed, h));
    for (size_t i = 0; i < s.numel; ++i) p[i] = float(rng.normal() * cfg_.init_std);
  }
  be_.copy_to_device(params_.base(), host.data(), host.size() * sizeof(float));
}

void LlamaModel::plan_activations(int B, int T, bool checkpointing) {
  if (B * int64_t(T) <= int64_t(planned_B_) * planned_T_ && checkpointing == checkpointing_ &&
      acts_.base())
    return;
  const int64_t N = int64_t(B) * T, d = cfg_.hidden_size, f = cfg_.intermediate_size,
                V = cfg_.vocab_size;
  const int64_t qd = int64_t(cfg_.num_attention_heads) * cfg_.head_dim;
  const int64_t kvd = int64_t(cfg_.num_key_value_heads) * cfg_.head_dim;
  const int L = cfg_.num_hidden_layers;
  const int slots = checkpointing ? 1 : L;

  std::vector<TensorSpec> a;
  for (int l = 0; l <= L; ++l) a.push_back({"x." + std::to_string(l), {N, d}});
  for (int s = 0; s < slots; ++s) {
    std::string p = "slot" + std::to_string(s) + ".";
    a.push_back({p + "ln1", {N, d}});
    a.push_back({p + "ln1_rstd", {N}});
    a.push_back({p + "q", {N, qd}});
    a.push_back({p + "k", {N, kvd}});
    a.push_back({p + "v", {N, kvd}});
    a.push_back({p + "att", {N, qd}});
    a.push_back({p + "lse", {int64_t(B) * cfg_.num_attention_heads * T}});
    a.push_back({p + "mid", {N, d}});
    a.push_back({p + "ln2", {N, d}});
    a.push_back({p + "ln2_rstd", {N}});
    a.push_back({p + "gate", {N, f}});
    a.push_back({p + "up", {N, f}});
  }
  a.push_back({"lnf", {N, d}});
  a.push_back({"lnf_rstd", {N}});
  a.push_back({"logits", {N, V}});
  a.push_back({"losses", {N}});

  // Backward temporaries, one set shared by all layers.
  std::vector<TensorSpec> s = {
      {"dresid", {N, d}}, {"dln", {N, d}},   {"datt", {N, qd}}, {"dq", {N, qd}},
      {"dk", {N, kvd}},   {"dv", {N, kvd}},  {"dgate", {N, f}}, {"dup", {N, f}},
      {"act", {N, f}},    {"xtmp", {N, d}},
  };
  acts_ = Arena(be_, "activations", std::move(a));
  scratch_ = Arena(be_, "backward scratch", std::move(s));
  planned_B_ = B;
  planned_T_ = T;
  checkpointing_ = checkpointing;
  log_info("memory: activations %s + backward scratch %s (micro-batch %d x %d tokens%s)",
           format_bytes(double(acts_.bytes())).c_str(),
           format_bytes(double(scratch_.bytes())).c_str(), B, T,
           checkpointing ? ", activation checkpointing" : "");
}

LlamaModel::LayerActs LlamaModel::layer_acts(int slot) const {
  std::string p = "slot" + std::to_string(slot) + ".";
  return {acts_.get(p + "ln1"), acts_.get(p + "ln1_rstd"), acts_.get(p + "q"),
          acts_.get(p + "k"),   acts_.get(p + "v"),        acts_.get(p + "att"),
          acts_.get(p + "lse"), acts_.get(p + "mid"),      acts_.get(p + "ln2"),
          acts_.get(p + "ln2_rstd"), acts_.get(p + "gate"), acts_.get(p + "up")};
}

void LlamaModel::build_positions(const RowPositions& pos, int T) {
  int64_t total = 0;
  for (auto& c : pos.chunks) total += c.second;
  RT_CHECK(total == T, "RowPositions chunks must cover the T local rows");
  bool same = pos.global_len == pos_.global_len && pos.chunks == pos_.chunks;
  pos_ = pos;
  if (cfg_.position != "rope" || (same && rope_cos_)) return;
  const int half = cfg_.head_dim / 2;
  std::vector<float> cos, sin;
  cos.reserve(size_t(T) * half);
  sin.reserve(size_t(T) * half);
  for (auto& [begin, len] : pos.chunks) {
    RopeTables t = make_rope_tables(cfg_, pos.global_len, begin, len);
    cos.insert(cos.end(), t.cos.begin(), t.cos.end());
    sin.insert(sin.end(), t.sin.begin(), t.sin.end());
  }
  if (cos.size() > rope_capacity_) {
    be_.free_bytes(rope_cos_);
    be_.free_bytes(rope_sin_);
    rope_cos_ = static_cast<float*>(be_.alloc_bytes(cos.size() * sizeof(float)));
    rope_sin_ = static_cast<float*>(be_.alloc_bytes(sin.size() * sizeof(float)));
    rope_capacity_ = cos.size();
  }
  be_.copy_to_device(rope_cos_, cos.data(), cos.size() * sizeof(float));
  be_.copy_to_device(rope_sin_, sin.data(), sin.size() * sizeof(float));
}

static const float* P(const Arena& a, const std::string& n) { return a.get(n); }

void LlamaModel::layer_forward(int l, LayerActs& a, const float* x_in, float* x_mid,
                               float* x_out) {
  const int N = B_ * T_, d = cfg_.hidden_size, f = cfg_.intermediate_size;
  const int H = cfg_.num_attention_heads, G = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  const float eps = float(cfg_.rms_norm_eps);

  // attention block: x_mid = x_in + o_proj(attn(rope(q), rope(k), v))
  be_.rmsnorm_forward(a.ln1, a.ln1_rstd, x_in, P(params_, p + "input_layernorm.weight"), N, d, eps);
  be_.matmul_forward(a.q, a.ln1, P(params_, p + "self_attn.q_proj.weight"), N, d, H * hd);
  be_.matmul_forward(a.k, a.ln1, P(params_, p + "self_attn.k_proj.weight"), N, d, G * hd);
  be_.matmul_forward(a.v, a.ln1, P(params_, p + "self_attn.v_proj.weight"), N, d, G * hd);
  if (cfg_.position == "rope") {
    be_.rope_forward(a.q, rope_cos_, rope_sin_, B_, T_, H, hd);
    be_.rope_forward(a.k, rope_cos_, rope_sin_, B_, T_, G, hd);
  }
  AttentionParams ap;
  ap.B = B_; ap.Tq = ap.Tk = T_; ap.H = H; ap.G = G; ap.hd = hd;
  ap.causal = true;
  ap.alibi_slopes = alibi_dev_;
  ap.scale = 1.f / std::sqrt(float(hd));
  attention_->forward(be_, ap, pos_, a.att, a.lse, a.q, a.k, a.v);
  be_.copy(x_mid, x_in, size_t(N) * d);
  be_.matmul_forward(x_mid, a.att, P(params_, p + "self_attn.o_proj.weight"), N, H * hd, d, true);

  // MLP block: x_out = x_mid + down(silu(gate(m)) * up(m))
  be_.rmsnorm_forward(a.ln2, a.ln2_rstd, x_mid, P(params_, p + "post_attention_layernorm.weight"),
                      N, d, eps);
  be_.matmul_forward(a.gate, a.ln2, P(params_, p + "mlp.gate_proj.weight"), N, d, f);
  be_.matmul_forward(a.up, a.ln2, P(params_, p + "mlp.up_proj.weight"), N, d, f);
  float* act = scratch_.get("act");
  be_.swiglu_forward(act, a.gate, a.up, size_t(N) * f);
  be_.copy(x_out, x_mid, size_t(N) * d);
  be_.matmul_forward(x_out, act, P(params_, p + "mlp.down_proj.weight"), N, f, d, true);
}

// dresid: on entry d(loss)/d(x_out); on exit d(loss)/d(x_in).
void LlamaModel::layer_backward(int l, LayerActs& a, const float* x_in, const float* x_mid,
                                float* dresid) {
  const int N = B_ * T_, d = cfg_.hidden_size, f = cfg_.intermediate_size;
  const int H = cfg_.num_attention_heads, G = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  float *dln = scratch_.get("dln"), *datt = scratch_.get("datt"), *dq = scratch_.get("dq"),
        *dk = scratch_.get("dk"), *dv = scratch_.get("dv"), *dgate = scratch_.get("dgate"),
        *dup = scratch_.get("dup"), *act = scratch_.get("act");

  // MLP block
  be_.swiglu_forward(act, a.gate, a.up, size_t(N) * f);  // recomputed, not stored
  float* dact = dgate;  // reuse: dact is consumed before dgate is written
  be_.zero(dact, size_t(N) * f);
  be_.matmul_backward(dact, grads_.get(p + "mlp.down_proj.weight"), dresid, act,
                      P(params_, p + "mlp.down_proj.weight"), N, f, d);
  be_.swiglu_backward(dgate, dup, dact, a.gate, a.up, size_t(N) * f);
  be_.zero(dln, size_t(N) * d);
  be_.matmul_backward(dln, grads_.get(p + "mlp.gate_proj.weight"), dgate, a.ln2,
                      P(params_, p + "mlp.gate_proj.weight"), N, d, f);
  be_.matmul_backward(dln, grads_.get(p + "mlp.up_proj.weight"), dup, a.ln2,
                      P(params_, p + "mlp.up_proj.weight"), N, d, f);
  be_.rmsnorm_backward(dresid, grads_.get(p + "post_attention_layernorm.weight"), dln, x_mid,
                       P(params_, p + "post_attention_layernorm.weight"), a.ln2_rstd, N, d);

  // attention block
  be_.zero(datt, size_t(N) * H * hd);
  be_.matmul_backward(datt, grads_.get(p + "self_attn.o_proj.weight"), dresid, a.att,
                      P(params_, p + "self_attn.o_proj.weight"), N, H * hd, d);
  be_.zero(dq, size_t(N) * H * hd);
  be_.zero(dk, size_t(N) * G * hd);
  be_.zero(dv, size_t(N) * G * hd);
  AttentionParams ap;
  ap.B = B_; ap.Tq = ap.Tk = T_; ap.H = H; ap.G = G; ap.hd = hd;
  ap.causal = true;
  ap.alibi_slopes = alibi_dev_;
  ap.scale = 1.f / std::sqrt(float(hd));
  attention_->backward(be_, ap, pos_, dq, dk, dv, datt, a.q, a.k, a.v, a.att, a.lse);
  if (cfg_.position == "rope") {
    be_.rope_backward(dq, rope_cos_, rope_sin_, B_, T_, H, hd);
    be_.rope_backward(dk, rope_cos_, rope_sin_, B_, T_, G, hd);
  }
  be_.zero(dln, size_t(N) * d);
  be_.matmul_backward(dln, grads_.get(p + "self_attn.q_proj.weight"), dq, a.ln1,
                      P(params_, p + "self_attn.q_proj.weight"), N, d, H * hd);
  be_.matmul_backward(dln, grads_.get(p + "self_attn.k_proj.weight"), dk, a.ln1,
                      P(params_, p + "self_attn.k_proj.weight"), N, d, G * hd);
  be_.matmul_backward(dln, grads_.get(p + "self_attn.v_proj.weight"), dv, a.ln1,
                      P(params_, p + "self_attn.v_proj.weight"), N, d, G * hd);
  be_.rmsnorm_backward(dresid, grads_.get(p + "input_layernorm.weight"), dln, x_in,
                       P(params_, p + "input_layernorm.weight"), a.ln1_rstd, N, d);
}

void LlamaModel::prepare_batch(int B, int T, const RowPositions& pos, const int32_t* targets,
                               int64_t* n_valid) {
  plan_activations(B, T, checkpointing_);
  B_ = B;
  T_ = T;
  const int N = B * T, V = cfg_.vocab_size;
  build_positions(pos, T);
  ensure_token_capacity(N);
  be_.copy_to_device(targets_dev_, targets, sizeof(int32_t) * N);
  int64_t valid = 0;
  for (int i = 0; i < N; ++i) {
    RT_CHECK(targets[i] < V, "target token out of range");
    valid += targets[i] >= 0;
  }
  if (n_valid) *n_valid = valid;
}

double LlamaModel::forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T,
                                    const RowPositions& pos, float dloss_scale,
                                    int64_t* n_valid) {
  prepare_batch(B, T, pos, targets, n_valid);
  const int N = B * T, d = cfg_.hidden_size;
  for (int i = 0; i < N; ++i)
    RT_CHECK(inputs[i] >= 0 && inputs[i] < cfg_.vocab_size, "input token out of range");
  be_.copy_to_device(tokens_dev_, inputs, sizeof(int32_t) * N);
  be_.embedding_forward(acts_.get("x.0"), tokens_dev_, P(params_, "model.embed_tokens.weight"), N,
                        d);
  const double loss_sum = run_layers_and_head(dloss_scale, nullptr);
  if (dloss_scale != 0.f)
    be_.embedding_backward(grads_.get("model.embed_tokens.weight"), scratch_.get("dresid"),
                           tokens_dev_, N, d);
  return loss_sum;
}

double LlamaModel::forward_backward_embeddings(const float* x0, const int32_t* targets, int B,
                                               int T, const RowPositions& pos, float dloss_scale,
                                               int64_t* n_valid, const float* dfinal_extra,
                                               float* dx0) {
  prepare_batch(B, T, pos, targets, n_valid);
  const size_t n = size_t(B) * T * cfg_.hidden_size;
  be_.copy(acts_.get("x.0"), x0, n);
  const double loss_sum = run_layers_and_head(dloss_scale, dfinal_extra);
  if (dloss_scale != 0.f && dx0) be_.copy(dx0, scratch_.get("dresid"), n);
  return loss_sum;
}

const float* LlamaModel::final_residual() const {
  return acts_.get("x." + std::to_string(cfg_.num_hidden_layers));
}

void LlamaModel::embed_tokens(const int32_t* tokens, int n, float* out) {
  ensure_token_capacity(n);
  be_.copy_to_device(tokens_dev_, tokens, sizeof(int32_t) * n);
  be_.embedding_forward(out, tokens_dev_, P(params_, "model.embed_tokens.weight"), n,
                        cfg_.hidden_size);
}

void LlamaModel::embed_tokens_backward(const int32_t* tokens, int n, const float* dout) {
  ensure_token_capacity(n);
  be_.copy_to_device(tokens_dev_, tokens, sizeof(int32_t) * n);
  be_.embedding_backward(grads_.get("model.embed_tokens.weight"), dout, tokens_dev_, n,
                         cfg_.hidden_size);
}

void LlamaModel::ensure_token_capacity(int n) {
  if (size_t(n) <= token_capacity_) return;
  be_.free_bytes(tokens_dev_);
  be_.free_bytes(targets_dev_);
  tokens_dev_ = static_cast<int32_t*>(be_.alloc_bytes(sizeof(int32_t) * n));
  targets_dev_ = static_cast<int32_t*>(be_.alloc_bytes(sizeof(int32_t) * n));
  token_capacity_ = n;
}

// x.0 holds the input embeddings of the prepared batch. Runs the layers, the
// head and the loss; with dloss_scale != 0 also the backward, leaving
// d(loss)/d(x.0) in scratch "dresid". dfinal_extra (N,d) or null: a gradient
// arriving at the last layer's output from outside the loss (RMT memory).
double LlamaModel::run_layers_and_head(float dloss_scale, const float* dfinal_extra) {
  const int N = B_ * T_, d = cfg_.hidden_size, V = cfg_.vocab_size, L = cfg_.num_hidden_layers;
  const bool backward = dloss_scale != 0.f || dfinal_extra;
  auto x = [&](int l) { return acts_.get("x." + std::to_string(l)); };
  for (int l = 0; l < L; ++l) {
    LayerActs a = layer_acts(checkpointing_ ? 0 : l);
    layer_forward(l, a, x(l), a.mid, x(l + 1));
  }
  float* lnf = acts_.get("lnf");
  float* logits = acts_.get("logits");
  float* losses = acts_.get("losses");
  const float* w_head = cfg_.tie_word_embeddings ? P(params_, "model.embed_tokens.weight")
                                                 : P(params_, "lm_head.weight");
  be_.rmsnorm_forward(lnf, acts_.get("lnf_rstd"), x(L), P(params_, "model.norm.weight"), N, d,
                      float(cfg_.rms_norm_eps));
  be_.matmul_forward(logits, lnf, w_head, N, d, V);
  be_.cross_entropy_forward_backward(logits, losses, targets_dev_, N, V, dloss_scale);
  std::vector<float> host_losses(N);
  be_.copy_to_host(host_losses.data(), losses, sizeof(float) * N);
  double loss_sum = 0.0;
  for (float v : host_losses) loss_sum += v;
  if (!backward) return loss_sum;

  // backward: logits now hold dlogits (zero when dloss_scale is 0)
  float* dresid = scratch_.get("dresid");
  float* dln = scratch_.get("dln");
  float* dw_head = cfg_.tie_word_embeddings ? grads_.get("model.embed_tokens.weight")
                                            : grads_.get("lm_head.weight");
  be_.zero(dln, size_t(N) * d);
  be_.matmul_backward(dln, dw_head, logits, lnf, w_head, N, d, V);
  be_.zero(dresid, size_t(N) * d);
  be_.rmsnorm_backward(dresid, grads_.get("model.norm.weight"), dln, x(L),
                       P(params_, "model.norm.weight"), acts_.get("lnf_rstd"), N, d);
  if (dfinal_extra) be_.add_inplace(dresid, dfinal_extra, size_t(N) * d);
  for (int l = L - 1; l >= 0; --l) {
    LayerActs a = layer_acts(checkpointing_ ? 0 : l);
    if (checkpointing_) layer_forward(l, a, x(l), a.mid, scratch_.get("xtmp"));
    layer_backward(l, a, x(l), a.mid, dresid);
  }
  return loss_sum;
}

std::vector<float> LlamaModel::logits_to_host(int64_t row_begin, int64_t rows) {
  const int64_t V = cfg_.vocab_size;
  std::vector<float> out(size_t(rows * V));
  be_.copy_to_host(out.data(), acts_.get("logits") + row_begin * V, out.size() * sizeof(float));
  return out;
}

std::vector<float> LlamaModel::losses_to_host(int64_t row_begin, int64_t rows) {
  std::vector<float> out(static_cast<size_t>(rows));
  be_.copy_to_host(out.data(), acts_.get("losses") + row_begin, out.size() * sizeof(float));
  return out;
}

const float* LlamaModel::logits_device() const { return acts_.get("logits"); }

}  // namespace rt
