// rope_scaling family (model/rope.cpp, SPEC §4.2).
//
// 1. Reference parity: hundreds of configs (every rope_type over head_dim,
//    factor, original length, short and long sequences, plus yarn mscale /
//    mscale_all_dim / attention_factor / beta variants, llama3 low/high freq
//    factors, longrope factor lists) are checked against an independent
//    float64 Python implementation of the published formulas
//    (tests/reference/rope_scaling_reference.py): inv_freq to rel 1e-12,
//    attention_factor to 1e-12. Skipped when /usr/bin/python3 with numpy is
//    missing.
// 2. C++-only properties: linear = default / s exactly, ntk(s=1) = default,
//    dynamic = default at n <= L and = ntk with the derived factor at n > L,
//    yarn/llama3 keep the highest frequencies and divide the lowest by s,
//    longrope switches factor lists at n > L, tables carry the attention
//    factor, and 1M-token positions keep precision with scaling.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "model/rope.h"

namespace {

rt::ModelConfig model(int head_dim, double theta = 10000.0) {
  rt::ModelConfig m;
  m.head_dim = head_dim;
  m.rope_theta = theta;
  return m;
}

rt::ModelConfig scaled(int head_dim, const std::string& type, double factor, int64_t L,
                       double theta = 10000.0) {
  rt::ModelConfig m = model(head_dim, theta);
  m.rope_scaling = rt::RopeScalingConfig{};
  m.rope_scaling->rope_type = type;
  m.rope_scaling->factor = factor;
  m.rope_scaling->original_max_position_embeddings = L;
  return m;
}

// Deterministic longrope factor lists: short near 1, long rising to ~factor.
void set_longrope_factors(rt::ModelConfig& m) {
  const int half = m.head_dim / 2;
  auto& r = *m.rope_scaling;
  r.short_factor.clear();
  r.long_factor.clear();
  for (int i = 0; i < half; ++i) {
    const double t = double(i) / double(half - 1);
    r.short_factor.push_back(1.0 + 0.05 * t + 0.01 * double(i % 3));
    r.long_factor.push_back(1.0 + (std::max(r.factor, 1.0) - 1.0) * t * t + 0.125 * double(i % 2));
  }
}

// ---------------------------------------------------------------------------
// Reference parity

struct Case {
  std::string name;
  rt::ModelConfig m;
  int64_t seq_len;
};

std::string num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

std::string list(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + num(v[i]);
  return s + "]";
}

std::string to_json(int id, const Case& c) {
  std::ostringstream o;
  o << "{\"id\": " << id << ", \"head_dim\": " << c.m.head_dim
    << ", \"rope_theta\": " << num(c.m.rope_theta) << ", \"seq_len\": " << c.seq_len
    << ", \"rope_scaling\": ";
  if (!c.m.rope_scaling) return o.str() + "null}";
  const auto& r = *c.m.rope_scaling;
  o << "{\"rope_type\": \"" << r.rope_type << "\", \"factor\": " << num(r.factor)
    << ", \"original_max_position_embeddings\": " << *r.original_max_position_embeddings
    << ", \"beta_fast\": " << num(r.beta_fast) << ", \"beta_slow\": " << num(r.beta_slow)
    << ", \"low_freq_factor\": " << num(r.low_freq_factor)
    << ", \"high_freq_factor\": " << num(r.high_freq_factor);
  if (r.mscale) o << ", \"mscale\": " << num(*r.mscale);
  if (r.mscale_all_dim) o << ", \"mscale_all_dim\": " << num(*r.mscale_all_dim);
  if (r.attention_factor) o << ", \"attention_factor\": " << num(*r.attention_factor);
  if (!r.short_factor.empty()) o << ", \"short_factor\": " << list(r.short_factor);
  if (!r.long_factor.empty()) o << ", \"long_factor\": " << list(r.long_factor);
  return o.str() + "}}";
}

std::vector<Case> reference_cases() {
  std::vector<Case> cases;
  const auto add = [&](const std::string& what, rt::ModelConfig m, int64_t n) {
    std::string name = what + " D=" + std::to_string(m.head_dim) + " theta=" + num(m.rope_theta);
    if (m.rope_scaling)
      name += " s=" + num(m.rope_scaling->factor) +
              " L=" + std::to_string(*m.rope_scaling->original_max_position_embeddings);
    cases.push_back({name + " n=" + std::to_string(n), std::move(m), n});
  };
  const char* types[] = {"linear", "ntk", "dynamic", "yarn", "llama3", "longrope"};
  for (int D : {32, 64, 128})
    for (double theta : {10000.0, 500000.0}) {
      add("default", model(D, theta), 1024);
      for (double s : {2.0, 4.0, 8.0, 16.0})
        for (int64_t L : {256, 2048, 4096})
          for (int64_t n : {L / 2, L, L + 1, 3 * L}) {
            for (const char* type : types) {
              rt::ModelConfig m = scaled(D, type, s, L, theta);
              if (std::string(type) == "longrope") set_longrope_factors(m);
              add(type, m, n);
            }
            if (n != 3 * L) continue;  // variants below do not depend on n (but longrope)
            auto y = scaled(D, "yarn", s, L, theta);
            y.rope_scaling->mscale = 0.707;
            y.rope_scaling->mscale_all_dim = 0.707;
            add("yarn mscale=mscale_all_dim=0.707", y, n);
            y.rope_scaling->mscale = 1.0;
            y.rope_scaling->mscale_all_dim = 0.5;
            add("yarn mscale=1 mscale_all_dim=0.5", y, n);
            y.rope_scaling->mscale_all_dim.reset();
            y.rope_scaling->mscale = 2.0;
            add("yarn mscale=2 only (falls back to mscale(s))", y, n);
            y.rope_scaling->mscale.reset();
            y.rope_scaling->attention_factor = 1.25;
            add("yarn attention_factor=1.25", y, n);
            auto yb = scaled(D, "yarn", s, L, theta);
            yb.rope_scaling->beta_fast = 16.0;
            yb.rope_scaling->beta_slow = 2.0;
            add("yarn beta 16/2", yb, n);
            yb.rope_scaling->beta_fast = 128.0;
            yb.rope_scaling->beta_slow = 64.0;
            add("yarn beta 128/64", yb, n);
            for (auto [lo, hi] : {std::pair{1.0, 4.0}, std::pair{2.0, 8.0}, std::pair{0.5, 3.0}}) {
              auto l3 = scaled(D, "llama3", s, L, theta);
              l3.rope_scaling->low_freq_factor = lo;
              l3.rope_scaling->high_freq_factor = hi;
              add("llama3 low=" + num(lo) + " high=" + num(hi), l3, n);
            }
            for (int64_t ln : {L, n}) {
              auto lr = scaled(D, "longrope", s, L, theta);
              set_longrope_factors(lr);
              lr.rope_scaling->attention_factor = 1.5;
              add("longrope attention_factor=1.5", lr, ln);
            }
          }
      for (int64_t n : {int64_t(100), int64_t(5000)}) {
        auto lr = scaled(D, "longrope", 0.5, 2048, theta);  // factor <= 1: af = 1
        set_longrope_factors(lr);
        add("longrope factor<1", lr, n);
      }
    }
  return cases;
}

struct RefResult {
  double attention_factor = 0;
  std::vector<double> inv_freq;
};

// Value after `"key": ` in a one-line JSON object.
const char* after_key(const std::string& line, const std::string& key) {
  const size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return nullptr;
  return line.c_str() + p + key.size() + 3;
}

std::map<int, RefResult> parse_reference(const std::string& out) {
  std::map<int, RefResult> res;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    const char* id = after_key(line, "id");
    const char* af = after_key(line, "attention_factor");
    const char* inv = after_key(line, "inv_freq");
    if (!id || !af || !inv) continue;
    RefResult r;
    r.attention_factor = std::strtod(af, nullptr);
    const char* p = std::strchr(inv, '[') + 1;
    while (*p && *p != ']') {
      char* end = nullptr;
      r.inv_freq.push_back(std::strtod(p, &end));
      if (end == p) break;
      p = end;
      while (*p == ',' || *p == ' ') ++p;
    }
    res[int(std::strtol(id, nullptr, 10))] = std::move(r);
  }
  return res;
}

