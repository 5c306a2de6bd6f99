#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "common/log.h"
#include "common/rng.h"
#include "model/alibi.h"
#include "model/memory/layer_memory.h"
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
  if (c.memory && c.memory->type == "rmt")
    s.push_back({"model.memory.embeddings", {c.memory->num_tokens, d}});
  if (c.memory && c.memory->type == "knn")
    for (int l : c.memory->layers)
      s.push_back({"model.layers." + std::to_string(l) + ".self_attn.memory_gate",
                   {c.num_attention_heads}});
  if (c.memory && c.memory->type == "compressive" && c.memory->compression == "conv")
    for (int l : c.memory->layers)
      for (int lv = 0; lv < c.memory->levels; ++lv)
        for (const char* kv : {"key", "value"})
          s.push_back({"model.layers." + std::to_string(l) + ".self_attn.compress." +
                           std::to_string(lv) + "." + kv + ".weight",
                       {kvd, int64_t(c.memory->rate) * kvd}});
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
  if (ends_with(".self_attn.memory_gate") || name.find(".self_attn.compress.") != std::string::npos)
    return ParamKind::kMemoryLayer;
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
                             Buf out, float* lse, CBuf q, CBuf k, CBuf v) {
  be.attention_forward(whole_sequence(shape, pos), out, lse, q, k, v);
}

void LocalAttention::backward(Backend& be, const AttentionParams& shape,
                              const RowPositions& pos, Buf dq, Buf dk, Buf dv, CBuf dout, CBuf q,
                              CBuf k, CBuf v, CBuf out, const float* lse) {
  be.attention_backward(whole_sequence(shape, pos), dq, dk, dv, dout, q, k, v, out, lse);
}

// ---- model ----------------------------------------------------------------------

LayerTensors layer_tensors(const Arena& a, int l) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  return {a.buf(p + "input_layernorm.weight"),          a.buf(p + "self_attn.q_proj.weight"),
          a.buf(p + "self_attn.k_proj.weight"),         a.buf(p + "self_attn.v_proj.weight"),
          a.buf(p + "self_attn.o_proj.weight"),         a.buf(p + "post_attention_layernorm.weight"),
          a.buf(p + "mlp.gate_proj.weight"),            a.buf(p + "mlp.up_proj.weight"),
          a.buf(p + "mlp.down_proj.weight")};
}

LlamaModel::LlamaModel(const ModelConfig& cfg, Backend& be, const Precision& prec)
    : cfg_(cfg), prec_(prec), be_(be) {
  RT_CHECK(cfg_.head_dim > 0, "head_dim must be resolved by the config parser");
  for (DType t : {prec_.param, prec_.act, prec_.grad})
    RT_CHECK(be_.supports(Op::kMatmulForward, t),
             std::string("backend ") + be_.name() + " has no " + dtype_name(t) + " ops");
  RT_CHECK(prec_.grad == DType::kF32, "gradients are fp32 (SPEC §12)");
  RT_CHECK(prec_.master_weights || prec_.param == DType::kF32,
           "compute weights other than fp32 need fp32 master weights");
  std::vector<TensorSpec> specs = llama_param_specs(cfg_);
  params_ = Arena(be_, "parameters", with_dtype(specs, prec_.param));
  if (prec_.master_weights) master_ = Arena(be_, "master weights", with_dtype(specs, DType::kF32));
  grads_ = Arena(be_, "gradients", with_dtype(specs, prec_.grad));
  grads_.zero();
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    layer_w_.push_back(layer_tensors(params_, l));
    layer_g_.push_back(layer_tensors(grads_, l));
  }
  loss_acc_ = DeviceBuffer(be_, 1, DType::kF64);
  be_.zero(loss_acc_.buf(), 1);
  if (cfg_.position == "alibi") {
    alibi_ = alibi_slopes(cfg_.num_attention_heads);
    alibi_dev_ = DeviceBuffer(be_, alibi_.size());
    be_.copy_to_device(alibi_dev_.data(), alibi_.data(), alibi_.size() * sizeof(float));
  }
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::restore_master() {
  if (!prec_.master_weights || master_.allocated()) return;
  master_ = Arena(be_, "master weights", with_dtype(llama_param_specs(cfg_), DType::kF32));
  master_.zero();
}

