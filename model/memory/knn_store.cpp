// KnnStore: see knn_store.h for the contract.
#include "model/memory/knn_store.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "common/errors.h"

#ifdef RINGTRAIN_HAVE_FAISS
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/invlists/InvertedLists.h>
#endif

namespace rt {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A candidate row: score, age index. better(): larger score, then older row.
struct Cand {
  float score;
  int32_t age;
};
inline bool better(const Cand& a, const Cand& b) {
  return a.score > b.score || (a.score == b.score && a.age < b.age);
}

// Keeps the n best of c (n <= c.size()), sorted best first.
void keep_best_sorted(std::vector<Cand>& c, size_t n) {
  if (c.size() > n) {
    std::nth_element(c.begin(), c.begin() + std::ptrdiff_t(n), c.end(), better);
    c.resize(n);
  }
  std::sort(c.begin(), c.end(), better);
}

}  // namespace

bool knn_have_faiss() {
#ifdef RINGTRAIN_HAVE_FAISS
  return true;
#else
  return false;
#endif
}

void knn_check_index(const std::string& index) {
  if (index == "exact") return;
  if (index != "flat" && index != "ivf" && index != "hnsw")
    throw UsageError("model.memory.index: unknown index '" + index +
                     "' (expected exact, flat, ivf or hnsw)");
  if (!knn_have_faiss())
    throw UsageError("model.memory.index: '" + index +
                     "' needs FAISS, and this build of ringtrain has none: install it "
                     "(apt-get install libfaiss-dev, or ./setup.sh) and rebuild "
                     "(cmake -S . -B build && cmake --build build), or use index: exact");
}

// One built FAISS index over the keys of one (b, g), labels = age indexes.
struct KnnStore::AnnIndex {
#ifdef RINGTRAIN_HAVE_FAISS
  std::unique_ptr<faiss::Index> index;
#endif
  int64_t bytes = 0;
};

KnnStore::KnnStore(int B, int G, int hd, int capacity, const std::string& index,
                   const KnnSearchOptions& options)
    : B_(B), G_(G), hd_(hd), capacity_(capacity), index_(index), options_(options) {
  RT_CHECK(B >= 1 && G >= 1 && hd >= 1, "KnnStore: B, G, hd >= 1");
  if (capacity < 1)  // int32 handles: capacity is an int
    throw UsageError("model.memory.memory_size: must be >= 1 (got " +
                     std::to_string(capacity) + ")");
  knn_check_index(index);
  rows_.resize(size_t(B));
  ann_.resize(size_t(B) * size_t(G));
}

KnnStore::~KnnStore() = default;

void KnnStore::mark_stale(int b) {
  for (int g = 0; g < G_; ++g) ann_[size_t(b) * size_t(G_) + size_t(g)].reset();
}

void KnnStore::clear(int b) {
  RT_CHECK(b >= 0 && b < B_, "KnnStore::clear: b out of range");
  rows_[size_t(b)].head = 0;
  rows_[size_t(b)].count = 0;
  mark_stale(b);
}

void KnnStore::clear_all() {
  for (int b = 0; b < B_; ++b) clear(b);
}

void KnnStore::append(int b, const float* keys, const float* values, int n,
                      int64_t first_pos) {
  RT_CHECK(b >= 0 && b < B_ && n >= 0, "KnnStore::append: bad b or n");
  if (n == 0) return;
  Row& r = rows_[size_t(b)];
  const size_t cap = size_t(capacity_), hd = size_t(hd_);
  if (r.keys.empty()) {  // first use of this row: allocate its ring
    r.keys.resize(size_t(G_) * cap * hd);
    r.values.resize(size_t(G_) * cap * hd);
    r.pos.resize(cap);
  }
  RT_CHECK(r.count == 0 || first_pos > r.pos[size_t(slot(r, r.count - 1))],
           "KnnStore::append: positions must increase");
  const int skip = std::max(0, n - capacity_);  // rows that would be dropped at once
  for (int i = skip; i < n; ++i) {
    int64_t s;
    if (r.count < capacity_) {
      s = slot(r, r.count);
      ++r.count;
    } else {  // full: overwrite the oldest
      s = r.head;
      r.head = (r.head + 1) % capacity_;
    }
    for (int g = 0; g < G_; ++g) {
      const size_t src = (size_t(i) * size_t(G_) + size_t(g)) * hd;
      const size_t dst = (size_t(g) * cap + size_t(s)) * hd;
      std::memcpy(&r.keys[dst], keys + src, hd * sizeof(float));
      std::memcpy(&r.values[dst], values + src, hd * sizeof(float));
    }
    r.pos[size_t(s)] = first_pos + i;
  }
  mark_stale(b);
}

