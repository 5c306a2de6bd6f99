// KnnStore (model/memory/knn_store.h): the retrieval store of a kNN memory
// layer, against a float64 brute-force search over an independent FIFO model
// (a std::deque of rows).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"
#include "model/memory/knn_store.h"

namespace {

using rt::KnnStore;

// One stored row of the reference FIFO: keys and values (G, hd).
struct RefRow {
  int64_t pos;
  std::vector<float> key, value;
};

// The reference store of one sequence: what should be stored.
struct RefStore {
  int cap;
  std::deque<RefRow> rows;
  void append(const std::vector<float>& k, const std::vector<float>& v, int n, int G, int hd,
              int64_t first_pos) {
    const size_t w = size_t(G) * size_t(hd);
    for (int i = 0; i < n; ++i) {
      rows.push_back({first_pos + i, {k.begin() + i * w, k.begin() + (i + 1) * w},
                      {v.begin() + i * w, v.begin() + (i + 1) * w}});
      if (int(rows.size()) > cap) rows.pop_front();
    }
  }
  void drop_before(int64_t p) {
    while (!rows.empty() && rows.front().pos < p) rows.pop_front();
  }
};

struct Hit {
  double score;
  int32_t age;
};

// float64 brute force: the min(k, size) best rows of head g for query q
// (score descending, the older row first on ties).
std::vector<Hit> brute_force(const RefStore& s, int g, int hd, const float* q, int k) {
  std::vector<Hit> all;
  for (size_t j = 0; j < s.rows.size(); ++j) {
    double dot = 0;
    for (int d = 0; d < hd; ++d)
      dot += double(q[d]) * double(s.rows[j].key[size_t(g) * size_t(hd) + size_t(d)]);
    all.push_back({dot, int32_t(j)});
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const Hit& a, const Hit& b) { return a.score > b.score; });
  all.resize(std::min(all.size(), size_t(k)));
  return all;
}

// Values from {-1, -0.5, 0, 0.5, 1}: every dot product is exact in fp32 and
// fp64, and equal scores (ties) are frequent.
std::vector<float> coarse(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> u(-2, 2);
  std::vector<float> x(n);
  for (auto& f : x) f = 0.5f * float(u(rng));
  return x;
}

std::vector<float> gaussian(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& f : x) f = nd(rng);
  return x;
}

// Checks every stored row of b (keys, values, positions) against the reference.
void expect_contents(const KnnStore& st, int b, const RefStore& ref, int G, int hd) {
  ASSERT_EQ(st.size(b), int64_t(ref.rows.size()));
  for (size_t j = 0; j < ref.rows.size(); ++j) {
    EXPECT_EQ(st.position(b, int64_t(j)), ref.rows[j].pos);
    for (int g = 0; g < G; ++g)
      for (int d = 0; d < hd; ++d) {
        const size_t o = size_t(g) * size_t(hd) + size_t(d);
        ASSERT_EQ(st.key(b, g, int64_t(j))[d], ref.rows[j].key[o]);
        ASSERT_EQ(st.value(b, g, int64_t(j))[d], ref.rows[j].value[o]);
      }
  }
}