void LlamaModel::sync_compute_weights() {
  if (!prec_.master_weights) return;
  for (const TensorSpec& s : master_.specs()) be_.cast(params_.buf(s.name), master_.buf(s), s.numel);
}

void LlamaModel::init_weights(uint64_t seed) {
  Arena& m = master();
  std::vector<float> host(m.f32_numel(), 0.f);
  const std::vector<TensorSpec>& specs = m.specs();
  // Tensors in parallel (each has its own stream, so the values do not
  // depend on the thread count): a 1.1B model's 1.1e9 normal draws take
  // about 38 s on one core of a 2-core CI machine.
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t t = 0; t < specs.size(); ++t) {
    const TensorSpec& s = specs[t];
    float* p = host.data() + s.offset_bytes / sizeof(float);
    if (param_kind(s.name) == ParamKind::kNorm) {
      for (size_t i = 0; i < s.numel; ++i) p[i] = 1.f;
      continue;
    }
    if (param_kind(s.name) == ParamKind::kMemoryLayer) {
      // knn gates start at 0 (sigmoid 1/2); compression weights [kvd, r*kvd]
      // start as mean pooling: r blocks of I/r (docs/memory.md)
      if (s.shape.size() == 2) {
        const int64_t kvd = s.shape[0], r = s.shape[1] / kvd;
        for (int64_t o = 0; o < kvd; ++o)
          for (int64_t j = 0; j < r; ++j) p[o * r * kvd + j * kvd + o] = 1.f / float(r);
      }
      continue;
    }
    // One stream per tensor, keyed by its name: adding a tensor elsewhere
    // does not change this one's values.
    uint64_t h = 1469598103934665603ull;
    for (char ch : s.name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
    Rng rng(mix_seed(seed, h));
    for (size_t i = 0; i < s.numel; ++i) p[i] = float(rng.normal() * cfg_.init_std);
  }
  be_.copy_to_device(m.f32_base(), host.data(), host.size() * sizeof(float));
  sync_compute_weights();
}

int64_t logits_chunk_rows(int64_t N, int64_t vocab_size) {
  return std::max<int64_t>(1, std::min<int64_t>(N, kLogitsChunkElems / std::max<int64_t>(1, vocab_size)));
}

const char* checkpointing_name(Checkpointing c) {
  switch (c) {
    case Checkpointing::kOff: return "off";
    case Checkpointing::kFull: return "full";
    case Checkpointing::kSelective: return "selective";
  }
  return "?";
}

