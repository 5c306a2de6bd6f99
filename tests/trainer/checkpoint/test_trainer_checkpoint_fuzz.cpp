// Fuzz test of checkpoint loading (issue 18 items 1-2): random bytes flipped
// all over a small checkpoint, in hundreds of trials. Every trial loads the
// damaged file the way train/eval/inspect do (inspect_checkpoint, then
// read_checkpoint_meta, load_model_weights, load_optimizer_state into a fresh
// model) in a forked child, which must either fail with an IoError (exit 3)
// or succeed with exactly the clean file's weights, moments and attributes:
// never a signal, a hang, another error, or different numbers.
//
// RINGTRAIN_FUZZ_SEED=S and RINGTRAIN_FUZZ_TRIALS=N change the defaults; the
// seed is printed so that a failure can be replayed.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"
#include "model/llama.h"
#include "test_util.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/train/optimizer.h"

namespace rt {
namespace {

namespace fs = std::filesystem;

ModelConfig fuzz_model_config() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.intermediate_size = 24;
  c.position = "rope";
  return c;
}

std::vector<float> host_copy(Backend& be, const Arena& a) {
  std::vector<float> out(a.numel());
  be.copy_to_host(out.data(), a.f32_base(), a.bytes());
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// Byte ranges of the chunk data of every dataset (what Fletcher32 covers);
// everything else in the file is HDF5 metadata.
std::vector<std::pair<haddr_t, hsize_t>> chunk_ranges(const std::string& path) {
  std::vector<std::pair<haddr_t, hsize_t>> out;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0);
  auto visit = [](hid_t obj, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type != H5O_TYPE_DATASET) return 0;
    auto* ranges = static_cast<std::vector<std::pair<haddr_t, hsize_t>>*>(data);
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    hid_t s = H5Dget_space(d);
    hsize_t n = 0;
    H5Dget_num_chunks(d, s, &n);
    for (hsize_t i = 0; i < n; ++i) {
      hsize_t off[8];
      unsigned mask = 0;
      haddr_t addr = 0;
      hsize_t size = 0;
      if (H5Dget_chunk_info(d, s, i, off, &mask, &addr, &size) >= 0) ranges->push_back({addr, size});
    }
    H5Sclose(s);
    H5Dclose(d);
    return 0;
  };
  H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, visit, &out, H5O_INFO_BASIC);
  H5Fclose(f);
  return out;
}

// Exit codes of the probe child.
constexpr int kSame = 0, kDifferent = 10, kOther = 11;

struct Loaded {
  CheckpointMeta meta;
  std::vector<float> params, m, v;
  int64_t opt_step = 0;
};

Loaded load_all(const std::string& path) {
  auto be = make_cpu_backend();
  inspect_checkpoint(path);
  Loaded out;
  out.meta = read_checkpoint_meta(path);
  LlamaModel m(fuzz_model_config(), *be);
  m.init_weights(12345);
  OptimizerConfig oc;
  Optimizer opt(oc, m);
  load_model_weights(path, m);
  load_optimizer_state(path, m, opt);
  out.params = host_copy(*be, m.params());
  out.m = host_copy(*be, opt.exp_avg());
  out.v = host_copy(*be, opt.exp_avg_sq());
  out.opt_step = opt.steps_taken();
  return out;
}

// Runs in a child: loads the damaged file, and the clean one to compare with.
int probe(const std::string& path, const std::string& clean_path) {
  try {
    const Loaded got = load_all(path);
    const Loaded want = load_all(clean_path);
    const bool same = got.meta.step == want.meta.step &&
                      got.meta.tokens_seen == want.meta.tokens_seen &&
                      got.meta.config_yaml == want.meta.config_yaml &&
                      got.meta.trainer_state_json == want.meta.trainer_state_json &&
                      got.opt_step == want.opt_step && same_bits(got.params, want.params) &&
                      same_bits(got.m, want.m) && same_bits(got.v, want.v);
    return same ? kSame : kDifferent;
  } catch (const IoError&) {
    return kExitIo;
  } catch (const Error& e) {
    std::fprintf(stderr, "  other error (exit %d): %s\n", int(e.code()), e.what());
    return kOther;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  other exception: %s\n", e.what());
    return kOther;
  }
}

