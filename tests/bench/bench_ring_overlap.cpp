// Does a ring copy on the communication stream slow the attention kernel
// running beside it? (issue 14: "a micro-benchmark shows a ring copy on the
// communication stream does not slow the attention kernel running beside
// it"). One GPU, one process: the K/V block of one ring step travels through
// NcclComm at world size 1 (grouped ncclSend/ncclRecv to itself on NCCL's
// communication stream, ordered by events, exactly the path of a ring step)
// while the CUDA backend's attention forward (bf16, one query block against
// one key block, not causal: a middle ring step) runs on the compute stream.
//
//   bench_ring_overlap [--T 8192] [--H 32] [--G 8] [--hd 128] [--iters 20]
//
// Prints JSON: per-call milliseconds of the attention alone, the shift alone,
// and both together (attention queued between shift_start and shift_wait),
// the slowdown of the attention (together / alone), and the payload.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/cuda/device_info.h"
#include "parallel/comm.h"
#include "parallel/nccl_comm.h"

namespace {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

int arg(int argc, char** argv, const char* name, int def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rt;
  const int T = arg(argc, argv, "--T", 8192), H = arg(argc, argv, "--H", 32),
            G = arg(argc, argv, "--G", 8), hd = arg(argc, argv, "--hd", 128),
            iters = arg(argc, argv, "--iters", 20);
  if (cuda::device_count() == 0) {
    std::printf("{\"skipped\": \"no CUDA device\"}\n");
    return 0;
  }
  ParallelRuntime& rt_ = init_parallel_runtime(&argc, &argv);
  auto be = make_cuda_backend(0);
  auto nccl = NcclComm::create_world(*rt_.world, *be, 0);
  auto stream = static_cast<cudaStream_t>(be->stream());

  const size_t nq = size_t(T) * H * hd, nkv = size_t(T) * G * hd;
  std::vector<uint16_t> host(nq);
  std::mt19937 g(1);
  std::normal_distribution<float> d(0.f, 1.f);
  for (auto& x : host) x = f32_to_bf16(d(g));
  auto alloc = [&](size_t n, DType t) { return Buf(be->alloc_bytes(n * dtype_size(t)), t); };
  Buf q = alloc(nq, DType::kBF16), k = alloc(nkv, DType::kBF16), v = alloc(nkv, DType::kBF16),
      out = alloc(nq, DType::kBF16);
  float* lse = static_cast<float*>(be->alloc_bytes(size_t(H) * T * sizeof(float)));
  be->copy_to_device(q.p, host.data(), nq * 2);
  be->copy_to_device(k.p, host.data(), nkv * 2);
  be->copy_to_device(v.p, host.data() + nkv, nkv * 2);
  // the travelling block: [K | V] of one rank, as ring attention sends it
  const size_t payload = 2 * nkv * 2;
  Buf send = alloc(payload / 2, DType::kBF16), recv = alloc(payload / 2, DType::kBF16);
  be->copy(send, CBuf(k), nkv);

  AttentionParams p;
  p.B = 1;
  p.Tq = p.Tk = T;
  p.H = H;
  p.G = G;
  p.hd = hd;
  p.q_offset = T;  // a later query block against an earlier key block
  p.k_offset = 0;
  p.causal = true;  // every key visible (k_pos < q_pos): the middle steps of a ring
  p.scale = 1.f / std::sqrt(float(hd));

  cudaEvent_t t0, t1;
  check(cudaEventCreate(&t0), "event");
  check(cudaEventCreate(&t1), "event");
  auto timed = [&](bool attn, bool shift) {
    for (int warm = 0; warm < 3; ++warm) {  // first NCCL calls connect
      if (shift) nccl->shift_start(CBuf(send), recv, payload);
      if (attn) be->attention_forward(p, out, lse, q, k, v);
      if (shift) nccl->shift_wait();
    }
    check(cudaStreamSynchronize(stream), "sync");
    check(cudaEventRecord(t0, stream), "record");
    for (int i = 0; i < iters; ++i) {
      if (shift) nccl->shift_start(CBuf(send), recv, payload);
      if (attn) be->attention_forward(p, out, lse, q, k, v);
      if (shift) nccl->shift_wait();  // the compute stream waits for the comm stream
    }
    check(cudaEventRecord(t1, stream), "record");
    check(cudaEventSynchronize(t1), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, t0, t1), "elapsed");
    return double(ms) / iters;
  };
  const double attn = timed(true, false), shift = timed(false, true), both = timed(true, true);
  std::printf(
      "{\"device\": \"%s\", \"T\": %d, \"H\": %d, \"G\": %d, \"hd\": %d, \"iters\": %d,\n"
      " \"payload_bytes\": %zu, \"attention_ms\": %.4f, \"shift_ms\": %.4f,\n"
      " \"attention_with_shift_ms\": %.4f, \"attention_slowdown\": %.4f,\n"
      " \"shift_GBps\": %.2f, \"hidden_fraction_of_shift\": %.4f}\n",
      cuda::device_name(0).c_str(), T, H, G, hd, iters, payload, attn, shift, both, both / attn,
      double(payload) / (shift * 1e6), shift > 0 ? std::max(0.0, (attn + shift - both) / shift) : 0.0);
  nccl.reset();
  finalize_parallel_runtime();
  return 0;
}
