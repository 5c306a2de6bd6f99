#include "model/decode/kv_cache.h"

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
    specs.push_back({"k." + std::to_string(l), {capacity, kvd}, model.precision().act});
    specs.push_back({"v." + std::to_string(l), {capacity, kvd}, model.precision().act});
  }
  cache_ = Arena(be_, "kv cache", std::move(specs));
  if (c.position == "alibi") {
    const std::vector<float> slopes = alibi_slopes(c.num_attention_heads);
    alibi_dev_ = DeviceBuffer(be_, slopes.size());
    be_.copy_to_device(alibi_dev_.data(), slopes.data(), slopes.size() * sizeof(float));
  }
}

void KvCacheDecoder::plan_work(int n) {
  if (n <= work_rows_) return;
  const ModelConfig& c = model_.config();
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t qd = int64_t(c.num_attention_heads) * c.head_dim;
  const DType act = model_.precision().act, st = DType::kF32;
  work_ = Arena(be_, "decode activations",
                {{"x", {n, d}, act},
                 {"mid", {n, d}, act},
                 {"ln", {n, d}, act},
                 {"rstd", {n}, st},
                 {"q", {n, qd}, act},
                 {"att", {n, qd}, act},
                 {"lse", {int64_t(c.num_attention_heads) * n}, st},
                 {"gate", {n, f}, act},
                 {"up", {n, f}, act},
                 {"act", {n, f}, act},
                 {"logits", {c.vocab_size}, st}});
  tokens_dev_ = DeviceBuffer(be_, size_t(n), DType::kI32);
  const size_t half = size_t(c.head_dim / 2);
  rope_cos_ = DeviceBuffer(be_, size_t(n) * half);
  rope_sin_ = DeviceBuffer(be_, size_t(n) * half);
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
  const int d = c.hidden_size, V = c.vocab_size;
  const int G = c.num_key_value_heads, hd = c.head_dim;
  const float eps = float(c.rms_norm_eps);
  const Arena& P = model_.params();
  const Buf x = work_.buf("x"), mid = work_.buf("mid"), ln = work_.buf("ln"), q = work_.buf("q"),
            att = work_.buf("att"), gate = work_.buf("gate"), up = work_.buf("up"),
            act = work_.buf("act");
  float *rstd = work_.f32("rstd"), *lse = work_.f32("lse"), *logits = work_.f32("logits");
  const float *cos = rope_cos_.f32(), *sin = rope_sin_.f32();

  be_.copy_to_device(tokens_dev_.data(), tokens, sizeof(int32_t) * size_t(n));
  be_.embedding_forward(x, tokens_dev_.as<int32_t>(), P.buf("model.embed_tokens.weight"), n, d);
  if (c.position == "rope") {
    // dynamic/longrope tables depend on the sequence length: the length so far
    const RopeTables t = make_rope_tables(c, length_ + n, length_, n);
    be_.copy_to_device(rope_cos_.data(), t.cos.data(), t.cos.size() * sizeof(float));
    be_.copy_to_device(rope_sin_.data(), t.sin.data(), t.sin.size() * sizeof(float));
  }
  const AttentionParams ap = model_attention_params(c, 1, n, length_ + n, length_, 0,
                                                    alibi_dev_ ? alibi_dev_.f32() : nullptr);

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const Buf kc = cache_.buf("k." + std::to_string(l));
    const Buf vc = cache_.buf("v." + std::to_string(l));
    // the new keys and values go straight into this call's rows of the cache;
    // the queries attend over the whole cache
    const LayerForwardBufs bufs{ln,  q,    at(kc, size_t(length_) * G * hd),
                                at(vc, size_t(length_) * G * hd),
                                att, ln,   gate, up, act, rstd, lse, rstd};
    decoder_layer_forward(be_, c, model_.layer_weights(l), bufs, 1, n, cos, sin, x, mid, x,
                          [&](Buf a_out, float* a_lse, CBuf a_q, CBuf, CBuf) {
                            be_.attention_forward(ap, a_out, a_lse, a_q, kc, vc);
                          });
  }
  length_ += n;

  // head on the last row only (fp32 logits)
  const CBuf last = at(CBuf(x), size_t(n - 1) * d);
  const Buf w_head = c.tie_word_embeddings ? P.buf("model.embed_tokens.weight")
                                           : P.buf("lm_head.weight");
  be_.rmsnorm_forward(ln, rstd, last, P.buf("model.norm.weight"), 1, d, eps);
  be_.matmul_forward(logits, ln, w_head, 1, d, V);
  std::vector<float> out(static_cast<size_t>(V));
  be_.copy_to_host(out.data(), logits, out.size() * sizeof(float));
  return out;
}

}  // namespace rt
