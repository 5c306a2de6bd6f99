// Token file formats (SPEC §7): .txt, .bin and .h5 agree; malformed files give
// the documented error type (token_file.h) and name the file.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/token_file.h"

namespace fs = std::filesystem;
using namespace rt;

namespace {

class TokenFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "rt_test_data_formats_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream f(path(name), std::ios::binary);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    return path(name);
  }
  // An llm.c file with the given header fields and `n_written` uint16 tokens.
  std::string write_bin(const std::string& name, int32_t magic, int32_t version,
                        int32_t n_header, size_t n_written) const {
    std::vector<int32_t> header(256, 0);
    header[0] = magic;
    header[1] = version;
    header[2] = n_header;
    std::string bytes(reinterpret_cast<const char*>(header.data()), header.size() * 4);
    for (size_t i = 0; i < n_written; ++i) {
      uint16_t t = uint16_t('a' + i % 26);
      bytes.append(reinterpret_cast<const char*>(&t), 2);
    }
    return write_bytes(name, bytes);
  }

  fs::path dir_;
};

const std::string kText =
    "Hello, ringtrain!\nThe quick brown fox jumps over the lazy dog.\n\xff\x01 bytes.";

// Runs f, expects exception E whose message contains every needle.
template <typename E, typename F>
void expect_error(F f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an exception";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

}  // namespace

TEST_F(TokenFiles, ByteTokenizerRoundTrip) {
  auto toks = tokenize_bytes(kText);
  ASSERT_EQ(toks.size(), kText.size());
  for (uint32_t t : toks) EXPECT_LT(t, 256u);
  EXPECT_EQ(toks[kText.size() - 9], 0xffu);
  EXPECT_EQ(detokenize_bytes(toks.data(), toks.size()), kText);
}

TEST_F(TokenFiles, ThreeFormatsGiveIdenticalTokens) {
  const std::string txt = write_bytes("corpus.txt", kText);
  prepare_token_file({txt}, path("corpus.h5"), "bytes");
  prepare_token_file({txt}, path("corpus.bin"), "bytes");
  TokenData a = read_token_file(txt);
  TokenData b = read_token_file(path("corpus.h5"));
  TokenData c = read_token_file(path("corpus.bin"));
  EXPECT_EQ(a.tokens, tokenize_bytes(kText));
  EXPECT_EQ(b.tokens, a.tokens);
  EXPECT_EQ(c.tokens, a.tokens);
  for (const TokenData* d : {&a, &b, &c}) {
    EXPECT_EQ(d->vocab_size, 256);
    EXPECT_EQ(d->tokenizer, "bytes");
  }
}

TEST_F(TokenFiles, PrepareRecordsDocOffsets) {
  const std::string a = write_bytes("a.txt", "first document\n");
  const std::string b = write_bytes("b.txt", "");
  const std::string c = write_bytes("c.txt", "third\n");
  prepare_token_file({a, b, c}, path("docs.h5"), "bytes");
  TokenData d = read_token_file(path("docs.h5"));
  EXPECT_EQ(detokenize_bytes(d.tokens.data(), d.tokens.size()), "first document\nthird\n");
  EXPECT_EQ(d.doc_offsets, (std::vector<uint64_t>{0, 15, 15}));
}

TEST_F(TokenFiles, H5RoundTripWithDocOffsetsAndLargeVocab) {
  TokenData d;
  d.vocab_size = 100000;  // > 65536: stored as uint32
  d.tokenizer = "my-sentencepiece.model";
  d.tokens = {0, 1, 65535, 65536, 99999, 42};
  d.doc_offsets = {0, 2, 5};
  write_token_file_h5(path("big.h5"), d);
  TokenData r = read_token_file(path("big.h5"));
  EXPECT_EQ(r.tokens, d.tokens);
  EXPECT_EQ(r.vocab_size, d.vocab_size);
  EXPECT_EQ(r.tokenizer, d.tokenizer);
  EXPECT_EQ(r.doc_offsets, d.doc_offsets);

  // Without doc_offsets: none come back.
  d.doc_offsets.clear();
  write_token_file_h5(path("nodocs.h5"), d);
  EXPECT_TRUE(read_token_file(path("nodocs.h5")).doc_offsets.empty());
}

TEST_F(TokenFiles, BinWriterRejectsLargeVocab) {
  TokenData d;
  d.vocab_size = 70000;
  d.tokens = {1, 2, 3};
  expect_error<UsageError>([&] { write_token_file_bin(path("big.bin"), d); },
                           {path("big.bin"), "70000", ".h5"});
}

TEST_F(TokenFiles, BinVocabHeuristic) {
  TokenData d;
  d.vocab_size = 50257;
  d.tokens = {300, 50000, 7};
  write_token_file_bin(path("gpt2.bin"), d);
  TokenData r = read_token_file(path("gpt2.bin"));
  EXPECT_EQ(r.tokens, d.tokens);
  EXPECT_EQ(r.vocab_size, 50257);
}

TEST_F(TokenFiles, BinBadMagic) {
  const std::string p = write_bin("data.bin", 12345, 1, 4, 4);
  expect_error<UsageError>([&] { read_token_file(p); },
                           {p, "bad magic 12345", "20240520", "ringtrain data prepare"});
}

TEST_F(TokenFiles, BinUnsupportedVersion) {
  const std::string p = write_bin("v2.bin", 20240520, 2, 4, 4);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "version 2"});
}

