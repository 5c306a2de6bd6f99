// HDF5 checkpoints (SPEC §8): bit-exact round trip of weights and optimizer
// moments, atomic writes, corruption and truncation as I/O errors, shape
// mismatches as usage errors, run-dir listing and pruning, and files written
// by h5py (the independent writer) loading into the model.
#include <gtest/gtest.h>

#include "test_util.h"
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "model/backend.h"
#include "model/llama.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/train/optimizer.h"

namespace rt {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_model_config() {
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
  std::vector<float> out(a.f32_numel());
  be.copy_to_host(out.data(), a.f32_base(), a.bytes());
  return out;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

using rt::testing::error_of;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = rt::testing::fresh_test_dir("rt_ckpt");
    be_ = make_cpu_backend();
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    for (auto& e : fs::recursive_directory_iterator(dir_, ec))
      fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<LlamaModel> make_model(const ModelConfig& cfg, uint64_t seed) {
    auto m = std::make_unique<LlamaModel>(cfg, *be_);
    m->init_weights(seed);
    return m;
  }

  // A trained-looking optimizer: one AdamW step with non-trivial gradients.
  std::unique_ptr<Optimizer> stepped_optimizer(LlamaModel& m) {
    OptimizerConfig oc;
    auto opt = std::make_unique<Optimizer>(oc, m);
    std::vector<float> g(m.grads().f32_numel());
    for (size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * float(int(i % 13) - 6);
    be_->copy_to_device(m.grads().f32_base(), g.data(), m.grads().bytes());
    opt->step(1e-3f);
    opt->step(1e-3f);
    return opt;
  }

  CheckpointMeta sample_meta() {
    CheckpointMeta meta;
    meta.step = 42;
    meta.tokens_seen = 123456789012LL;
    meta.config_yaml = "model:\n  hidden_size: 16\n# ünïcode ok\n";
    meta.trainer_state_json = R"({"data": {"epoch": 1, "cursor": 17}, "rng": [1, 2, 3]})";
    return meta;
  }

  std::string dir_;
  std::unique_ptr<Backend> be_;
};

TEST_F(CheckpointTest, RoundTripIsBitExactForWeightsAndMoments) {
  auto m = make_model(tiny_model_config(), 11);
  auto opt = stepped_optimizer(*m);
  const std::string path = dir_ + "/a.h5";
  save_checkpoint(path, *m, opt.get(), sample_meta());

  auto m2 = make_model(tiny_model_config(), 99);
  OptimizerConfig oc;
  Optimizer opt2(oc, *m2);
  ASSERT_NE(host_copy(*be_, m2->params()), host_copy(*be_, m->params()));
  load_model_weights(path, *m2);
  load_optimizer_state(path, *m2, opt2);

  auto bits_equal = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  };
  EXPECT_TRUE(bits_equal(host_copy(*be_, m2->params()), host_copy(*be_, m->params())));
  EXPECT_TRUE(bits_equal(host_copy(*be_, opt2.exp_avg()), host_copy(*be_, opt->exp_avg())));
  EXPECT_TRUE(bits_equal(host_copy(*be_, opt2.exp_avg_sq()), host_copy(*be_, opt->exp_avg_sq())));
  EXPECT_EQ(opt2.steps_taken(), 2);
  std::vector<float> v = host_copy(*be_, opt->exp_avg_sq());
  EXPECT_GT(*std::max_element(v.begin(), v.end()), 0.f) << "moments should be non-trivial";
}

TEST_F(CheckpointTest, MetaRoundTripAndAtomicName) {
  auto m = make_model(tiny_model_config(), 1);
  auto opt = stepped_optimizer(*m);
  const std::string path = dir_ + "/sub/dir/ck.h5";  // parent directories are created
  save_checkpoint(path, *m, opt.get(), sample_meta());
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  size_t n_files = 0;
  for (auto& e : fs::directory_iterator(dir_ + "/sub/dir")) n_files += e.is_regular_file();
  EXPECT_EQ(n_files, 1u);

  CheckpointMeta got = read_checkpoint_meta(path);
  CheckpointMeta want = sample_meta();
  EXPECT_EQ(got.step, want.step);
  EXPECT_EQ(got.tokens_seen, want.tokens_seen);
  EXPECT_EQ(got.config_yaml, want.config_yaml);
  EXPECT_EQ(got.trainer_state_json, want.trainer_state_json);
  EXPECT_EQ(got.format_version, 1);
  EXPECT_TRUE(got.has_optimizer);

  // Weights-only: no /optimizer; loading optimizer state is an I/O error.
  const std::string wonly = dir_ + "/w.h5";
  save_checkpoint(wonly, *m, nullptr, sample_meta());
  EXPECT_FALSE(read_checkpoint_meta(wonly).has_optimizer);
  std::string msg = error_of<IoError>([&] { load_optimizer_state(wonly, *m, *opt); });
  EXPECT_NE(msg.find("no /optimizer"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, SgdCheckpointKeepsStepWithoutMoments) {
  auto m = make_model(tiny_model_config(), 1);
  OptimizerConfig oc;
  oc.type = "sgd";
  Optimizer sgd(oc, *m);
  sgd.set_steps_taken(5);
  const std::string path = dir_ + "/sgd.h5";
  save_checkpoint(path, *m, &sgd, sample_meta());
  Optimizer sgd2(oc, *m);
  load_optimizer_state(path, *m, sgd2);
  EXPECT_EQ(sgd2.steps_taken(), 5);
  Optimizer adam(OptimizerConfig{}, *m);
  std::string msg = error_of<IoError>([&] { load_optimizer_state(path, *m, adam); });
  EXPECT_NE(msg.find("exp_avg"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, FlippedByteInWeightsIsIoErrorNamingDataset) {
  auto m = make_model(tiny_model_config(), 3);
  const std::string path = dir_ + "/c.h5";
  save_checkpoint(path, *m, nullptr, sample_meta());

  const std::string name = "model.layers.1.self_attn.q_proj.weight";
  std::vector<float> w = host_copy(*be_, m->params());
  const float* first = w.data() + m->params().spec(name).offset_bytes / sizeof(float);
  std::vector<char> bytes = read_bytes(path);
  auto it = std::search(bytes.begin(), bytes.end(), reinterpret_cast<const char*>(first),
                        reinterpret_cast<const char*>(first + 4));
  ASSERT_NE(it, bytes.end()) << "weights not found in the file's bytes";
  ASSERT_EQ(std::search(it + 1, bytes.end(), reinterpret_cast<const char*>(first),
                        reinterpret_cast<const char*>(first + 4)),
            bytes.end());
  it[5] ^= 0x01;
  write_bytes(path, bytes);

  auto fresh = make_model(tiny_model_config(), 4);
  std::string msg = error_of<IoError>([&] { load_model_weights(path, *fresh); });
  EXPECT_NE(msg.find("/model/" + name), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST_F(CheckpointTest, TruncatedMissingAndForeignFilesAreIoErrors) {
  auto m = make_model(tiny_model_config(), 3);
  const std::string path = dir_ + "/t.h5";
  save_checkpoint(path, *m, nullptr, sample_meta());
  std::vector<char> bytes = read_bytes(path);
  bytes.resize(bytes.size() / 2);
  write_bytes(path, bytes);
  std::string msg = error_of<IoError>([&] { load_model_weights(path, *m); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  error_of<IoError>([&] { read_checkpoint_meta(path); });

  msg = error_of<IoError>([&] { read_checkpoint_meta(dir_ + "/nope.h5"); });
  EXPECT_NE(msg.find("nope.h5"), std::string::npos) << msg;

  write_bytes(dir_ + "/text.h5", {'h', 'i', '\n'});
  msg = error_of<IoError>([&] { read_checkpoint_meta(dir_ + "/text.h5"); });
  EXPECT_NE(msg.find("not an HDF5 file"), std::string::npos) << msg;

  // An HDF5 file without the root attributes.
  save_checkpoint(dir_ + "/ok.h5", *m, nullptr, sample_meta());
  {
    hid_t f = H5Fopen((dir_ + "/ok.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    H5Adelete(f, "format");
    H5Fclose(f);
  }
  msg = error_of<IoError>([&] { read_checkpoint_meta(dir_ + "/ok.h5"); });
  EXPECT_NE(msg.find("missing attribute 'format'"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, WrongShapeAndExtraTensorsAreUsageErrors) {
  ModelConfig big = tiny_model_config();
  big.num_attention_heads = 4;  // q_proj [32, 16] instead of [16, 16]
  big.head_dim = 8;
  auto m = make_model(big, 3);
  const std::string path = dir_ + "/s.h5";
  save_checkpoint(path, *m, nullptr, sample_meta());

  auto small = make_model(tiny_model_config(), 3);
  const std::vector<float> before = host_copy(*be_, small->params());
  std::string msg = error_of<UsageError>([&] { load_model_weights(path, *small); });
  EXPECT_NE(msg.find("model.layers.0.self_attn.q_proj.weight has shape [32, 16], the config "
                     "expects [16, 16]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_EQ(host_copy(*be_, small->params()), before) << "nothing loads on a mismatch";

  // Tied embeddings: the file's lm_head.weight has no home in the model.
  ModelConfig tied = tiny_model_config();
  tied.tie_word_embeddings = true;
  auto mt = make_model(tied, 3);
  save_checkpoint(dir_ + "/untied.h5", *small, nullptr, sample_meta());
  msg = error_of<UsageError>([&] { load_model_weights(dir_ + "/untied.h5", *mt); });
  EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;

  // And the reverse: a dataset the model needs is missing.
  auto untied = make_model(tiny_model_config(), 3);
  save_checkpoint(dir_ + "/tied.h5", *mt, nullptr, sample_meta());
  msg = error_of<UsageError>([&] { load_model_weights(dir_ + "/tied.h5", *untied); });
  EXPECT_NE(msg.find("/model/lm_head.weight is missing"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, UnwritableDirectoryIsIoErrorAndLeavesOtherCheckpoints) {
  auto m = make_model(tiny_model_config(), 3);
  const std::string good = dir_ + "/good.h5";
  save_checkpoint(good, *m, nullptr, sample_meta());
  const std::vector<char> good_bytes = read_bytes(good);

  // A "directory" that is a regular file: fails even for root.
  write_bytes(dir_ + "/file", {'x'});
  std::string msg =
      error_of<IoError>([&] { save_checkpoint(dir_ + "/file/c.h5", *m, nullptr, sample_meta()); });
  EXPECT_NE(msg.find("file/c.h5"), std::string::npos) << msg;

  if (::geteuid() != 0) {
    fs::create_directories(dir_ + "/ro");
    fs::permissions(dir_ + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
    msg = error_of<IoError>([&] { save_checkpoint(dir_ + "/ro/c.h5", *m, nullptr, sample_meta()); });
    EXPECT_NE(msg.find("Permission denied"), std::string::npos) << msg;
    EXPECT_FALSE(fs::exists(dir_ + "/ro/c.h5.tmp"));
  }
  EXPECT_EQ(read_bytes(good), good_bytes);
}

TEST_F(CheckpointTest, FullDiskIsIoErrorNamingTheReason) {
  // /dev/full: every write fails with ENOSPC. Saving "to" it goes through
  // path + ".tmp", so point a symlink-free temp name at it instead.
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  auto m = make_model(tiny_model_config(), 3);
  const std::string path = dir_ + "/full.h5";
  fs::create_symlink("/dev/full", path + ".tmp");
  std::string msg = error_of<IoError>([&] { save_checkpoint(path, *m, nullptr, sample_meta()); });
  EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(CheckpointTest, ListAndPruneKeepNewest) {
  auto m = make_model(tiny_model_config(), 3);
  EXPECT_TRUE(list_checkpoints(dir_).empty());
  EXPECT_EQ(checkpoint_path(dir_, 1000), dir_ + "/checkpoints/step_00001000.h5");
  for (int64_t step : {300, 100, 200, 400}) {
    CheckpointMeta meta = sample_meta();
    meta.step = step;
    save_checkpoint(checkpoint_path(dir_, step), *m, nullptr, meta);
  }
  write_bytes(dir_ + "/checkpoints/step_00000500.h5.tmp", {'x'});  // interrupted save
  write_bytes(dir_ + "/checkpoints/notes.txt", {'x'});
  auto all = list_checkpoints(dir_);
  ASSERT_EQ(all.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(all[i].first, int64_t(100 * (i + 1)));
    EXPECT_EQ(all[i].second, checkpoint_path(dir_, all[i].first));
  }

  prune_checkpoints(dir_, 2);
  all = list_checkpoints(dir_);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 300);
  EXPECT_EQ(all[1].first, 400);
  EXPECT_FALSE(fs::exists(dir_ + "/checkpoints/step_00000500.h5.tmp"));
  EXPECT_TRUE(fs::exists(dir_ + "/checkpoints/notes.txt"));

  prune_checkpoints(dir_, 0);  // keep all
  EXPECT_EQ(list_checkpoints(dir_).size(), 2u);
  prune_checkpoints(dir_, 1);
  all = list_checkpoints(dir_);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].first, 400);
  EXPECT_EQ(read_checkpoint_meta(all[0].second).step, 400);
}

bool have_h5py() {
  return std::system("/usr/bin/python3 -c 'import h5py, numpy' >/dev/null 2>&1") == 0;
}

const std::string kScript = std::string(RT_SOURCE_DIR) + "/tests/reference/make_h5_checkpoint.py";

TEST_F(CheckpointTest, H5pyWrittenWeightsOnlyFileLoads) {
  if (!have_h5py()) GTEST_SKIP() << "/usr/bin/python3 with h5py and numpy not available";
  auto m = make_model(tiny_model_config(), 3);
  const std::string specs = dir_ + "/specs.txt";
  {
    std::ofstream f(specs);
    for (const TensorSpec& s : m->params().specs()) {
      f << s.name;
      for (int64_t d : s.shape) f << ' ' << d;
      f << '\n';
    }
  }
  for (const char* flags : {"", " --fixed-string --float64"}) {
    SCOPED_TRACE(flags);
    const std::string path = dir_ + "/py.h5";
    const std::string cmd =
        "/usr/bin/python3 " + kScript + " write " + path + " " + specs + flags;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

    CheckpointMeta meta = read_checkpoint_meta(path);
    EXPECT_EQ(meta.step, 7);
    EXPECT_EQ(meta.tokens_seen, 1234);
    EXPECT_EQ(meta.config_yaml, "model: {}\n");
    EXPECT_FALSE(meta.has_optimizer);
    EXPECT_EQ(meta.trainer_state_json, "");

    load_model_weights(path, *m);
    std::vector<float> w = host_copy(*be_, m->params());
    int k = 0;
    for (const TensorSpec& s : m->params().specs()) {
      for (size_t i = 0; i < s.numel; ++i) {
        const float want = float(i % 97) * 0.0625f - 3.0f + float(k) * 0.5f;
        ASSERT_EQ(w[s.offset_bytes / sizeof(float) + i], want) << s.name << "[" << i << "]";
      }
      ++k;
    }
  }
}

TEST_F(CheckpointTest, RingtrainFileReadsInH5py) {
  if (!have_h5py()) GTEST_SKIP() << "/usr/bin/python3 with h5py and numpy not available";
  auto m = make_model(tiny_model_config(), 3);
  auto opt = stepped_optimizer(*m);
  const std::string path = dir_ + "/for_py.h5";
  save_checkpoint(path, *m, opt.get(), sample_meta());
  const std::string cmd = "/usr/bin/python3 " + kScript + " check " + path;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace rt
