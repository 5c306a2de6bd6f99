// External vector memory (Memorizing Transformers, Wu et al. 2022;
// docs/memory.md "knn"): each memory layer mixes its local attention over
// the segment with attention over the top_k stored rows nearest to each
// query, by a learned per-head gate. The stores (model/memory/knn_store.h)
// live on the host; retrieval and the memory attention run there in fp32,
// the local attention on the backend.
#include <algorithm>
#include <cmath>
#include <string>

#include "common/errors.h"
#include "model/llama.h"
#include "model/memory/knn_store.h"
#include "model/memory/layer_memory.h"
#include "model/memory/memory_util.h"

namespace rt {

namespace {

// What one forward of a memory layer keeps for its backward and commit.
struct Saved {
  int B = 0, T = 0, n = 0;            // n: rows retrieved per query (min(top_k, size))
  DeviceBuffer loc;                   // (B,T,H,hd) local attention output (act)
  std::vector<float> q_pre, k_pre, v_pre;  // pre-position q (B,T,H*hd), k, v (B,T,kvd)
  std::vector<float> mem, loc_host;   // (B,T,H*hd) memory and local outputs, fp32
  std::vector<int32_t> idx;           // (B,T,H,n) retrieved rows
  std::vector<float> p;               // (B,T,H,n) their softmax weights
  std::vector<int> nb;                // per batch row: rows retrieved (<= n)
  std::vector<float> gate;            // (H) sigmoid(memory_gate)
};

class KnnMemory final : public LayerMemory {
 public:
  explicit KnnMemory(LlamaModel& model) : model_(model), be_(model.backend()) {
    const ModelConfig& c = model.config();
    const MemoryConfig& m = *c.memory;
    layers_ = m.layers;
    top_k_ = m.top_k;
    capacity_ = m.memory_size;
    index_ = m.index;
    H_ = c.num_attention_heads;
    G_ = c.num_key_value_heads;
    hd_ = c.head_dim;
    kvd_ = G_ * hd_;
    RT_CHECK(!layers_.empty(), "knn memory needs model.memory.layers");
    saved_.resize(layers_.size());
  }

  const char* kind() const override { return "knn"; }
  bool handles(int layer) const override { return memory_layer_slot(layers_, layer) >= 0; }

