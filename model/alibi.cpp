#include "model/alibi.h"

#include <cmath>

namespace rt {

static std::vector<double> power_of_two_slopes(int n) {
  std::vector<double> s(n);
  double start = std::pow(2.0, -8.0 / n);
  for (int k = 0; k < n; ++k) s[k] = std::pow(start, k + 1);
  return s;
}

std::vector<float> alibi_slopes(int n_heads) {
  int c = 1;
  while (c * 2 <= n_heads) c *= 2;
  std::vector<double> s = power_of_two_slopes(c);
  if (c < n_heads) {
    std::vector<double> extra = power_of_two_slopes(2 * c);
    for (int k = 0; k < n_heads - c; ++k) s.push_back(extra[2 * k]);
  }
  return std::vector<float>(s.begin(), s.end());
}

}  // namespace rt