ActivationSpecs activation_specs(const ModelConfig& cfg, const Precision& prec, int B, int T,
                                 Checkpointing checkpointing, int64_t logits_rows) {
  const int64_t N = int64_t(B) * T, d = cfg.hidden_size, f = cfg.intermediate_size,
                V = cfg.vocab_size;
  const int64_t qd = int64_t(cfg.num_attention_heads) * cfg.head_dim;
  const int64_t kvd = int64_t(cfg.num_key_value_heads) * cfg.head_dim;
  const int64_t lse = int64_t(B) * cfg.num_attention_heads * T;
  const int L = cfg.num_hidden_layers;
  const int slots = checkpointing == Checkpointing::kOff ? L : 1;
  // selective: every layer's att and lse outlive the forward, the slot has none
  const bool att_per_layer = checkpointing == Checkpointing::kSelective;
  const DType act = prec.act, st = DType::kF32, gr = prec.grad;  // st: statistics

  std::vector<TensorSpec> a;
  for (int l = 0; l <= L; ++l) a.push_back({"x." + std::to_string(l), {N, d}, act});
  for (int l = 0; att_per_layer && l < L; ++l) {
    a.push_back({"att." + std::to_string(l), {N, qd}, act});
    a.push_back({"lse." + std::to_string(l), {lse}, st});
  }
  for (int s = 0; s < slots; ++s) {
    std::string p = "slot" + std::to_string(s) + ".";
    a.push_back({p + "ln1", {N, d}, act});
    a.push_back({p + "ln1_rstd", {N}, st});
    a.push_back({p + "q", {N, qd}, act});
    a.push_back({p + "k", {N, kvd}, act});
    a.push_back({p + "v", {N, kvd}, act});
    if (!att_per_layer) {
      a.push_back({p + "att", {N, qd}, act});
      a.push_back({p + "lse", {lse}, st});
    }
    a.push_back({p + "mid", {N, d}, act});
    a.push_back({p + "ln2", {N, d}, act});
    a.push_back({p + "ln2_rstd", {N}, st});
    a.push_back({p + "gate", {N, f}, act});
    a.push_back({p + "up", {N, f}, act});
  }
  a.push_back({"lnf", {N, d}, act});
  a.push_back({"lnf_rstd", {N}, st});
  const int64_t lr = logits_rows > 0 ? std::min(N, logits_rows) : logits_chunk_rows(N, V);
  a.push_back({"logits", {lr, V}, act});
  a.push_back({"losses", {N}, st});

  // Backward temporaries, one set shared by all layers: activation
  // gradients in the gradient dtype; "act" (the recomputed SwiGLU output)
  // and "xtmp" (a recomputed layer output) are activations.
  std::vector<TensorSpec> s = {
      {"dresid", {N, d}, gr}, {"dln", {N, d}, gr},     {"datt", {N, qd}, gr},
      {"dq", {N, qd}, gr},    {"dk", {N, kvd}, gr},    {"dv", {N, kvd}, gr},
      {"dgate", {N, f}, gr},  {"dup", {N, f}, gr},     {"act", {N, f}, act},
      {"xtmp", {N, d}, act},
  };
  return {std::move(a), std::move(s)};
}

void LlamaModel::plan_activations(int B, int T, Checkpointing checkpointing) {
  if (B * int64_t(T) <= int64_t(planned_B_) * planned_T_ && checkpointing == checkpointing_ &&
      acts_.allocated())
    return;
  const int L = cfg_.num_hidden_layers;
  ActivationSpecs specs = activation_specs(cfg_, prec_, B, T, checkpointing, logits_rows_wanted_);
  acts_ = Arena(be_, "activations", std::move(specs.acts));
  scratch_ = Arena(be_, "backward scratch", std::move(specs.scratch));
  planned_B_ = B;
  planned_T_ = T;
  checkpointing_ = checkpointing;

  x_.clear();
  for (int l = 0; l <= L; ++l) x_.push_back(acts_.buf("x." + std::to_string(l)));
  layer_acts_.clear();
  // selective: each layer's own att.l and lse.l (activation_specs)
  const bool own = checkpointing == Checkpointing::kSelective;
  for (int l = 0; l < L; ++l) {
    const std::string p =
        "slot" + std::to_string(checkpointing == Checkpointing::kOff ? l : 0) + ".";
    const std::string att = own ? "att." + std::to_string(l) : p + "att";
    const std::string lse = own ? "lse." + std::to_string(l) : p + "lse";
    layer_acts_.push_back({acts_.buf(p + "ln1"), acts_.buf(p + "q"), acts_.buf(p + "k"),
                           acts_.buf(p + "v"), acts_.buf(att), acts_.buf(p + "mid"),
                           acts_.buf(p + "ln2"), acts_.buf(p + "gate"), acts_.buf(p + "up"),
                           acts_.f32(p + "ln1_rstd"), acts_.f32(lse), acts_.f32(p + "ln2_rstd")});
  }
  lnf_ = acts_.buf("lnf");
  lnf_rstd_ = acts_.f32("lnf_rstd");
  logits_ = acts_.buf("logits");
  logits_rows_ = acts_.spec("logits").shape[0];
  losses_ = acts_.f32("losses");
  s_ = {scratch_.buf("dresid"), scratch_.buf("dln"), scratch_.buf("datt"), scratch_.buf("dq"),
        scratch_.buf("dk"),     scratch_.buf("dv"),  scratch_.buf("dgate"), scratch_.buf("dup"),
        scratch_.buf("act"),    scratch_.buf("xtmp")};
  log_info("memory: activations %s + backward scratch %s (micro-batch %d x %d tokens%s)",
           acts_.describe().c_str(), scratch_.describe().c_str(), B, T,
           checkpointing == Checkpointing::kFull        ? ", activation checkpointing"
           : checkpointing == Checkpointing::kSelective ? ", selective activation checkpointing "
                                                          "(attention outputs kept)"
                                                        : "");
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
  if (cos.size() > rope_cos_.size()) {
    rope_cos_ = DeviceBuffer(be_, cos.size());
    rope_sin_ = DeviceBuffer(be_, sin.size());
  }
  be_.copy_to_device(rope_cos_.data(), cos.data(), cos.size() * sizeof(float));
  be_.copy_to_device(rope_sin_.data(), sin.data(), sin.size() * sizeof(float));
}

