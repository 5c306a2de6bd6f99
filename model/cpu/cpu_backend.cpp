// CPU backend: fp32, OpenBLAS sgemm for matrix products, OpenMP element-wise
// loops, blocked attention from model/cpu/attention.cpp.
//
// bf16 is storage emulation: a bf16 buffer holds bf16 bit patterns (uint16);
// an op reads each input as fp32 (a converted copy for bf16), runs the fp32
// code and rounds each bf16 output once when it stores it (In / Out below),
// which is where a GPU kernel stores bf16. fp32 buffers pass straight
// through, so the fp32 arithmetic is the code it always was.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"
#include "model/cpu/attention.h"

namespace rt {

namespace {

void to_f32(float* dst, const uint16_t* src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
void to_bf16(uint16_t* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void check_dtype(DType t) {
  RT_CHECK(t == DType::kF32 || t == DType::kBF16,
           std::string("the CPU backend has no ops for ") + dtype_name(t));
}

// fp32 view of a typed input of n elements: the buffer itself when fp32,
// otherwise a converted copy.
class In {
 public:
  In(CBuf b, size_t n) {
    if (!b.p || b.t == DType::kF32) {
      p_ = b.f32();
      return;
    }
    check_dtype(b.t);
    tmp_.resize(n);
    to_f32(tmp_.data(), b.as<uint16_t>(), n);
    p_ = tmp_.data();
  }
  const float* p() const { return p_; }

 private:
  const float* p_ = nullptr;
  std::vector<float> tmp_;
};

// fp32 working copy of a typed output of n elements: the buffer itself when
// fp32; otherwise an fp32 buffer (holding the current values when the op
// reads or accumulates into its output) rounded into the bf16 buffer once,
// by store().
class Out {
 public:
  Out(Buf b, size_t n, bool load) : dst_(b), n_(n) {
    if (!b.p || b.t == DType::kF32) {
      p_ = b.f32();
      return;
    }
    check_dtype(b.t);
    tmp_.resize(n);
    if (load) to_f32(tmp_.data(), b.as<uint16_t>(), n);
    p_ = tmp_.data();
  }
  float* p() const { return p_; }
  void store() {
    if (!tmp_.empty()) to_bf16(dst_.as<uint16_t>(), tmp_.data(), n_);
  }

 private:
  Buf dst_;
  size_t n_;
  float* p_ = nullptr;
  std::vector<float> tmp_;
};

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCpu; }

  void* alloc_bytes(size_t bytes) override {
    if (bytes == 0) return nullptr;
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void free_bytes(void* p) override { std::free(p); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  const char* name() const override { return "cpu"; }
  bool supports(Op op, DType act) const override {
    (void)op;
    return act == DType::kF32 || act == DType::kBF16;
  }
  void* scratch(size_t bytes) override {
    if (bytes > scratch_.size() * sizeof(float)) scratch_.resize((bytes + 3) / 4);
    return scratch_.data();
  }

  void zero(Buf x, size_t n) override {
    if (x.t == DType::kF32) {
      float* p = x.f32();
#pragma omp parallel for schedule(static)
      for (size_t i = 0; i < n; ++i) p[i] = 0.f;
      return;
    }
    if (n) std::memset(x.p, 0, n * dtype_size(x.t));
  }

  void copy(Buf dst, CBuf src, size_t n) override {
    RT_CHECK(dst.t == src.t, std::string("copy from ") + dtype_name(src.t) + " to " +
                                 dtype_name(dst.t) + ": use cast");
    if (n) std::memcpy(dst.p, src.p, n * dtype_size(dst.t));
  }

  void cast(Buf dst, CBuf src, size_t n) override {
    if (dst.t == src.t) return copy(dst, src, n);
    check_dtype(dst.t);
    check_dtype(src.t);
    if (dst.t == DType::kBF16)
      to_bf16(dst.as<uint16_t>(), src.f32(), n);
    else
      to_f32(dst.f32(), src.as<uint16_t>(), n);
  }

  void embedding_forward(Buf out, const int32_t* tokens, CBuf table, int N, int C) override {
    // a row copy: the table's dtype is kept, converted when out's differs
    const size_t es = dtype_size(out.t);
    if (out.t == table.t) {
#pragma omp parallel for schedule(static)
      for (int n = 0; n < N; ++n)
        std::memcpy(static_cast<char*>(out.p) + size_t(n) * C * es,
                    static_cast<const char*>(table.p) + size_t(tokens[n]) * C * es, es * C);
      return;
    }
    for (int n = 0; n < N; ++n)
      cast(Buf(static_cast<char*>(out.p) + size_t(n) * C * es, out.t),
           CBuf(static_cast<const char*>(table.p) + size_t(tokens[n]) * C * dtype_size(table.t),
                table.t),
           size_t(C));
  }

  void embedding_backward(Buf dtable_b, CBuf dout_b, const int32_t* tokens, int N,
                          int C) override {
    int V = 0;
    for (int n = 0; n < N; ++n) V = std::max(V, tokens[n] + 1);
    Out dt(dtable_b, size_t(V) * C, true);
    In din(dout_b, size_t(N) * C);
    float* dtable = dt.p();
    const float* dout = din.p();
    // Rows may repeat, so threads split the columns, not the rows.
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      int c0 = int(int64_t(C) * t / nt), c1 = int(int64_t(C) * (t + 1) / nt);
      for (int n = 0; n < N; ++n) {
        float* dst = dtable + size_t(tokens[n]) * C;
        const float* src = dout + size_t(n) * C;
        for (int c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
    dt.store();
  }

  void rmsnorm_forward(Buf out_b, float* rstd, CBuf inp_b, CBuf weight_b, int N, int C,
                       float eps) override {
    In in(inp_b, size_t(N) * C), w(weight_b, size_t(C));
    Out ob(out_b, size_t(N) * C, false);
    const float *inp = in.p(), *weight = w.p();
    float* out = ob.p();
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      const float* x = inp + size_t(n) * C;
      float* o = out + size_t(n) * C;
      float ss = 0.f;
      for (int c = 0; c < C; ++c) ss += x[c] * x[c];
      float r = 1.f / std::sqrt(ss / C + eps);
      for (int c = 0; c < C; ++c) o[c] = x[c] * r * weight[c];
      rstd[n] = r;
    }
    ob.store();
  }

  void rmsnorm_backward(Buf dinp_b, Buf dweight_b, CBuf dout_b, CBuf inp_b, CBuf weight_b,
                        const float* rstd, int N, int C) override {
    In dy_in(dout_b, size_t(N) * C), x_in(inp_b, size_t(N) * C), w_in(weight_b, size_t(C));
    Out dx_out(dinp_b, size_t(N) * C, true), dw_out(dweight_b, size_t(C), true);
    const float *dout = dy_in.p(), *inp = x_in.p(), *weight = w_in.p();
    float *dinp = dx_out.p(), *dweight = dw_out.p();
    // dweight is a reduction over rows: per-thread partial sums, then combined.
    int nthreads = omp_get_max_threads();
    std::vector<float> partial(size_t(nthreads) * C, 0.f);
#pragma omp parallel
    {
      float* dw = partial.data() + size_t(omp_get_thread_num()) * C;
#pragma omp for schedule(static)
      for (int n = 0; n < N; ++n) {
        const float* x = inp + size_t(n) * C;
        const float* dy = dout + size_t(n) * C;
        float* dx = dinp + size_t(n) * C;
        float r = rstd[n];
        float dot = 0.f;  // sum_c dy*w*x
        for (int c = 0; c < C; ++c) {
          dot += dy[c] * weight[c] * x[c];
          dw[c] += dy[c] * x[c] * r;
        }
        float k = dot * r * r * r / C;
        for (int c = 0; c < C; ++c) dx[c] += dy[c] * weight[c] * r - x[c] * k;
      }
    }
    for (int t = 0; t < nthreads; ++t) {
      const float* dw = partial.data() + size_t(t) * C;
      for (int c = 0; c < C; ++c) dweight[c] += dw[c];
    }
    dx_out.store();
    dw_out.store();
  }

  void matmul_forward(Buf out_b, CBuf inp_b, CBuf weight_b, int N, int C, int OC,
                      bool accumulate) override {
    In inp(inp_b, size_t(N) * C), weight(weight_b, size_t(OC) * C);
    Out out(out_b, size_t(N) * OC, accumulate);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.f, inp.p(), C, weight.p(), C,
                accumulate ? 1.f : 0.f, out.p(), OC);
    out.store();
  }

  void matmul_backward(Buf dinp_b, Buf dweight_b, CBuf dout_b, CBuf inp_b, CBuf weight_b, int N,
                       int C, int OC) override {
    In dout(dout_b, size_t(N) * OC);
    if (dinp_b) {
      In weight(weight_b, size_t(OC) * C);
      Out dinp(dinp_b, size_t(N) * C, true);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.f, dout.p(), OC,
                  weight.p(), C, 1.f, dinp.p(), C);
      dinp.store();
    }
    if (dweight_b) {
      In inp(inp_b, size_t(N) * C);
      Out dweight(dweight_b, size_t(OC) * C, true);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.f, dout.p(), OC, inp.p(),
                  C, 1.f, dweight.p(), C);
      dweight.store();
    }
  }

  void rope_forward(Buf x_b, const float* cos, const float* sin, int B, int T, int nh,
                    int hd) override {
    Out x(x_b, size_t(B) * T * nh * hd, true);
    rope_apply(x.p(), cos, sin, B, T, nh, hd, 1.f);
    x.store();
  }
  void rope_backward(Buf dx_b, const float* cos, const float* sin, int B, int T, int nh,
                     int hd) override {
    Out dx(dx_b, size_t(B) * T * nh * hd, true);
    rope_apply(dx.p(), cos, sin, B, T, nh, hd, -1.f);  // transpose = rotation by -angle
    dx.store();
  }

  void attention_forward(const AttentionParams& p, Buf out_b, float* lse, CBuf q_b, CBuf k_b,
                         CBuf v_b) override {
    const size_t nq = size_t(p.B) * p.Tq * p.H * p.hd, nk = size_t(p.B) * p.Tk * p.G * p.hd;
    In q(q_b, nq), k(k_b, nk), v(v_b, nk);
    Out out(out_b, nq, false);
    cpu::attention_forward(p, out.p(), lse, q.p(), k.p(), v.p());
    out.store();
  }
  void attention_backward(const AttentionParams& p, Buf dq_b, Buf dk_b, Buf dv_b, CBuf dout_b,
                          CBuf q_b, CBuf k_b, CBuf v_b, CBuf out_b, const float* lse) override {
    const size_t nq = size_t(p.B) * p.Tq * p.H * p.hd, nk = size_t(p.B) * p.Tk * p.G * p.hd;
    In dout(dout_b, nq), q(q_b, nq), k(k_b, nk), v(v_b, nk), out(out_b, nq);
    Out dq(dq_b, nq, true), dk(dk_b, nk, true), dv(dv_b, nk, true);
    cpu::attention_backward(p, dq.p(), dk.p(), dv.p(), dout.p(), q.p(), k.p(), v.p(), out.p(),
                            lse);
    dq.store();
    dk.store();
    dv.store();
  }

  void attention_merge(Buf out_b, float* lse, CBuf blk_b, const float* blk_lse, int Tq, int H,
                       int hd) override {
    Out out_w(out_b, size_t(Tq) * H * hd, true);
    In blk(blk_b, size_t(Tq) * H * hd);
    float* out = out_w.p();
    const float* blk_out = blk.p();
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < Tq; ++t)
      for (int h = 0; h < H; ++h) {
        const float a = lse[size_t(h) * Tq + t], b = blk_lse[size_t(h) * Tq + t];
        if (b == -INFINITY) continue;  // the block adds nothing to this row
        float* o = out + (size_t(t) * H + h) * hd;
        const float* ob = blk_out + (size_t(t) * H + h) * hd;
        // stable log(e^a + e^b) = max + log1p(e^(min - max))
        const float mx = std::max(a, b), mn = std::min(a, b);
        const float merged = a == -INFINITY ? b : mx + std::log1p(std::exp(mn - mx));
        const float wa = a == -INFINITY ? 0.f : std::exp(a - merged);
        const float wb = std::exp(b - merged);
        for (int j = 0; j < hd; ++j) o[j] = o[j] * wa + ob[j] * wb;
        lse[size_t(h) * Tq + t] = merged;
      }
    out_w.store();
  }

