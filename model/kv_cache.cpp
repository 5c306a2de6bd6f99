#include "model/kv_cache.h"

#include <cmath>
#include <string>

#include "common/errors.h"
#include "model/alibi.h"
#include "model/rope.h"

namespace rt {

KvCacheDecoder::KvCacheDecoder(LlamaModel& model, int capacity)
    : model_(model), be_(model.backend()), capacity_(capacity) {
  RT_CHECK(capacity >= 1, "KV cache capacity must be >= 1");
  const ModelConfig& c = model_.config();
  const int64_t kvd = int64_t(c.num_key_value_heads) * c.head_dim;
  std::vector<TensorSpec> specs;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    specs.push_back({"k." + std::to_string(l), {capacity, kvd}});
    specs.push_back({"v." + std::to_string(l), {capacity, kvd}});
  }
  cache_ = Arena(be_, "kv cache", std::move(specs));
  if (c.position == "alibi") {
    const std::vector<float> slopes = alibi_slopes(c.num_attention_heads);
    alibi_dev_ = static_cast<float*>(be_.alloc_bytes(slopes.size() * sizeof(float)));
    be_.copy_to_device(alibi_dev_, slopes.data(), slopes.size() * sizeof(float));
  }
}

KvCacheDecoder::~KvCacheDecoder() {
  be_.free_bytes(tokens_dev_);
  be_.free_bytes(alibi_dev_);
  be_.free_bytes(rope_cos_);
  be_.free_bytes(rope_sin_);
}

void KvCacheDecoder::plan_work(int n) {
  if (n <= work_rows_) return;
  const ModelConfig& c = model_.config();
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t qd = int64_t(c.num_attention_heads) * c.head_dim;
  work_ = Arena(be_, "decode activations",
                {{"x", {n, d}},
                 {"mid", {n, d}},
                 {"ln", {n, d}},
                 {"rstd", {n}},
                 {"q", {n, qd}},
                 {"att", {n, qd}},
                 {"lse", {int64_t(c.num_attention_heads) * n}},
                 {"gate", {n, f}},
                 {"up", {n, f}},
                 {"act", {n, f}},
                 {"logits", {c.vocab_size}}});
  be_.free_bytes(tokens_dev_);
  be_.free_bytes(rope_cos_);
  be_.free_bytes(rope_sin_);
  tokens_dev_ = static_cast<int32_t*>(be_.alloc_bytes(sizeof(int32_t) * size_t(n)));
  const size_t half = size_t(c.head_dim / 2);
  rope_cos_ = static_cast<float*>(be_.alloc_bytes(sizeof(float) * size_t(n) * half));
  rope_sin_ = static_cast<float*>(be_.alloc_bytes(sizeof(float) * size_t(n) * half));
  work_rows_ = n;
}

std::vector<float> KvCacheDecoder::append(const int32_t* tokens, int n) {
  const ModelConfig& c = model_.config();
  if (n < 1) throw UsageError("generate: nothing to decode (empty prompt)");
  if (length_ + n > capacity_)
    throw UsageError("generate: " + std::to_string(length_ + n) +
                     " positions exceed the KV cache capacity " + std::to_string(capacity_));
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      throw UsageError("generate: token " + std::to_string(tokens[i]) +
                       " is outside the model's vocabulary (vocab_size " +
                       std::to_string(c.vocab_size) + ")");
  plan_work(n);
  const int d = c.hidden_size, f = c.intermediate_size, V = c.vocab_size;
  const int H = c.num_attention_heads, G = c.num_key_value_heads, hd = c.head_dim;
  const float eps = float(c.rms_norm_eps);
  const Arena& P = model_.params();
  float *x = work_.get("x"), *mid = work_.get("mid"), *ln = work_.get("ln"),
        *rstd = work_.get("rstd"), *q = work_.get("q"), *att = work_.get("att"),
        *lse = work_.get("lse"), *gate = work_.get("gate"), *up = work_.get("up"),
        *act = work_.get("act"), *logits = work_.get("logits");

  be_.copy_to_device(tokens_dev_, tokens, sizeof(int32_t) * size_t(n));
  be_.embedding_forward(x, tokens_dev_, P.get("model.embed_tokens.weight"), n, d);
  if (c.position == "rope") {
    // dynamic/longrope tables depend on the sequence length: the length so far
    const RopeTables t = make_rope_tables(c, length_ + n, length_, n);
    be_.copy_to_device(rope_cos_, t.cos.data(), t.cos.size() * sizeof(float));
    be_.copy_to_device(rope_sin_, t.sin.data(), t.sin.size() * sizeof(float));
  }
  AttentionParams ap;
  ap.B = 1;
  ap.Tq = n;
  ap.Tk = length_ + n;
  ap.H = H;
  ap.G = G;
  ap.hd = hd;
  ap.q_offset = length_;
  ap.k_offset = 0;
  ap.causal = true;
  ap.alibi_slopes = alibi_dev_;
  ap.scale = 1.f / std::sqrt(float(hd));

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    float* kc = cache_.get("k." + std::to_string(l));
    float* vc = cache_.get("v." + std::to_string(l));
    float* k_new = kc + size_t(length_) * G * hd;  // this call's rows of the cache
    float* v_new = vc + size_t(length_) * G * hd;
    be_.rmsnorm_forward(ln, rstd, x, P.get(p + "input_layernorm.weight"), n, d, eps);
    be_.matmul_forward(q, ln, P.get(p + "self_attn.q_proj.weight"), n, d, H * hd);
    be_.matmul_forward(k_new, ln, P.get(p + "self_attn.k_proj.weight"), n, d, G * hd);
    be_.matmul_forward(v_new, ln, P.get(p + "self_attn.v_proj.weight"), n, d, G * hd);
    if (c.position == "rope") {
      be_.rope_forward(q, rope_cos_, rope_sin_, 1, n, H, hd);
      be_.rope_forward(k_new, rope_cos_, rope_sin_, 1, n, G, hd);
    }
    be_.attention_forward(ap, att, lse, q, kc, vc);
    be_.copy(mid, x, size_t(n) * d);
    be_.matmul_forward(mid, att, P.get(p + "self_attn.o_proj.weight"), n, H * hd, d, true);
    be_.rmsnorm_forward(ln, rstd, mid, P.get(p + "post_attention_layernorm.weight"), n, d, eps);
    be_.matmul_forward(gate, ln, P.get(p + "mlp.gate_proj.weight"), n, d, f);
    be_.matmul_forward(up, ln, P.get(p + "mlp.up_proj.weight"), n, d, f);
    be_.swiglu_forward(act, gate, up, size_t(n) * f);
    be_.copy(x, mid, size_t(n) * d);
    be_.matmul_forward(x, act, P.get(p + "mlp.down_proj.weight"), n, f, d, true);
  }
  length_ += n;

  // head on the last row only
  const float* last = x + size_t(n - 1) * d;
  const float* w_head = c.tie_word_embeddings ? P.get("model.embed_tokens.weight")
                                              : P.get("lm_head.weight");
  be_.rmsnorm_forward(ln, rstd, last, P.get("model.norm.weight"), 1, d, eps);
  be_.matmul_forward(logits, ln, w_head, 1, d, V);
  std::vector<float> out(static_cast<size_t>(V));
  be_.copy_to_host(out.data(), logits, out.size() * sizeof(float));
  return out;
}

}  // namespace rt
