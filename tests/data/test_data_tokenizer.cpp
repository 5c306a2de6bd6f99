// Tokenizers (SPEC §7): the bytes tokenizer is the byte identity; a
// SentencePiece model trained here with spm_train (Debian package
// sentencepiece) on tests/fixtures/tinyshakespeare_100k.txt round-trips text and
// drives the synthetic tasks. (Its ids are compared with the sentencepiece
// Python package in tests/cli/cli_tokenizer.sh.)
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/dataset.h"
#include "data/synthetic.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace rt;
using rt::testing::error_of;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const std::string kCorpus = std::string(RT_SOURCE_DIR) + "/tests/fixtures/tinyshakespeare_100k.txt";

// Trains SentencePiece models once for the suite: `llama` the way Llama's
// tokenizer.model is made (BPE, identity normalization, byte fallback, split
// digits), `plain` with spm_train's defaults (NFKC, no byte fallback).
class SentencePiece : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = (fs::temp_directory_path() / ("rt_test_tokenizer_" + std::to_string(::getpid())))
               .string();
    fs::create_directories(dir_);
    const std::string common = " --input=" + kCorpus + " --num_threads=2 --minloglevel=2";
    const std::string llama = "spm_train" + common + " --model_prefix=" + dir_ +
                              "/llama --vocab_size=1000 --model_type=bpe --character_coverage=1 "
                              "--byte_fallback=true --split_digits=true "
                              "--normalization_rule_name=identity "
                              "--remove_extra_whitespaces=false > " + dir_ + "/log 2>&1";
    const std::string plain = "spm_train" + common + " --model_prefix=" + dir_ +
                              "/plain --vocab_size=500 >> " + dir_ + "/log 2>&1";
    ok_ = std::system(llama.c_str()) == 0 && std::system(plain.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void SetUp() override {
    ASSERT_TRUE(ok_) << "spm_train failed (apt-get install sentencepiece); log:\n"
                     << read_file(dir_ + "/log");
  }
  static std::string model(const std::string& name) { return dir_ + "/" + name + ".model"; }
  static std::string dir_;
  static bool ok_;
};
std::string SentencePiece::dir_;
bool SentencePiece::ok_ = false;

TEST(BytesTokenizer, IsTheByteIdentity) {
  auto tok = load_tokenizer("bytes");
  EXPECT_EQ(tok->kind(), "bytes");
  EXPECT_EQ(tok->id(), "bytes");
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->eos_id(), -1);
  EXPECT_TRUE(tok->files().empty());
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const std::vector<uint32_t> ids = tok->encode(all);
  EXPECT_EQ(ids, tokenize_bytes(all));
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[size_t(b)], uint32_t(b));
  EXPECT_EQ(tok->decode(ids), all);
  EXPECT_THROW(tok->decode({256}), UsageError);
}

TEST_F(SentencePiece, RoundTripsAsciiAndUtf8) {
  auto tok = load_tokenizer(model("llama"));
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 1000);
  const std::vector<std::string> texts = {
      read_file(kCorpus),
      "  two leading spaces, tabs\there\tand\n\nblank lines  \n",
      "digits 0123456789 and 3.14159, passkey 70315.",
      "UTF-8: caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 "
      "\xce\xa9\xce\xbc\xce\xad\xce\xb3\xce\xb1 \xd0\x9c\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0",
      ""};
  for (const std::string& t : texts) {
    const std::vector<uint32_t> ids = tok->encode(t);
    for (uint32_t id : ids) ASSERT_LT(int64_t(id), tok->vocab_size());
    EXPECT_EQ(tok->decode(ids), t) << t.substr(0, 80);
  }
  // Real subword pieces: far fewer tokens than bytes on the training text.
  EXPECT_LT(tok->encode(texts[0]).size(), texts[0].size() / 2);
}

