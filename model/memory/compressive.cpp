// Hierarchical compressive memory (Compressive Transformer, Rae et al. 2020;
// docs/memory.md "compressive"): each memory layer attends over
// [compressed levels ; FIFO of full-resolution segments ; the segment] with
// relative positions over the concatenation. The stores live on the host in
// fp32 (pre-position keys and values); a layer's forward uploads its rows
// next to the segment's and runs the ordinary attention kernel once per
// batch row (rows may hold different amounts after document boundaries).
#include <algorithm>
#include <cmath>
#include <deque>
#include <string>

#include "common/errors.h"
#include "model/llama.h"
#include "model/memory/layer_memory.h"
#include "model/memory/memory_util.h"
#include "model/rope.h"

namespace rt {

namespace {

// Rows that arrived together (a FIFO segment or a compressed chunk):
// keys and values (n, kvd) fp32, and the sequence position of the newest row.
struct Unit {
  std::vector<float> k, v;
  int64_t newest = 0;
  int rows(int kvd) const { return int(k.size() / size_t(kvd)); }
};

struct RowStore {
  std::deque<Unit> fifo;                // oldest first
  std::vector<std::deque<Unit>> level;  // level[j] = level j+1, oldest chunk first
  int level_slots(int j, int kvd) const {
    int n = 0;
    for (const Unit& u : level[size_t(j)]) n += u.rows(kvd);
    return n;
  }
  int rows(int kvd) const {
    int n = 0;
    for (const Unit& u : fifo) n += u.rows(kvd);
    for (size_t j = 0; j < level.size(); ++j) n += level_slots(int(j), kvd);
    return n;
  }
};

// What one forward of a memory layer keeps for its backward and commit,
// per batch row.
struct Saved {
  int m = 0;                           // memory rows in front of the segment
  DeviceBuffer kcat, vcat;             // (m+T, G, hd) rotated keys, values (act)
  DeviceBuffer cos, sin;               // (m+T, hd/2) RoPE tables (rope models)
  int rope_len = 0;                    // the m+T they were built for (0: none yet)
  std::vector<float> k_pre, v_pre, q_pre;  // (T, kvd), (T, kvd), (T, H*hd) host fp32
};

class CompressiveMemory final : public LayerMemory {
 public:
  explicit CompressiveMemory(LlamaModel& model) : model_(model), be_(model.backend()) {
    const ModelConfig& c = model.config();
    const MemoryConfig& m = *c.memory;
    layers_ = m.layers;
    S_ = m.segment_length;
    F_ = m.memory_segments;
    r_ = m.rate;
    levels_ = m.levels;
    cap_ = m.compressed_size / m.levels;
    conv_ = m.compression == "conv";
    H_ = c.num_attention_heads;
    G_ = c.num_key_value_heads;
    hd_ = c.head_dim;
    kvd_ = G_ * hd_;
    RT_CHECK(!layers_.empty(), "compressive memory needs model.memory.layers");
    RT_CHECK(S_ % int(std::pow(r_, levels_)) == 0, "segment_length % rate^levels");
    saved_.resize(layers_.size());
    stores_.resize(layers_.size());
    stats_.resize(size_t(levels_));
  }

  const char* kind() const override { return "compressive"; }
  bool handles(int layer) const override { return memory_layer_slot(layers_, layer) >= 0; }