AttentionParams model_attention_params(const ModelConfig& cfg, int B, int Tq, int Tk,
                                       int64_t q_offset, int64_t k_offset,
                                       const float* alibi_slopes) {
  AttentionParams ap;
  ap.B = B;
  ap.Tq = Tq;
  ap.Tk = Tk;
  ap.H = cfg.num_attention_heads;
  ap.G = cfg.num_key_value_heads;
  ap.hd = cfg.head_dim;
  ap.q_offset = q_offset;
  ap.k_offset = k_offset;
  ap.causal = true;
  ap.alibi_slopes = alibi_slopes;
  ap.scale = 1.f / std::sqrt(float(cfg.head_dim));
  return ap;
}

// The whole local sequence; SequenceAttention places it by RowPositions.
AttentionParams LlamaModel::attention_params() const {
  return model_attention_params(cfg_, B_, T_, T_, 0, 0, alibi_device());
}

void decoder_layer_forward(Backend& be, const ModelConfig& cfg, const LayerTensors& w,
                           const LayerForwardBufs& a, int B, int T, const float* rope_cos,
                           const float* rope_sin, CBuf x_in, Buf x_mid, Buf x_out,
                           const LayerAttention& attend) {
  const int N = B * T, d = cfg.hidden_size, f = cfg.intermediate_size;
  const int H = cfg.num_attention_heads, G = cfg.num_key_value_heads, hd = cfg.head_dim;
  const float eps = float(cfg.rms_norm_eps);

  // attention block: x_mid = x_in + o_proj(attn(rope(q), rope(k), v))
  be.rmsnorm_forward(a.ln1, a.ln1_rstd, x_in, w.ln1, N, d, eps);
  be.matmul_forward(a.q, a.ln1, w.wq, N, d, H * hd);
  be.matmul_forward(a.k, a.ln1, w.wk, N, d, G * hd);
  be.matmul_forward(a.v, a.ln1, w.wv, N, d, G * hd);
  if (cfg.position == "rope" && rope_cos) {
    be.rope_forward(a.q, rope_cos, rope_sin, B, T, H, hd);
    be.rope_forward(a.k, rope_cos, rope_sin, B, T, G, hd);
  }
  attend(a.att, a.lse, a.q, a.k, a.v);
  be.copy(x_mid, x_in, size_t(N) * d);
  be.matmul_forward(x_mid, a.att, w.wo, N, H * hd, d, true);

  // MLP block: x_out = x_mid + down(silu(gate(m)) * up(m))
  be.rmsnorm_forward(a.ln2, a.ln2_rstd, x_mid, w.ln2, N, d, eps);
  be.matmul_forward(a.gate, a.ln2, w.gate, N, d, f);
  be.matmul_forward(a.up, a.ln2, w.up, N, d, f);
  be.swiglu_forward(a.act, a.gate, a.up, size_t(N) * f);
  be.copy(x_out, x_mid, size_t(N) * d);
  be.matmul_forward(x_out, a.act, w.down, N, f, d, true);
}

