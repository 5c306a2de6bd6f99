// CPU backend: fp32, OpenBLAS sgemm for matrix products, OpenMP element-wise
// loops, blocked attention from model/cpu/attention.cpp.
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

const char* device_name(Device d) { return d == Device::kCpu ? "cpu" : "cuda"; }

namespace {

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
  void zero(float* x, size_t n) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] = 0.f;
  }

  void copy(float* dst, const float* src, size_t n) override {
    if (n) std::memcpy(dst, src, n * sizeof(float));
  }

  void embedding_forward(float* out, const int32_t* tokens, const float* table, int N,
                         int C) override {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
      std::memcpy(out + size_t(n) * C, table + size_t(tokens[n]) * C, sizeof(float) * C);
  }

  void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N,
                          int C) override {
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
  }

  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N,
                       int C, float eps) override {
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
  }

  void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                        const float* weight, const float* rstd, int N, int C) override {
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
  }

  void matmul_forward(float* out, const float* inp, const float* weight, int N, int C, int OC,
                      bool accumulate) override {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.f, inp, C, weight, C,
                accumulate ? 1.f : 0.f, out, OC);
  }

  void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC) override {
    if (dinp)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.f, dout, OC, weight, C,
                  1.f, dinp, C);
    if (dweight)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.f, dout, OC, inp, C, 1.f,
                  dweight, C);
  }

  void rope_forward(float* x, const float* cos, const float* sin, int B, int T, int nh,
                    int hd) override {
    rope_apply(x, cos, sin, B, T, nh, hd, 1.f);
  }
  void rope_backward(float* dx, const float* cos, const float* sin, int B, int T, int nh,
                     int hd) override {
    rope_apply(dx, cos, sin, B, T, nh, hd, -1.f);  // transpose = rotation by -angle
  }

  void attention_forward(const AttentionParams& p, float* out, float* lse, const float* q,
                         const float* k, const float* v) override {
    cpu::attention_forward(p, out, lse, q, k, v);
  }
  void attention_backward(const AttentionParams& p, float* dq, float* dk, float* dv,
                          const float* dout, const float* q, const float* k, const float* v,
                          const float* out, const float* lse) override {
    cpu::attention_backward(p, dq, dk, dv, dout, q, k, v, out, lse);
  }

  void attention_merge(float* out, float* lse, const float* blk_out, const float* blk_lse,
                       int Tq, int H, int hd) override {
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
  }

  void swiglu_forward(float* out, const float* gate, const float* up, size_t n) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      float g = gate[i];
      out[i] = g / (1.f + std::exp(-g)) * up[i];
    }
  }

  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                       const float* up, size_t n) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      float g = gate[i];
      float sig = 1.f / (1.f + std::exp(-g));
      float silu = g * sig;
      float d = dout[i];  // read first: dgate may alias dout
      dgate[i] = d * up[i] * sig * (1.f + g * (1.f - sig));
      dup[i] = d * silu;
    }
  }

  void add_inplace(float* x, const float* y, size_t n) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
  }

  void cross_entropy_forward_backward(float* logits, float* losses, const int32_t* targets,
                                      int N, int V, float dloss_scale) override {
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

  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay,
                    int64_t step) override {
    // torch.optim.AdamW order: decay the weight, then the Adam step.
    float bc1 = 1.f - float(std::pow(double(beta1), double(step)));
    float bc2 = 1.f - float(std::pow(double(beta2), double(step)));
    float decay = 1.f - lr * weight_decay;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      float g = grad[i];
      float mi = beta1 * m[i] + (1.f - beta1) * g;
      float vi = beta2 * v[i] + (1.f - beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      float denom = std::sqrt(vi / bc2) + eps;
      param[i] = param[i] * decay - lr * (mi / bc1) / denom;
    }
  }

  void sgd_update(float* param, const float* grad, size_t n, float lr,
                  float weight_decay) override {
    float decay = 1.f - lr * weight_decay;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) param[i] = param[i] * decay - lr * grad[i];
  }

  void sgd_momentum_update(float* param, const float* grad, float* buf, size_t n, float lr,
                           float weight_decay, float momentum) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float d = grad[i] + weight_decay * param[i];
      buf[i] = momentum * buf[i] + d;
      param[i] -= lr * buf[i];
    }
  }

 private:
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