  void forward(int layer, const LayerMemoryCall& c, Buf att, float* lse, Buf q, Buf k,
               CBuf v) override {
    const int li = memory_layer_slot(layers_, layer);
    const ModelConfig& cfg = model_.config();
    const int B = c.B, T = c.T, H = H_, hd = hd_, kvd = kvd_, per = H_ / G_;
    const size_t nq = size_t(B) * T * H * hd;
    Saved& s = saved_[size_t(li)];
    s.B = B;
    s.T = T;
    s.q_pre = to_host_f32(be_, q, nq);
    s.k_pre = to_host_f32(be_, k, size_t(B) * T * kvd);
    s.v_pre = to_host_f32(be_, v, size_t(B) * T * kvd);
    // local attention over the segment (the ordinary positions 0..T-1)
    if (cfg.position == "rope") {
      be_.rope_forward(q, c.rope_cos, c.rope_sin, B, T, H, hd);
      be_.rope_forward(k, c.rope_cos, c.rope_sin, B, T, G_, hd);
    }
    if (s.loc.size() < nq || s.loc.dtype() != att.t) s.loc = DeviceBuffer(be_, nq, att.t);
    const AttentionParams p = model_attention_params(cfg, B, T, T, 0, 0, model_.alibi_device());
    be_.attention_forward(p, s.loc.buf(), lse, q, k, v);
    s.loc_host = to_host_f32(be_, s.loc.buf(), nq);
    // retrieval and memory attention (host, fp32)
    KnnStore& st = *stores_[size_t(li)];
    int n = 0;
    s.nb.assign(size_t(B), 0);
    for (int b = 0; b < B; ++b) {
      s.nb[size_t(b)] = int(std::min<int64_t>(top_k_, st.size(b)));
      n = std::max(n, s.nb[size_t(b)]);
    }
    s.n = n;
    s.idx.assign(size_t(B) * T * H * std::max(n, 1), 0);
    s.p.assign(size_t(B) * T * H * std::max(n, 1), 0.f);
    s.mem.assign(nq, 0.f);
    const float scale = 1.f / std::sqrt(float(hd));
    std::vector<float> score(size_t(T) * std::max(n, 1));
    std::vector<int32_t> ix(size_t(T) * std::max(n, 1));
    for (int b = 0; b < B; ++b) {
      const int nb = s.nb[size_t(b)];
      if (nb == 0) continue;
      for (int h = 0; h < H; ++h) {
        const int g = h / per;
        // head h of row b's T queries: stride H*hd in q_pre (B,T,H,hd)
        st.search(b, g, s.q_pre.data() + (size_t(b) * T * H + h) * hd, T, nb, ix.data(),
                  score.data(), int64_t(H) * hd);
        for (int t = 0; t < T; ++t) {
          const size_t row = (size_t(b) * T + t) * H + h;
          int32_t* id = s.idx.data() + row * n;
          float* pr = s.p.data() + row * n;
          float mx = -INFINITY;
          for (int j = 0; j < nb; ++j) {
            id[j] = ix[size_t(t) * nb + j];
            pr[j] = scale * score[size_t(t) * nb + j];
            mx = std::max(mx, pr[j]);
          }
          double z = 0;
          for (int j = 0; j < nb; ++j) z += (pr[j] = std::exp(pr[j] - mx));
          float* mo = s.mem.data() + row * hd;
          for (int j = 0; j < nb; ++j) {
            pr[j] = float(pr[j] / z);
            const float* vj = st.value(b, g, id[j]);
            for (int i = 0; i < hd; ++i) mo[i] += pr[j] * vj[i];
          }
        }
      }
    }
    // att = a*mem + (1-a)*loc, a = sigmoid(gate[h])
    const std::vector<float> g = to_host_f32(be_, model_.params().buf(gate_name(layer)), size_t(H));
    s.gate.resize(size_t(H));
    for (int h = 0; h < H; ++h) s.gate[size_t(h)] = 1.f / (1.f + std::exp(-g[size_t(h)]));
    std::vector<float> out(nq);
    for (size_t r = 0; r < size_t(B) * T; ++r)
      for (int h = 0; h < H; ++h) {
        const float a = s.gate[size_t(h)];
        const size_t o = (r * H + h) * hd;
        for (int i = 0; i < hd; ++i)
          out[o + i] = a * s.mem[o + i] + (1.f - a) * s.loc_host[o + i];
      }
    upload_f32(be_, att, out.data(), nq);
  }

