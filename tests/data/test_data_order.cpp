// Sequence order, token-file sequences and passkey samples (SPEC §7).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/dataset.h"
#include "data/synthetic.h"
#include "data/token_file.h"

namespace fs = std::filesystem;
using namespace rt;

// ---- SequenceOrder ---------------------------------------------------------------

TEST(SequenceOrder, NoShuffleIsSequential) {
  const int64_t N = 13, G = 4;
  SequenceOrder order(N, G, /*shuffle=*/false, /*seed=*/7);
  EXPECT_EQ(order.num_sequences(), N);
  for (int64_t s = 0; s < 20; ++s)
    for (int64_t j = 0; j < G; ++j) EXPECT_EQ(order.index(s, j), (s * G + j) % N);
}

// Sequences of epoch e in global-position order.
static std::vector<int64_t> epoch_indices(const SequenceOrder& order, int64_t N, int64_t G,
                                          int64_t e) {
  std::vector<int64_t> out;
  for (int64_t p = e * N; p < (e + 1) * N; ++p) out.push_back(order.index(p / G, p % G));
  return out;
}

TEST(SequenceOrder, ShuffleIsPermutationPerEpoch) {
  const int64_t N = 50, G = 7;  // G does not divide N: epochs straddle steps
  SequenceOrder order(N, G, true, 1234);
  std::vector<int64_t> identity(N);
  for (int64_t i = 0; i < N; ++i) identity[size_t(i)] = i;
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t e = 0; e < 4; ++e) {
    auto idx = epoch_indices(order, N, G, e);
    auto sorted = idx;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, identity) << "epoch " << e;
    EXPECT_NE(idx, identity) << "epoch " << e << " not shuffled";
    epochs.push_back(idx);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST(SequenceOrder, ShuffleIsDeterministicAndSeeded) {
  const int64_t N = 40, G = 8;
  SequenceOrder a(N, G, true, 99), b(N, G, true, 99), c(N, G, true, 100);
  // Query b in a scrambled order: the result depends on (step, j) alone.
  for (int64_t s = 25; s >= 0; --s)
    for (int64_t j = 0; j < G; ++j) EXPECT_EQ(b.index(s, j), a.index(s, j));
  EXPECT_NE(epoch_indices(a, N, G, 0), epoch_indices(c, N, G, 0));
  EXPECT_NE(epoch_indices(a, N, G, 1), epoch_indices(c, N, G, 1));
}

TEST(SequenceOrder, SingleSequence) {
  SequenceOrder order(1, 3, true, 5);
  for (int64_t s = 0; s < 4; ++s)
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(order.index(s, j), 0);
}

TEST(SequenceOrder, RejectsEmpty) {
  EXPECT_THROW(SequenceOrder(0, 4, false, 0), UsageError);
  EXPECT_THROW(SequenceOrder(4, 0, false, 0), UsageError);
}

// ---- token-file source ---------------------------------------------------------------

namespace {

class TokenSource : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "rt_test_data_order_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write_text(const std::string& name, const std::string& text) {
    const std::string p = (dir_ / name).string();
    std::ofstream f(p, std::ios::binary);
    f << text;
    return p;
  }
  fs::path dir_;
};

std::string sample_text(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += char(32 + (i * 7 + i / 13) % 95);
  return s;
}

}  // namespace

