// Retrieval store of one kNN memory layer (docs/memory.md, "knn"): for each
// of B sequences, a FIFO of up to `capacity` rows, each the pre-position key
// and value of G kv heads (G*hd floats each) with its sequence position, and
// a top-k inner-product search per (sequence, kv head).
//
// Index types (model.memory.index):
//   exact  one cblas_sgemm of the queries against the stored keys (in blocks
//          of rows), then a partial selection: the exact top-k, ties broken by
//          the older row first. No extra memory.
//   flat   FAISS IndexFlatIP: exact search by FAISS (its own kernels, so a
//          score may differ from `exact` in the last bit).
//   ivf    FAISS IndexIVFFlat, inner-product metric, nlist ~ sqrt(size)
//          centroids trained on the stored keys, nprobe probed lists
//          (KnnSearchOptions); approximate.
//   hnsw   FAISS IndexHNSWFlat, inner-product metric, M links per node,
//          efSearch candidates at query time; approximate.
// A FAISS index is rebuilt lazily: the first search of (b, g) after the row's
// store changed (append, drop_before, clear) rebuilds it from all stored keys
// (or call build(b) to pay that cost up front). A memory layer changes its
// store once per segment, so this is one rebuild per segment: fine for the
// small stores of training (a few thousand rows); for stores of 100K+ rows the
// rebuild costs far more than the look-ups (tests/bench/bench_knn_lookup.cpp
// measures both). Results of the approximate indexes are re-sorted with the
// same tie rule; a query for which FAISS returns fewer than min(k, size) rows
// (ivf with few probes on a small store, hnsw on tiny stores) is completed by
// an exact search of that query, so every query always gets min(k, size) rows.
//
// Handles: a row is named by its age index, 0 = oldest currently stored, up
// to size(b)-1 = newest. Handles stay valid until the next append,
// drop_before or clear of that row.
//
// Threads: calls on distinct b (or searches on distinct (b, g)) may run
// concurrently; calls on the same row may not.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rt {

// Search-time settings of the approximate indexes. The defaults favour
// recall (tests/model/test_model_knn_store.cpp and the bench measure it).
struct KnnSearchOptions {
  int ivf_nlist = 0;          // 0: round(sqrt(size)), at most size/39 (FAISS's
                              // minimum of 39 training points per centroid), >= 1
  int ivf_nprobe = 0;         // 0: max(16, nlist/4), at most nlist
  int hnsw_m = 32;            // links per node
  int hnsw_ef_construction = 40;  // FAISS's default
  int hnsw_ef_search = 0;     // 0: max(256, 8*k)
};

// True when this build links FAISS (index flat|ivf|hnsw available).
bool knn_have_faiss();

// Throws UsageError unless `index` is exact|flat|ivf|hnsw and, for the FAISS
// types, this build has FAISS (the message says how to get it).
void knn_check_index(const std::string& index);

class KnnStore {
 public:
  // B sequences, G kv heads of head dim hd, at most `capacity` rows per
  // sequence (model.memory.memory_size); `index` as above (UsageError when
  // unknown or when FAISS is missing).
  KnnStore(int B, int G, int hd, int capacity, const std::string& index,
           const KnnSearchOptions& options = {});
  ~KnnStore();
  KnnStore(const KnnStore&) = delete;
  KnnStore& operator=(const KnnStore&) = delete;

  int batch() const { return B_; }
  int kv_heads() const { return G_; }
  int head_dim() const { return hd_; }
  int capacity() const { return capacity_; }
  const std::string& index() const { return index_; }

  void clear(int b);
  void clear_all();
  int64_t size(int b) const { return rows_[size_t(b)].count; }

  // Appends n rows of sequence b: keys and values (n, G, hd) row-major (row b
  // of a (B, T, G, hd) activation), at sequence positions first_pos ..
  // first_pos+n-1 (after every stored position of b). The oldest rows beyond
  // capacity are dropped. O(n G hd).
  void append(int b, const float* keys, const float* values, int n, int64_t first_pos);

  // Drops every stored row of b whose position is < pos (a document boundary).
  void drop_before(int b, int64_t pos);

  // Top-k inner-product search of kv head g of sequence b.
  //   queries (nq, hd), row i at queries + i*ldq (ldq = 0: hd)
  //   idx_out, score_out (nq, k): per query the n = min(k, size(b)) rows with
  //   the largest raw inner product q.K (not scaled), score descending, ties
  //   the older row first; entries n..k-1 are -1 and -inf.
  // Returns n.
  int search(int b, int g, const float* queries, int nq, int k, int32_t* idx_out,
             float* score_out, int64_t ldq = 0);

  // Builds the FAISS indexes of row b that are stale (no-op for exact), so a
  // caller (or the benchmark) can pay the rebuild outside the look-ups.
  void build(int b);

  // Stored row `idx` (age order) of sequence b, kv head g: hd floats.
  const float* key(int b, int g, int64_t idx) const;
  const float* value(int b, int g, int64_t idx) const;
  int64_t position(int b, int64_t idx) const;

  // Bytes held: the stores (allocated at full capacity on a row's first
  // append) plus the FAISS indexes currently built.
  int64_t bytes() const;

 private:
  struct Row {
    std::vector<float> keys, values;  // (G, capacity, hd): a ring per kv head
    std::vector<int64_t> pos;         // (capacity)
    int64_t head = 0;                 // ring slot of the oldest row
    int64_t count = 0;
  };
  struct AnnIndex;  // one FAISS index (defined in the .cpp)

  int64_t slot(const Row& r, int64_t idx) const { return (r.head + idx) % capacity_; }
  void mark_stale(int b);
  void build_index(int b, int g);
  void search_exact(int b, int g, const float* queries, int nq, int k, int64_t ldq,
                    int32_t* idx_out, float* score_out) const;
  void search_ann(int b, int g, const float* queries, int nq, int k, int64_t ldq,
                  int32_t* idx_out, float* score_out);

  int B_, G_, hd_, capacity_;
  std::string index_;
  KnnSearchOptions options_;
  std::vector<Row> rows_;
  std::vector<std::unique_ptr<AnnIndex>> ann_;  // (B, G), null when stale
};

}  // namespace rt
