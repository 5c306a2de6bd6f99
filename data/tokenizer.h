// Tokenizers (SPEC §7): the one way text becomes tokens and back — data
// prepare, .txt token files, the synthetic tasks, generate and eval.
//
//   bytes          one token per byte, vocab 256, no special tokens.
//   sentencepiece  a SentencePiece model file (`tokenizer.model`, the format
//                  Llama 1/2, Mistral, TinyLlama ship) through libsentencepiece.
//
// (Hugging Face `tokenizer.json` BPE, used by Llama 3, is not supported yet.)
//
// Identity: id() is what token files (attribute `tokenizer`) and checkpoints
// (root attribute `tokenizer`) record: "bytes", or "sentencepiece:sha256=<hex>"
// (the SHA-256 of the model file's bytes, so a renamed or copied file is the
// same tokenizer and a retrained one is not). Two tokenizers are the same
// exactly when their ids are equal.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rt {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;  // "bytes" | "sentencepiece"
  virtual std::string id() const = 0;    // see above
  // For messages: "bytes" or "sentencepiece <source> (vocab V, sha256 <first 12 hex>)".
  virtual std::string describe() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<uint32_t> encode(const std::string& text) const = 0;
  // Ids >= vocab_size() are a UsageError.
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;
  // Special ids, -1 where the tokenizer has none (bytes has none).
  virtual int32_t bos_id() const { return -1; }
  virtual int32_t eos_id() const { return -1; }
  virtual int32_t pad_id() const { return -1; }
  virtual int32_t unk_id() const { return -1; }
  // At most how many tokens an ASCII string of n characters encodes to
  // (bytes: n; SentencePiece: n + 1, each character at most one piece plus a
  // separate dummy-prefix piece). Sizes the synthetic tasks' layouts.
  virtual int64_t max_tokens_ascii(int64_t n) const = 0;
  // The files that define the tokenizer (name -> bytes), what a checkpoint
  // stores under /tokenizer: {"tokenizer.model": ...}; empty for bytes.
  virtual std::vector<std::pair<std::string, std::string>> files() const { return {}; }
};

// "bytes" -> the byte tokenizer; anything else is a path to a SentencePiece
// model. A missing or unreadable file -> IoError (exit 3) naming it; a file
// that is not a SentencePiece model (e.g. a tokenizer.json) -> UsageError
// (exit 2) saying what is supported.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);
std::unique_ptr<Tokenizer> make_bytes_tokenizer();
const Tokenizer& bytes_tokenizer();  // a shared instance
// From a model file's bytes; `source` names it in messages.
std::unique_ptr<Tokenizer> sentencepiece_from_bytes(const std::string& model_bytes,
                                                    const std::string& source);
// From the files a checkpoint stores (name -> bytes, see Tokenizer::files())
// and its recorded id: no files and id "bytes" or "" -> bytes; a
// tokenizer.model -> SentencePiece (its id must equal `recorded_id` when
// given, else IoError: the checkpoint is inconsistent); other files only
// (tokenizer.json) -> UsageError naming them (not supported yet).
std::unique_ptr<Tokenizer> tokenizer_from_files(
    const std::vector<std::pair<std::string, std::string>>& files, const std::string& recorded_id,
    const std::string& source);

// Human-readable form of a recorded id: "bytes", "sentencepiece (sha256 0123abcd4567…)".
std::string describe_tokenizer_id(const std::string& id);

// Lowercase hex SHA-256 of `bytes` (OpenSSL).
std::string sha256_hex(const std::string& bytes);

// What `--help` and messages say is supported.
inline constexpr const char* kTokenizersSupported =
    "bytes, or a SentencePiece model file (tokenizer.model); Hugging Face tokenizer.json (BPE, "
    "Llama 3) is not supported yet";

}  // namespace rt