TEST_F(TokenSource, SequencesMatchManualSlicing) {
  const std::string text = sample_text(103);
  const std::string p = write_text("c.txt", text);
  prepare_token_file({p}, (dir_ / "c.bin").string(), "bytes");
  for (const std::string& file : {p, (dir_ / "c.bin").string()}) {
    auto src = make_token_source(file);
    EXPECT_EQ(src->vocab_size(), 256);
    const int64_t T = 10;
    ASSERT_EQ(src->num_sequences(T), (103 - 1) / T);
    EXPECT_EQ(src->num_sequences(102), 1);
    EXPECT_NE(src->describe().find(file), std::string::npos);
    for (int64_t i = 0; i < src->num_sequences(T); ++i) {
      std::vector<int32_t> in(T), tg(T);
      src->read(i, T, 0, T, in.data(), tg.data());
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(in[size_t(t)], (unsigned char)text[size_t(i * T + t)]);
        EXPECT_EQ(tg[size_t(t)], (unsigned char)text[size_t(i * T + t + 1)]);
      }
      // Partial reads [begin, end) write only end-begin entries.
      for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 3}, {3, 7}, {7, 10}, {5, 5}}) {
        std::vector<int32_t> pin(T, -7), ptg(T, -7);
        src->read(i, T, b, e, pin.data(), ptg.data());
        for (int64_t k = 0; k < e - b; ++k) {
          EXPECT_EQ(pin[size_t(k)], in[size_t(b + k)]);
          EXPECT_EQ(ptg[size_t(k)], tg[size_t(b + k)]);
        }
        for (int64_t k = e - b; k < T; ++k) {
          EXPECT_EQ(pin[size_t(k)], -7);
          EXPECT_EQ(ptg[size_t(k)], -7);
        }
      }
    }
  }
}

TEST_F(TokenSource, TooShortNamesFileCountAndLength) {
  const std::string p = write_text("short.txt", sample_text(50));
  auto src = make_token_source(p);
  try {
    src->num_sequences(64);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find("50"), std::string::npos) << msg;
    EXPECT_NE(msg.find("64"), std::string::npos) << msg;
  }
  EXPECT_THROW(make_token_source(write_text("one.txt", "x")), UsageError);
}

TEST_F(TokenSource, MakeSourceFromPath) {
  DataSourceConfig cfg;
  cfg.path = write_text("d.txt", sample_text(40));
  auto src = make_source(cfg, 1);
  EXPECT_EQ(src->num_sequences(8), 4);
  DataSourceConfig none;
  EXPECT_THROW(make_source(none, 1), UsageError);
  DataSourceConfig missing;
  missing.path = (dir_ / "missing.h5").string();
  EXPECT_THROW(make_source(missing, 1), IoError);
}

// ---- passkey ---------------------------------------------------------------------------

const std::string kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n";
const std::string kFillerStart = "The grass is green. The sky is blue.";

static std::string needle(const std::string& key) {
  return "The pass key is " + key + ". Remember it. " + key + " is the pass key.\n";
}
static std::string question(const std::string& key) {
  return "What is the pass key? The pass key is " + key;
}

TEST(Passkey, MinLength) {
  EXPECT_EQ(passkey_min_length(),
            int64_t(kIntro.size() + needle("12345").size() + question("12345").size()));
  EXPECT_THROW(make_passkey_sample(passkey_min_length() - 1, 0.5, 1, 0), UsageError);
  auto s = make_passkey_sample(passkey_min_length(), 0.5, 1, 0);
  EXPECT_EQ(s.text, kIntro + needle(s.passkey) + question(s.passkey));
}

TEST(Passkey, ExactLengthAndContents) {
  for (int64_t len : {passkey_min_length(), passkey_min_length() + 1, int64_t(300), int64_t(333),
                      int64_t(1024), int64_t(4097)}) {
    for (double depth : {0.0, 0.25, 0.5, 0.9, 1.0}) {
      auto s = make_passkey_sample(len, depth, 42, 3);
      ASSERT_EQ(int64_t(s.text.size()), len) << len << " " << depth;
      ASSERT_EQ(s.passkey.size(), 5u);
      for (char c : s.passkey) EXPECT_TRUE(c >= '0' && c <= '9');
      EXPECT_EQ(s.answer_begin, len - 5);
      EXPECT_EQ(s.text.substr(size_t(s.answer_begin)), s.passkey);
      EXPECT_EQ(s.text.rfind(question(s.passkey)), size_t(len) - question(s.passkey).size());
      EXPECT_EQ(s.text.compare(0, kIntro.size(), kIntro), 0);
      EXPECT_EQ(s.text.find(needle(s.passkey)), size_t(s.needle_begin));
      // The needle starts a sentence: after the intro, a newline or ". ".
      const size_t nb = size_t(s.needle_begin);
      const bool at_sentence = nb == kIntro.size() || s.text[nb - 1] == '\n' ||
                               s.text.compare(nb - 2, 2, ". ") == 0;
      const bool at_end = nb + needle(s.passkey).size() + question(s.passkey).size() ==
                          size_t(len);
      EXPECT_TRUE(at_sentence || at_end) << s.text;
    }
  }
}

