// Each CPU op against an independent float64 implementation of its forward,
// and its backward against central finite differences of that float64
// forward (loss = sum(out * W) with a random W, so dout = W).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "common/rng.h"
#include "model/backend.h"

namespace rt {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, double std = 1.0) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.normal() * std);
  return v;
}

// d/dx_i of f at x (double), central differences.
std::vector<double> finite_diff(const std::function<double(const std::vector<double>&)>& f,
                                std::vector<double> x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double x0 = x[i];
    x[i] = x0 + h;
    double fp = f(x);
    x[i] = x0 - h;
    double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 1e-12, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    err = std::max(err, std::abs(got[i] - want[i]));
  }
  EXPECT_LT(err / scale, tol) << what << ": max abs err " << err << " at scale " << scale;
}

class Ops : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

TEST_F(Ops, RmsNorm) {
  const int N = 5, C = 12;
  const float eps = 1e-5f;
  auto x = randn(N * C, 1), w = randn(C, 2), W = randn(N * C, 3);
  auto fwd = [&](const std::vector<double>& xx, const std::vector<double>& ww) {
    std::vector<double> out(N * C);
    for (int n = 0; n < N; ++n) {
      double ss = 0;
      for (int c = 0; c < C; ++c) ss += xx[n * C + c] * xx[n * C + c];
      double r = 1 / std::sqrt(ss / C + eps);
      for (int c = 0; c < C; ++c) out[n * C + c] = xx[n * C + c] * r * ww[c];
    }
    return out;
  };
  auto loss = [&](const std::vector<double>& o) {
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * W[i];
    return s;
  };
  std::vector<float> out(N * C), rstd(N), dx(N * C, 0.f), dw(C, 0.f);
  be->rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  expect_close(out, fwd(to_d(x), to_d(w)), 1e-6, "rmsnorm forward");
  be->rmsnorm_backward(dx.data(), dw.data(), W.data(), x.data(), w.data(), rstd.data(), N, C);
  expect_close(dx, finite_diff([&](auto& xx) { return loss(fwd(xx, to_d(w))); }, to_d(x)), 1e-5,
               "rmsnorm dx");
  expect_close(dw, finite_diff([&](auto& ww) { return loss(fwd(to_d(x), ww)); }, to_d(w)), 1e-5,
               "rmsnorm dw");
}

TEST_F(Ops, MatmulAccumulatesGradients) {
  const int N = 7, C = 9, OC = 5;
  auto x = randn(N * C, 4), w = randn(OC * C, 5), W = randn(N * OC, 6);
  auto fwd = [&](const std::vector<double>& xx, const std::vector<double>& ww) {
    std::vector<double> out(N * OC, 0.0);
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o)
        for (int c = 0; c < C; ++c) out[n * OC + o] += xx[n * C + c] * ww[o * C + c];
    return out;
  };
  auto loss = [&](const std::vector<double>& o) {
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * W[i];
    return s;
  };
  std::vector<float> out(N * OC);
  be->matmul_forward(out.data(), x.data(), w.data(), N, C, OC);
  expect_close(out, fwd(to_d(x), to_d(w)), 1e-6, "matmul forward");
  // backward accumulates: start from 1.0 and subtract it afterwards
  std::vector<float> dx(N * C, 1.f), dw(OC * C, 1.f);
  be->matmul_backward(dx.data(), dw.data(), W.data(), x.data(), w.data(), N, C, OC);
  for (auto& v : dx) v -= 1.f;
  for (auto& v : dw) v -= 1.f;
  expect_close(dx, finite_diff([&](auto& xx) { return loss(fwd(xx, to_d(w))); }, to_d(x)), 1e-5,
               "matmul dx");
  expect_close(dw, finite_diff([&](auto& ww) { return loss(fwd(to_d(x), ww)); }, to_d(w)), 1e-5,
               "matmul dw");
}

