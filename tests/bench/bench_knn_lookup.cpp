// Benchmark of the kNN memory store (model/memory/knn_store.h): per store size
// and index type, the time to fill the store and to (re)build its index, the
// look-up latency of single queries (mean and p99), the throughput of a batch
// of queries (as one segment of a memory layer issues them), recall@k against
// the exact search, and the bytes held. Prints one JSON object per line.
//
//   bench_knn_lookup [--sizes 10000,100000,1000000] [--hd 64] [--k 32]
//                    [--queries 200] [--batch 128] [--batch-reps 3]
//                    [--indexes exact,flat,ivf,hnsw] [--hnsw-max-size 100000]
//                    [--data random|clustered] [--clusters 256] [--seed 1]
//
// Keys and queries are iid N(0, 1) (the same distribution): the hard case for
// approximate indexes (no cluster structure); --data clustered draws both
// around --clusters random N(0, 1) centres with N(0, 0.3^2) noise. recall_at_k is the mean fraction
// of the exact top-k returned; exact_topk_fraction the fraction of queries
// whose top-k set is exactly the exact one (both null unless exact runs
// first in --indexes). hnsw is skipped above
// --hnsw-max-size rows (its build is single-digit thousands of rows per second
// per core). Each line records the load average (the machine may be shared).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "model/memory/knn_store.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  f >> a >> b >> c;
  char buf[64];
  std::snprintf(buf, sizeof buf, "[%.2f, %.2f, %.2f]", a, b, c);
  return buf;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// A measured fraction, or null when there is no exact reference (--indexes
// without exact).
std::string fmt(double x) {
  if (x < 0) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", x);
  return buf;
}

[[noreturn]] void usage(const std::string& why, int code = 2) {
  std::fprintf(code == 0 ? stdout : stderr,
               "bench_knn_lookup: %s\n"
               "usage: bench_knn_lookup [--sizes N,N,..] [--hd D] [--k K] [--queries Q]\n"
               "       [--batch NB] [--batch-reps R] [--indexes exact,flat,ivf,hnsw]\n"
               "       [--hnsw-max-size N] [--data random|clustered] [--clusters C]\n"
               "       [--seed S]\n",
               why.c_str());
  std::exit(code);
}