TEST(Passkey, DepthPlacesNeedle) {
  const int64_t len = 2000;
  auto start = make_passkey_sample(len, 0.0, 7, 1);
  auto end = make_passkey_sample(len, 1.0, 7, 1);
  auto mid = make_passkey_sample(len, 0.5, 7, 1);
  EXPECT_EQ(start.needle_begin, int64_t(kIntro.size()));
  EXPECT_EQ(start.text.compare(kIntro.size() + needle(start.passkey).size(),
                               kFillerStart.size(), kFillerStart),
            0);
  EXPECT_EQ(end.needle_begin + int64_t(needle(end.passkey).size() +
                                       question(end.passkey).size()),
            len);
  EXPECT_LT(start.needle_begin, mid.needle_begin);
  EXPECT_LT(mid.needle_begin, end.needle_begin);
  const int64_t region = len - passkey_min_length();
  EXPECT_NEAR(double(mid.needle_begin - int64_t(kIntro.size())), 0.5 * double(region), 60.0);
}

TEST(Passkey, Deterministic) {
  auto a = make_passkey_sample(500, 0.3, 11, 5);
  auto b = make_passkey_sample(500, 0.3, 11, 5);
  EXPECT_EQ(a.text, b.text);
  std::set<std::string> keys;
  for (int64_t i = 0; i < 20; ++i) keys.insert(make_passkey_sample(500, 0.3, 11, i).passkey);
  EXPECT_GT(keys.size(), 15u);  // different indices, different keys
  // Different seeds, different keys (two tries: a 1-in-90000 collision is possible).
  EXPECT_FALSE(make_passkey_sample(500, 0.3, 12, 5).passkey == a.passkey &&
               make_passkey_sample(500, 0.3, 13, 5).passkey == a.passkey);
}

TEST(Passkey, SourceInputsTargetsAndAnswerMask) {
  const int64_t T = 400;
  DataSourceConfig cfg;
  cfg.synthetic = "passkey";
  cfg.num_sequences = 17;
  cfg.loss = "answer";
  cfg.seed_offset = 3;
  auto src = make_source(cfg, 100);
  EXPECT_EQ(src->vocab_size(), 256);
  EXPECT_EQ(src->num_sequences(T), 17);
  cfg.loss = "all";
  auto all = make_source(cfg, 100);

  std::set<int64_t> needle_positions;
  for (int64_t i = 0; i < 6; ++i) {
    std::vector<int32_t> in(T), tg(T), in2(T), tg2(T);
    src->read(i, T, 0, T, in.data(), tg.data());
    all->read(i, T, 0, T, in2.data(), tg2.data());
    EXPECT_EQ(in, in2);
    std::string text(size_t(T + 1), '\0');
    for (int64_t t = 0; t < T; ++t) text[size_t(t)] = char(in[size_t(t)]);
    text[size_t(T)] = char(tg2[size_t(T - 1)]);
    for (int64_t t = 0; t + 1 < T; ++t) EXPECT_EQ(tg2[size_t(t)], in[size_t(t + 1)]);
    EXPECT_EQ(text.compare(0, kIntro.size(), kIntro), 0);
    const std::string key = text.substr(size_t(T + 1 - 5));
    EXPECT_NE(text.find(needle(key)), std::string::npos);
    needle_positions.insert(int64_t(text.find(needle(key))));
    // answer loss: exactly the 5 answer digits are targets.
    int n_valid = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (tg[size_t(t)] >= 0) {
        ++n_valid;
        EXPECT_GE(t, T - 5);
        EXPECT_EQ(tg[size_t(t)], (unsigned char)key[size_t(t - (T - 5))]);
      }
    }
    EXPECT_EQ(n_valid, 5);
    // A partial read agrees with the full one.
    std::vector<int32_t> pin(T, -9), ptg(T, -9);
    src->read(i, T, T - 50, T, pin.data(), ptg.data());
    for (int64_t k = 0; k < 50; ++k) {
      EXPECT_EQ(pin[size_t(k)], in[size_t(T - 50 + k)]);
      EXPECT_EQ(ptg[size_t(k)], tg[size_t(T - 50 + k)]);
    }
  }
  EXPECT_GT(needle_positions.size(), 1u);  // uniform depth varies across samples

  // Deterministic for the seed; seed_offset / seed change the samples.
  auto again = make_source(cfg, 100);
  std::vector<int32_t> a(T), b(T), t1(T), t2(T);
  all->read(3, T, 0, T, a.data(), t1.data());
  again->read(3, T, 0, T, b.data(), t2.data());
  EXPECT_EQ(a, b);
  cfg.seed_offset = 4;
  auto other = make_source(cfg, 100);
  other->read(3, T, 0, T, b.data(), t2.data());
  EXPECT_NE(a, b);
}