TEST_F(Ops, SwiGlu) {
  const size_t n = 40;
  auto g = randn(n, 7, 2.0), u = randn(n, 8), W = randn(n, 9);
  auto fwd = [&](const std::vector<double>& gg, const std::vector<double>& uu) {
    std::vector<double> o(n);
    for (size_t i = 0; i < n; ++i) o[i] = gg[i] / (1 + std::exp(-gg[i])) * uu[i];
    return o;
  };
  auto loss = [&](const std::vector<double>& o) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += o[i] * W[i];
    return s;
  };
  std::vector<float> out(n), dg(n), du(n);
  be->swiglu_forward(out.data(), g.data(), u.data(), n);
  expect_close(out, fwd(to_d(g), to_d(u)), 1e-6, "swiglu forward");
  be->swiglu_backward(dg.data(), du.data(), W.data(), g.data(), u.data(), n);
  expect_close(dg, finite_diff([&](auto& gg) { return loss(fwd(gg, to_d(u))); }, to_d(g)), 1e-5,
               "swiglu dgate");
  expect_close(du, finite_diff([&](auto& uu) { return loss(fwd(to_d(g), uu)); }, to_d(u)), 1e-5,
               "swiglu dup");
  // the model reuses one buffer for dout and dgate: aliasing must not change results
  std::vector<float> aliased = W, du2(n);
  be->swiglu_backward(aliased.data(), du2.data(), aliased.data(), g.data(), u.data(), n);
  EXPECT_EQ(aliased, dg);
  EXPECT_EQ(du2, du);
}

TEST_F(Ops, CrossEntropyWithIgnoredTargets) {
  const int N = 6, V = 11;
  auto z = randn(N * V, 10, 3.0);
  std::vector<int32_t> t = {3, -1, 0, 10, 5, -1};
  const float scale = 0.25f;
  auto fwd = [&](const std::vector<double>& zz) {  // scale * sum of losses
    double s = 0;
    for (int n = 0; n < N; ++n) {
      if (t[n] < 0) continue;
      double mx = -1e300, sum = 0;
      for (int i = 0; i < V; ++i) mx = std::max(mx, zz[n * V + i]);
      for (int i = 0; i < V; ++i) sum += std::exp(zz[n * V + i] - mx);
      s += mx + std::log(sum) - zz[n * V + t[n]];
    }
    return s * scale;
  };
  std::vector<float> logits = z, losses(N);
  be->cross_entropy_forward_backward(logits.data(), losses.data(), t.data(), N, V, 0.f);
  EXPECT_EQ(logits, z) << "forward-only must leave logits untouched";
  double total = 0;
  for (float l : losses) total += l;
  EXPECT_NEAR(total * scale, fwd(to_d(z)), 1e-5);
  EXPECT_EQ(losses[1], 0.f);
  be->cross_entropy_forward_backward(logits.data(), losses.data(), t.data(), N, V, scale);
  expect_close(logits, finite_diff(fwd, to_d(z)), 1e-5, "cross-entropy dlogits");
}

TEST_F(Ops, EmbeddingBackwardScattersRepeatedRows) {
  const int V = 6, C = 5, N = 8;
  auto table = randn(V * C, 11), dout = randn(N * C, 12);
  std::vector<int32_t> tok = {1, 3, 1, 0, 5, 3, 1, 2};
  std::vector<float> out(N * C), dtable(V * C, 0.f);
  be->embedding_forward(out.data(), tok.data(), table.data(), N, C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) EXPECT_EQ(out[n * C + c], table[tok[n] * C + c]);
  be->embedding_backward(dtable.data(), dout.data(), tok.data(), N, C);
  std::vector<double> want(V * C, 0.0);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) want[tok[n] * C + c] += dout[n * C + c];
  expect_close(dtable, want, 1e-6, "embedding backward");
}

