#include "parallel/ring_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "common/errors.h"

namespace rt {

RowPositions ring_local_rows(RingLayout layout, int cp, int r, int64_t T) {
  RT_CHECK(r >= 0 && r < cp, "cp rank out of range");
  if (cp == 1) return {T, {{0, T}}};  // no ring: the whole sequence, any length
  const ParallelDims ring{cp, 1, cp};
  RT_CHECK(T % ring.seq_len_divisor(layout) == 0,
           "seq_len must be a multiple of the ring's seq_len_divisor");
  if (layout == RingLayout::kContiguous) {
    const int64_t c = T / cp;
    return {T, {{int64_t(r) * c, c}}};
  }
  const int64_t c = T / (2 * cp);
  return {T, {{int64_t(r) * c, c}, {int64_t(2 * cp - 1 - r) * c, c}}};
}

int64_t ring_bytes_per_layer(int cp, size_t kv_elems, DType kv_dtype) {
  if (cp <= 1) return 0;
  const int64_t kv = 2 * int64_t(kv_elems) * int64_t(dtype_size(kv_dtype));
  const int64_t dkv = 2 * int64_t(kv_elems) * int64_t(dtype_size(DType::kF32));
  return kv * 2 * (cp - 1) + dkv * cp;
}

RingAttention::RingAttention(Comm& ring, RingLayout layout) : ring_(ring), layout_(layout) {}

RingAttention::~RingAttention() {
  if (!be_) return;
  for (void* p : {kv_cur_.p, kv_next_.p, blk_out_.p}) be_->free_bytes(p);
  for (float* p : {dkv_blk_[0], dkv_blk_[1], dkv_in_, blk_lse_, chunk_lse_, acc_})
    be_->free_bytes(p);
}

void RingAttention::ensure_buffers(Backend& be, DType kv_t, size_t kv_elems, size_t blk_elems,
                                   size_t lse_floats, size_t acc_floats) {
  RT_CHECK(!be_ || be_ == &be, "RingAttention used with two backends");
  be_ = &be;
  const size_t kv_bytes = kv_elems * dtype_size(kv_t);
  if (kv_bytes > kv_cap_bytes_) {
    for (Buf* b : {&kv_cur_, &kv_next_}) {
      be.free_bytes(b->p);
      *b = Buf(be.alloc_bytes(kv_bytes), kv_t);
    }
    kv_cap_bytes_ = kv_bytes;
  }
  kv_cur_.t = kv_next_.t = kv_t;
  const size_t blk_bytes = blk_elems * dtype_size(kv_t);
  if (blk_bytes > blk_cap_bytes_) {
    be.free_bytes(blk_out_.p);
    blk_out_ = Buf(be.alloc_bytes(blk_bytes), kv_t);
    blk_cap_bytes_ = blk_bytes;
  }
  blk_out_.t = kv_t;
  auto grow = [&](std::initializer_list<float**> bufs, size_t& cap, size_t need) {
    if (need <= cap) return;
    for (float** b : bufs) {
      be.free_bytes(*b);
      *b = static_cast<float*>(be.alloc_bytes(need * sizeof(float)));
    }
    cap = need;
  };
  grow({&dkv_blk_[0], &dkv_blk_[1], &dkv_in_}, dkv_cap_, kv_elems);
  grow({&blk_lse_, &chunk_lse_}, lse_cap_, lse_floats);
  grow({&acc_}, acc_cap_, acc_floats);
}

namespace {

// One (query chunk, key chunk) pair of a ring step.
struct BlockPair {
  int64_t q_row, q_begin, q_len;  // local row offset, global begin, length
  int64_t k_row, k_begin, k_len;
};

// Every pair of local query chunk x travelling key chunk that has at least
// one visible key (fully masked causal pairs are skipped).
std::vector<BlockPair> visible_pairs(const RowPositions& q_rows, const RowPositions& k_rows,
                                     bool causal) {
  std::vector<BlockPair> out;
  int64_t q_row = 0;
  for (auto [qb, ql] : q_rows.chunks) {
    int64_t k_row = 0;
    for (auto [kb, kl] : k_rows.chunks) {
      if (!causal || kb <= qb + ql - 1) out.push_back({q_row, qb, ql, k_row, kb, kl});
      k_row += kl;
    }
    q_row += ql;
  }
  return out;
}

AttentionParams block_params(const AttentionParams& shape, const BlockPair& p) {
  AttentionParams a = shape;
  a.B = 1;
  a.Tq = int(p.q_len);
  a.Tk = int(p.k_len);
  a.q_offset = p.q_begin;
  a.k_offset = p.k_begin;
  return a;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw UsageError("ring attention: " + what);
}

}  // namespace

// Sizes the buffers and puts this rank's K,V in the travelling buffer.
// Returns the elements of one of K or V.
size_t RingAttention::load_local_kv(Backend& be, const AttentionParams& shape,
                                    const RowPositions& pos, CBuf k, CBuf v) {
  require(k.t == v.t, std::string("K is ") + dtype_name(k.t) + ", V " + dtype_name(v.t));
  require(k.t == DType::kF32 || k.t == DType::kBF16,
          std::string("no block kernel for ") + dtype_name(k.t) + " K,V");
  const size_t kv_half = size_t(shape.B) * shape.Tq * shape.G * shape.hd;
  int64_t max_chunk = 0;
  for (auto& c : pos.chunks) max_chunk = std::max(max_chunk, c.second);
  const size_t acc = k.t == DType::kF32 ? 0 : size_t(shape.B) * shape.Tq * shape.H * shape.hd;
  ensure_buffers(be, k.t, 2 * kv_half, size_t(max_chunk) * shape.H * shape.hd,
                 size_t(shape.B) * shape.H * shape.Tq, acc);
  be.copy(kv_cur_, k, kv_half);
  be.copy(at(kv_cur_, kv_half), v, kv_half);
  return kv_half;
}

void RingAttention::timed_shift_wait(Comm& c) {
  const auto t0 = std::chrono::steady_clock::now();
  c.shift_wait();
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Starts sending the current K,V block to r+1 and receiving the next from r-1.
void RingAttention::shift_kv(size_t kv_half) {
  const size_t bytes = 2 * kv_half * dtype_size(kv_cur_.t);
  ring_.shift_start(kv_cur_, kv_next_, bytes);
  bytes_sent_ += int64_t(bytes);
}

// Starts sending a dK,dV accumulator to r+1 and receiving the next from r-1.
void RingAttention::shift_dkv(Buf acc, size_t kv_half) {
  const size_t bytes = 2 * kv_half * dtype_size(acc.t);
  dkv_ring_->shift_start(acc, dkv_in_, bytes);
  bytes_sent_ += int64_t(bytes);
}

// lse (B, H, T) <-> chunk_lse_ (b, chunk)(H, len): the kernel reads and
// writes contiguous LSE rows per query chunk. fn(flat offset, chunk offset, len).
template <typename Fn>
static void for_each_lse_run(const AttentionParams& shape, const RowPositions& pos, Fn fn) {
  const int B = shape.B, T = shape.Tq, H = shape.H;
  for (int b = 0; b < B; ++b) {
    int64_t row = 0;
    for (auto [begin, len] : pos.chunks) {
      for (int h = 0; h < H; ++h)
        fn((size_t(b) * H + h) * T + row, (size_t(b) * T + row) * H + size_t(h) * len,
           size_t(len));
      row += len;
    }
  }
}

// Layout reminders: q, out (B,T,H,hd); k, v (B,T,G,hd); lse (B,H,T), with T
// the local row count. chunk_lse_ holds, per (b, query chunk), an (H, len)
// block so that each kernel call sees contiguous LSE rows.
void RingAttention::forward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                            Buf out_b, float* lse, CBuf q_b, CBuf k_b, CBuf v_b) {
  require(q_b.t == k_b.t && out_b.t == q_b.t,
          std::string("q, k, v and out share one dtype (q ") + dtype_name(q_b.t) + ", out " +
              dtype_name(out_b.t) + ")");
  const int cp = ring_.size(), r = ring_.rank();
  const int B = shape.B, T = shape.Tq, H = shape.H, G = shape.G, hd = shape.hd;
  const size_t kv_half = load_local_kv(be, shape, pos, k_b, v_b);
  // The blocks merge into an fp32 accumulator: out itself for fp32
  // activations (no rounding), else acc_, rounded once into out at the end.
  const size_t n_out = size_t(B) * T * H * hd;
  const Buf acc = out_b.t == DType::kF32 ? out_b : Buf(acc_);
  be.zero(acc, n_out);
  {
    std::vector<float> neg(size_t(B) * H * T, -std::numeric_limits<float>::infinity());
    be.copy_to_device(chunk_lse_, neg.data(), neg.size() * sizeof(float));
  }

  for (int i = 0; i < cp; ++i) {
    const int src = (r - i + cp) % cp;
    if (i < cp - 1) shift_kv(kv_half);  // overlaps this step's compute
    const RowPositions k_rows = ring_local_rows(layout_, cp, src, pos.global_len);
    for (const BlockPair& p : visible_pairs(pos, k_rows, shape.causal)) {
      const AttentionParams a = block_params(shape, p);
      for (int b = 0; b < B; ++b) {
        const size_t qoff = (size_t(b) * T + p.q_row) * H * hd;
        const size_t koff = (size_t(b) * T + p.k_row) * G * hd;
        be.attention_forward(a, blk_out_, blk_lse_, at(q_b, qoff), at(CBuf(kv_cur_), koff),
                             at(CBuf(kv_cur_), kv_half + koff));
        be.attention_merge(at(acc, qoff), chunk_lse_ + (size_t(b) * T + p.q_row) * H, blk_out_,
                           blk_lse_, a.Tq, H, hd);
      }
    }
    if (i < cp - 1) {
      timed_shift_wait(ring_);
      std::swap(kv_cur_, kv_next_);
    }
  }
  if (acc.p != out_b.p) be.cast(out_b, acc, n_out);

  for_each_lse_run(shape, pos, [&](size_t flat, size_t chunk, size_t len) {
    be.copy(lse + flat, chunk_lse_ + chunk, len);
  });
}

// dK,dV follow ring-flash-attn: at step i this rank's contributions for the
// block it holds go into a zeroed buffer while the block's accumulator is
// still on its way from r-1; then the accumulator is waited for, added, and
// sent on to r+1 while the next step computes. After cp hops every
// accumulator is back at its owner.
void RingAttention::backward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                             Buf dq_b, Buf dk_b, Buf dv_b, CBuf dout_b, CBuf q_b, CBuf k_b,
                             CBuf v_b, CBuf out_b, const float* lse) {
  require(dq_b.t == DType::kF32 && dk_b.t == DType::kF32 && dv_b.t == DType::kF32,
          "dq, dk, dv are fp32 (gradients)");
  require(q_b.t == k_b.t && out_b.t == q_b.t, "q, k, v and out share one dtype");
  float *dq = dq_b.f32(), *dk = dk_b.f32(), *dv = dv_b.f32();
  const int cp = ring_.size(), r = ring_.rank();
  const int B = shape.B, T = shape.Tq, H = shape.H, G = shape.G, hd = shape.hd;
  const size_t kv_half = load_local_kv(be, shape, pos, k_b, v_b);
  if (cp > 1 && !dkv_ring_) dkv_ring_ = ring_.split(0, ring_.rank());  // collective on the ring
  for_each_lse_run(shape, pos, [&](size_t flat, size_t chunk, size_t len) {
    be.copy(chunk_lse_ + chunk, lse + flat, len);
  });

  float* acc = nullptr;  // the accumulator of the block this step holds
  for (int i = 0; i < cp; ++i) {
    const int src = (r - i + cp) % cp;
    if (i < cp - 1) shift_kv(kv_half);
    acc = dkv_blk_[i % 2];  // the other one may still be on its way to r+1
    be.zero(acc, 2 * kv_half);
    const RowPositions k_rows = ring_local_rows(layout_, cp, src, pos.global_len);
    for (const BlockPair& p : visible_pairs(pos, k_rows, shape.causal)) {
      const AttentionParams a = block_params(shape, p);
      for (int b = 0; b < B; ++b) {
        const size_t qoff = (size_t(b) * T + p.q_row) * H * hd;
        const size_t koff = (size_t(b) * T + p.k_row) * G * hd;
        be.attention_backward(a, dq + qoff, acc + koff, acc + kv_half + koff, at(dout_b, qoff),
                              at(q_b, qoff), at(CBuf(kv_cur_), koff),
                              at(CBuf(kv_cur_), kv_half + koff), at(out_b, qoff),
                              chunk_lse_ + (size_t(b) * T + p.q_row) * H);
      }
    }
    if (cp > 1) {
      if (i > 0) {  // the block's accumulator from the ranks before this one
        timed_shift_wait(*dkv_ring_);
        be.add_inplace(acc, dkv_in_, 2 * kv_half);
      }
      // on to r+1; after the last step this hop brings this rank's own home
      shift_dkv(acc, kv_half);
    }
    if (i < cp - 1) {
      timed_shift_wait(ring_);
      std::swap(kv_cur_, kv_next_);
    }
  }
  if (cp > 1) {
    timed_shift_wait(*dkv_ring_);
    acc = dkv_in_;
  }
  be.add_inplace(dk, acc, kv_half);
  be.add_inplace(dv, acc + kv_half, kv_half);
}

}  // namespace rt