TEST(Passkey, FixedDepthAndValidation) {
  DataSourceConfig cfg;
  cfg.synthetic = "passkey";
  cfg.depth = 0.0;
  auto src = make_source(cfg, 1);
  const int64_t T = 300;
  std::vector<int32_t> in(T), tg(T);
  src->read(0, T, 0, T, in.data(), tg.data());
  std::string text;
  for (int32_t c : in) text += char(c);
  EXPECT_EQ(text.compare(kIntro.size(), 16, "The pass key is "), 0);

  EXPECT_THROW(src->num_sequences(passkey_min_length() - 2), UsageError);
  EXPECT_EQ(src->num_sequences(passkey_min_length() - 1), cfg.num_sequences);
  DataSourceConfig bad = cfg;
  bad.synthetic = "nonsense";
  EXPECT_THROW(make_source(bad, 1), UsageError);
  bad = cfg;
  bad.loss = "some";
  EXPECT_THROW(make_source(bad, 1), UsageError);
  bad = cfg;
  bad.depth = 1.5;
  EXPECT_THROW(make_source(bad, 1), UsageError);
}

// ---- associative recall ----------------------------------------------------------------

// The pairs "k=ddd;" of a recall text, in order, found by scanning it (an
// independent reading of the documented format, not the generator's fields).
static std::vector<std::pair<size_t, std::string>> recall_pairs(const std::string& body) {
  std::vector<std::pair<size_t, std::string>> pairs;
  for (size_t i = 0; i + 6 <= body.size(); ++i)
    if (body[i] >= 'a' && body[i] <= 'z') {
      pairs.emplace_back(i, body.substr(i, 6));
      i += 5;
    }
  return pairs;
}

TEST(Recall, ExactLengthFormatAndAnswer) {
  for (int64_t pairs : {int64_t(1), int64_t(4), int64_t(26)}) {
    for (int64_t len : {recall_min_length(pairs), recall_min_length(pairs) + 5, int64_t(257),
                        int64_t(1024)}) {
      if (len < recall_min_length(pairs)) continue;
      for (int64_t index = 0; index < 5; ++index) {
        const RecallSample s = make_recall_sample(len, pairs, 9, index);
        ASSERT_EQ(int64_t(s.text.size()), len);
        const std::string body = s.text.substr(0, size_t(len - 6));
        const std::string query = s.text.substr(size_t(len - 6));
        // the body is '.' filler and `pairs` pairs of "k=ddd;" with distinct keys
        const auto found = recall_pairs(body);
        ASSERT_EQ(int64_t(found.size()), pairs) << s.text;
        std::set<char> keys;
        for (size_t i = 0; i < found.size(); ++i) {
          const std::string& p = found[i].second;
          EXPECT_EQ(p[1], '=');
          EXPECT_EQ(p[5], ';');
          for (int k = 2; k < 5; ++k) EXPECT_TRUE(p[size_t(k)] >= '0' && p[size_t(k)] <= '9');
          keys.insert(p[0]);
          EXPECT_EQ(int64_t(found[i].first), s.pair_begin[i]);
          // pair i lies inside slot i of the body
          const int64_t B = len - 6, lo = int64_t(i) * B / pairs, hi = int64_t(i + 1) * B / pairs;
          EXPECT_GE(int64_t(found[i].first), lo);
          EXPECT_LE(int64_t(found[i].first) + 6, hi);
        }
        EXPECT_EQ(int64_t(keys.size()), pairs);
        size_t filler = 0;
        for (char c : body) filler += c == '.';
        EXPECT_EQ(int64_t(filler), len - 6 - 6 * pairs);
        // the query "?k=ddd" asks for a key of the body; the answer is its value
        EXPECT_EQ(query[0], '?');
        EXPECT_EQ(query[2], '=');
        EXPECT_EQ(query[1], s.key);
        EXPECT_EQ(query.substr(3), s.value);
        EXPECT_EQ(s.answer_begin, len - 3);
        const auto asked = std::find_if(found.begin(), found.end(),
                                        [&](const auto& p) { return p.second[0] == query[1]; });
        ASSERT_NE(asked, found.end());
        EXPECT_EQ(asked->second.substr(2, 3), query.substr(3));
        EXPECT_EQ(int64_t(asked - found.begin()), s.queried_pair);
      }
    }
  }
}