TEST_F(Ops, RopeForwardIsRotationAndBackwardIsItsTranspose) {
  const int B = 2, T = 5, nh = 3, hd = 8, half = hd / 2;
  auto x = randn(B * T * nh * hd, 13), W = randn(B * T * nh * hd, 14);
  std::vector<float> cos(T * half), sin(T * half);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < half; ++j) {
      double a = (t + 3) * std::pow(10000.0, -2.0 * j / hd);
      cos[t * half + j] = float(std::cos(a));
      sin[t * half + j] = float(std::sin(a));
    }
  auto fwd = [&](const std::vector<double>& xx) {  // HF rotate_half convention
    std::vector<double> o(xx.size());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < nh; ++h) {
          size_t r = ((size_t(b) * T + t) * nh + h) * hd;
          for (int j = 0; j < hd; ++j) {
            double rot = j < half ? -xx[r + j + half] : xx[r + j - half];
            int jj = j % half;
            o[r + j] = xx[r + j] * cos[t * half + jj] + rot * sin[t * half + jj];
          }
        }
    return o;
  };
  std::vector<float> y = x;
  be->rope_forward(y.data(), cos.data(), sin.data(), B, T, nh, hd);
  expect_close(y, fwd(to_d(x)), 1e-6, "rope forward");
  std::vector<float> dx = W;
  be->rope_backward(dx.data(), cos.data(), sin.data(), B, T, nh, hd);
  auto loss = [&](const std::vector<double>& xx) {
    auto o = fwd(xx);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * W[i];
    return s;
  };
  expect_close(dx, finite_diff(loss, to_d(x)), 1e-5, "rope backward");
}

// Clipping folded into the update (AdamWStep::grad_scale) gives the bits of
// a separate scale pass over the gradients followed by the unscaled update.
TEST_F(Ops, AdamWGradScaleEqualsScalingTheGradientsFirst) {
  const size_t n = 1000;
  auto p = randn(n, 21), g = randn(n, 22);
  std::vector<float> m = randn(n, 23), v = randn(n, 24);
  for (float& x : v) x = std::fabs(x);
  auto p2 = p, g2 = g, m2 = m, v2 = v;
  AdamWStep h;
  h.lr = 3e-3f, h.beta2 = 0.95f, h.weight_decay = 0.1f, h.step = 5;
  const float coef = 0.2987f;
  be->scale(g2.data(), n, coef);
  be->adamw_update(p2.data(), p2.data(), g2.data(), m2.data(), v2.data(), n, h);
  h.grad_scale = coef;
  be->adamw_update(p.data(), p.data(), g.data(), m.data(), v.data(), n, h);
  EXPECT_TRUE(p == p2 && m == m2 && v == v2) << "folded scale differs from the scale pass";
  EXPECT_FALSE(g == g2) << "the folded update must leave the gradients as they were";
}

TEST_F(Ops, AdamWMatchesTheFormula) {
  const size_t n = 10;
  auto p = randn(n, 15), g = randn(n, 16);
  std::vector<float> m(n, 0.f), v(n, 0.f);
  std::vector<double> pd = to_d(p), md(n, 0), vd(n, 0);
  const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  for (int step = 1; step <= 3; ++step) {
    AdamWStep h;
    h.lr = float(lr);
    h.beta1 = float(b1);
    h.beta2 = float(b2);
    h.eps = float(eps);
    h.weight_decay = float(wd);
    h.step = step;
    be->adamw_update(p.data(), p.data(), g.data(), m.data(), v.data(), n, h);
    for (size_t i = 0; i < n; ++i) {
      pd[i] *= 1 - lr * wd;
      md[i] = b1 * md[i] + (1 - b1) * g[i];
      vd[i] = b2 * vd[i] + (1 - b2) * double(g[i]) * g[i];
      double mh = md[i] / (1 - std::pow(b1, step)), vh = vd[i] / (1 - std::pow(b2, step));
      pd[i] -= lr * mh / (std::sqrt(vh) + eps);
    }
  }
  expect_close(p, pd, 1e-5, "adamw");
}

}  // namespace
}  // namespace rt