void LlamaModel::layer_forward(int l, LayerActs& a, CBuf x_in, Buf x_mid, Buf x_out,
                               bool recompute) {
  const LayerForwardBufs bufs{a.ln1,  a.q,        a.k,   a.v,       a.att, a.ln2,
                              a.gate, a.up,       s_.act, a.ln1_rstd, a.lse, a.ln2_rstd};
  const AttentionParams ap = attention_params();
  if (layer_memory_ && layer_memory_->handles(l)) {  // positions and attention by the memory
    const LayerMemoryCall call{B_, T_, rope_cos(), rope_sin()};
    decoder_layer_forward(be_, cfg_, layer_w_[size_t(l)], bufs, B_, T_, nullptr, nullptr, x_in,
                          x_mid, x_out, [&](Buf att, float* lse, Buf q, Buf k, CBuf v) {
                            layer_memory_->forward(l, call, att, lse, q, k, v);
                          });
    return;
  }
  // selective: a.att and a.lse still hold this layer's attention from the forward
  const bool attention_kept = recompute && checkpointing_ == Checkpointing::kSelective;
  decoder_layer_forward(be_, cfg_, layer_w_[size_t(l)], bufs, B_, T_, rope_cos(), rope_sin(),
                        x_in, x_mid, x_out, [&](Buf att, float* lse, CBuf q, CBuf k, CBuf v) {
                          if (!attention_kept)
                            attention_->forward(be_, ap, pos_, att, lse, q, k, v);
                        });
}

// dresid: on entry d(loss)/d(x_out); on exit d(loss)/d(x_in).
void LlamaModel::layer_backward(int l, LayerActs& a, CBuf x_in, CBuf x_mid, Buf dresid) {
  const int N = B_ * T_, d = cfg_.hidden_size, f = cfg_.intermediate_size;
  const int H = cfg_.num_attention_heads, G = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const LayerTensors& w = layer_w_[size_t(l)];
  const LayerTensors& g = layer_g_[size_t(l)];
  const Scratch& s = s_;

  // MLP block
  be_.swiglu_forward(s.act, a.gate, a.up, size_t(N) * f);  // recomputed, not stored
  Buf dact = s.dgate;  // reuse: dact is consumed before dgate is written
  be_.zero(dact, size_t(N) * f);
  be_.matmul_backward(dact, g.down, dresid, s.act, w.down, N, f, d);
  be_.swiglu_backward(s.dgate, s.dup, dact, a.gate, a.up, size_t(N) * f);
  be_.zero(s.dln, size_t(N) * d);
  be_.matmul_backward(s.dln, g.gate, s.dgate, a.ln2, w.gate, N, d, f);
  be_.matmul_backward(s.dln, g.up, s.dup, a.ln2, w.up, N, d, f);
  be_.rmsnorm_backward(dresid, g.ln2, s.dln, x_mid, w.ln2, a.ln2_rstd, N, d);

  // attention block
  be_.zero(s.datt, size_t(N) * H * hd);
  be_.matmul_backward(s.datt, g.wo, dresid, a.att, w.wo, N, H * hd, d);
  be_.zero(s.dq, size_t(N) * H * hd);
  be_.zero(s.dk, size_t(N) * G * hd);
  be_.zero(s.dv, size_t(N) * G * hd);
  if (layer_memory_ && layer_memory_->handles(l)) {  // gradients before positions
    const LayerMemoryCall call{B_, T_, rope_cos(), rope_sin()};
    layer_memory_->backward(l, call, s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse);
  } else {
    attention_->backward(be_, attention_params(), pos_, s.dq, s.dk, s.dv, s.datt, a.q, a.k,
                         a.v, a.att, a.lse);
    if (cfg_.position == "rope") {
      be_.rope_backward(s.dq, rope_cos_.f32(), rope_sin_.f32(), B_, T_, H, hd);
      be_.rope_backward(s.dk, rope_cos_.f32(), rope_sin_.f32(), B_, T_, G, hd);
    }
  }
  be_.zero(s.dln, size_t(N) * d);
  be_.matmul_backward(s.dln, g.wq, s.dq, a.ln1, w.wq, N, d, H * hd);
  be_.matmul_backward(s.dln, g.wk, s.dk, a.ln1, w.wk, N, d, G * hd);
  be_.matmul_backward(s.dln, g.wv, s.dv, a.ln1, w.wv, N, d, G * hd);
  be_.rmsnorm_backward(dresid, g.ln1, s.dln, x_in, w.ln1, a.ln1_rstd, N, d);
}