  void forward(int layer, const LayerMemoryCall& c, Buf att, float* lse, Buf q, Buf k,
               CBuf v) override {
    const int li = memory_layer_slot(layers_, layer);
    const ModelConfig& cfg = model_.config();
    const int T = c.T, H = H_, hd = hd_, kvd = kvd_;
    const DType act = q.t;
    std::vector<Saved>& sv = saved_[size_t(li)];
    sv.resize(size_t(c.B));
    for (int b = 0; b < c.B; ++b) {
      Saved& s = sv[size_t(b)];
      const RowStore& st = stores_[size_t(li)][size_t(b)];
      const Buf qb = at(q, size_t(b) * T * H * hd);
      const Buf kb = at(k, size_t(b) * T * kvd);
      const CBuf vb = at(v, size_t(b) * T * kvd);
      s.k_pre = to_host_f32(be_, kb, size_t(T) * kvd);
      s.v_pre = to_host_f32(be_, vb, size_t(T) * kvd);
      s.q_pre = to_host_f32(be_, qb, size_t(T) * H * hd);  // rec loss, detail-loss stats
      // [levels, last first ; FIFO oldest first ; the segment]
      std::vector<float> mk, mv;
      for (int j = levels_ - 1; j >= 0; --j)
        for (const Unit& u : st.level[size_t(j)]) append_unit(u, mk, mv);
      for (const Unit& u : st.fifo) append_unit(u, mk, mv);
      const int m = int(mk.size() / size_t(kvd));
      s.m = m;
      const size_t rows = size_t(m + T) * kvd;
      if (s.kcat.size() < rows || s.kcat.dtype() != act) {
        s.kcat = DeviceBuffer(be_, rows, act);
        s.vcat = DeviceBuffer(be_, rows, act);
      }
      upload_f32(be_, s.kcat.buf(), mk.data(), mk.size());
      upload_f32(be_, s.vcat.buf(), mv.data(), mv.size());
      be_.copy(at(s.kcat.buf(), size_t(m) * kvd), kb, size_t(T) * kvd);
      be_.copy(at(s.vcat.buf(), size_t(m) * kvd), vb, size_t(T) * kvd);
      if (cfg.position == "rope") {
        if (s.rope_len != m + T) {  // the tables depend on the length only
          const RopeTables tab = make_rope_tables(cfg, m + T, 0, m + T);
          if (s.cos.size() < tab.cos.size()) {
            s.cos = DeviceBuffer(be_, tab.cos.size());
            s.sin = DeviceBuffer(be_, tab.sin.size());
          }
          be_.copy_to_device(s.cos.data(), tab.cos.data(), tab.cos.size() * sizeof(float));
          be_.copy_to_device(s.sin.data(), tab.sin.data(), tab.sin.size() * sizeof(float));
          s.rope_len = m + T;
        }
        const size_t half = size_t(hd / 2);
        be_.rope_forward(s.kcat.buf(), s.cos.f32(), s.sin.f32(), 1, m + T, G_, hd);
        be_.rope_forward(qb, s.cos.f32() + size_t(m) * half, s.sin.f32() + size_t(m) * half, 1,
                         T, H, hd);
      }
      const AttentionParams p =
          model_attention_params(cfg, 1, T, m + T, m, 0, model_.alibi_device());
      be_.attention_forward(p, at(att, size_t(b) * T * H * hd), lse + size_t(b) * H * T, qb,
                            s.kcat.buf(), s.vcat.buf());
    }
    last_T_ = T;
    last_B_ = c.B;
  }

  void backward(int layer, const LayerMemoryCall& c, Buf dq, Buf dk, Buf dv, CBuf datt, CBuf q,
                CBuf, CBuf, CBuf att, const float* lse) override {
    const int li = memory_layer_slot(layers_, layer);
    const ModelConfig& cfg = model_.config();
    const int T = c.T, H = H_, hd = hd_, kvd = kvd_;
    for (int b = 0; b < c.B; ++b) {
      Saved& s = saved_[size_t(li)][size_t(b)];
      const int m = s.m;
      const size_t rows = size_t(m + T) * kvd;
      if (dkcat_.size() < rows) {
        dkcat_ = DeviceBuffer(be_, rows, dk.t);
        dvcat_ = DeviceBuffer(be_, rows, dv.t);
      }
      be_.zero(dkcat_.buf(), rows);
      be_.zero(dvcat_.buf(), rows);
      const Buf dqb = at(dq, size_t(b) * T * H * hd);
      const AttentionParams p =
          model_attention_params(cfg, 1, T, m + T, m, 0, model_.alibi_device());
      be_.attention_backward(p, dqb, dkcat_.buf(), dvcat_.buf(), at(datt, size_t(b) * T * H * hd),
                             at(q, size_t(b) * T * H * hd), s.kcat.buf(), s.vcat.buf(),
                             at(att, size_t(b) * T * H * hd), lse + size_t(b) * H * T);
      const Buf dk_seg = at(dkcat_.buf(), size_t(m) * kvd);
      if (cfg.position == "rope") {
        const size_t half = size_t(hd / 2);
        const float* cs = s.cos.f32() + size_t(m) * half;
        const float* sn = s.sin.f32() + size_t(m) * half;
        be_.rope_backward(dqb, cs, sn, 1, T, H, hd);
        be_.rope_backward(dk_seg, cs, sn, 1, T, G_, hd);
      }
      // the memory rows' gradients are dropped (no gradient through the store)
      be_.add_inplace(at(dk, size_t(b) * T * kvd), dk_seg, size_t(T) * kvd);
      be_.add_inplace(at(dv, size_t(b) * T * kvd), at(dvcat_.buf(), size_t(m) * kvd),
                      size_t(T) * kvd);
    }
  }