TEST(RopeScaling, MatchesFloat64Reference) {
  if (access("/usr/bin/python3", X_OK) != 0)
    GTEST_SKIP() << "skipped: /usr/bin/python3 not found (needed for the rope_scaling reference)";
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "skipped: /usr/bin/python3 has no numpy (apt-get install python3-numpy)";

  const std::vector<Case> cases = reference_cases();
  const std::string input = std::string(RT_BINARY_DIR) + "/rope_scaling_cases.json";
  {
    std::ofstream f(input);
    f << "[\n";
    for (size_t i = 0; i < cases.size(); ++i)
      f << (i ? ",\n" : "") << to_json(int(i), cases[i]);
    f << "\n]\n";
    ASSERT_TRUE(f.good()) << "cannot write " << input;
  }
  const std::string cmd = "/usr/bin/python3 '" + std::string(RT_SOURCE_DIR) +
                          "/tests/reference/rope_scaling_reference.py' '" + input + "'";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << cmd;
  std::string out;
  char buf[65536];
  for (size_t k; (k = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, k);
  ASSERT_EQ(pclose(pipe), 0) << cmd << "\n" << out.substr(0, 2000);
  const std::map<int, RefResult> ref = parse_reference(out);
  ASSERT_EQ(ref.size(), cases.size()) << "reference returned " << ref.size() << " of "
                                      << cases.size() << " cases";

  int failures = 0;
  for (size_t i = 0; i < cases.size() && failures < 20; ++i) {
    const Case& c = cases[i];
    const RefResult& r = ref.at(int(i));
    const std::vector<double> inv = rt::rope_inv_freq(c.m, c.seq_len);
    ASSERT_EQ(inv.size(), r.inv_freq.size()) << c.name;
    EXPECT_NEAR(rt::rope_attention_factor(c.m), r.attention_factor, 1e-12) << c.name;
    for (size_t j = 0; j < inv.size(); ++j) {
      const double want = r.inv_freq[j];
      if (std::abs(inv[j] - want) > 1e-12 * std::abs(want)) {
        ADD_FAILURE() << c.name << " dim " << j << ": got " << num(inv[j]) << " want "
                      << num(want);
        ++failures;
        break;
      }
    }
  }
  EXPECT_GT(cases.size(), size_t(1000));
}

// ---------------------------------------------------------------------------
// C++-only properties

TEST(RopeScaling, LinearIsDefaultDividedByFactorExactly) {
  for (int D : {32, 128})
    for (double s : {2.0, 3.0, 16.0}) {
      const auto base = rt::rope_inv_freq(model(D), 100);
      const auto inv = rt::rope_inv_freq(scaled(D, "linear", s, 2048), 100);
      for (size_t j = 0; j < base.size(); ++j) EXPECT_EQ(inv[j], base[j] / s) << D << " " << s;
      EXPECT_EQ(rt::rope_attention_factor(scaled(D, "linear", s, 2048)), 1.0);
    }
}

TEST(RopeScaling, NtkWithFactorOneIsDefault) {
  for (int D : {32, 64, 128}) {
    EXPECT_EQ(rt::rope_inv_freq(scaled(D, "ntk", 1.0, 2048), 100), rt::rope_inv_freq(model(D), 100));
    // and s > 1 lowers every frequency but the first
    const auto base = rt::rope_inv_freq(model(D), 100);
    const auto inv = rt::rope_inv_freq(scaled(D, "ntk", 4.0, 2048), 100);
    EXPECT_EQ(inv[0], 1.0);
    for (size_t j = 1; j < inv.size(); ++j) EXPECT_LT(inv[j], base[j]);
    // the lowest frequency is exactly interpolated by s: b'^((D-2)/D) = b^((D-2)/D) * s
    EXPECT_NEAR(inv.back(), base.back() / 4.0, 1e-12 * base.back());
  }
}

TEST(RopeScaling, DynamicIsDefaultUpToLThenNtkWithDerivedFactor) {
  const int64_t L = 2048;
  for (int D : {32, 128})
    for (double s : {2.0, 8.0}) {
      const auto m = scaled(D, "dynamic", s, L);
      const auto base = rt::rope_inv_freq(model(D), 1);
      for (int64_t n : {int64_t(1), L / 2, L}) EXPECT_EQ(rt::rope_inv_freq(m, n), base) << n;
      for (int64_t n : {L + 1, 3 * L, int64_t(1) << 20}) {
        const double f = s * double(n) / double(L) - (s - 1.0);
        EXPECT_EQ(rt::rope_inv_freq(m, n), rt::rope_inv_freq(scaled(D, "ntk", f, L), 1)) << n;
      }
      // grows with n: longer sequences, lower frequencies
      EXPECT_LT(rt::rope_inv_freq(m, 4 * L).back(), rt::rope_inv_freq(m, 2 * L).back());
    }
}

// Scaled / default ratio: 1 at the highest frequencies, 1/s at the lowest,
// non-increasing in between and never outside [1/s, 1].
void expect_interpolation_profile(const rt::ModelConfig& m, double s) {
  const auto base = rt::rope_inv_freq(model(m.head_dim, m.rope_theta), 1);
  const auto inv = rt::rope_inv_freq(m, 1);
  EXPECT_EQ(inv.front(), base.front());
  EXPECT_EQ(inv.back(), base.back() / s);
  double prev = 1.0;
  for (size_t j = 0; j < inv.size(); ++j) {
    const double ratio = inv[j] / base[j];
    EXPECT_LE(ratio, prev + 1e-15) << j;
    EXPECT_GE(ratio, 1.0 / s - 1e-15) << j;
    EXPECT_LE(ratio, 1.0 + 1e-15) << j;
    prev = ratio;
  }
}

TEST(RopeScaling, YarnKeepsHighFrequenciesAndInterpolatesLow) {
  for (int D : {64, 128})
    for (double s : {4.0, 16.0}) {
      expect_interpolation_profile(scaled(D, "yarn", s, 4096), s);
      expect_interpolation_profile(scaled(D, "yarn", s, 2048, 500000.0), s);
    }
  // default attention factor: 0.1 ln s + 1
  EXPECT_DOUBLE_EQ(rt::rope_attention_factor(scaled(64, "yarn", 4.0, 2048)),
                   0.1 * std::log(4.0) + 1.0);
  EXPECT_EQ(rt::rope_attention_factor(scaled(64, "yarn", 1.0, 2048)), 1.0);
  auto m = scaled(64, "yarn", 8.0, 2048);
  m.rope_scaling->mscale = 1.0;
  m.rope_scaling->mscale_all_dim = 1.0;
  EXPECT_EQ(rt::rope_attention_factor(m), 1.0);  // DeepSeek-style: equal mscales cancel
  m.rope_scaling->attention_factor = 0.75;
  EXPECT_EQ(rt::rope_attention_factor(m), 0.75);
}

TEST(RopeScaling, Llama3KeepsHighFrequenciesAndInterpolatesLow) {
  for (int D : {64, 128})
    for (double s : {8.0, 32.0}) {
      auto m = scaled(D, "llama3", s, 8192, 500000.0);
      expect_interpolation_profile(m, s);
      m.rope_scaling->low_freq_factor = 2.0;
      m.rope_scaling->high_freq_factor = 8.0;
      expect_interpolation_profile(m, s);
      EXPECT_EQ(rt::rope_attention_factor(m), 1.0);
    }
}

TEST(RopeScaling, LongropeSwitchesFactorListsAfterOriginalLength) {
  const int64_t L = 4096;
  auto m = scaled(64, "longrope", 8.0, L);
  set_longrope_factors(m);
  const auto base = rt::rope_inv_freq(model(64), 1);
  const auto short_inv = rt::rope_inv_freq(m, L);
  const auto long_inv = rt::rope_inv_freq(m, L + 1);
  for (size_t j = 0; j < base.size(); ++j) {
    EXPECT_NEAR(short_inv[j], base[j] / m.rope_scaling->short_factor[j], 1e-15 * base[j]);
    EXPECT_NEAR(long_inv[j], base[j] / m.rope_scaling->long_factor[j], 1e-15 * base[j]);
  }
  EXPECT_DOUBLE_EQ(rt::rope_attention_factor(m), std::sqrt(1.0 + std::log(8.0) / std::log(4096.0)));
}

// make_rope_tables multiplies cos and sin by the attention factor.
TEST(RopeScaling, TablesCarryAttentionFactor) {
  auto m = scaled(64, "yarn", 16.0, 2048);
  const double af = rt::rope_attention_factor(m);
  ASSERT_GT(af, 1.2);
  const auto t = rt::make_rope_tables(m, 8192, 0, 300);
  for (size_t k = 0; k < t.cos.size(); ++k) {
    const double r2 = double(t.cos[k]) * t.cos[k] + double(t.sin[k]) * t.sin[k];
    EXPECT_NEAR(r2, af * af, 1e-6) << k;
  }
  EXPECT_FLOAT_EQ(t.cos[0], float(af));
}

// At 1M-token positions the scaled tables still agree with cos/sin evaluated
// in double to fp32 rounding (angles formed in double from exact positions).
TEST(RopeScaling, PrecisionAtOneMillionWithScaling) {
  const int D = 128;
  const int64_t begin = 1000000 - 3, n = 8, global = 1 << 21;
  std::vector<rt::ModelConfig> ms = {scaled(D, "linear", 16.0, 4096, 500000.0),
                                     scaled(D, "dynamic", 16.0, 4096, 500000.0),
                                     scaled(D, "yarn", 16.0, 4096, 500000.0),
                                     scaled(D, "llama3", 8.0, 8192, 500000.0),
                                     scaled(D, "longrope", 16.0, 4096, 500000.0)};
  set_longrope_factors(ms.back());
  for (const auto& m : ms) {
    const auto inv = rt::rope_inv_freq(m, global);
    const double af = rt::rope_attention_factor(m);
    const auto t = rt::make_rope_tables(m, global, begin, n);
    double err = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < D / 2; ++j) {
        const double a = double(begin + i) * inv[size_t(j)];
        const size_t k = size_t(i * (D / 2) + j);
        err = std::max(err, std::abs(double(t.cos[k]) - std::cos(a) * af));
        err = std::max(err, std::abs(double(t.sin[k]) - std::sin(a) * af));
      }
    EXPECT_LT(err, 1e-6 * af) << m.rope_scaling->rope_type;
  }
}

}  // namespace