  void swiglu_forward(Buf out_b, CBuf gate_b, CBuf up_b, size_t n) override {
    In gin(gate_b, n), uin(up_b, n);
    Out o(out_b, n, false);
    const float *gate = gin.p(), *up = uin.p();
    float* out = o.p();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      float g = gate[i];
      out[i] = g / (1.f + std::exp(-g)) * up[i];
    }
    o.store();
  }

  void swiglu_backward(Buf dgate_b, Buf dup_b, CBuf dout_b, CBuf gate_b, CBuf up_b,
                       size_t n) override {
    In din(dout_b, n), gin(gate_b, n), uin(up_b, n);  // read before any store (aliasing)
    Out dg(dgate_b, n, false), du(dup_b, n, false);
    const float *dout = din.p(), *gate = gin.p(), *up = uin.p();
    float *dgate = dg.p(), *dup = du.p();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      float g = gate[i];
      float sig = 1.f / (1.f + std::exp(-g));
      float silu = g * sig;
      float d = dout[i];  // read first: dgate may alias dout
      dgate[i] = d * up[i] * sig * (1.f + g * (1.f - sig));
      dup[i] = d * silu;
    }
    dg.store();
    du.store();
  }

  void add_inplace(Buf x_b, CBuf y_b, size_t n) override {
    In yin(y_b, n);
    Out xo(x_b, n, true);
    float* x = xo.p();
    const float* y = yin.p();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
    xo.store();
  }

  void cross_entropy_forward_backward(Buf logits_b, float* losses, const int32_t* targets, int N,
                                      int V, float dloss_scale) override {
    Out lo(logits_b, size_t(N) * V, true);
    float* logits = lo.p();
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      float* z = logits + size_t(n) * V;
      int t = targets[n];
      if (t < 0) {
        losses[n] = 0.f;
        if (dloss_scale != 0.f) std::memset(z, 0, sizeof(float) * V);
        continue;
      }
      float mx = z[0];
      for (int i = 1; i < V; ++i) mx = std::max(mx, z[i]);
      double sum = 0.0;
      for (int i = 0; i < V; ++i) sum += std::exp(double(z[i] - mx));
      float lse = mx + float(std::log(sum));
      losses[n] = lse - z[t];
      if (dloss_scale != 0.f) {
        for (int i = 0; i < V; ++i) z[i] = std::exp(z[i] - lse) * dloss_scale;
        z[t] -= dloss_scale;
      }
    }
    if (dloss_scale != 0.f) lo.store();
  }

  void loss_sum(double* acc, const float* losses, int N) override {
    double s = 0.0;  // in order: the same sum whatever the thread count
    for (int i = 0; i < N; ++i) s += losses[i];
    *acc += s;
  }

  double sum_squares(const float* x, size_t n) override {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; ++i) s += double(x[i]) * x[i];
    return s;
  }

  void scale(float* x, size_t n, float s) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] *= s;
  }

  void adamw_update(float* param, Buf compute, const float* grad, float* m, float* v, size_t n,
                    const AdamWStep& h) override {
    const float lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, eps = h.eps;
    const float weight_decay = h.weight_decay;
    // torch.optim.AdamW order: decay the weight, then the Adam step.
    const float bc1 = h.bias_correction1(), bc2 = h.bias_correction2();
    float decay = 1.f - lr * weight_decay;
    const float gscale = h.grad_scale;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float g = grad[i] * gscale;
      float mi = beta1 * m[i] + (1.f - beta1) * g;
      float vi = beta2 * v[i] + (1.f - beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      float denom = std::sqrt(vi / bc2) + eps;
      param[i] = param[i] * decay - lr * (mi / bc1) / denom;
    }
    write_compute_copy(compute, param, n);
  }

  void sgd_update(float* param, Buf compute, const float* grad, size_t n, float lr,
                  float weight_decay) override {
    float decay = 1.f - lr * weight_decay;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) param[i] = param[i] * decay - lr * grad[i];
    write_compute_copy(compute, param, n);
  }

  void sgd_momentum_update(float* param, Buf compute, const float* grad, float* buf, size_t n,
                           float lr, float weight_decay, float momentum) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float d = grad[i] + weight_decay * param[i];
      buf[i] = momentum * buf[i] + d;
      param[i] -= lr * buf[i];
    }
    write_compute_copy(compute, param, n);
  }

 private:
  // The compute copy of master weights: nothing when it is the master itself.
  void write_compute_copy(Buf compute, const float* master, size_t n) {
    if (!compute || compute.p == master) return;
    cast(compute, CBuf(master), n);
  }

  std::vector<float> scratch_;

  // sign = +1: y = rotate(x, +angle); sign = -1: rotate by -angle.
  static void rope_apply(float* x, const float* cos, const float* sin, int B, int T, int nh,
                         int hd, float sign) {
    int half = hd / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const float* c = cos + size_t(t) * half;
        const float* s = sin + size_t(t) * half;
        for (int h = 0; h < nh; ++h) {
          float* row = x + ((size_t(b) * T + t) * nh + h) * hd;
          for (int j = 0; j < half; ++j) {
            float x1 = row[j], x2 = row[j + half];
            float sj = sign * s[j];
            row[j] = x1 * c[j] - x2 * sj;
            row[j + half] = x2 * c[j] + x1 * sj;
          }
        }
      }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace rt