TEST(KnnStore, ExactEqualsFloat64BruteForceWithTiesAndWrap) {
  const int B = 2, G = 2, hd = 8, cap = 40;
  KnnStore st(B, G, hd, cap, "exact");
  std::vector<RefStore> ref(B, RefStore{cap, {}});
  std::mt19937 rng(17);
  std::vector<int64_t> next_pos(B, 0);
  int boundary_ties = 0, checked = 0;
  for (int round = 0; round < 8; ++round) {
    for (int b = 0; b < B; ++b) {
      const int n = 1 + int(rng() % 25);
      auto k = coarse(rng, size_t(n) * G * hd), v = coarse(rng, size_t(n) * G * hd);
      st.append(b, k.data(), v.data(), n, next_pos[b]);
      ref[size_t(b)].append(k, v, n, G, hd, next_pos[b]);
      next_pos[b] += n + int(rng() % 3);  // gaps in positions are allowed
      expect_contents(st, b, ref[size_t(b)], G, hd);
      for (int g = 0; g < G; ++g) {
        const int nq = 7;
        auto q = coarse(rng, size_t(nq) * hd);
        for (int kk : {1, 5, cap, cap + 10}) {
          std::vector<int32_t> idx(size_t(nq) * kk);
          std::vector<float> sc(size_t(nq) * kk);
          const int got = st.search(b, g, q.data(), nq, kk, idx.data(), sc.data());
          const int n_expect = int(std::min<int64_t>(kk, st.size(b)));
          ASSERT_EQ(got, n_expect);
          for (int i = 0; i < nq; ++i) {
            auto want = brute_force(ref[size_t(b)], g, hd, &q[size_t(i) * hd], kk);
            auto all = brute_force(ref[size_t(b)], g, hd, &q[size_t(i) * hd], cap + 10);
            if (int(all.size()) > kk && all[size_t(kk)].score == all[size_t(kk) - 1].score)
              ++boundary_ties;  // the cut at k falls inside a group of equal scores
            for (int j = 0; j < kk; ++j) {
              const size_t o = size_t(i) * kk + size_t(j);
              if (j < n_expect) {
                EXPECT_EQ(idx[o], want[size_t(j)].age) << "b " << b << " g " << g << " k " << kk;
                EXPECT_EQ(double(sc[o]), want[size_t(j)].score);
              } else {
                EXPECT_EQ(idx[o], -1);
                EXPECT_EQ(sc[o], -INFINITY);
              }
            }
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(st.size(0), 0);
  EXPECT_GT(boundary_ties, 20) << "the data should exercise the tie rule at the top-k cut";
  std::printf("checked %d queries, %d with a tie across the top-k cut\n", checked,
              boundary_ties);
}

TEST(KnnStore, ExactTieRuleHoldsAcrossPruningAndBlocks) {
  // 20000 stored rows of coarse values (few distinct scores, so ties
  // everywhere): the candidate pruning (every 2k+256 candidates), the ring's
  // wrap and, for one query, two sgemm blocks (16384 rows each) all cut
  // through groups of equal scores.
  const int hd = 8, cap = 20000;
  KnnStore st(1, 1, hd, cap, "exact");
  RefStore ref{cap, {}};
  std::mt19937 rng(8);
  int64_t pos = 0;
  for (int chunk : {15000, 11000}) {
    auto k = coarse(rng, size_t(chunk) * hd), v = coarse(rng, size_t(chunk) * hd);
    st.append(0, k.data(), v.data(), chunk, pos);
    ref.append(k, v, chunk, 1, hd, pos);
    pos += chunk;
  }
  for (int nq : {1, 7})
    for (int kk : {1, 16, 100}) {
      auto q = coarse(rng, size_t(nq) * hd);
      std::vector<int32_t> idx(size_t(nq) * kk);
      std::vector<float> sc(size_t(nq) * kk);
      st.search(0, 0, q.data(), nq, kk, idx.data(), sc.data());
      for (int i = 0; i < nq; ++i) {
        auto want = brute_force(ref, 0, hd, &q[size_t(i) * hd], kk);
        for (int j = 0; j < kk; ++j) {
          ASSERT_EQ(idx[size_t(i) * kk + size_t(j)], want[size_t(j)].age)
              << "nq " << nq << " k " << kk << " query " << i << " rank " << j;
          ASSERT_EQ(double(sc[size_t(i) * kk + size_t(j)]), want[size_t(j)].score);
        }
      }
    }
}

TEST(KnnStore, ExactMatchesFloat64OnRandomFloatsOverSeveralBlocks) {
  // 20000 rows: more than one sgemm block (16384 rows for one query, 16384
  // for 64), and the ring wraps (25000 appended).
  const int hd = 64, cap = 20000, k = 32;
  KnnStore st(1, 1, hd, cap, "exact");
  RefStore ref{cap, {}};
  std::mt19937 rng(5);
  int64_t pos = 0;
  for (int chunk : {9000, 7000, 9000}) {
    auto kk = gaussian(rng, size_t(chunk) * hd), v = gaussian(rng, size_t(chunk) * hd);
    st.append(0, kk.data(), v.data(), chunk, pos);
    ref.append(kk, v, chunk, 1, hd, pos);
    pos += chunk;
  }
  ASSERT_EQ(st.size(0), cap);
  int same_idx = 0, total = 0;
  for (int nq : {1, 64}) {
    auto q = gaussian(rng, size_t(nq) * hd);
    std::vector<int32_t> idx(size_t(nq) * k);
    std::vector<float> sc(size_t(nq) * k);
    st.search(0, 0, q.data(), nq, k, idx.data(), sc.data());
    for (int i = 0; i < nq; ++i) {
      auto want = brute_force(ref, 0, hd, &q[size_t(i) * hd], k);
      for (int j = 0; j < k; ++j) {
        const size_t o = size_t(i) * k + size_t(j);
        const double tol = 1e-4;  // fp32 sgemm rounding of |q.K| ~ 8
        EXPECT_NEAR(sc[o], want[size_t(j)].score, tol);
        // the row returned at rank j really has (up to rounding) the j-th best score
        double dot = 0;
        for (int d = 0; d < hd; ++d)
          dot += double(q[size_t(i) * hd + size_t(d)]) * double(st.key(0, 0, idx[o])[d]);
        EXPECT_NEAR(dot, want[size_t(j)].score, tol);
        same_idx += idx[o] == want[size_t(j)].age;
        ++total;
      }
    }
  }
  EXPECT_GE(same_idx, total - 2) << "only float32 near-ties may swap neighbours";
}

TEST(KnnStore, FifoBoundHoldsWhateverIsAppended) {
  const int G = 3, hd = 4, cap = 37;
  KnnStore st(1, G, hd, cap, "exact");
  RefStore ref{cap, {}};
  std::mt19937 rng(3);
  int64_t pos = 100, total = 0;
  const int64_t bytes0 = 2 * int64_t(G) * cap * hd * 4 + int64_t(cap) * 8;
  for (int n : {0, 1, 5, 36, 37, 38, 100, 2, 74, 1}) {
    auto k = gaussian(rng, size_t(n) * G * hd), v = gaussian(rng, size_t(n) * G * hd);
    st.append(0, k.data(), v.data(), n, pos);
    ref.append(k, v, n, G, hd, pos);
    pos += n;
    total += n;
    EXPECT_EQ(st.size(0), std::min<int64_t>(total, cap));
    expect_contents(st, 0, ref, G, hd);  // the newest rows, oldest dropped
    if (total > 0) {
      EXPECT_EQ(st.position(0, st.size(0) - 1), pos - 1);
      EXPECT_EQ(st.bytes(), bytes0) << "the store never grows beyond its capacity";
    }
  }
}

TEST(KnnStore, DropBeforeRemovesRowsBeforeADocumentStart) {
  const int hd = 4, cap = 50;
  KnnStore st(2, 1, hd, cap, "exact");
  RefStore ref{cap, {}};
  std::mt19937 rng(9);
  auto k = gaussian(rng, 30 * hd), v = gaussian(rng, 30 * hd);
  st.append(0, k.data(), v.data(), 30, 0);  // positions 0..29
  st.append(1, k.data(), v.data(), 30, 0);
  ref.append(k, v, 30, 1, hd, 0);
  st.drop_before(0, -5);  // nothing before
  EXPECT_EQ(st.size(0), 30);
  st.drop_before(0, 12);
  ref.drop_before(12);
  expect_contents(st, 0, ref, 1, hd);
  EXPECT_EQ(st.size(0), 18);
  EXPECT_EQ(st.position(0, 0), 12);
  EXPECT_EQ(st.size(1), 30) << "other sequences keep their rows";
  // Search sees only the remaining rows, handles renumbered from the oldest.
  auto q = gaussian(rng, hd);
  std::vector<int32_t> idx(40);
  std::vector<float> sc(40);
  EXPECT_EQ(st.search(0, 0, q.data(), 1, 40, idx.data(), sc.data()), 18);
  auto want = brute_force(ref, 0, hd, q.data(), 40);
  for (int j = 0; j < 18; ++j) EXPECT_EQ(idx[size_t(j)], want[size_t(j)].age);
  EXPECT_EQ(idx[18], -1);
  st.drop_before(0, 1000);
  EXPECT_EQ(st.size(0), 0);
  EXPECT_EQ(st.search(0, 0, q.data(), 1, 4, idx.data(), sc.data()), 0);
  EXPECT_EQ(idx[0], -1);
  // Appending after emptying starts afresh.
  st.append(0, k.data(), v.data(), 3, 1000);
  EXPECT_EQ(st.size(0), 3);
  EXPECT_EQ(st.position(0, 0), 1000);
  EXPECT_EQ(st.key(0, 0, 2)[1], k[2 * hd + 1]);
}

TEST(KnnStore, ClearEmptiesOneSequenceOrAll) {
  const int hd = 4;
  KnnStore st(3, 2, hd, 10, "exact");
  std::mt19937 rng(1);
  auto k = gaussian(rng, 6 * 2 * hd), v = gaussian(rng, 6 * 2 * hd);
  for (int b = 0; b < 3; ++b) st.append(b, k.data(), v.data(), 6, 0);
  st.clear(1);
  EXPECT_EQ(st.size(0), 6);
  EXPECT_EQ(st.size(1), 0);
  EXPECT_EQ(st.size(2), 6);
  std::vector<int32_t> idx(3);
  std::vector<float> sc(3);
  EXPECT_EQ(st.search(1, 1, k.data(), 1, 3, idx.data(), sc.data()), 0);
  EXPECT_EQ(idx[2], -1);
  EXPECT_EQ(sc[0], -INFINITY);
  st.append(1, k.data(), v.data(), 2, 0);  // positions may restart after a clear
  EXPECT_EQ(st.size(1), 2);
  st.clear_all();
  for (int b = 0; b < 3; ++b) EXPECT_EQ(st.size(b), 0);
}

TEST(KnnStore, StridedQueriesEqualContiguousOnes) {
  const int hd = 16, H = 3, nq = 5;  // queries of head 1 inside a (nq, H, hd) tensor
  KnnStore st(1, 1, hd, 100, "exact");
  std::mt19937 rng(2);
  auto k = gaussian(rng, 80 * hd), v = gaussian(rng, 80 * hd), qs = gaussian(rng, nq * H * hd);
  st.append(0, k.data(), v.data(), 80, 0);
  std::vector<float> qc(size_t(nq) * hd);
  for (int i = 0; i < nq; ++i)
    std::copy_n(&qs[(size_t(i) * H + 1) * hd], hd, &qc[size_t(i) * hd]);
  std::vector<int32_t> i1(nq * 8), i2(nq * 8);
  std::vector<float> s1(nq * 8), s2(nq * 8);
  st.search(0, 0, qc.data(), nq, 8, i1.data(), s1.data());
  st.search(0, 0, &qs[hd], nq, 8, i2.data(), s2.data(), int64_t(H) * hd);
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(s1, s2);
}

TEST(KnnStore, BadIndexIsAUsageError) {
  try {
    KnnStore st(1, 1, 4, 10, "annoy");
    FAIL() << "expected a UsageError";
  } catch (const rt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.memory.index"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("exact, flat, ivf or hnsw"), std::string::npos);
  }
  EXPECT_THROW(KnnStore(1, 1, 4, 0, "exact"), rt::UsageError);
  for (const char* ix : {"flat", "ivf", "hnsw"}) {
    if (rt::knn_have_faiss()) {
      EXPECT_NO_THROW(KnnStore(1, 1, 4, 10, ix));
    } else {
      try {
        KnnStore st(1, 1, 4, 10, ix);
        FAIL() << "expected a UsageError without FAISS";
      } catch (const rt::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("libfaiss-dev"), std::string::npos) << e.what();
      }
    }
  }
}

// ---- FAISS indexes ----------------------------------------------------------

#define SKIP_WITHOUT_FAISS() \
  if (!rt::knn_have_faiss()) GTEST_SKIP() << "skipped: built without FAISS"

// Exact top-k of a store for nq queries (the reference for the FAISS indexes).
struct TopK {
  std::vector<int32_t> idx;
  std::vector<float> score;
};
TopK run(KnnStore& st, const std::vector<float>& q, int nq, int k) {
  TopK t{std::vector<int32_t>(size_t(nq) * k), std::vector<float>(size_t(nq) * k)};
  st.search(0, 0, q.data(), nq, k, t.idx.data(), t.score.data());
  return t;
}

TEST(KnnStore, FlatEqualsExact) {
  SKIP_WITHOUT_FAISS();
  const int hd = 32, cap = 3000, k = 16, nq = 50;
  KnnStore ex(1, 1, hd, cap, "exact"), fl(1, 1, hd, cap, "flat");
  std::mt19937 rng(11);
  int64_t pos = 0;
  for (int chunk : {2000, 1500, 700}) {  // wraps
    auto kk = gaussian(rng, size_t(chunk) * hd), v = gaussian(rng, size_t(chunk) * hd);
    ex.append(0, kk.data(), v.data(), chunk, pos);
    fl.append(0, kk.data(), v.data(), chunk, pos);
    pos += chunk;
    for (int nqq : {1, nq}) {  // FAISS uses BLAS from 20 queries on, its own loop below
      auto q = gaussian(rng, size_t(nqq) * hd);
      TopK a = run(ex, q, nqq, k), b = run(fl, q, nqq, k);
      for (size_t o = 0; o < a.idx.size(); ++o) {
        EXPECT_EQ(a.idx[o], b.idx[o]);
        EXPECT_NEAR(a.score[o], b.score[o], 1e-4);
      }
    }
  }
  EXPECT_GT(fl.bytes(), ex.bytes()) << "the FAISS copy of the keys is counted";
}

TEST(KnnStore, FaissIndexesFollowTheStoreAndCoverSmallStores) {
  SKIP_WITHOUT_FAISS();
  const int hd = 8;
  std::mt19937 rng(4);
  for (const char* ix : {"flat", "ivf", "hnsw"}) {
    KnnStore ex(1, 1, hd, 200, "exact"), st(1, 1, hd, 200, ix);
    auto k = gaussian(rng, 10 * hd), v = gaussian(rng, 10 * hd);
    ex.append(0, k.data(), v.data(), 10, 0);
    st.append(0, k.data(), v.data(), 10, 0);
    auto q = gaussian(rng, 3 * hd);
    // k > size: every stored row, in exact order.
    TopK a = run(ex, q, 3, 32), b = run(st, q, 3, 32);
    EXPECT_EQ(a.idx, b.idx) << ix;
    // A row appended after the last search is found (the index was rebuilt).
    std::vector<float> best(q.begin(), q.begin() + hd);
    for (auto& f : best) f *= 10.f;
    st.append(0, best.data(), best.data(), 1, 10);
    b = run(st, q, 1, 4);
    EXPECT_EQ(b.idx[0], 10) << ix;
    // After drop_before the old rows are gone from the index too.
    st.drop_before(0, 10);
    b = run(st, q, 1, 4);
    EXPECT_EQ(b.idx[0], 0) << ix;
    EXPECT_EQ(b.idx[1], -1) << ix;
  }
}

// Recall of ivf and hnsw against the exact top-k: `all_k` is the fraction of
// queries whose top-k set is exactly the exact one, `recall` the mean
// fraction of the exact top-k found.
struct Recall {
  double all_k, recall;
};
Recall measure(const char* index, const std::vector<float>& keys, int n, int hd,
               const std::vector<float>& q, int nq, int k) {
  const int cap = n * 4 / 5;  // the ring wraps: training sees the gathered keys
  KnnStore ex(1, 1, hd, cap, "exact"), st(1, 1, hd, cap, index);
  ex.append(0, keys.data(), keys.data(), n, 0);
  st.append(0, keys.data(), keys.data(), n, 0);
  TopK a = run(ex, q, nq, k), b = run(st, q, nq, k);
  int full = 0;
  double found = 0;
  for (int i = 0; i < nq; ++i) {
    std::set<int32_t> want(a.idx.begin() + i * k, a.idx.begin() + (i + 1) * k);
    int hit = 0;
    for (int j = 0; j < k; ++j) hit += int(want.count(b.idx[size_t(i) * k + size_t(j)]));
    full += hit == k;
    found += double(hit) / k;
  }
  return {double(full) / nq, found / nq};
}

std::vector<float> clustered(std::mt19937& rng, int n, int hd, int clusters) {
  auto centers = gaussian(rng, size_t(clusters) * hd);
  std::normal_distribution<float> nd(0.f, 0.3f);
  std::vector<float> x(size_t(n) * hd);
  for (int i = 0; i < n; ++i) {
    const int c = int(rng() % unsigned(clusters));
    for (int d = 0; d < hd; ++d)
      x[size_t(i) * hd + size_t(d)] = centers[size_t(c) * hd + size_t(d)] + nd(rng);
  }
  return x;
}

TEST(KnnStore, ApproximateIndexesReturnTheExactTopKOnMostQueries) {
  SKIP_WITHOUT_FAISS();
  // 25000 rows appended (20000 stored) for ivf; hnsw builds ~20x slower, so
  // it gets the first 10000 (8000 stored).
  const int n = 25000, hd = 64, k = 32, nq = 200;
  std::mt19937 rng(21);
  struct Data {
    const char* name;
    std::vector<float> keys, queries;
  };
  std::vector<Data> data;
  data.push_back({"random", gaussian(rng, size_t(n) * hd), gaussian(rng, size_t(nq) * hd)});
  {
    std::mt19937 r2(22);  // queries from the same clusters
    auto all = clustered(r2, n + nq, hd, 64);
    data.push_back({"clustered", {all.begin(), all.begin() + size_t(n) * hd},
                    {all.begin() + size_t(n) * hd, all.end()}});
  }
  for (const char* ix : {"ivf", "hnsw"})
    for (const Data& d : data) {
      const int ni = std::string(ix) == "hnsw" ? 10000 : n;
      Recall r = measure(ix, d.keys, ni, hd, d.queries, nq, k);
      std::printf("%s on %s keys (%d stored, hd %d, k %d, %d queries): exact top-k on %.3f "
                  "of queries, recall@k %.4f\n",
                  ix, d.name, ni * 4 / 5, hd, k, nq, r.all_k, r.recall);
      RecordProperty(std::string(ix) + "_" + d.name + "_recall", std::to_string(r.recall));
      // Bounds a bit below the measured values (2 cores; hnsw's parallel
      // insertion makes its graph, so its recall, vary slightly run to run).
      // Measured: ivf random 0.68 recall, no query fully exact (iid Gaussian
      // keys in 64 dimensions have no cluster structure for IVF to exploit,
      // and the default nprobe = nlist/4 scans about a quarter of the rows);
      // ivf clustered 1.0 / 1.0; hnsw random 0.9998 / 0.995; hnsw clustered 1.0 / 1.0.
      const bool ivf_random = std::string(ix) == "ivf" && std::string(d.name) == "random";
      EXPECT_GE(r.recall, ivf_random ? 0.6 : 0.98) << ix << " " << d.name;
      EXPECT_GE(r.all_k, ivf_random ? 0.0 : 0.9) << ix << " " << d.name;
    }
}

}  // namespace
