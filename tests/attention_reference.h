// Naive float64 attention (full softmax, explicit mask) for tests: the
// independent computation the blocked kernel and ring attention are checked
// against. Shapes as in rt::AttentionParams.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "model/backend.h"

namespace rt::testing {

using std::vector;
using rt::AttentionParams;

struct Ref {
  const AttentionParams& p;
  size_t qi(int b, int i, int h) const {
    return ((size_t(b) * p.Tq + size_t(i)) * p.H + size_t(h)) * p.hd;
  }
  size_t ki(int b, int j, int g) const {
    return ((size_t(b) * p.Tk + size_t(j)) * p.G + size_t(g)) * p.hd;
  }
  size_t li(int b, int h, int i) const { return (size_t(b) * p.H + size_t(h)) * p.Tq + size_t(i); }
  bool visible(int i, int j) const {
    return !p.causal || p.k_offset + j <= p.q_offset + i;
  }
  double score(const vector<double>& q, const vector<double>& k, int b, int h, int i,
               int j) const {
    const int g = h / (p.H / p.G);
    double s = 0;
    for (int e = 0; e < p.hd; ++e) s += q[qi(b, i, h) + size_t(e)] * k[ki(b, j, g) + size_t(e)];
    s *= double(p.scale);
    if (p.alibi_slopes)
      s += -double(p.alibi_slopes[h]) * double((p.q_offset + i) - (p.k_offset + j));
    return s;
  }

  void forward(const vector<double>& q, const vector<double>& k, const vector<double>& v,
               vector<double>& out, vector<double>& lse) const {
    out.assign(size_t(p.B) * p.Tq * p.H * p.hd, 0.0);
    lse.assign(size_t(p.B) * p.H * p.Tq, -std::numeric_limits<double>::infinity());
    vector<double> s(size_t(p.Tk));
    for (int b = 0; b < p.B; ++b)
      for (int h = 0; h < p.H; ++h)
        for (int i = 0; i < p.Tq; ++i) {
          const int g = h / (p.H / p.G);
          double m = -std::numeric_limits<double>::infinity();
          for (int j = 0; j < p.Tk; ++j) {
            s[size_t(j)] = visible(i, j) ? score(q, k, b, h, i, j) : -std::numeric_limits<double>::infinity();
            m = std::max(m, s[size_t(j)]);
          }
          if (m == -std::numeric_limits<double>::infinity()) continue;
          double sum = 0;
          for (int j = 0; j < p.Tk; ++j) sum += std::exp(s[size_t(j)] - m);
          for (int j = 0; j < p.Tk; ++j) {
            const double w = std::exp(s[size_t(j)] - m) / sum;
            for (int e = 0; e < p.hd; ++e)
              out[qi(b, i, h) + size_t(e)] += w * v[ki(b, j, g) + size_t(e)];
          }
          lse[li(b, h, i)] = m + std::log(sum);
        }
  }

  // Analytic backward of this key block given the final out/lse.
  void backward(const vector<double>& dout, const vector<double>& q, const vector<double>& k,
                const vector<double>& v, const vector<double>& out, const vector<double>& lse,
                vector<double>& dq, vector<double>& dk, vector<double>& dv) const {
    dq.assign(q.size(), 0.0);
    dk.assign(k.size(), 0.0);
    dv.assign(v.size(), 0.0);
    for (int b = 0; b < p.B; ++b)
      for (int h = 0; h < p.H; ++h)
        for (int i = 0; i < p.Tq; ++i) {
          const int g = h / (p.H / p.G);
          const double L = lse[li(b, h, i)];
          if (L == -std::numeric_limits<double>::infinity()) continue;
          double D = 0;
          for (int e = 0; e < p.hd; ++e) D += dout[qi(b, i, h) + size_t(e)] * out[qi(b, i, h) + size_t(e)];
          for (int j = 0; j < p.Tk; ++j) {
            if (!visible(i, j)) continue;
            const double P = std::exp(score(q, k, b, h, i, j) - L);
            double dP = 0;
            for (int e = 0; e < p.hd; ++e) {
              dv[ki(b, j, g) + size_t(e)] += P * dout[qi(b, i, h) + size_t(e)];
              dP += dout[qi(b, i, h) + size_t(e)] * v[ki(b, j, g) + size_t(e)];
            }
            const double dS = P * (dP - D) * double(p.scale);
            for (int e = 0; e < p.hd; ++e) {
              dq[qi(b, i, h) + size_t(e)] += dS * k[ki(b, j, g) + size_t(e)];
              dk[ki(b, j, g) + size_t(e)] += dS * q[qi(b, i, h) + size_t(e)];
            }
          }
        }
  }
};

}  // namespace rt::testing