void KnnStore::drop_before(int b, int64_t pos) {
  RT_CHECK(b >= 0 && b < B_, "KnnStore::drop_before: b out of range");
  Row& r = rows_[size_t(b)];
  bool dropped = false;
  while (r.count > 0 && r.pos[size_t(r.head)] < pos) {  // positions increase with age
    r.head = (r.head + 1) % capacity_;
    --r.count;
    dropped = true;
  }
  if (r.count == 0) r.head = 0;
  if (dropped) mark_stale(b);
}

const float* KnnStore::key(int b, int g, int64_t idx) const {
  const Row& r = rows_[size_t(b)];
  RT_CHECK(g >= 0 && g < G_ && idx >= 0 && idx < r.count, "KnnStore::key: bad handle");
  return &r.keys[(size_t(g) * size_t(capacity_) + size_t(slot(r, idx))) * size_t(hd_)];
}

const float* KnnStore::value(int b, int g, int64_t idx) const {
  const Row& r = rows_[size_t(b)];
  RT_CHECK(g >= 0 && g < G_ && idx >= 0 && idx < r.count, "KnnStore::value: bad handle");
  return &r.values[(size_t(g) * size_t(capacity_) + size_t(slot(r, idx))) * size_t(hd_)];
}

int64_t KnnStore::position(int b, int64_t idx) const {
  const Row& r = rows_[size_t(b)];
  RT_CHECK(idx >= 0 && idx < r.count, "KnnStore::position: bad handle");
  return r.pos[size_t(slot(r, idx))];
}

int64_t KnnStore::bytes() const {
  int64_t total = 0;
  for (const Row& r : rows_)
    total += int64_t((r.keys.capacity() + r.values.capacity()) * sizeof(float) +
                     r.pos.capacity() * sizeof(int64_t));
  for (const auto& a : ann_)
    if (a) total += a->bytes;
  return total;
}

int KnnStore::search(int b, int g, const float* queries, int nq, int k, int32_t* idx_out,
                     float* score_out, int64_t ldq) {
  RT_CHECK(b >= 0 && b < B_ && g >= 0 && g < G_, "KnnStore::search: b or g out of range");
  RT_CHECK(nq >= 0 && k >= 1, "KnnStore::search: nq >= 0, k >= 1");
  if (ldq == 0) ldq = hd_;
  RT_CHECK(ldq >= hd_, "KnnStore::search: ldq >= hd");
  std::fill(idx_out, idx_out + size_t(nq) * size_t(k), int32_t(-1));
  std::fill(score_out, score_out + size_t(nq) * size_t(k), kNegInf);
  const int n = int(std::min<int64_t>(k, rows_[size_t(b)].count));
  if (n == 0 || nq == 0) return n;
  if (index_ == "exact")
    search_exact(b, g, queries, nq, k, ldq, idx_out, score_out);
  else
    search_ann(b, g, queries, nq, k, ldq, idx_out, score_out);
  return n;
}