void LlamaModel::prepare_batch(int B, int T, const RowPositions& pos, const int32_t* targets,
                               int64_t* n_valid) {
  plan_activations(B, T, checkpointing_);
  B_ = B;
  T_ = T;
  const int N = B * T, V = cfg_.vocab_size;
  build_positions(pos, T);
  ensure_token_capacity(N);
  be_.copy_to_device(targets_dev_.data(), targets, sizeof(int32_t) * N);
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
  be_.copy_to_device(tokens_dev_.data(), inputs, sizeof(int32_t) * N);
  be_.embedding_forward(x_[0], tokens_dev_.as<int32_t>(),
                        params_.buf("model.embed_tokens.weight"), N, d);
  const double loss_sum = run_layers_and_head(dloss_scale, CBuf());
  if (dloss_scale != 0.f) {
    be_.embedding_backward(grads_.buf("model.embed_tokens.weight"), s_.dresid,
                           tokens_dev_.as<int32_t>(), N, d);
    if (grad_ready_) grad_ready_(0);
  }
  return loss_sum;
}

double LlamaModel::forward_backward_embeddings(CBuf x0, const int32_t* targets, int B, int T,
                                               const RowPositions& pos, float dloss_scale,
                                               int64_t* n_valid, CBuf dfinal_extra, Buf dx0) {
  prepare_batch(B, T, pos, targets, n_valid);
  const size_t n = size_t(B) * T * cfg_.hidden_size;
  be_.copy(x_[0], x0, n);
  const double loss_sum = run_layers_and_head(dloss_scale, dfinal_extra);
  if (dloss_scale != 0.f && dx0) be_.copy(dx0, s_.dresid, n);
  return loss_sum;
}

double LlamaModel::take_loss_sum() {
  double sum = 0.0;
  be_.copy_to_host(&sum, loss_acc_.data(), sizeof(double));
  be_.zero(loss_acc_.buf(), 1);
  return sum;
}

CBuf LlamaModel::final_residual() const { return x_[size_t(cfg_.num_hidden_layers)]; }

void LlamaModel::embed_tokens(const int32_t* tokens, int n, Buf out) {
  ensure_token_capacity(n);
  be_.copy_to_device(tokens_dev_.data(), tokens, sizeof(int32_t) * n);
  be_.embedding_forward(out, tokens_dev_.as<int32_t>(), params_.buf("model.embed_tokens.weight"),
                        n, cfg_.hidden_size);
}

void LlamaModel::embed_tokens_backward(const int32_t* tokens, int n, CBuf dout) {
  ensure_token_capacity(n);
  be_.copy_to_device(tokens_dev_.data(), tokens, sizeof(int32_t) * n);
  be_.embedding_backward(grads_.buf("model.embed_tokens.weight"), dout,
                         tokens_dev_.as<int32_t>(), n, cfg_.hidden_size);
}

void LlamaModel::ensure_token_capacity(int n) {
  if (size_t(n) <= tokens_dev_.size()) return;
  tokens_dev_ = DeviceBuffer(be_, size_t(n), DType::kI32);
  targets_dev_ = DeviceBuffer(be_, size_t(n), DType::kI32);
}