  void backward(int layer, const LayerMemoryCall& c, Buf dq, Buf dk, Buf dv, CBuf datt, CBuf q,
                CBuf k, CBuf v, CBuf, const float* lse) override {
    const int li = memory_layer_slot(layers_, layer);
    const ModelConfig& cfg = model_.config();
    const Saved& s = saved_[size_t(li)];
    const int B = c.B, T = c.T, H = H_, hd = hd_, per = H_ / G_, n = s.n;
    RT_CHECK(s.B == B && s.T == T, "knn backward without its forward");
    const size_t nq = size_t(B) * T * H * hd;
    const std::vector<float> d = to_host_f32(be_, datt, nq);
    // local attention: dloc = (1-a) datt
    std::vector<float> dloc(nq);
    std::vector<double> dgate(size_t(H), 0.0);
    for (size_t r = 0; r < size_t(B) * T; ++r)
      for (int h = 0; h < H; ++h) {
        const float a = s.gate[size_t(h)];
        const size_t o = (r * H + h) * hd;
        double acc = 0;
        for (int i = 0; i < hd; ++i) {
          dloc[o + i] = (1.f - a) * d[o + i];
          acc += double(d[o + i]) * (double(s.mem[o + i]) - s.loc_host[o + i]);
        }
        dgate[size_t(h)] += double(a) * (1.0 - a) * acc;
      }
    if (dloc_.size() < nq) dloc_ = DeviceBuffer(be_, nq, dq.t);
    upload_f32(be_, dloc_.buf(), dloc.data(), nq);
    const AttentionParams p = model_attention_params(cfg, B, T, T, 0, 0, model_.alibi_device());
    be_.attention_backward(p, dq, dk, dv, dloc_.buf(), q, k, v, s.loc.buf(), lse);
    if (cfg.position == "rope") {
      be_.rope_backward(dq, c.rope_cos, c.rope_sin, B, T, H, hd);
      be_.rope_backward(dk, c.rope_cos, c.rope_sin, B, T, G_, hd);
    }
    // memory attention: dq_pre += scale * sum_j p_j (dmem.V_j - dmem.mem) K_j, dmem = a datt
    if (n > 0) {
      const KnnStore& st = *stores_[size_t(li)];
      const float scale = 1.f / std::sqrt(float(hd));
      std::vector<float> dqm(nq, 0.f);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < H; ++h) {
            const int g = h / per, nb = s.nb[size_t(b)];
            const size_t row = (size_t(b) * T + t) * H + h, o = row * hd;
            const float a = s.gate[size_t(h)];
            double dm_mem = 0;
            for (int i = 0; i < hd; ++i) dm_mem += double(a) * d[o + i] * s.mem[o + i];
            for (int j = 0; j < nb; ++j) {
              const int32_t id = s.idx[row * n + j];
              const float* vj = st.value(b, g, id);
              const float* kj = st.key(b, g, id);
              double dv_dot = 0;
              for (int i = 0; i < hd; ++i) dv_dot += double(a) * d[o + i] * vj[i];
              const float w = float(scale * s.p[row * n + j] * (dv_dot - dm_mem));
              for (int i = 0; i < hd; ++i) dqm[o + i] += w * kj[i];
            }
          }
      add_from_host(be_, dq, dqm.data(), nq);
    }
    std::vector<float> dg(dgate.begin(), dgate.end());
    add_from_host(be_, model_.grads().buf(gate_name(layer)), dg.data(), dg.size());
  }

  void begin_sequence(int B) override {
    if (B == B_) {
      for (auto& st : stores_) st->clear_all();
      return;
    }
    stores_.clear();
    for (size_t i = 0; i < layers_.size(); ++i)
      stores_.push_back(std::make_unique<KnnStore>(B, G_, hd_, capacity_, index_));
    B_ = B;
  }

  void drop_before(int b, int64_t pos) override {
    for (auto& st : stores_) st->drop_before(b, pos);
  }

  void commit(int64_t first_pos, float) override {
    for (size_t li = 0; li < layers_.size(); ++li) {
      const Saved& s = saved_[li];
      const size_t rows = size_t(s.T) * kvd_;
      for (int b = 0; b < s.B; ++b)
        stores_[li]->append(b, s.k_pre.data() + size_t(b) * rows, s.v_pre.data() + size_t(b) * rows,
                            s.T, first_pos);
    }
  }

  size_t store_bytes() const override {
    size_t n = 0;
    for (const auto& st : stores_) n += st->bytes();
    return n;
  }

 private:
  static std::string gate_name(int layer) {
    return "model.layers." + std::to_string(layer) + ".self_attn.memory_gate";
  }

  LlamaModel& model_;
  Backend& be_;
  std::vector<int> layers_;
  int top_k_, capacity_, H_, G_, hd_, kvd_;
  int B_ = 0;  // batch rows the stores are made for
  std::string index_;
  std::vector<Saved> saved_;                       // per memory layer
  std::vector<std::unique_ptr<KnnStore>> stores_;  // per memory layer
  DeviceBuffer dloc_;
};

}  // namespace

std::unique_ptr<LayerMemory> make_knn_memory(LlamaModel& model) {
  return std::make_unique<KnnMemory>(model);
}

}  // namespace rt
