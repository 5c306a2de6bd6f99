// fp32 numbers pinned (issue 12 "Must hold"): the same config and seed give
// the same losses and final weights as the commit that wrote
// tests/golden/fp32_training.txt, bit for bit.
//
// The file was written by the code *before* the typed op layer and the
// mixed-precision work (commit 537383c), with
//   OMP_NUM_THREADS=2 RT_GOLDEN_WRITE=$PWD/tests/golden/fp32_training.txt
//   build/tests/test_trainer_golden_fp32       (one command line)
// and is never regenerated to make a change pass: a difference means the fp32
// arithmetic changed. The comparison is bitwise when the BLAS kernel set is the
// one that wrote the file (OpenBLAS picks kernels by CPU, and the build uses
// -march=native); on another CPU the summation order differs, so it falls back to a relative tolerance of
// 1e-5 on losses and per-tensor sums and says so.
#include <gtest/gtest.h>

#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/rng.h"
#include "model/llama.h"
#include "model/memory/rmt.h"
#include "trainer/train/optimizer.h"
#include "tiny_model.h"

namespace rt {
namespace {

const char* kGolden = RT_SOURCE_DIR "/tests/golden/fp32_training.txt";

struct Case {
  std::string name;
  ModelConfig model;
  OptimizerConfig opt;
  Checkpointing checkpointing = Checkpointing::kOff;
  int B = 2;
  int T = 16;
};

ModelConfig tiny(const std::string& position, int G) {
  return testing::tiny_llama(64, position, G);
}

std::vector<Case> cases() {
  std::vector<Case> c;
  {
    Case k{"rope", tiny("rope", 4), {}};
    k.opt.lr = 1e-2;
    c.push_back(k);
  }
  {
    Case k{"alibi_tied_sgd", tiny("alibi", 4), {}};
    k.model.tie_word_embeddings = true;
    k.opt.type = "sgd";
    k.opt.lr = 0.5;
    c.push_back(k);
  }
  {
    Case k{"gqa_checkpointing", tiny("rope", 2), {}};
    k.opt.lr = 1e-2;
    k.checkpointing = Checkpointing::kFull;
    c.push_back(k);
  }
  {
    Case k{"rmt", tiny("rope", 2), {}};
    k.model.memory = MemoryConfig::rmt(4, 16, -1);
    k.opt.lr = 1e-2;
    k.B = 1;
    k.T = 48;
    c.push_back(k);
  }
  return c;
}

uint64_t fnv(const void* p, size_t bytes, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// "<case> loss <step> <hex double>", "<case> tensor <name> <fnv64> <sum|x| hex>"
// Steps whose gradients were clipped (coefficient < 1), over all cases.
int clipped = 0;

std::vector<std::string> run_case(const Case& c) {
  auto be = make_cpu_backend();
  LlamaModel model(c.model, *be);
  model.init_weights(7);
  model.plan_activations(c.B, c.T, c.checkpointing);
  Optimizer opt(c.opt, model);
  std::unique_ptr<RmtRunner> rmt;
  if (c.model.memory) rmt = std::make_unique<RmtRunner>(model);
  std::vector<std::string> lines;
  char buf[256];
  Rng rng(11);
  const size_t n = size_t(c.B) * c.T;
  for (int step = 0; step < 4; ++step) {
    std::vector<int32_t> in(n), tg(n);
    for (size_t i = 0; i < n; ++i) {
      in[i] = int32_t(rng.below(64));
      tg[i] = i % 7 == 3 ? -1 : int32_t(rng.below(64));
    }
    model.grads().zero();
    int64_t valid = 0;
    const float scale = 1.f / float(n);
    const double loss =
        rmt ? rmt->forward_backward(in.data(), tg.data(), c.B, c.T, scale, &valid)
            : model.forward_backward(in.data(), tg.data(), c.B, c.T, RowPositions::whole(c.T),
                                     scale, &valid);
    const double norm = grad_global_norm(model);
    // The trainer's clipping: the coefficient folded into the AdamW update
    // (the file was written by a separate scale pass: the same bits).
    const float clip = clip_coefficient(norm, 1.0);
    clipped += clip != 1.f;
    opt.step(float(c.opt.lr), clip);
    std::snprintf(buf, sizeof buf, "%s loss %d %a %a", c.name.c_str(), step, loss, norm);
    lines.push_back(buf);
  }
  for (const TensorSpec& s : model.params().specs()) {
    const float* w = model.params().f32(s.name);
    double sum = 0;
    for (size_t i = 0; i < s.numel; ++i) sum += std::fabs(double(w[i]));
    std::snprintf(buf, sizeof buf, "%s tensor %s %016llx %a", c.name.c_str(), s.name.c_str(),
                  (unsigned long long)fnv(w, s.numel * sizeof(float)), sum);
    lines.push_back(buf);
  }
  return lines;
}

std::string corename() {
  const char* n = openblas_get_corename();
  std::string s = n ? n : "unknown";
#ifdef __AVX512F__
  s += " avx512";
#endif
#ifdef __FMA__
  s += " fma";
#endif
  return s;
}

TEST(GoldenFp32, LossesAndWeightsUnchanged) {
  omp_set_num_threads(2);  // reductions split by thread: the count is part of the result
  std::vector<std::string> got;
  for (const Case& c : cases())
    for (std::string& l : run_case(c)) got.push_back(std::move(l));
  EXPECT_GT(clipped, 0) << "no step clipped: the folded clipping would go unchecked";
  std::printf("%d steps clipped\n", clipped);

  if (const char* out = std::getenv("RT_GOLDEN_WRITE")) {
    std::ofstream f(out);
    f << "blas " << corename() << "\n";
    for (const std::string& l : got) f << l << "\n";
    GTEST_SKIP() << "wrote " << out;
  }
  std::ifstream f(kGolden);
  ASSERT_TRUE(f) << "missing " << kGolden;
  std::string header;
  std::getline(f, header);
  const bool bitwise = header == "blas " + corename();
  if (!bitwise)
    std::printf("golden file written with '%s', this machine has '%s': comparing to 1e-5\n",
                header.c_str(), corename().c_str());
  std::vector<std::string> want;
  for (std::string l; std::getline(f, l);) want.push_back(l);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (bitwise) {
      EXPECT_EQ(want[i], got[i]);
      continue;
    }
    // tolerance mode: compare the hex doubles (loss, norm or sum|x|)
    std::istringstream a(want[i]), b(got[i]);
    std::string ta, tb;
    std::vector<std::string> wa, wb;
    while (a >> ta) wa.push_back(ta);
    while (b >> tb) wb.push_back(tb);
    ASSERT_EQ(wa.size(), wb.size()) << want[i];
    for (size_t j = 0; j < wa.size(); ++j) {
      if (wa[j].rfind("0x", 0) != 0 || wa[j].find('p') == std::string::npos) continue;
      const double x = std::strtod(wa[j].c_str(), nullptr), y = std::strtod(wb[j].c_str(), nullptr);
      EXPECT_LE(std::fabs(x - y), 1e-5 * std::max(1.0, std::fabs(x))) << want[i] << " vs " << got[i];
    }
  }
}

}  // namespace
}  // namespace rt