// Scores blocks of up to `blk` stored rows (contiguous in the ring) with one
// sgemm each, S (nq, len) = Q (nq, hd) K_block^T, and keeps per query the
// candidates that can still be in the top k. Blocks go oldest first, so a
// later row with a score equal to the current k-th best loses the tie and is
// skipped (score > threshold is the whole filter).
void KnnStore::search_exact(int b, int g, const float* queries, int nq, int k, int64_t ldq,
                            int32_t* idx_out, float* score_out) const {
  const Row& r = rows_[size_t(b)];
  const int64_t count = r.count;
  const size_t n = size_t(std::min<int64_t>(k, count));
  const int64_t blk = std::clamp<int64_t>((int64_t(1) << 20) / nq, 256, 16384);
  const float* K = &r.keys[size_t(g) * size_t(capacity_) * size_t(hd_)];
  std::vector<float> S(size_t(nq) * size_t(std::min(blk, count)));
  const size_t prune_at = 2 * n + 256;  // candidates kept between prunings
  std::vector<std::vector<Cand>> cand(static_cast<size_t>(nq));
  std::vector<float> thr(static_cast<size_t>(nq), kNegInf);
  std::vector<char> pruned(static_cast<size_t>(nq), 0);
  for (int64_t age0 = 0; age0 < count;) {
    const int64_t s = slot(r, age0);
    const int64_t len = std::min({blk, count - age0, int64_t(capacity_) - s});
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, int(len), hd_, 1.f, queries,
                int(ldq), K + size_t(s) * size_t(hd_), hd_, 0.f, S.data(), int(len));
#pragma omp parallel for schedule(static) if (nq > 1 && !omp_in_parallel())
    for (int i = 0; i < nq; ++i) {
      std::vector<Cand>& c = cand[size_t(i)];
      const float* srow = &S[size_t(i) * size_t(len)];
      float t = thr[size_t(i)];
      bool p = pruned[size_t(i)];
      for (int64_t j = 0; j < len; ++j) {
        float sc = srow[j];
        if (std::isnan(sc)) sc = kNegInf;  // keeps the order total
        if (p && !(sc > t)) continue;
        c.push_back({sc, int32_t(age0 + j)});
        if (c.size() >= prune_at) {  // keep the n best; the n-th is the new threshold
          std::nth_element(c.begin(), c.begin() + std::ptrdiff_t(n - 1), c.end(), better);
          c.resize(n);
          t = c[n - 1].score;
          p = true;
        }
      }
      thr[size_t(i)] = t;
      pruned[size_t(i)] = p;
    }
    age0 += len;
  }
  for (int i = 0; i < nq; ++i) {
    std::vector<Cand>& c = cand[size_t(i)];
    keep_best_sorted(c, n);
    for (size_t j = 0; j < n; ++j) {
      idx_out[size_t(i) * size_t(k) + j] = c[j].age;
      score_out[size_t(i) * size_t(k) + j] = c[j].score;
    }
  }
}

void KnnStore::build(int b) {
  RT_CHECK(b >= 0 && b < B_, "KnnStore::build: b out of range");
  if (index_ == "exact" || rows_[size_t(b)].count == 0) return;
  for (int g = 0; g < G_; ++g)
    if (!ann_[size_t(b) * size_t(G_) + size_t(g)]) build_index(b, g);
}

#ifdef RINGTRAIN_HAVE_FAISS

void KnnStore::build_index(int b, int g) {
  const Row& r = rows_[size_t(b)];
  const int64_t count = r.count;
  const size_t hd = size_t(hd_);
  const float* K = &r.keys[size_t(g) * size_t(capacity_) * hd];
  // The stored keys in age order are at most two contiguous pieces of the ring.
  const int64_t s0 = r.head, n0 = std::min<int64_t>(count, capacity_ - s0), n1 = count - n0;
  auto add_all = [&](faiss::Index& ix) {
    ix.add(n0, K + size_t(s0) * hd);
    if (n1 > 0) ix.add(n1, K);
  };
  auto a = std::make_unique<AnnIndex>();
  if (index_ == "flat") {
    auto ix = std::make_unique<faiss::IndexFlatIP>(hd_);
    add_all(*ix);
    a->bytes = int64_t(ix->codes.size());
    a->index = std::move(ix);
  } else if (index_ == "ivf") {
    int64_t nlist = options_.ivf_nlist;
    if (nlist <= 0)
      nlist = std::clamp<int64_t>(std::llround(std::sqrt(double(count))), 1,
                                  std::max<int64_t>(1, count / 39));
    nlist = std::min(nlist, count);
    auto ix = std::make_unique<faiss::IndexIVFFlat>(new faiss::IndexFlatIP(hd_), hd_,
                                                    size_t(nlist), faiss::METRIC_INNER_PRODUCT);
    ix->own_fields = true;
    ix->cp.min_points_per_centroid = 1;  // nlist <= count/39 already; no warning on tiny stores
    std::vector<float> train;            // the keys in age order, when the ring wraps
    if (n1 > 0) {
      train.resize(size_t(count) * hd);
      std::memcpy(train.data(), K + size_t(s0) * hd, size_t(n0) * hd * sizeof(float));
      std::memcpy(train.data() + size_t(n0) * hd, K, size_t(n1) * hd * sizeof(float));
    }
    ix->train(count, n1 > 0 ? train.data() : K + size_t(s0) * hd);
    add_all(*ix);
    int64_t nprobe = options_.ivf_nprobe > 0 ? options_.ivf_nprobe
                                             : std::max<int64_t>(16, nlist / 4);
    ix->nprobe = size_t(std::min(nprobe, nlist));
    int64_t by = nlist * int64_t(hd) * int64_t(sizeof(float));  // centroids
    for (int64_t l = 0; l < nlist; ++l)
      by += int64_t(ix->invlists->list_size(size_t(l)) *
                    (ix->code_size + sizeof(int64_t)));
    a->bytes = by;
    a->index = std::move(ix);
  } else {  // hnsw
    auto ix = std::make_unique<faiss::IndexHNSWFlat>(hd_, options_.hnsw_m,
                                                     faiss::METRIC_INNER_PRODUCT);
    ix->hnsw.efConstruction = options_.hnsw_ef_construction;
    add_all(*ix);
    const auto& h = ix->hnsw;
    a->bytes = int64_t(count) * int64_t(hd) * int64_t(sizeof(float)) +
               int64_t(h.neighbors.size() * sizeof(h.neighbors[0]) +
                       h.levels.size() * sizeof(h.levels[0]) +
                       h.offsets.size() * sizeof(h.offsets[0]));
    a->index = std::move(ix);
  }
  ann_[size_t(b) * size_t(G_) + size_t(g)] = std::move(a);
}