TEST_F(SentencePiece, IdentityIsTheContentHash) {
  auto a = load_tokenizer(model("llama"));
  const std::string bytes = read_file(model("llama"));
  EXPECT_EQ(a->id(), "sentencepiece:sha256=" + sha256_hex(bytes));
  EXPECT_EQ(sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");  // FIPS 180-2
  // a copy under another name is the same tokenizer; another model is not
  fs::copy_file(model("llama"), dir_ + "/copy.model", fs::copy_options::overwrite_existing);
  EXPECT_EQ(load_tokenizer(dir_ + "/copy.model")->id(), a->id());
  EXPECT_NE(load_tokenizer(model("plain"))->id(), a->id());
  // what a checkpoint stores rebuilds it
  const auto files = a->files();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].first, "tokenizer.model");
  EXPECT_EQ(files[0].second, bytes);
  auto b = tokenizer_from_files(files, a->id(), "ckpt.h5");
  EXPECT_EQ(b->id(), a->id());
  EXPECT_EQ(b->encode("To be, or not to be"), a->encode("To be, or not to be"));
  EXPECT_EQ(tokenizer_from_files({}, "", "ckpt.h5")->id(), "bytes");
  error_of<IoError>([&] { tokenizer_from_files(files, "bytes", "ckpt.h5"); });
  const std::string msg =
      error_of<UsageError>([&] { tokenizer_from_files({{"tokenizer.json", "{}"}}, "", "c.h5"); });
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not supported yet"), std::string::npos) << msg;
  // a directory holding tokenizer.model (a Hugging Face model directory)
  fs::create_directories(dir_ + "/hf");
  fs::copy_file(model("llama"), dir_ + "/hf/tokenizer.model", fs::copy_options::overwrite_existing);
  EXPECT_EQ(load_tokenizer(dir_ + "/hf")->id(), a->id());
}

TEST_F(SentencePiece, SpecialIds) {
  auto tok = load_tokenizer(model("llama"));
  // spm_train's defaults: unk 0, bos 1, eos 2, no pad
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), -1);
}