TEST_F(TokenFiles, BinTruncated) {
  const std::string p = write_bin("short.bin", 20240520, 1, 100, 60);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "100 tokens", "truncated"});
  const std::string h = write_bytes("header.bin", std::string(100, '\0'));
  expect_error<UsageError>([&] { read_token_file(h); }, {h, "truncated"});
}

TEST_F(TokenFiles, BinTrailingBytes) {
  const std::string p = write_bin("long.bin", 20240520, 1, 10, 12);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "size mismatch"});
}

TEST_F(TokenFiles, H5WithoutTokens) {
  const std::string p = path("empty.h5");
  hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  H5Fclose(f);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "/tokens"});
}

TEST_F(TokenFiles, H5WrongDtype) {
  const std::string p = path("float.h5");
  hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t n = 4;
  hid_t s = H5Screate_simple(1, &n, nullptr);
  hid_t d = H5Dcreate2(f, "tokens", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  float v[4] = {1, 2, 3, 4};
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  H5Dclose(d);
  H5Sclose(s);
  H5Fclose(f);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "float32", "uint16 or uint32"});
}

TEST_F(TokenFiles, GarbageWithH5Extension) {
  const std::string p = write_bytes("garbage.h5", "this is not an HDF5 file at all\n");
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "not an HDF5 file"});
}

TEST_F(TokenFiles, TokenOutsideVocab) {
  // Written by hand (the writer refuses): /tokens [1, 2, 300, 4], vocab_size 256.
  const std::string p = path("oov.h5");
  hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t n = 4;
  hid_t s = H5Screate_simple(1, &n, nullptr);
  hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  uint16_t v[4] = {1, 2, 300, 4};
  H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  hid_t as = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, "vocab_size", H5T_STD_I32LE, as, H5P_DEFAULT, H5P_DEFAULT);
  int32_t vocab = 256;
  H5Awrite(a, H5T_NATIVE_INT32, &vocab);
  H5Aclose(a);
  H5Sclose(as);
  H5Dclose(d);
  H5Sclose(s);
  H5Fclose(f);
  expect_error<UsageError>([&] { read_token_file(p); }, {p, "300", "index 2", "vocab_size 256"});

  TokenData bad;
  bad.vocab_size = 256;
  bad.tokens = {5, 256};
  expect_error<UsageError>([&] { write_token_file_h5(path("w.h5"), bad); }, {"index 1"});
}

TEST_F(TokenFiles, UnknownExtension) {
  const std::string p = write_bytes("tokens.npy", "xx");
  expect_error<UsageError>([&] { read_token_file(p); }, {p, ".npy", ".h5", ".bin", ".txt"});
  const std::string txt = write_bytes("in.txt", "abc");
  expect_error<UsageError>([&] { prepare_token_file({txt}, path("out.npy"), "bytes"); },
                           {"out.npy", ".h5", ".bin"});
}

TEST_F(TokenFiles, MissingFileIsIoError) {
  for (const char* name : {"missing.txt", "missing.bin", "missing.h5"}) {
    const std::string p = path(name);
    expect_error<IoError>([&] { read_token_file(p); }, {p});
  }
  expect_error<IoError>(
      [&] { prepare_token_file({path("nope.txt")}, path("out.h5"), "bytes"); }, {"nope.txt"});
  EXPECT_EQ(IoError("x").code(), kExitIo);
  EXPECT_EQ(UsageError("x").code(), kExitUsage);
}

TEST_F(TokenFiles, PrepareRejectsBadTokenizers) {
  const std::string txt = write_bytes("in.txt", "abc");
  // a missing model file is an I/O error naming it; a file that is not a
  // SentencePiece model, or a Hugging Face tokenizer.json, a usage error
  expect_error<IoError>([&] { prepare_token_file({txt}, path("o.h5"), path("sp.model")); },
                        {"sp.model", "no such file"});
  expect_error<UsageError>([&] { prepare_token_file({txt}, path("o.h5"), txt); },
                           {"in.txt", "not a SentencePiece model"});
  const std::string json = write_bytes("tokenizer.json", "{}");
  expect_error<UsageError>([&] { prepare_token_file({txt}, path("o.h5"), json); },
                           {"tokenizer.json", "not supported yet"});
}

// A file written by h5py (variable- and fixed-length tokenizer strings) loads.
TEST_F(TokenFiles, ReadsH5pyFiles) {
  if (std::system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 with h5py not available (apt-get install python3-h5py)";
  const std::string script = std::string(RT_SOURCE_DIR) + "/tests/reference/make_h5_tokens.py";
  const std::string text = "h5py writes this text";
  struct Variant {
    const char* file;
    const char* flags;
  };
  for (Variant v : {Variant{"vlen.h5", ""}, Variant{"fixed.h5", "--fixed-string"},
                    Variant{"u32.h5", "--uint32"}}) {
    const std::string p = path(v.file);
    const std::string cmd =
        "/usr/bin/python3 '" + script + "' '" + p + "' '" + text + "' " + v.flags;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    TokenData d = read_token_file(p);
    EXPECT_EQ(detokenize_bytes(d.tokens.data(), d.tokens.size()), text) << v.file;
    EXPECT_EQ(d.vocab_size, 256) << v.file;
    EXPECT_EQ(d.tokenizer, "bytes") << v.file;
    EXPECT_EQ(d.doc_offsets, (std::vector<uint64_t>{0, text.size() / 2})) << v.file;
  }
}