  void begin_sequence(int B) override {
    for (auto& rows : stores_) {
      rows.assign(size_t(B), RowStore{});
      for (RowStore& r : rows) r.level.resize(size_t(levels_));
    }
  }

  void drop_before(int b, int64_t pos) override {
    for (auto& rows : stores_) {
      RowStore& st = rows[size_t(b)];
      auto prune = [&](std::deque<Unit>& d) {
        d.erase(std::remove_if(d.begin(), d.end(), [&](const Unit& u) { return u.newest < pos; }),
                d.end());
      };
      prune(st.fifo);
      for (auto& l : st.level) prune(l);
    }
  }

  void commit(int64_t first_pos, float dloss_scale) override {
    RT_CHECK(last_T_ == S_, "only a whole segment is written into the store");
    std::vector<float> wgrad;  // host gradient of one compression weight
    for (size_t li = 0; li < layers_.size(); ++li) {
      std::vector<Weights> w;  // read on the first compression of this layer (none: none read)
      for (int b = 0; b < last_B_; ++b) {
        RowStore& st = stores_[li][size_t(b)];
        Saved& s = saved_[li][size_t(b)];
        st.fifo.push_back(Unit{s.k_pre, s.v_pre, first_pos + S_ - 1});
        while (int(st.fifo.size()) > F_) {
          Unit x = std::move(st.fifo.front());
          st.fifo.pop_front();
          push_compressed(li, st, 0, x, s.q_pre, w, dloss_scale);
        }
      }
      if (!w.empty() && dloss_scale != 0.f)
        for (int j = 0; j < levels_; ++j) {
          add_from_host(be_, grad_buf(layers_[li], j, "key"), w[size_t(j)].dk.data(),
                        w[size_t(j)].dk.size());
          add_from_host(be_, grad_buf(layers_[li], j, "value"), w[size_t(j)].dv.data(),
                        w[size_t(j)].dv.size());
        }
    }
  }

  std::vector<std::pair<std::string, double>> stats() const override {
    std::vector<std::pair<std::string, double>> out;
    for (int j = 0; j < levels_; ++j) {
      const LevelStats& s = stats_[size_t(j)];
      if (s.compressions == 0) continue;
      const std::string p = "level" + std::to_string(j + 1) + "_";
      out.push_back({p + "compressions", double(s.compressions)});
      out.push_back({p + "relative_error", std::sqrt(s.err2 / std::max(s.ref2, 1e-300))});
    }
    return out;
  }

  size_t store_bytes() const override {
    size_t n = 0;
    for (const auto& rows : stores_)
      for (const RowStore& r : rows) n += size_t(r.rows(kvd_)) * kvd_ * 2 * sizeof(float);
    return n;
  }

 private:
  // Evaluation: what the compressions into one level lose, as the relative
  // error of the attention output over the compressed rows against the
  // full-resolution ones (content-only, the reconstruction loss's measure).
  struct LevelStats {
    double err2 = 0, ref2 = 0;
    int64_t compressions = 0;
  };
  // One level's compression weights (host fp32, [kvd, r*kvd]) and their
  // gradients accumulated over this commit.
  struct Weights {
    std::vector<float> wk, wv, dk, dv;
  };

  static void append_unit(const Unit& u, std::vector<float>& k, std::vector<float>& v) {
    k.insert(k.end(), u.k.begin(), u.k.end());
    v.insert(v.end(), u.v.begin(), u.v.end());
  }
  std::string weight_name(int layer, int j, const char* kv) const {
    return "model.layers." + std::to_string(layer) + ".self_attn.compress." + std::to_string(j) +
           "." + kv + ".weight";
  }
  Buf grad_buf(int layer, int j, const char* kv) {
    return model_.grads().buf(weight_name(layer, j, kv));
  }
  std::vector<Weights> weights(int layer) {
    std::vector<Weights> w(static_cast<size_t>(levels_));
    const size_t n = size_t(kvd_) * r_ * kvd_;
    for (int j = 0; j < levels_; ++j) {
      w[size_t(j)].wk = to_host_f32(be_, model_.params().buf(weight_name(layer, j, "key")), n);
      w[size_t(j)].wv = to_host_f32(be_, model_.params().buf(weight_name(layer, j, "value")), n);
      w[size_t(j)].dk.assign(n, 0.f);
      w[size_t(j)].dv.assign(n, 0.f);
    }
    return w;
  }