void KnnStore::search_ann(int b, int g, const float* queries, int nq, int k, int64_t ldq,
                          int32_t* idx_out, float* score_out) {
  AnnIndex* a = ann_[size_t(b) * size_t(G_) + size_t(g)].get();
  if (!a) {
    build_index(b, g);
    a = ann_[size_t(b) * size_t(G_) + size_t(g)].get();
  }
  const size_t hd = size_t(hd_);
  std::vector<float> packed;  // FAISS wants contiguous queries
  const float* Q = queries;
  if (ldq != hd_) {
    packed.resize(size_t(nq) * hd);
    for (int i = 0; i < nq; ++i)
      std::memcpy(&packed[size_t(i) * hd], queries + size_t(i) * size_t(ldq),
                  hd * sizeof(float));
    Q = packed.data();
  }
  if (auto* h = dynamic_cast<faiss::IndexHNSWFlat*>(a->index.get()))
    h->hnsw.efSearch = options_.hnsw_ef_search > 0 ? options_.hnsw_ef_search
                                                   : std::max(256, 8 * k);
  std::vector<int64_t> labels(size_t(nq) * size_t(k));  // faiss idx_t
  std::vector<float> dist(size_t(nq) * size_t(k));
  a->index->search(nq, Q, k, dist.data(), labels.data());
  const size_t n = size_t(std::min<int64_t>(k, rows_[size_t(b)].count));
  std::vector<Cand> c;
  for (int i = 0; i < nq; ++i) {
    c.clear();
    for (size_t j = 0; j < size_t(k); ++j) {
      const auto l = labels[size_t(i) * size_t(k) + j];
      if (l >= 0) c.push_back({dist[size_t(i) * size_t(k) + j], int32_t(l)});
    }
    int32_t* io = idx_out + size_t(i) * size_t(k);
    float* so = score_out + size_t(i) * size_t(k);
    if (c.size() < n) {  // FAISS found too few rows: exact search of this query
      search_exact(b, g, Q + size_t(i) * hd, 1, k, hd_, io, so);
      continue;
    }
    keep_best_sorted(c, n);
    for (size_t j = 0; j < n; ++j) io[j] = c[j].age, so[j] = c[j].score;
  }
}

#else  // no FAISS: the constructor refuses flat|ivf|hnsw, so these never run

void KnnStore::build_index(int, int) { RT_CHECK(false, "KnnStore: built without FAISS"); }
void KnnStore::search_ann(int, int, const float*, int, int, int64_t, int32_t*, float*) {
  RT_CHECK(false, "KnnStore: built without FAISS");
}

#endif

}  // namespace rt
