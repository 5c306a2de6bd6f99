// Every op x dtype x backend against the fp32 CPU result, in the spirit of
// ggml's test-backend-ops.
//
// For each case (an op with its shapes and buffer roles), each dtype and each
// registered backend:
//   - the same random inputs are drawn; buffers whose role is "typed"
//     (activations, weights) take the dtype under test, the others stay fp32
//     (statistics, gradients, optimizer state) as in the model; for bf16 the
//     typed inputs are rounded to bf16 first, so the reference sees exactly
//     the values the backend sees and only the op's own error is measured;
//   - the reference is the fp32 CPU backend on those values;
//   - the backend under test gets its buffers through its own allocator, each
//     followed by a guard region of sentinel bytes (an out-of-bounds write
//     fails the case); outputs that the op overwrites are poisoned with NaN
//     first (an element the op forgets stays NaN and fails the case);
//   - outputs are compared by normalized mean squared error against a per-op,
//     per-dtype bound, after checking that NaN and Inf sit at the same places;
//   - a combination the backend does not support (Backend::supports) is
//     printed as "not supported: op X dtype Y backend Z" and counted; it is
//     never passed silently.
// Without a GPU this runs the CPU backend in fp32 and bf16 (storage
// emulation), and reports fp8 as not supported. A backend joins by being
// added to backends_under_test().
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/rng.h"
#include "common/errors.h"
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/device_info.h"
#endif