long parse_int(const std::string& flag, const std::string& v, long lo) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo)
    usage(flag + " wants an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<long> sizes = {10000, 100000, 1000000};
  std::vector<std::string> indexes = {"exact", "flat", "ivf", "hnsw"};
  int hd = 64, k = 32, nq = 200, batch = 128, reps = 3;
  long hnsw_max = 100000;
  unsigned seed = 1;
  std::string data = "random";
  int clusters = 256;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") usage("kNN store look-up benchmark", 0);
    if (i + 1 >= argc) usage(f + " needs a value");
    const std::string v = argv[++i];
    if (f == "--sizes") {
      sizes.clear();
      for (const auto& s : split(v)) sizes.push_back(parse_int(f, s, 1));
    } else if (f == "--indexes") {
      indexes = split(v);
    } else if (f == "--hd") {
      hd = int(parse_int(f, v, 1));
    } else if (f == "--k") {
      k = int(parse_int(f, v, 1));
    } else if (f == "--queries") {
      nq = int(parse_int(f, v, 1));
    } else if (f == "--batch") {
      batch = int(parse_int(f, v, 1));
    } else if (f == "--batch-reps") {
      reps = int(parse_int(f, v, 1));
    } else if (f == "--hnsw-max-size") {
      hnsw_max = parse_int(f, v, 0);
    } else if (f == "--data") {
      if (v != "random" && v != "clustered") usage("--data wants random or clustered");
      data = v;
    } else if (f == "--clusters") {
      clusters = int(parse_int(f, v, 1));
    } else if (f == "--seed") {
      seed = unsigned(parse_int(f, v, 0));
    } else {
      usage("unknown flag " + f);
    }
  }
  try {
    for (const auto& ix : indexes) rt::knn_check_index(ix);
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.code();
  }

  for (long n : sizes) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> keys(size_t(n) * size_t(hd)), queries(size_t(nq + batch) * size_t(hd));
    if (data == "random") {
      for (auto& x : keys) x = nd(rng);
      for (auto& x : queries) x = nd(rng);
    } else {
      std::vector<float> centres(size_t(clusters) * size_t(hd));
      for (auto& x : centres) x = nd(rng);
      auto draw = [&](std::vector<float>& out) {
        for (size_t r = 0; r < out.size() / size_t(hd); ++r) {
          const size_t c = rng() % unsigned(clusters);
          for (size_t d = 0; d < size_t(hd); ++d)
            out[r * size_t(hd) + d] = centres[c * size_t(hd) + d] + 0.3f * nd(rng);
        }
      };
      draw(keys);
      draw(queries);
    }
    std::vector<int32_t> exact_idx;  // (nq, k) from the exact index, for recall
    for (const auto& ix : indexes) {
      if (ix == "hnsw" && n > hnsw_max) {
        std::printf("{\"bench\": \"knn_lookup\", \"data\": \"%s\", \"index\": \"hnsw\", "
                    "\"size\": %ld, \"skipped\": \"size > --hnsw-max-size %ld (build time)\"}\n",
                    data.c_str(), n, hnsw_max);
        std::fflush(stdout);
        continue;
      }
      const std::string load0 = loadavg();
      rt::KnnStore st(1, 1, hd, int(n), ix);
      // Fill in segments of 4096 rows, as a memory layer appends its segments.
      auto t0 = Clock::now();
      for (long r = 0; r < n; r += 4096) {
        const int m = int(std::min<long>(4096, n - r));
        st.append(0, &keys[size_t(r) * size_t(hd)], &keys[size_t(r) * size_t(hd)], m, r);
      }
      const double append_s = seconds_since(t0);
      t0 = Clock::now();
      st.build(0);
      const double build_s = seconds_since(t0);

      std::vector<int32_t> idx(size_t(nq) * size_t(k));
      std::vector<float> score(size_t(nq) * size_t(k));
      std::vector<double> lat(static_cast<size_t>(nq));
      for (int q = 0; q < nq; ++q) {
        t0 = Clock::now();
        st.search(0, 0, &queries[size_t(q) * size_t(hd)], 1, k, &idx[size_t(q) * size_t(k)],
                  &score[size_t(q) * size_t(k)]);
        lat[size_t(q)] = seconds_since(t0) * 1e3;
      }
      double mean = 0;
      for (double x : lat) mean += x;
      mean /= nq;
      std::vector<double> sorted = lat;
      std::sort(sorted.begin(), sorted.end());
      const double p99 = sorted[std::min(sorted.size() - 1, size_t(0.99 * double(nq)))];

      std::vector<int32_t> bidx(size_t(batch) * size_t(k));
      std::vector<float> bscore(size_t(batch) * size_t(k));
      const float* bq = &queries[size_t(nq) * size_t(hd)];
      st.search(0, 0, bq, batch, k, bidx.data(), bscore.data());  // warm-up
      t0 = Clock::now();
      for (int r = 0; r < reps; ++r) st.search(0, 0, bq, batch, k, bidx.data(), bscore.data());
      const double batch_ms = seconds_since(t0) * 1e3 / reps;

      if (ix == "exact") exact_idx = idx;
      double recall = -1, full = -1;
      if (!exact_idx.empty()) {
        recall = 0, full = 0;
        const int kk = int(std::min<long>(k, n));
        for (int q = 0; q < nq; ++q) {
          std::set<int32_t> want(exact_idx.begin() + q * k, exact_idx.begin() + q * k + kk);
          int hit = 0;
          for (int j = 0; j < kk; ++j)
            hit += int(want.count(idx[size_t(q) * size_t(k) + size_t(j)]));
          recall += double(hit) / kk;
          full += hit == kk;
        }
        recall /= nq, full /= nq;
      }
      std::printf("{\"bench\": \"knn_lookup\", \"data\": \"%s\", \"index\": \"%s\", "
                  "\"size\": %ld, \"hd\": %d, \"k\": %d, \"append_s\": %.4f, \"build_s\": %.4f, "
                  "\"queries\": %d, "
                  "\"lookup_ms_mean\": %.4f, \"lookup_ms_p99\": %.4f, \"batch\": %d, "
                  "\"batch_ms\": %.3f, \"batch_queries_per_s\": %.1f, \"recall_at_k\": %s, "
                  "\"exact_topk_fraction\": %s, \"bytes\": %lld, \"threads\": %d, "
                  "\"loadavg_before\": %s, \"loadavg_after\": %s}\n",
                  data.c_str(), ix.c_str(), n, hd, k, append_s, build_s, nq, mean, p99, batch,
                  batch_ms, batch / (batch_ms * 1e-3), fmt(recall).c_str(), fmt(full).c_str(),
                  (long long)st.bytes(), omp_get_max_threads(), load0.c_str(),
                  loadavg().c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}