TEST(Recall, DeterministicAndVaried) {
  const auto a = make_recall_sample(300, 6, 11, 5), b = make_recall_sample(300, 6, 11, 5);
  EXPECT_EQ(a.text, b.text);
  EXPECT_NE(make_recall_sample(300, 6, 12, 5).text, a.text);
  EXPECT_NE(make_recall_sample(300, 6, 11, 6).text, a.text);
  // over samples, every pair gets asked and the pairs move inside their slots
  std::set<int64_t> asked, first_place;
  for (int64_t i = 0; i < 200; ++i) {
    const auto s = make_recall_sample(300, 6, 11, i);
    asked.insert(s.queried_pair);
    first_place.insert(s.pair_begin[0]);
  }
  EXPECT_EQ(asked.size(), 6u);
  EXPECT_GT(first_place.size(), 10u);
}

TEST(Recall, TooShortOrBadPairs) {
  EXPECT_EQ(recall_min_length(4), 4 * 6 + 6);
  EXPECT_THROW(make_recall_sample(recall_min_length(4) - 1, 4, 1, 0), UsageError);
  EXPECT_THROW(make_recall_sample(100, 0, 1, 0), UsageError);
  EXPECT_THROW(make_recall_sample(1000, 27, 1, 0), UsageError);
  // the tightest sample: pairs back to back, no filler
  EXPECT_EQ(make_recall_sample(recall_min_length(2), 2, 3, 0).text.find('.'), std::string::npos);
}

TEST(Recall, SourceInputsTargetsAndAnswerMask) {
  const int64_t T = 128;
  DataSourceConfig cfg;
  cfg.synthetic = "recall";
  cfg.pairs = 5;
  cfg.num_sequences = 9;
  cfg.loss = "answer";
  auto src = make_source(cfg, 100);
  EXPECT_EQ(src->vocab_size(), 256);
  EXPECT_EQ(src->num_sequences(T), 9);
  EXPECT_NE(src->describe().find("recall"), std::string::npos);
  cfg.loss = "all";
  auto all = make_source(cfg, 100);
  for (int64_t i = 0; i < 4; ++i) {
    std::vector<int32_t> in(T), tg(T), in2(T), tg2(T);
    src->read(i, T, 0, T, in.data(), tg.data());
    all->read(i, T, 0, T, in2.data(), tg2.data());
    EXPECT_EQ(in, in2);
    const RecallSample s = make_recall_sample(T + 1, 5, 100, i);
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(in[size_t(t)], (unsigned char)s.text[size_t(t)]);
      EXPECT_EQ(tg2[size_t(t)], (unsigned char)s.text[size_t(t + 1)]);
      // answer loss: exactly the 3 value digits are targets
      EXPECT_EQ(tg[size_t(t)], t >= T - 3 ? tg2[size_t(t)] : -1) << t;
    }
  }
  EXPECT_THROW(src->num_sequences(recall_min_length(5) - 2), UsageError);
  EXPECT_EQ(src->num_sequences(recall_min_length(5) - 1), 9);
  DataSourceConfig bad = cfg;
  bad.pairs = 30;
  EXPECT_THROW(make_source(bad, 1), UsageError);
}