namespace rt {
namespace {

struct BackendFactory {
  std::string name;
  std::function<std::unique_ptr<Backend>()> make;
};

// The backends compared with the fp32 CPU reference. The CUDA backend
// registers here when it exists: {"cuda", [] { return make_cuda_backend(); }}
// (and only when a device is present).
std::vector<BackendFactory> backends_under_test() {
  std::vector<BackendFactory> v = {{"cpu", [] { return make_cpu_backend(); }},
                                   {"cuda-emu", [] { return make_cuda_emu_backend(); }}};
#ifdef RINGTRAIN_HAVE_CUDA
  if (cuda::device_count() > 0)
    v.push_back({"cuda", [] { return make_cuda_backend(0); }});
  else
    std::printf("skipped: no CUDA device (backend cuda)\n");
#else
  std::printf("skipped: no CUDA device (backend cuda: this build has no CUDA)\n");
#endif
  return v;
}

const DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF8E4M3};

enum class Role {
  kTyped,  // activation or weight: the dtype under test
  kF32,    // statistics, gradients, optimizer state: always fp32
  kI32,    // token ids
};
enum class Init {
  kIn,     // input (random unless the case's fill sets it)
  kOut,    // overwritten by the op: poisoned with NaN
  kInOut,  // read and written (+= or in place): random initial values
};

struct BufSpec {
  std::string name;
  size_t n;
  Role role;
  Init init;
};

// Host values of every buffer (fp32 view; ints apart).
struct Host {
  std::map<std::string, std::vector<float>> f;
  std::map<std::string, std::vector<int32_t>> i;
};

// Device buffers of one run: typed views.
struct Bufs {
  std::map<std::string, Buf> b;
  Buf operator[](const std::string& n) const { return b.at(n); }
  float* f(const std::string& n) const { return b.at(n).f32(); }
  const int32_t* ids(const std::string& n) const { return b.at(n).as<int32_t>(); }
};

struct Case {
  Op op;
  std::string label;
  std::vector<BufSpec> bufs;
  std::function<void(Backend&, const Bufs&, std::vector<double>&)> run;
  std::function<void(Host&, DType, Rng&)> fill = nullptr;  // optional: consistent or special inputs
  double nmse_f32 = 1e-10;   // another fp32 backend: summation order may differ
  double nmse_bf16 = 1e-4;   // bf16 storage: one rounding per stored output
};

AttentionParams attn_params(int Tq, int Tk, int64_t q_off, int64_t k_off, int hd = 16) {
  AttentionParams p;
  p.B = 2;
  p.Tq = Tq;
  p.Tk = Tk;
  p.H = 4;
  p.G = 2;
  p.hd = hd;
  p.q_offset = q_off;
  p.k_offset = k_off;
  p.causal = true;
  p.scale = 0.25f;
  return p;
}

std::vector<Case> all_cases() {
  std::vector<Case> c;
  const int N = 37, C = 48, OC = 40, V = 70;
  const size_t n = 1000;
  using R = Role;
  using I = Init;

  c.push_back({Op::kCast, "cast fp32->dtype", {{"dst", n, R::kTyped, I::kOut}, {"src", n, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.cast(b["dst"], b["src"], n); }});
  c.back().fill = [](Host& h, DType, Rng&) {
    auto& s = h.f["src"];
    s[3] = std::numeric_limits<float>::infinity();
    s[4] = -std::numeric_limits<float>::infinity();
    s[5] = std::numeric_limits<float>::quiet_NaN();
  };
  c.back().nmse_bf16 = 1e-5;
  c.push_back({Op::kCast, "cast dtype->fp32", {{"dst", n, R::kF32, I::kOut}, {"src", n, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.cast(b["dst"], b["src"], n); }});
  c.back().nmse_bf16 = 0;
  c.push_back({Op::kZero, "zero", {{"x", n, R::kTyped, I::kOut}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.zero(b["x"], n); }});
  c.push_back({Op::kCopy, "copy", {{"dst", n, R::kTyped, I::kOut}, {"src", n, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.copy(b["dst"], b["src"], n); }});
  c.back().nmse_bf16 = 0;

  c.push_back({Op::kEmbeddingForward, "embedding_forward",
               {{"out", size_t(N) * C, R::kTyped, I::kOut}, {"table", size_t(V) * C, R::kTyped, I::kIn},
                {"tok", size_t(N), R::kI32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.embedding_forward(b["out"], b.ids("tok"), b["table"], N, C);
               }});
  c.back().nmse_bf16 = 0;
  c.push_back({Op::kEmbeddingBackward, "embedding_backward (repeated rows)",
               {{"dtable", size_t(V) * C, R::kF32, I::kInOut}, {"dout", size_t(N) * C, R::kTyped, I::kIn},
                {"tok", size_t(N), R::kI32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.embedding_backward(b["dtable"], b["dout"], b.ids("tok"), N, C);
               }});
  c.back().fill = [](Host& h, DType, Rng&) { h.i["tok"][1] = h.i["tok"][0]; };

  c.push_back({Op::kRmsnormForward, "rmsnorm_forward",
               {{"out", size_t(N) * C, R::kTyped, I::kOut}, {"rstd", size_t(N), R::kF32, I::kOut},
                {"inp", size_t(N) * C, R::kTyped, I::kIn}, {"w", size_t(C), R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.rmsnorm_forward(b["out"], b.f("rstd"), b["inp"], b["w"], N, C, 1e-5f);
               }});
  c.back().nmse_f32 = 1e-12;
  c.push_back({Op::kRmsnormBackward, "rmsnorm_backward",
               {{"dinp", size_t(N) * C, R::kF32, I::kInOut}, {"dw", size_t(C), R::kF32, I::kInOut},
                {"dout", size_t(N) * C, R::kF32, I::kIn}, {"inp", size_t(N) * C, R::kTyped, I::kIn},
                {"w", size_t(C), R::kTyped, I::kIn}, {"rstd", size_t(N), R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.rmsnorm_backward(b["dinp"], b["dw"], b["dout"], b["inp"], b["w"], b.f("rstd"), N, C);
               }});
  c.back().fill = [](Host& h, DType, Rng& r) {
    for (float& x : h.f["rstd"]) x = float(0.5 + r.uniform());
  };

  c.push_back({Op::kMatmulForward, "matmul_forward",
               {{"out", size_t(N) * OC, R::kTyped, I::kOut}, {"inp", size_t(N) * C, R::kTyped, I::kIn},
                {"w", size_t(OC) * C, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.matmul_forward(b["out"], b["inp"], b["w"], N, C, OC, false);
               }});
  c.push_back({Op::kMatmulForward, "matmul_forward (+= out)",
               {{"out", size_t(N) * OC, R::kTyped, I::kInOut}, {"inp", size_t(N) * C, R::kTyped, I::kIn},
                {"w", size_t(OC) * C, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.matmul_forward(b["out"], b["inp"], b["w"], N, C, OC, true);
               }});
  c.push_back({Op::kMatmulBackward, "matmul_backward",
               {{"dinp", size_t(N) * C, R::kF32, I::kInOut}, {"dw", size_t(OC) * C, R::kF32, I::kInOut},
                {"dout", size_t(N) * OC, R::kTyped, I::kIn}, {"inp", size_t(N) * C, R::kTyped, I::kIn},
                {"w", size_t(OC) * C, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.matmul_backward(b["dinp"], b["dw"], b["dout"], b["inp"], b["w"], N, C, OC);
               }});
  c.back().nmse_bf16 = 1e-9;  // fp32 outputs from exactly representable inputs

  const int B = 2, T = 9, nh = 3, hd = 16;
  const size_t nx = size_t(B) * T * nh * hd, nt = size_t(T) * hd / 2;
  auto rope_fill = [](Host& h, DType, Rng& r) {
    for (size_t i = 0; i < h.f["cos"].size(); ++i) {
      const double a = 6.28 * r.uniform();
      h.f["cos"][i] = float(std::cos(a));
      h.f["sin"][i] = float(std::sin(a));
    }
  };
  c.push_back({Op::kRopeForward, "rope_forward",
               {{"x", nx, R::kTyped, I::kInOut}, {"cos", nt, R::kF32, I::kIn}, {"sin", nt, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.rope_forward(b["x"], b.f("cos"), b.f("sin"), B, T, nh, hd);
               }, rope_fill});
  c.push_back({Op::kRopeBackward, "rope_backward",
               {{"x", nx, R::kTyped, I::kInOut}, {"cos", nt, R::kF32, I::kIn}, {"sin", nt, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.rope_backward(b["x"], b.f("cos"), b.f("sin"), B, T, nh, hd);
               }, rope_fill});

  // attention: B=2, H=4, G=2 (GQA), hd=16 and 64 (the CUDA kernels take 64
  // and 128); a query block after its key block (offsets), causal, with and
  // without ALiBi
  for (const int ahd : {16, 64})
  for (bool alibi : {false, true}) {
    const AttentionParams p = attn_params(11, 23, 15, 0, ahd);
    const std::string sfx = " hd " + std::to_string(ahd);
    const size_t nq = size_t(p.B) * p.Tq * p.H * p.hd, nk = size_t(p.B) * p.Tk * p.G * p.hd;
    const size_t nl = size_t(p.B) * p.H * p.Tq;
    auto slopes_fill = [](Host& h, DType, Rng&) {
      auto& s = h.f["slopes"];
      for (size_t i = 0; i < s.size(); ++i) s[i] = 0.5f / float(i + 1);
    };
    auto with_slopes = [alibi](AttentionParams a, const Bufs& b) {
      if (alibi) a.alibi_slopes = b.f("slopes");
      return a;
    };
    c.push_back({Op::kAttentionForward, (alibi ? "attention_forward (ALiBi, GQA)" : "attention_forward (GQA)") + sfx,
                 {{"out", nq, R::kTyped, I::kOut}, {"lse", nl, R::kF32, I::kOut},
                  {"q", nq, R::kTyped, I::kIn}, {"k", nk, R::kTyped, I::kIn}, {"v", nk, R::kTyped, I::kIn},
                  {"slopes", size_t(p.H), R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.attention_forward(with_slopes(p, b), b["out"], b.f("lse"), b["q"], b["k"], b["v"]);
                 }, slopes_fill});
    c.back().nmse_f32 = 1e-9;
    // backward from a consistent forward (out, lse of these q, k, v)
    c.push_back({Op::kAttentionBackward, (alibi ? "attention_backward (ALiBi, GQA)" : "attention_backward (GQA)") + sfx,
                 {{"dq", nq, R::kF32, I::kInOut}, {"dk", nk, R::kF32, I::kInOut}, {"dv", nk, R::kF32, I::kInOut},
                  {"dout", nq, R::kTyped, I::kIn}, {"q", nq, R::kTyped, I::kIn}, {"k", nk, R::kTyped, I::kIn},
                  {"v", nk, R::kTyped, I::kIn}, {"out", nq, R::kTyped, I::kIn}, {"lse", nl, R::kF32, I::kIn},
                  {"slopes", size_t(p.H), R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.attention_backward(with_slopes(p, b), b["dq"], b["dk"], b["dv"], b["dout"], b["q"],
                                         b["k"], b["v"], b["out"], b.f("lse"));
                 },
                 [=](Host& h, DType dt, Rng& r) {
                   slopes_fill(h, dt, r);
                   AttentionParams a = p;
                   if (alibi) a.alibi_slopes = h.f["slopes"].data();
                   make_cpu_backend()->attention_forward(a, h.f["out"].data(), h.f["lse"].data(),
                                                         h.f["q"].data(), h.f["k"].data(), h.f["v"].data());
                 }});
    c.back().nmse_f32 = 1e-9;
    c.back().nmse_bf16 = 1e-4;
  }
  {
    const int Tq = 13, H = 4, hd2 = 16;
    const size_t no = size_t(Tq) * H * hd2, nl = size_t(Tq) * H;
    c.push_back({Op::kAttentionMerge, "attention_merge (fp32 accumulator, -inf rows)",
                 {{"out", no, R::kF32, I::kInOut}, {"lse", nl, R::kF32, I::kInOut},
                  {"blk", no, R::kTyped, I::kIn}, {"blk_lse", nl, R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.attention_merge(b["out"], b.f("lse"), b["blk"], b.f("blk_lse"), Tq, H, hd2);
                 },
                 [](Host& h, DType, Rng&) {
                   const float ninf = -std::numeric_limits<float>::infinity();
                   h.f["lse"][0] = ninf;      // no key yet
                   h.f["blk_lse"][1] = ninf;  // the block adds nothing
                   h.f["lse"][2] = h.f["blk_lse"][2] = ninf;
                 }});
    c.back().nmse_bf16 = 1e-9;
  }
  // SwiGLU forward and backward over len elements (here, and at an odd length below).
  auto swiglu_cases = [&c](size_t len, const std::string& sfx) {
    c.push_back({Op::kSwigluForward, "swiglu_forward" + sfx,
                 {{"out", len, R::kTyped, I::kOut}, {"gate", len, R::kTyped, I::kIn}, {"up", len, R::kTyped, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.swiglu_forward(b["out"], b["gate"], b["up"], len);
                 }});
    c.back().nmse_f32 = 1e-12;
    c.push_back({Op::kSwigluBackward, "swiglu_backward" + sfx,
                 {{"dgate", len, R::kF32, I::kOut}, {"dup", len, R::kF32, I::kOut}, {"dout", len, R::kF32, I::kIn},
                  {"gate", len, R::kTyped, I::kIn}, {"up", len, R::kTyped, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.swiglu_backward(b["dgate"], b["dup"], b["dout"], b["gate"], b["up"], len);
                 }});
    c.back().nmse_f32 = 1e-12;
    c.back().nmse_bf16 = 1e-9;
  };
  swiglu_cases(n, "");
  c.push_back({Op::kAddInplace, "add_inplace (with inf, nan)",
               {{"x", n, R::kTyped, I::kInOut}, {"y", n, R::kTyped, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.add_inplace(b["x"], b["y"], n); },
               [](Host& h, DType, Rng&) {
                 h.f["x"][7] = std::numeric_limits<float>::infinity();
                 h.f["y"][8] = -std::numeric_limits<float>::infinity();
                 h.f["y"][9] = std::numeric_limits<float>::quiet_NaN();
               }});
  for (float scale : {0.f, 0.01f}) {
    c.push_back({Op::kCrossEntropy, scale == 0 ? "cross_entropy (loss only)" : "cross_entropy (loss and dlogits)",
                 {{"logits", size_t(N) * V, R::kTyped, I::kInOut}, {"losses", size_t(N), R::kF32, I::kOut},
                  {"tgt", size_t(N), R::kI32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.cross_entropy_forward_backward(b["logits"], b.f("losses"), b.ids("tgt"), N, V, scale);
                 },
                 [](Host& h, DType, Rng&) { h.i["tgt"][2] = -1; }});  // an ignored row
    c.back().nmse_f32 = 1e-12;
  }
  // Lengths that are not a multiple of 8 and a head_dim whose half is not:
  // the CUDA kernels' one-element path (the cases above take 8 at a time).
  {
    const size_t n1 = 1001;
    c.push_back({Op::kCast, "cast fp32->dtype (odd length)", {{"dst", n1, R::kTyped, I::kOut}, {"src", n1, R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) { be.cast(b["dst"], b["src"], n1); }});
    swiglu_cases(n1, " (odd length)");
    c.push_back({Op::kAddInplace, "add_inplace (odd length)",
                 {{"x", n1, R::kTyped, I::kInOut}, {"y", n1, R::kTyped, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) { be.add_inplace(b["x"], b["y"], n1); }});
    const int hd12 = 12;
    const size_t nx12 = size_t(B) * T * nh * hd12, nt12 = size_t(T) * hd12 / 2;
    c.push_back({Op::kRopeForward, "rope_forward (head_dim 12)",
                 {{"x", nx12, R::kTyped, I::kInOut}, {"cos", nt12, R::kF32, I::kIn}, {"sin", nt12, R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.rope_forward(b["x"], b.f("cos"), b.f("sin"), B, T, nh, hd12);
                 }, rope_fill});
  }
  // Wide rows (more columns than a CUDA block has threads, not a multiple of
  // it) and many repeated token ids: the strided loops and runs of the GPU
  // kernels.
  {
    const int Nw = 6, Cw = 700, Vw = 3001, Ne = 300, Ve = 7;
    c.push_back({Op::kRmsnormForward, "rmsnorm_forward (wide rows)",
                 {{"out", size_t(Nw) * Cw, R::kTyped, I::kOut}, {"rstd", size_t(Nw), R::kF32, I::kOut},
                  {"inp", size_t(Nw) * Cw, R::kTyped, I::kIn}, {"w", size_t(Cw), R::kTyped, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.rmsnorm_forward(b["out"], b.f("rstd"), b["inp"], b["w"], Nw, Cw, 1e-5f);
                 }});
    c.back().nmse_f32 = 1e-12;
    c.push_back({Op::kRmsnormBackward, "rmsnorm_backward (wide rows, typed gradients)",
                 {{"dinp", size_t(Nw) * Cw, R::kTyped, I::kInOut}, {"dw", size_t(Cw), R::kF32, I::kInOut},
                  {"dout", size_t(Nw) * Cw, R::kTyped, I::kIn}, {"inp", size_t(Nw) * Cw, R::kTyped, I::kIn},
                  {"w", size_t(Cw), R::kTyped, I::kIn}, {"rstd", size_t(Nw), R::kF32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.rmsnorm_backward(b["dinp"], b["dw"], b["dout"], b["inp"], b["w"], b.f("rstd"), Nw, Cw);
                 },
                 [](Host& h, DType, Rng& r) {
                   for (float& x : h.f["rstd"]) x = float(0.5 + r.uniform());
                 }});
    c.push_back({Op::kCrossEntropy, "cross_entropy (wide vocabulary, dlogits)",
                 {{"logits", size_t(Nw) * Vw, R::kTyped, I::kInOut}, {"losses", size_t(Nw), R::kF32, I::kOut},
                  {"tgt", size_t(Nw), R::kI32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.cross_entropy_forward_backward(b["logits"], b.f("losses"), b.ids("tgt"), Nw, Vw, 0.5f);
                 },
                 [=](Host& h, DType, Rng&) {
                   for (int i = 0; i < Nw; ++i) h.i["tgt"][size_t(i)] = (i * 977) % Vw;
                   h.i["tgt"][1] = Vw - 1;
                 }});
    c.back().nmse_f32 = 1e-12;
    c.push_back({Op::kEmbeddingBackward, "embedding_backward (300 rows, 7 ids)",
                 {{"dtable", size_t(Ve) * Cw, R::kF32, I::kInOut}, {"dout", size_t(Ne) * Cw, R::kTyped, I::kIn},
                  {"tok", size_t(Ne), R::kI32, I::kIn}},
                 [=](Backend& be, const Bufs& b, std::vector<double>&) {
                   be.embedding_backward(b["dtable"], b["dout"], b.ids("tok"), Ne, Cw);
                 },
                 [=](Host& h, DType, Rng& r) {
                   for (auto& t : h.i["tok"]) t = int32_t(r.uniform() * Ve) % Ve;
                 }});
    c.back().nmse_f32 = 1e-12;
  }
  c.push_back({Op::kLossSum, "loss_sum (fp32 losses into an fp64 accumulator)",
               {{"x", n, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>& s) {
                 DeviceBuffer acc(be, 1, DType::kF64);
                 const double start = 0.25;
                 be.copy_to_device(acc.data(), &start, sizeof(double));
                 be.loss_sum(acc.as<double>(), b.f("x"), int(n));
                 double got = 0;
                 be.copy_to_host(&got, acc.data(), sizeof(double));
                 s.push_back(got);
               }});
  c.push_back({Op::kSumSquares, "sum_squares (fp32 state)", {{"x", n, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>& s) { s.push_back(be.sum_squares(b.f("x"), n)); }});
  c.push_back({Op::kScale, "scale (fp32 state)", {{"x", n, R::kF32, I::kInOut}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) { be.scale(b.f("x"), n, 0.37f); }});
  c.push_back({Op::kAdamwUpdate, "adamw_update (master + compute copy)",
               {{"master", n, R::kF32, I::kInOut}, {"param", n, R::kTyped, I::kOut}, {"g", n, R::kF32, I::kIn},
                {"m", n, R::kF32, I::kInOut}, {"v", n, R::kF32, I::kInOut}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 AdamWStep h;
                 h.lr = 1e-2f;
                 h.beta1 = 0.9f;
                 h.beta2 = 0.95f;
                 h.weight_decay = 0.1f;
                 h.step = 3;
                 h.grad_scale = 0.37f;  // clipping folded into the update
                 be.adamw_update(b.f("master"), b["param"], b.f("g"), b.f("m"), b.f("v"), n, h);
               },
               [](Host& h, DType, Rng&) {
                 for (float& x : h.f["v"]) x = std::fabs(x);
               }});
  c.back().nmse_bf16 = 1e-5;
  // AdamW over segments of one arena, each its own weight decay (one launch on
  // a GPU): a long one, an empty one, a one-element one, the rest.
  c.push_back({Op::kAdamwUpdateSegments, "adamw_update_segments (4 segments, 3 decays)",
               {{"master", n, R::kF32, I::kInOut}, {"param", n, R::kTyped, I::kOut}, {"g", n, R::kF32, I::kIn},
                {"m", n, R::kF32, I::kInOut}, {"v", n, R::kF32, I::kInOut}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 const size_t cut[5] = {0, 600, 600, 601, n};
                 const float wd[4] = {0.1f, 0.3f, 0.f, 0.05f};
                 std::vector<AdamWSegment> segs;
                 for (int i = 0; i < 4; ++i)
                   segs.push_back({b.f("master") + cut[i], at(b["param"], cut[i]), b.f("g") + cut[i],
                                   b.f("m") + cut[i], b.f("v") + cut[i], cut[i + 1] - cut[i], wd[i]});
                 AdamWStep h;
                 h.lr = 0.01f;
                 h.step = 3;
                 h.grad_scale = 0.61f;
                 be.adamw_update_segments(segs.data(), int(segs.size()), h);
               },
               [](Host& h, DType, Rng&) {
                 for (float& x : h.f["v"]) x = std::fabs(x);
               }});
  c.back().nmse_bf16 = 1e-5;
  c.push_back({Op::kSgdUpdate, "sgd_update (master + compute copy)",
               {{"master", n, R::kF32, I::kInOut}, {"param", n, R::kTyped, I::kOut}, {"g", n, R::kF32, I::kIn}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.sgd_update(b.f("master"), b["param"], b.f("g"), n, 0.1f, 0.01f);
               }});
  c.back().nmse_bf16 = 1e-5;
  c.push_back({Op::kSgdMomentumUpdate, "sgd_momentum_update (master + buffer + compute copy)",
               {{"master", n, R::kF32, I::kInOut}, {"param", n, R::kTyped, I::kOut},
                {"g", n, R::kF32, I::kIn}, {"buf", n, R::kF32, I::kInOut}},
               [=](Backend& be, const Bufs& b, std::vector<double>&) {
                 be.sgd_momentum_update(b.f("master"), b["param"], b.f("g"), b.f("buf"), n, 0.1f,
                                        0.01f, 0.9f);
               }});
  c.back().nmse_bf16 = 1e-5;
  return c;
}

// ---- running one case ---------------------------------------------------------

constexpr size_t kGuardBytes = 256;
constexpr unsigned char kSentinel = 0xA5;

DType storage(const BufSpec& s, DType dt) {
  return s.role == Role::kTyped ? dt : s.role == Role::kI32 ? DType::kI32 : DType::kF32;
}

Host make_inputs(const Case& c, DType dt, uint64_t seed) {
  Host h;
  Rng r(seed);
  for (const BufSpec& s : c.bufs) {
    if (s.role == Role::kI32) {
      auto& v = h.i[s.name];
      v.resize(s.n);
      for (auto& x : v) x = int32_t(r.below(70));
      continue;
    }
    auto& v = h.f[s.name];
    v.assign(s.n, std::numeric_limits<float>::quiet_NaN());
    if (s.init != Init::kOut)
      for (auto& x : v) x = float(r.normal());
  }
  auto round_typed = [&] {
    if (dt != DType::kBF16) return;
    for (const BufSpec& s : c.bufs)
      if (s.role == Role::kTyped)
        for (float& x : h.f[s.name]) x = round_bf16(x);
  };
  round_typed();
  if (c.fill) c.fill(h, dt, r);
  round_typed();
  return h;
}

// Runs c on be with buffers in dtype dt (typed role); outputs come back as
// fp32 host values. guard_ok is false when a sentinel byte changed.
Host run_on(Backend& be, const Case& c, const Host& in, DType dt, std::vector<double>& scalars,
            std::string* guard_error) {
  std::map<std::string, void*> mem;
  Bufs bufs;
  for (const BufSpec& s : c.bufs) {
    const DType t = storage(s, dt);
    const size_t bytes = s.n * dtype_size(t);
    void* p = be.alloc_bytes(bytes + kGuardBytes);
    std::vector<unsigned char> host(bytes + kGuardBytes, kSentinel);
    if (s.role == Role::kI32) {
      std::memcpy(host.data(), in.i.at(s.name).data(), bytes);
    } else {
      const auto& v = in.f.at(s.name);
      if (t == DType::kF32) {
        std::memcpy(host.data(), v.data(), bytes);
      } else {
        for (size_t i = 0; i < s.n; ++i) {
          const uint16_t b = f32_to_bf16(v[i]);  // NaN poison stays NaN
          std::memcpy(host.data() + 2 * i, &b, 2);
        }
      }
    }
    be.copy_to_device(p, host.data(), host.size());
    mem[s.name] = p;
    bufs.b[s.name] = Buf(p, t);
  }
  c.run(be, bufs, scalars);
  be.synchronize();
  Host out;
  for (const BufSpec& s : c.bufs) {
    const DType t = storage(s, dt);
    const size_t bytes = s.n * dtype_size(t);
    std::vector<unsigned char> host(bytes + kGuardBytes);
    be.copy_to_host(host.data(), mem[s.name], host.size());
    for (size_t i = bytes; i < host.size(); ++i)
      if (host[i] != kSentinel) {
        *guard_error = "write past the end of '" + s.name + "' (byte " + std::to_string(i - bytes) +
                       " after it)";
        break;
      }
    if (s.role != Role::kI32) {
      auto& v = out.f[s.name];
      v.resize(s.n);
      if (t == DType::kF32) {
        std::memcpy(v.data(), host.data(), bytes);
      } else {
        for (size_t i = 0; i < s.n; ++i) {
          uint16_t b;
          std::memcpy(&b, host.data() + 2 * i, 2);
          v[i] = bf16_to_f32(b);
        }
      }
    }
    be.free_bytes(mem[s.name]);
  }
  return out;
}

// NaN/Inf at the same places, then NMSE over the finite ones.
std::string compare(const std::vector<float>& got, const std::vector<float>& want, double bound,
                    double* nmse_out) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float a = got[i], b = want[i];
    if (std::isnan(b) != std::isnan(a))
      return "NaN mismatch at " + std::to_string(i) + " (got " + std::to_string(a) + ", want " +
             std::to_string(b) + ")";
    if (std::isinf(b) || std::isinf(a)) {
      if (a != b)
        return "Inf mismatch at " + std::to_string(i) + " (got " + std::to_string(a) +
               ", want " + std::to_string(b) + ")";
      continue;
    }
    if (std::isnan(b)) continue;
    num += (double(a) - b) * (double(a) - b);
    den += double(b) * b;
  }
  const double nmse = den > 0 ? num / den : num;
  *nmse_out = std::max(*nmse_out, nmse);
  if (!(nmse <= bound))
    return "NMSE " + std::to_string(nmse) + " > " + std::to_string(bound);
  return "";
}

struct Tally {
  int passed = 0, failed = 0, unsupported = 0;
};

Tally run_all(const BackendFactory& f, bool verbose) {
  Tally t;
  std::unique_ptr<Backend> be = f.make();
  std::unique_ptr<Backend> ref = make_cpu_backend();
  uint64_t seed = 1;
  for (const Case& c : all_cases()) {
    ++seed;
    for (DType dt : kDTypes) {
      const char* dn = dtype_name(dt);
      if (!be->supports(c.op, dt)) {
        std::printf("not supported: op %s dtype %s backend %s\n", op_name(c.op), dn, f.name.c_str());
        ++t.unsupported;
        continue;
      }
      const Host in = make_inputs(c, dt, seed);
      std::vector<double> s_ref, s_got;
      std::string guard_ref, guard_got;
      const Host want = run_on(*ref, c, in, DType::kF32, s_ref, &guard_ref);
      Host got;
      try {
        got = run_on(*be, c, in, dt, s_got, &guard_got);
      } catch (const UsageError& e) {  // a shape the backend refuses, with its reason
        std::printf("not supported: op %s dtype %s backend %s (%s)\n", op_name(c.op), dn,
                    f.name.c_str(), e.what());
        ++t.unsupported;
        continue;
      }
      const double bound = dt == DType::kF32 ? c.nmse_f32 : c.nmse_bf16;
      std::string err = guard_got;
      double nmse = 0;
      for (const BufSpec& s : c.bufs) {
        if (!err.empty()) break;
        if (s.role == Role::kI32 || s.init == Init::kIn) continue;
        err = compare(got.f.at(s.name), want.f.at(s.name), bound, &nmse);
        if (!err.empty()) err = s.name + ": " + err;
      }
      for (size_t i = 0; err.empty() && i < s_ref.size(); ++i) {
        const double d = std::fabs(s_got.at(i) - s_ref[i]) / std::max(1e-30, std::fabs(s_ref[i]));
        if (!(d * d <= bound + 1e-24)) err = "scalar result " + std::to_string(s_got.at(i)) +
                                            " vs " + std::to_string(s_ref[i]);
      }
      if (err.empty()) {
        ++t.passed;
        if (verbose)
          std::printf("  %-45s %-5s %-4s OK   (nmse %.2e, bound %.0e)\n", c.label.c_str(), dn,
                      f.name.c_str(), nmse, bound);
      } else {
        ++t.failed;
        ADD_FAILURE() << c.label << " dtype " << dn << " backend " << f.name << ": " << err;
      }
    }
  }
  return t;
}

TEST(BackendOps, EveryOpHasACase) {
  std::set<Op> covered;
  for (const Case& c : all_cases()) covered.insert(c.op);
  for (int i = 0; i < int(Op::kCount); ++i)
    EXPECT_TRUE(covered.count(Op(i))) << "no harness case for op " << op_name(Op(i));
}

TEST(BackendOps, EveryOpDtypeBackendAgainstFp32Cpu) {
  for (const BackendFactory& f : backends_under_test()) {
    const Tally t = run_all(f, true);
    std::printf("backend %s: %d passed, %d failed, %d not supported\n", f.name.c_str(), t.passed,
                t.failed, t.unsupported);
    if (f.name == "cpu") {
      // the CPU backend runs every case in fp32 and bf16; fp8 is not supported yet
      const int cases = int(all_cases().size());
      EXPECT_EQ(t.passed, 2 * cases);
      EXPECT_EQ(t.unsupported, cases);
    }
    if (f.name == "cuda-emu") {
      // every case in fp32 and bf16 but attention (bf16 only, as on the GPU)
      int attention = 0;
      for (const Case& c : all_cases())
        attention += c.op == Op::kAttentionForward || c.op == Op::kAttentionBackward;
      const int cases = int(all_cases().size());
      EXPECT_EQ(t.passed, 2 * cases - attention);
      EXPECT_EQ(t.unsupported, cases + attention);
    }
  }
}

// The harness catches what it claims to catch: an op that writes one element
// past its output, one that leaves an element unwritten, and one that is off
// by more than the bound.
class BrokenCpu : public Backend {
 public:
  enum Fault { kOverrun, kSkip, kWrong };
  explicit BrokenCpu(Fault f) : f_(f), cpu_(make_cpu_backend()) {}
  Device device() const override { return Device::kCpu; }
  const char* name() const override { return "broken"; }
  bool supports(Op, DType t) const override { return t == DType::kF32; }
  void* scratch(size_t b) override { return cpu_->scratch(b); }
  void* alloc_bytes(size_t b) override { return cpu_->alloc_bytes(b); }
  void free_bytes(void* p) override { cpu_->free_bytes(p); }
  void copy_to_device(void* d, const void* s, size_t b) override { cpu_->copy_to_device(d, s, b); }
  void copy_to_host(void* d, const void* s, size_t b) override { cpu_->copy_to_host(d, s, b); }
  void zero(Buf x, size_t n) override { cpu_->zero(x, n); }
  void copy(Buf d, CBuf s, size_t n) override { cpu_->copy(d, s, n); }
  void cast(Buf d, CBuf s, size_t n) override { cpu_->cast(d, s, n); }
  void embedding_forward(Buf, const int32_t*, CBuf, int, int) override {}
  void embedding_backward(Buf, CBuf, const int32_t*, int, int) override {}
  void rmsnorm_forward(Buf, float*, CBuf, CBuf, int, int, float) override {}
  void rmsnorm_backward(Buf, Buf, CBuf, CBuf, CBuf, const float*, int, int) override {}
  void matmul_forward(Buf, CBuf, CBuf, int, int, int, bool) override {}
  void matmul_backward(Buf, Buf, CBuf, CBuf, CBuf, int, int, int) override {}
  void rope_forward(Buf, const float*, const float*, int, int, int, int) override {}
  void rope_backward(Buf, const float*, const float*, int, int, int, int) override {}
  void attention_forward(const AttentionParams&, Buf, float*, CBuf, CBuf, CBuf) override {}
  void attention_backward(const AttentionParams&, Buf, Buf, Buf, CBuf, CBuf, CBuf, CBuf, CBuf,
                          const float*) override {}
  void attention_merge(Buf, float*, CBuf, const float*, int, int, int) override {}
  void swiglu_forward(Buf out, CBuf gate, CBuf up, size_t n) override {
    cpu_->swiglu_forward(out, gate, up, n);
    float* o = out.f32();
    if (f_ == kOverrun) o[n] = 1.f;
    if (f_ == kSkip) o[n / 2] = std::numeric_limits<float>::quiet_NaN();
    if (f_ == kWrong) o[n / 3] += 0.5f;
  }
  void swiglu_backward(Buf, Buf, CBuf, CBuf, CBuf, size_t) override {}
  void add_inplace(Buf, CBuf, size_t) override {}
  void cross_entropy_forward_backward(Buf, float*, const int32_t*, int, int, float) override {}
  void loss_sum(double*, const float*, int) override {}
  double sum_squares(const float*, size_t) override { return 0; }
  void scale(float*, size_t, float) override {}
  void adamw_update(float*, Buf, const float*, float*, float*, size_t, const AdamWStep&) override {}
  void sgd_update(float*, Buf, const float*, size_t, float, float) override {}
  void sgd_momentum_update(float*, Buf, const float*, float*, size_t, float, float, float) override {}

 private:
  Fault f_;
  std::unique_ptr<Backend> cpu_;
};

TEST(BackendOps, HarnessCatchesOverrunsUnwrittenAndWrongOutputs) {
  for (auto fault : {BrokenCpu::kOverrun, BrokenCpu::kSkip, BrokenCpu::kWrong}) {
    const Case* swiglu = nullptr;
    const std::vector<Case> cases = all_cases();
    for (const Case& c : cases)
      if (c.op == Op::kSwigluForward) swiglu = &c;
    ASSERT_NE(swiglu, nullptr);
    BrokenCpu be(fault);
    std::unique_ptr<Backend> ref = make_cpu_backend();
    const Host in = make_inputs(*swiglu, DType::kF32, 99);
    std::vector<double> s;
    std::string guard_ref, guard;
    const Host want = run_on(*ref, *swiglu, in, DType::kF32, s, &guard_ref);
    const Host got = run_on(be, *swiglu, in, DType::kF32, s, &guard);
    double nmse = 0;
    const std::string err = guard.empty()
                                ? compare(got.f.at("out"), want.f.at("out"), swiglu->nmse_f32, &nmse)
                                : guard;
    EXPECT_FALSE(err.empty()) << "fault " << int(fault) << " not caught";
    std::printf("fault %d caught: %s\n", int(fault), err.c_str());
  }
}

}  // namespace
}  // namespace rt