// x.0 holds the input embeddings of the prepared batch. Runs the layers, the
// head and the loss; with dloss_scale != 0 also the backward, leaving
// d(loss)/d(x.0) in scratch "dresid". dfinal_extra (N,d) or null: a gradient
// arriving at the last layer's output from outside the loss (RMT memory).
double LlamaModel::run_layers_and_head(float dloss_scale, CBuf dfinal_extra) {
  const int N = B_ * T_, d = cfg_.hidden_size, V = cfg_.vocab_size, L = cfg_.num_hidden_layers;
  const bool backward = dloss_scale != 0.f || dfinal_extra;
  for (int l = 0; l < L; ++l) {
    LayerActs& a = layer_acts_[size_t(l)];
    layer_forward(l, a, x_[size_t(l)], a.mid, x_[size_t(l + 1)], false);
  }
  const Buf w_head = head_weight(params_);
  const Buf w_norm = params_.buf("model.norm.weight");
  be_.rmsnorm_forward(lnf_, lnf_rstd_, x_[size_t(L)], w_norm, N, d, float(cfg_.rms_norm_eps));
  // The head in chunks of rows (one chunk for all but large N x V): logits,
  // loss (and dlogits in place), and the chunk's share of the head backward.
  const Buf dw_head = head_weight(grads_);
  if (backward) be_.zero(s_.dln, size_t(N) * d);
  for (int64_t r0 = 0; r0 < N; r0 += logits_rows_) {
    const int R = int(std::min<int64_t>(logits_rows_, N - r0));
    const CBuf lnf_rows = at(CBuf(lnf_), size_t(r0) * d);
    be_.matmul_forward(logits_, lnf_rows, w_head, R, d, V);
    be_.cross_entropy_forward_backward(logits_, losses_ + r0,
                                       targets_dev_.as<int32_t>() + r0, R, V, dloss_scale);
    if (count_loss_) be_.loss_sum(loss_acc_.as<double>(), losses_ + r0, R);
    // logits now hold dlogits (zero when dloss_scale is 0)
    if (backward)
      be_.matmul_backward(at(s_.dln, size_t(r0) * d), dw_head, logits_, lnf_rows, w_head, R, d,
                          V);
    logits_first_ = r0;
  }
  const double loss_sum = count_loss_ && !defer_loss_ ? take_loss_sum() : 0.0;
  if (!backward) return loss_sum;

  be_.zero(s_.dresid, size_t(N) * d);
  be_.rmsnorm_backward(s_.dresid, grads_.buf("model.norm.weight"), s_.dln, x_[size_t(L)], w_norm,
                       lnf_rstd_, N, d);
  if (dfinal_extra) be_.add_inplace(s_.dresid, dfinal_extra, size_t(N) * d);
  if (grad_ready_) grad_ready_(grads_.spec("model.norm.weight").offset_bytes);
  for (int l = L - 1; l >= 0; --l) {
    LayerActs& a = layer_acts_[size_t(l)];
    if (checkpointing_ != Checkpointing::kOff)
      layer_forward(l, a, x_[size_t(l)], a.mid, s_.xtmp, true);
    layer_backward(l, a, x_[size_t(l)], a.mid, s_.dresid);
    if (grad_ready_)
      grad_ready_(
          grads_.spec("model.layers." + std::to_string(l) + ".input_layernorm.weight").offset_bytes);
  }
  return loss_sum;
}

std::vector<float> LlamaModel::logits_to_host(int64_t row_begin, int64_t rows) {
  const int64_t V = cfg_.vocab_size;
  const size_t n = size_t(rows * V), es = dtype_size(logits_.t);
  // The buffer holds the head's last chunk; other rows are recomputed from
  // the final norm's output (lnf) with the same product.
  Buf src_buf = at(logits_, size_t((row_begin - logits_first_) * V));
  DeviceBuffer recomputed;
  if (row_begin < logits_first_ || row_begin + rows > logits_first_ + logits_rows_) {
    const Buf w_head = head_weight(params_);
    recomputed = DeviceBuffer(be_, n, logits_.t);
    src_buf = recomputed.buf();
    be_.matmul_forward(src_buf, at(CBuf(lnf_), size_t(row_begin) * cfg_.hidden_size), w_head,
                       int(rows), cfg_.hidden_size, int(V));
  }
  std::vector<float> out(n);
  if (logits_.t == DType::kF32) {
    be_.copy_to_host(out.data(), src_buf.p, n * sizeof(float));
    return out;
  }
  RT_CHECK(logits_.t == DType::kBF16, "logits dtype");
  std::vector<uint16_t> raw(n);
  be_.copy_to_host(raw.data(), src_buf.p, n * es);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(raw[i]);
  return out;
}

std::vector<float> LlamaModel::losses_to_host(int64_t row_begin, int64_t rows) {
  std::vector<float> out(static_cast<size_t>(rows));
  be_.copy_to_host(out.data(), losses_ + row_begin, out.size() * sizeof(float));
  return out;
}

}  // namespace rt