// Runs f in a child process (10 s at most); returns its exit code, or minus
// the signal that ended it. The parent never starts OpenMP threads, so the
// children can use OpenMP (libgomp is not fork-safe once it has a pool).
template <class F>
int in_child(F&& f) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return -1000;
  if (pid == 0) {
    alarm(10);  // a hang is a failure too (SIGALRM)
    ::_exit(f());
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1001;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

TEST(CheckpointFuzz, FlippedBytesAreCaughtOrHarmless) {
  const char* seed_env = std::getenv("RINGTRAIN_FUZZ_SEED");
  const char* trials_env = std::getenv("RINGTRAIN_FUZZ_TRIALS");
  const uint64_t seed = seed_env ? std::strtoull(seed_env, nullptr, 10) : 20261128;
  const int trials = trials_env ? std::atoi(trials_env) : 400;
  std::printf("checkpoint fuzz: seed %llu, %d trials (RINGTRAIN_FUZZ_SEED / "
              "RINGTRAIN_FUZZ_TRIALS to change)\n",
              (unsigned long long)seed, trials);
  const std::string dir = rt::testing::fresh_test_dir("rt_ckpt_fuzz");
  // A name in the run-dir pattern, so that the file-name step is checked too.
  const std::string clean_path = dir + "/clean/step_00000042.h5";
  const std::string path = dir + "/step_00000042.h5";

  ASSERT_EQ(in_child([&] {
              auto be = make_cpu_backend();
              LlamaModel m(fuzz_model_config(), *be);
              m.init_weights(11);
              OptimizerConfig oc;
              Optimizer opt(oc, m);
              std::vector<float> g(m.grads().numel());
              for (size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * float(int(i % 13) - 6);
              be->copy_to_device(m.grads().f32_base(), g.data(), m.grads().bytes());
              opt.step(1e-3f);
              CheckpointMeta meta;
              meta.step = 42;
              meta.tokens_seen = 4200;
              meta.config_yaml = "model: {vocab_size: 32, hidden_size: 16}\n";
              meta.trainer_state_json =
                  R"({"step": 42, "tokens_seen": 4200, "nonfinite_streak": 0})";
              save_checkpoint(clean_path, m, &opt, meta);
              return 0;
            }),
            0);
  std::ifstream in(clean_path, std::ios::binary);
  const std::vector<char> clean((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(clean.size(), 1000u);
  // The clean file passes the probe (else the test could not fail usefully).
  std::ofstream(path, std::ios::binary).write(clean.data(), std::streamsize(clean.size()));
  ASSERT_EQ(in_child([&] { return probe(path, clean_path); }), kSame);
  // Metadata bytes: everything outside the chunks' data.
  std::vector<bool> is_data(clean.size(), false);
  for (auto [addr, size] : chunk_ranges(clean_path))
    for (hsize_t i = 0; i < size && addr + i < clean.size(); ++i) is_data[addr + i] = true;
  std::vector<size_t> meta_bytes;
  for (size_t i = 0; i < clean.size(); ++i)
    if (!is_data[i]) meta_bytes.push_back(i);
  std::printf("file: %zu bytes, %zu of them metadata\n", clean.size(), meta_bytes.size());
  ASSERT_GT(meta_bytes.size(), 100u);

  std::mt19937_64 rng(seed);
  std::map<int, int> outcomes;  // exit code -> count
  int failures = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<char> bytes = clean;
    // Half the trials hit metadata only (where HDF5's own checksums are
    // thinnest), half anywhere; 1 to 4 bytes, random non-zero XOR masks.
    const bool metadata_only = t % 2 == 0;
    const int n = 1 + int(rng() % 4);
    std::string what;
    for (int k = 0; k < n; ++k) {
      const size_t at = metadata_only ? meta_bytes[rng() % meta_bytes.size()] : rng() % bytes.size();
      const char mask = char(1 + rng() % 255);
      bytes[at] = char(bytes[at] ^ mask);
      what += " @" + std::to_string(at) + "^" + std::to_string(int(uint8_t(mask)));
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), std::streamsize(bytes.size()));
    const int code = in_child([&] { return probe(path, clean_path); });
    ++outcomes[code];
    if (code != kSame && code != kExitIo) {
      ++failures;
      ADD_FAILURE() << "trial " << t << " (seed " << seed << "), flipped" << what << ": "
                    << (code < 0 ? "killed by signal " + std::to_string(-code)
                                 : code == kDifferent ? std::string("loaded different numbers")
                                                      : "exit " + std::to_string(code));
    }
  }
  std::printf("outcomes:");
  for (auto [code, count] : outcomes) std::printf(" exit %d: %d;", code, count);
  std::printf(" (0 = loaded the clean contents, 3 = IoError)\n");
  EXPECT_EQ(failures, 0);
  EXPECT_GT(outcomes[kExitIo], trials / 4) << "most flips should be detected";
  if (failures == 0 && !std::getenv("RINGTRAIN_FUZZ_KEEP")) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  } else {
    std::printf("kept %s for a post-mortem\n", clean_path.c_str());
  }
}

}  // namespace
}  // namespace rt