  // x (n, kvd) -> (n/r, kvd): mean of r rows, or W [x_{ir}; ...; x_{ir+r-1}].
  std::vector<float> compress(const std::vector<float>& x, const std::vector<float>* w) const {
    const int n = int(x.size() / size_t(kvd_)), no = n / r_, kvd = kvd_, rk = r_ * kvd_;
    std::vector<float> out(size_t(no) * kvd, 0.f);
    for (int i = 0; i < no; ++i) {
      const float* xi = x.data() + size_t(i) * rk;  // r consecutive rows = one rk vector
      float* o = out.data() + size_t(i) * kvd;
      if (!w) {
        for (int j = 0; j < r_; ++j)
          for (int c = 0; c < kvd; ++c) o[c] += xi[size_t(j) * kvd + c];
        for (int c = 0; c < kvd; ++c) o[c] /= float(r_);
      } else {
        for (int c = 0; c < kvd; ++c) {
          double acc = 0;
          const float* wr = w->data() + size_t(c) * rk;
          for (int e = 0; e < rk; ++e) acc += double(wr[e]) * xi[e];
          o[c] = float(acc);
        }
      }
    }
    return out;
  }

  // Compresses x into level j (0-based) and cascades overflowing chunks. w:
  // layer li's compression weights (conv), read from the device on first use.
  void push_compressed(size_t li, RowStore& st, int j, const Unit& x,
                       const std::vector<float>& q_pre, std::vector<Weights>& w,
                       float dloss_scale) {
    if (conv_ && w.empty()) w = weights(layers_[li]);
    Unit c;
    c.newest = x.newest;
    c.k = compress(x.k, conv_ ? &w[size_t(j)].wk : nullptr);
    c.v = compress(x.v, conv_ ? &w[size_t(j)].wv : nullptr);
    if (conv_ && dloss_scale != 0.f)
      reconstruction_grad(x, c, q_pre, &w[size_t(j)], dloss_scale, nullptr);
    if (dloss_scale == 0.f)  // evaluation: how much of the attention output this compression loses
      reconstruction_grad(x, c, q_pre, nullptr, 0.f, &stats_[size_t(j)]);
    st.level[size_t(j)].push_back(std::move(c));
    while (st.level_slots(j, kvd_) > cap_) {
      Unit y = std::move(st.level[size_t(j)].front());
      st.level[size_t(j)].pop_front();
      if (j + 1 < levels_) push_compressed(li, st, j + 1, y, q_pre, w, dloss_scale);
    }
  }

