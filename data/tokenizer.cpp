// Tokenizers (SPEC §7): bytes and SentencePiece (libsentencepiece).
#include "data/tokenizer.h"

#include <openssl/evp.h>
#include <sentencepiece_processor.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/errors.h"

namespace rt {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSpPrefix = "sentencepiece:sha256=";

std::string read_whole_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw IoError(what + " " + path + ": is a directory");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    throw IoError(what + " " + path + ": " +
                  (err == ENOENT ? std::string("no such file") : std::strerror(err)) +
                  " (give `bytes` or the path of a SentencePiece tokenizer.model)");
  }
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw IoError(what + " " + path + ": read error");
  return bytes;
}

class BytesTokenizer : public Tokenizer {
 public:
  std::string kind() const override { return "bytes"; }
  std::string id() const override { return "bytes"; }
  std::string describe() const override { return "bytes"; }
  int64_t vocab_size() const override { return 256; }
  std::vector<uint32_t> encode(const std::string& text) const override {
    std::vector<uint32_t> out(text.size());
    for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
    return out;
  }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] > 255)
        throw UsageError("bytes tokenizer: token " + std::to_string(ids[i]) +
                         " is not a byte (vocab 256)");
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }
  int64_t max_tokens_ascii(int64_t n) const override { return n; }
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& model_bytes, const std::string& source)
      : source_(source), bytes_(model_bytes), sha_(sha256_hex(model_bytes)) {
    const auto st = sp_.LoadFromSerializedProto(model_bytes);
    if (!st.ok())
      throw UsageError("tokenizer " + source + ": not a SentencePiece model (" +
                       std::string(st.message()) + "); supported: " + kTokenizersSupported);
    if (sp_.GetPieceSize() < 1)
      throw UsageError("tokenizer " + source + ": the SentencePiece model has no pieces");
  }
  std::string kind() const override { return "sentencepiece"; }
  std::string id() const override { return kSpPrefix + sha_; }
  std::string describe() const override {
    return "sentencepiece " + source_ + " (vocab " + std::to_string(vocab_size()) + ", sha256 " +
           sha_.substr(0, 12) + ")";
  }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::vector<uint32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto st = sp_.Encode(text, &ids);
    if (!st.ok())
      throw UsageError("tokenizer " + source_ + ": cannot encode text: " +
                       std::string(st.message()));
    return std::vector<uint32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::vector<int> v(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (int64_t(ids[i]) >= vocab_size())
        throw UsageError("tokenizer " + source_ + ": token " + std::to_string(ids[i]) +
                         " is outside its vocab of " + std::to_string(vocab_size()));
      v[i] = int(ids[i]);
    }
    std::string out;
    const auto st = sp_.Decode(v, &out);
    if (!st.ok())
      throw UsageError("tokenizer " + source_ + ": cannot decode: " + std::string(st.message()));
    return out;
  }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }
  int32_t pad_id() const override { return sp_.pad_id(); }
  int32_t unk_id() const override { return sp_.unk_id(); }
  int64_t max_tokens_ascii(int64_t n) const override { return n + 1; }
  std::vector<std::pair<std::string, std::string>> files() const override {
    return {{"tokenizer.model", bytes_}};
  }

 private:
  std::string source_, bytes_, sha_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error(kExitOther, "SHA-256 failed (OpenSSL)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::unique_ptr<Tokenizer> make_bytes_tokenizer() { return std::make_unique<BytesTokenizer>(); }

const Tokenizer& bytes_tokenizer() {
  static const BytesTokenizer instance;
  return instance;
}

std::unique_ptr<Tokenizer> sentencepiece_from_bytes(const std::string& model_bytes,
                                                    const std::string& source) {
  return std::make_unique<SentencePieceTokenizer>(model_bytes, source);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "bytes") return make_bytes_tokenizer();
  if (spec.empty())
    throw UsageError(std::string("tokenizer: empty; supported: ") + kTokenizersSupported);
  std::string path = spec;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {  // a model directory (Hugging Face layout)
    const fs::path model = fs::path(path) / "tokenizer.model";
    if (!fs::exists(model, ec)) {
      const bool has_json = fs::exists(fs::path(path) / "tokenizer.json", ec);
      throw UsageError("tokenizer " + spec + ": the directory has no tokenizer.model" +
                       (has_json ? " (only tokenizer.json, which is not supported yet)" : "") +
                       "; supported: " + kTokenizersSupported);
    }
    path = model.string();
  }
  if (fs::path(path).extension() == ".json")
    throw UsageError("tokenizer " + spec + ": Hugging Face tokenizer.json is not supported yet; "
                     "supported: " + kTokenizersSupported);
  return sentencepiece_from_bytes(read_whole_file(path, "tokenizer"), path);
}

std::unique_ptr<Tokenizer> tokenizer_from_files(
    const std::vector<std::pair<std::string, std::string>>& files, const std::string& recorded_id,
    const std::string& source) {
  for (const auto& [name, bytes] : files) {
    if (name != "tokenizer.model") continue;
    auto t = sentencepiece_from_bytes(bytes, source + ":/tokenizer/tokenizer.model");
    if (!recorded_id.empty() && recorded_id != t->id())
      throw IoError(source + ": /tokenizer/tokenizer.model has " + t->id() +
                    " but the file records tokenizer " + recorded_id +
                    ": the checkpoint is inconsistent");
    return t;
  }
  if (!files.empty()) {
    std::string names;
    for (const auto& f : files) names += (names.empty() ? "" : ", ") + f.first;
    throw UsageError(source + ": its tokenizer (/tokenizer: " + names +
                     ") is not supported yet; supported: " + kTokenizersSupported);
  }
  if (recorded_id.empty() || recorded_id == "bytes") return make_bytes_tokenizer();
  throw IoError(source + ": records tokenizer " + recorded_id +
                " but holds no /tokenizer files: the checkpoint is incomplete");
}

std::string describe_tokenizer_id(const std::string& id) {
  if (id.rfind(kSpPrefix, 0) == 0)
    return "sentencepiece (sha256 " + id.substr(std::strlen(kSpPrefix), 12) + ")";
  return id;
}

}  // namespace rt
