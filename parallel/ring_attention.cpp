#include "parallel/ring_attention.h"

#include <cmath>
#include <limits>
#include <utility>

#include "common/errors.h"

namespace rt {

RingLayout parse_ring_layout(const std::string& s) {
  if (s == "zigzag") return RingLayout::kZigzag;
  if (s == "contiguous") return RingLayout::kContiguous;
  throw UsageError("parallel.ring_layout: must be zigzag or contiguous, got '" + s + "'");
}

RowPositions ring_local_rows(RingLayout layout, int cp, int r, int64_t T) {
  RT_CHECK(r >= 0 && r < cp, "cp rank out of range");
  if (cp == 1) return {T, {{0, T}}};  // no ring: the whole sequence, any length
  if (layout == RingLayout::kContiguous) {
    RT_CHECK(T % cp == 0, "seq_len must be a multiple of context_parallel");
    const int64_t c = T / cp;
    return {T, {{int64_t(r) * c, c}}};
  }
  RT_CHECK(T % (2 * cp) == 0, "seq_len must be a multiple of 2*context_parallel");
  const int64_t c = T / (2 * cp);
  return {T, {{int64_t(r) * c, c}, {int64_t(2 * cp - 1 - r) * c, c}}};
}

RingAttention::RingAttention(Comm& ring, RingLayout layout) : ring_(ring), layout_(layout) {}

RingAttention::~RingAttention() {
  if (!be_) return;
  for (float* p : {kv_cur_, kv_next_, dkv_cur_, dkv_next_, blk_out_, blk_lse_, chunk_lse_})
    be_->free_bytes(p);
}

void RingAttention::ensure_buffers(Backend& be, size_t kv_floats, size_t blk_floats,
                                   size_t lse_floats) {
  RT_CHECK(!be_ || be_ == &be, "RingAttention used with two backends");
  be_ = &be;
  auto grow = [&](std::initializer_list<float**> bufs, size_t& cap, size_t need) {
    if (need <= cap) return;
    for (float** b : bufs) {
      be.free_bytes(*b);
      *b = static_cast<float*>(be.alloc_bytes(need * sizeof(float)));
    }
    cap = need;
  };
  grow({&kv_cur_, &kv_next_, &dkv_cur_, &dkv_next_}, kv_cap_, kv_floats);
  grow({&blk_out_}, blk_cap_, blk_floats);
  grow({&blk_lse_, &chunk_lse_}, lse_cap_, lse_floats);
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

constexpr int kTagKV = 1001, kTagDKV = 1002;

}  // namespace

// Sizes the buffers and puts this rank's K,V in the travelling buffer.
// Returns the floats of one of K or V.
size_t RingAttention::load_local_kv(Backend& be, const AttentionParams& shape,
                                    const RowPositions& pos, const float* k, const float* v) {
  const size_t kv_half = size_t(shape.B) * shape.Tq * shape.G * shape.hd;
  int64_t max_chunk = 0;
  for (auto& c : pos.chunks) max_chunk = std::max(max_chunk, c.second);
  ensure_buffers(be, 2 * kv_half, size_t(max_chunk) * shape.H * shape.hd,
                 size_t(shape.B) * shape.H * shape.Tq);
  be.copy(kv_cur_, k, kv_half);
  be.copy(kv_cur_ + kv_half, v, kv_half);
  return kv_half;
}

// Starts sending the current K,V block to r+1 and receiving the next from r-1.
void RingAttention::send_kv_onwards(size_t kv_half, Comm::Request& send, Comm::Request& recv) {
  const int cp = ring_.size(), r = ring_.rank();
  const size_t bytes = 2 * kv_half * sizeof(float);
  recv = ring_.irecv(kv_next_, bytes, (r - 1 + cp) % cp, kTagKV);
  send = ring_.isend(kv_cur_, bytes, (r + 1) % cp, kTagKV);
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
                            float* out, float* lse, const float* q, const float* k,
                            const float* v) {
  const int cp = ring_.size(), r = ring_.rank();
  const int B = shape.B, T = shape.Tq, H = shape.H, G = shape.G, hd = shape.hd;
  const size_t kv_half = load_local_kv(be, shape, pos, k, v);
  be.zero(out, size_t(B) * T * H * hd);
  {
    std::vector<float> neg(size_t(B) * H * T, -std::numeric_limits<float>::infinity());
    be.copy_to_device(chunk_lse_, neg.data(), neg.size() * sizeof(float));
  }

  for (int i = 0; i < cp; ++i) {
    const int src = (r - i + cp) % cp;
    Comm::Request send, recv;
    if (i < cp - 1) send_kv_onwards(kv_half, send, recv);  // overlaps this step's compute
    const RowPositions k_rows = ring_local_rows(layout_, cp, src, pos.global_len);
    for (const BlockPair& p : visible_pairs(pos, k_rows, shape.causal)) {
      const AttentionParams a = block_params(shape, p);
      for (int b = 0; b < B; ++b) {
        const size_t qoff = (size_t(b) * T + p.q_row) * H * hd;
        const size_t koff = (size_t(b) * T + p.k_row) * G * hd;
        be.attention_forward(a, blk_out_, blk_lse_, q + qoff, kv_cur_ + koff,
                             kv_cur_ + kv_half + koff);
        be.attention_merge(out + qoff, chunk_lse_ + (size_t(b) * T + p.q_row) * H, blk_out_,
                           blk_lse_, a.Tq, H, hd);
      }
    }
    ring_.wait(send);
    ring_.wait(recv);
    if (i < cp - 1) std::swap(kv_cur_, kv_next_);
  }

  for_each_lse_run(shape, pos, [&](size_t flat, size_t chunk, size_t len) {
    be.copy(lse + flat, chunk_lse_ + chunk, len);
  });
}

void RingAttention::backward(Backend& be, const AttentionParams& shape, const RowPositions& pos,
                             float* dq, float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out,
                             const float* lse) {
  const int cp = ring_.size(), r = ring_.rank();
  const int B = shape.B, T = shape.Tq, H = shape.H, G = shape.G, hd = shape.hd;
  const size_t kv_half = load_local_kv(be, shape, pos, k, v);
  be.zero(dkv_cur_, 2 * kv_half);
  for_each_lse_run(shape, pos, [&](size_t flat, size_t chunk, size_t len) {
    be.copy(chunk_lse_ + chunk, lse + flat, len);
  });

  for (int i = 0; i < cp; ++i) {
    const int src = (r - i + cp) % cp;
    Comm::Request send, recv;
    if (i < cp - 1) send_kv_onwards(kv_half, send, recv);
    const RowPositions k_rows = ring_local_rows(layout_, cp, src, pos.global_len);
    for (const BlockPair& p : visible_pairs(pos, k_rows, shape.causal)) {
      const AttentionParams a = block_params(shape, p);
      for (int b = 0; b < B; ++b) {
        const size_t qoff = (size_t(b) * T + p.q_row) * H * hd;
        const size_t koff = (size_t(b) * T + p.k_row) * G * hd;
        be.attention_backward(a, dq + qoff, dkv_cur_ + koff, dkv_cur_ + kv_half + koff,
                              dout + qoff, q + qoff, kv_cur_ + koff, kv_cur_ + kv_half + koff,
                              out + qoff, chunk_lse_ + (size_t(b) * T + p.q_row) * H);
      }
    }
    ring_.wait(send);
    ring_.wait(recv);
    if (cp > 1) {
      // The block's dK,dV accumulators follow it; after the last step this
      // hop brings this rank's own accumulators home.
      Comm::Request ds = ring_.isend(dkv_cur_, 2 * kv_half * sizeof(float), (r + 1) % cp, kTagDKV);
      Comm::Request dr =
          ring_.irecv(dkv_next_, 2 * kv_half * sizeof(float), (r - 1 + cp) % cp, kTagDKV);
      bytes_sent_ += int64_t(2 * kv_half * sizeof(float));
      ring_.wait(ds);
      ring_.wait(dr);
      std::swap(dkv_cur_, dkv_next_);
    }
    if (i < cp - 1) std::swap(kv_cur_, kv_next_);
  }
  be.add_inplace(dk, dkv_cur_, kv_half);
  be.add_inplace(dv, dkv_cur_ + kv_half, kv_half);
}

}  // namespace rt