  // The attention-reconstruction loss of one compression (docs/memory.md):
  // rec = mean_{t,h,i} (o2 - o1)^2, o1 over x, o2 over its compression
  // c, content-only attention of the segment's pre-position queries. Adds
  // dloss_scale * d rec / dW to the level's weight gradients.
  // With stats (and no weights): accumulates sum (o2-o1)^2 and sum o1^2
  // instead, the detail this compression loses for these queries.
  void reconstruction_grad(const Unit& x, const Unit& c, const std::vector<float>& q_pre,
                           Weights* wp, float dloss_scale, LevelStats* stats) {
    const int T = int(q_pre.size() / size_t(H_ * hd_));
    const int n = x.rows(kvd_), nc = c.rows(kvd_), hd = hd_, kvd = kvd_, rk = r_ * kvd_;
    const int per = H_ / G_;
    const double scale = 1.0 / std::sqrt(double(hd));
    std::vector<double> dkc(size_t(nc) * kvd, 0.0), dvc(size_t(nc) * kvd, 0.0);
    std::vector<double> p1(static_cast<size_t>(n)), p2(static_cast<size_t>(nc)),
        o1(static_cast<size_t>(hd)), o2(static_cast<size_t>(hd));
    const double norm = 1.0 / (double(T) * H_ * hd);
    auto attend = [&](const float* qv, const std::vector<float>& K, const std::vector<float>& V,
                      int rows, int g, std::vector<double>& p, std::vector<double>& o) {
      double mx = -INFINITY;
      for (int j = 0; j < rows; ++j) {
        double s = 0;
        const float* kj = K.data() + size_t(j) * kvd + size_t(g) * hd;
        for (int i = 0; i < hd; ++i) s += double(qv[i]) * kj[i];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      double z = 0;
      for (int j = 0; j < rows; ++j) z += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
      std::fill(o.begin(), o.end(), 0.0);
      for (int j = 0; j < rows; ++j) {
        p[size_t(j)] /= z;
        const float* vj = V.data() + size_t(j) * kvd + size_t(g) * hd;
        for (int i = 0; i < hd; ++i) o[size_t(i)] += p[size_t(j)] * vj[i];
      }
    };
    std::vector<double> d(static_cast<size_t>(hd));
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H_; ++h) {
        const int g = h / per;
        const float* qv = q_pre.data() + (size_t(t) * H_ + h) * hd;
        attend(qv, x.k, x.v, n, g, p1, o1);
        attend(qv, c.k, c.v, nc, g, p2, o2);
        if (stats) {
          for (int i = 0; i < hd; ++i) {
            const double e = o2[size_t(i)] - o1[size_t(i)];
            stats->err2 += e * e;
            stats->ref2 += o1[size_t(i)] * o1[size_t(i)];
          }
          continue;
        }
        for (int i = 0; i < hd; ++i) d[size_t(i)] = 2.0 * norm * (o2[size_t(i)] - o1[size_t(i)]);
        double dot_do = 0;  // do2 . o2
        for (int i = 0; i < hd; ++i) dot_do += d[size_t(i)] * o2[size_t(i)];
        for (int j = 0; j < nc; ++j) {
          const float* vj = c.v.data() + size_t(j) * kvd + size_t(g) * hd;
          double dv_dot = 0;
          for (int i = 0; i < hd; ++i) dv_dot += d[size_t(i)] * vj[i];
          const double ds = p2[size_t(j)] * (dv_dot - dot_do) * scale;
          double* dkj = dkc.data() + size_t(j) * kvd + size_t(g) * hd;
          double* dvj = dvc.data() + size_t(j) * kvd + size_t(g) * hd;
          for (int i = 0; i < hd; ++i) {
            dvj[i] += p2[size_t(j)] * d[size_t(i)];
            dkj[i] += ds * qv[i];
          }
        }
      }
    if (stats) {
      ++stats->compressions;
      return;
    }
    Weights& w = *wp;
    // c = X_r W^T with X_r (nc, r*kvd): dW (kvd, r*kvd) += dc^T X_r
    for (int j = 0; j < nc; ++j) {
      const float* xk = x.k.data() + size_t(j) * rk;
      const float* xv = x.v.data() + size_t(j) * rk;
      for (int o = 0; o < kvd; ++o) {
        const double gk = dkc[size_t(j) * kvd + o] * dloss_scale;
        const double gv = dvc[size_t(j) * kvd + o] * dloss_scale;
        float* wk = w.dk.data() + size_t(o) * rk;
        float* wv = w.dv.data() + size_t(o) * rk;
        for (int e = 0; e < rk; ++e) {
          wk[e] += float(gk * xk[e]);
          wv[e] += float(gv * xv[e]);
        }
      }
    }
  }

  LlamaModel& model_;
  Backend& be_;
  std::vector<int> layers_;
  int S_, F_, r_, levels_, cap_, H_, G_, hd_, kvd_;
  bool conv_;
  std::vector<std::vector<Saved>> saved_;      // [memory layer][batch row]
  std::vector<std::vector<RowStore>> stores_;  // [memory layer][batch row]
  DeviceBuffer dkcat_, dvcat_;
  std::vector<LevelStats> stats_;  // per level, accumulated over evaluation commits
  int last_T_ = 0, last_B_ = 0;
};

}  // namespace

std::unique_ptr<LayerMemory> make_compressive_memory(LlamaModel& model) {
  return std::make_unique<CompressiveMemory>(model);
}

}  // namespace rt