TEST_F(SentencePiece, PreparedTokenFileRecordsTheTokenizer) {
  const std::string out = dir_ + "/prepared.h5";
  prepare_token_file({kCorpus}, out, model("llama"));
  auto tok = load_tokenizer(model("llama"));
  const TokenData d = read_token_file(out);
  EXPECT_EQ(d.tokens, tok->encode(read_file(kCorpus)));
  EXPECT_EQ(d.vocab_size, 1000);
  EXPECT_EQ(d.tokenizer, tok->id());
  EXPECT_TRUE(d.tokenizer_recorded);
  // a .txt file read for this model is encoded with its tokenizer
  const TokenData t = read_token_file(kCorpus, tok.get());
  EXPECT_EQ(t.tokens, d.tokens);
  // the model's tokenizer must be the file's
  EXPECT_NO_THROW(make_token_source(out, std::shared_ptr<const Tokenizer>(std::move(tok))));
  const std::string msg = error_of<UsageError>(
      [&] { make_token_source(out, std::shared_ptr<const Tokenizer>(make_bytes_tokenizer())); });
  EXPECT_NE(msg.find(out), std::string::npos) << msg;
  EXPECT_NE(msg.find("sentencepiece (sha256"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model's tokenizer is bytes"), std::string::npos) << msg;
}

// The synthetic tasks through a SentencePiece tokenizer: exactly `length`
// tokens, the answer's tokens last and decoding to the digits.
TEST_F(SentencePiece, PasskeySamples) {
  auto tok = load_tokenizer(model("llama"));
  const int64_t min_len = passkey_min_length(*tok);
  EXPECT_LT(min_len, passkey_min_length());  // subwords: fewer tokens than bytes
  EXPECT_THROW(make_passkey_sample(*tok, min_len - 1, 0.5, 1, 0), UsageError);
  std::set<int64_t> needle_places;
  for (int64_t len : {min_len, min_len + 1, int64_t(300), int64_t(1025)})
    for (double depth : {0.0, 0.5, 1.0})
      for (int64_t index = 0; index < 3; ++index) {
        const PasskeySample s = make_passkey_sample(*tok, len, depth, 7, index);
        ASSERT_EQ(int64_t(s.tokens.size()), len);
        const std::vector<uint32_t> answer(s.tokens.begin() + s.answer_begin, s.tokens.end());
        EXPECT_EQ(tok->decode(answer), s.passkey);
        EXPECT_EQ(s.text, tok->decode(s.tokens));
        // natural text: parts joined by single spaces (the model's dummy prefix)
        const std::string needle_text =
            "The pass key is " + s.passkey + ". Remember it. " + s.passkey + " is the pass key.";
        EXPECT_NE(s.text.find(needle_text), std::string::npos);
        EXPECT_EQ(s.text.rfind("What is the pass key? The pass key is " + s.passkey),
                  s.text.size() - 38 - 5);
        EXPECT_EQ(s.text.find("  "), std::string::npos) << s.text;
        EXPECT_EQ(s.text.find("\n"), std::string::npos) << s.text;
        EXPECT_EQ(s.text.rfind("There is an important info", 0), 0u);
        const std::vector<uint32_t> needle = tok->encode(needle_text);
        EXPECT_TRUE(std::equal(needle.begin(), needle.end(), s.tokens.begin() + s.needle_begin));
        if (len == 1025) needle_places.insert(s.needle_begin);
      }
  EXPECT_GE(needle_places.size(), 3u);  // depth moves the needle
  // the same key as the byte samples: only the tokens differ
  EXPECT_EQ(make_passkey_sample(*tok, 600, 0.5, 3, 4).passkey,
            make_passkey_sample(600, 0.5, 3, 4).passkey);
}

TEST_F(SentencePiece, RecallSamples) {
  auto tok = load_tokenizer(model("llama"));
  for (int64_t pairs : {int64_t(1), int64_t(4), int64_t(26)}) {
    const int64_t min_len = recall_min_length(*tok, pairs);
    EXPECT_THROW(make_recall_sample(*tok, min_len - 1, pairs, 1, 0), UsageError);
    for (int64_t len : {min_len, int64_t(600)}) {
      if (len < min_len) continue;
      for (int64_t index = 0; index < 5; ++index) {
        const RecallSample s = make_recall_sample(*tok, len, pairs, 9, index);
        ASSERT_EQ(int64_t(s.tokens.size()), len);
        const std::vector<uint32_t> answer(s.tokens.begin() + s.answer_begin, s.tokens.end());
        EXPECT_EQ(tok->decode(answer), s.value);
        ASSERT_EQ(int64_t(s.pair_begin.size()), pairs);
        for (int64_t i = 0; i + 1 < pairs; ++i) EXPECT_LT(s.pair_begin[size_t(i)],
                                                          s.pair_begin[size_t(i + 1)]);
        EXPECT_NE(s.text.find(std::string(1, s.key) + "=" + s.value + ";"), std::string::npos);
        EXPECT_NE(s.text.find(std::string("?") + s.key + "="), std::string::npos);
      }
    }
  }
}

TEST_F(SentencePiece, SyntheticSourceUsesTheTokenizer) {
  std::shared_ptr<const Tokenizer> tok = load_tokenizer(model("llama"));
  DataSourceConfig cfg;
  cfg.synthetic = "passkey";
  cfg.loss = "answer";
  cfg.num_sequences = 4;
  auto src = make_source(cfg, 5, tok);
  EXPECT_EQ(src->vocab_size(), 1000);
  const int64_t T = 400;
  std::vector<int32_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
  src->read(0, T, 0, T, in.data(), tg.data());
  std::vector<uint32_t> answer;
  for (int32_t t : tg)
    if (t >= 0) answer.push_back(uint32_t(t));
  // the counted targets are the answer: the passkey's tokens
  const PasskeySample s =
      make_passkey_sample(*tok, T + 1, 0.0, 5, 0);  // key depends on (seed, index) only
  EXPECT_EQ(tok->decode(answer), s.passkey);
}

TEST_F(SentencePiece, TasksNeedDigits) {
  // spm_train's defaults on a text without digits: no byte fallback, so
  // digits become <unk> and cannot be an answer
  auto plain = load_tokenizer(model("plain"));
  const std::string msg = error_of<UsageError>([&] { check_task_tokenizer(*plain, "passkey"); });
  EXPECT_NE(msg.find("digits"), std::string::npos) << msg;
  DataSourceConfig cfg;
  cfg.synthetic = "recall";
  EXPECT_THROW(make_source(cfg, 1, std::shared_ptr<const Tokenizer>(std::move(plain))),
               UsageError);
  EXPECT_NO_THROW(check_task_tokenizer(*load_tokenizer(model("llama")), "passkey"));
}

TEST(Tokenizer, LoadErrors) {
  const std::string missing = "/nonexistent/tokenizer.model";
  const std::string m1 = error_of<IoError>([&] { load_tokenizer(missing); });
  EXPECT_NE(m1.find(missing), std::string::npos) << m1;
  const std::string m2 = error_of<UsageError>([&] { load_tokenizer(kCorpus); });
  EXPECT_NE(m2.find("not a SentencePiece model"), std::string::npos) << m2;
  EXPECT_NE(m2.find("tokenizer.json"), std::string::npos) << m2;  // says what is supported
  error_of<UsageError>([&] { load_tokenizer(""); });
}

}  // namespace
