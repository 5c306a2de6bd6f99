// Token files (SPEC §7): .h5, .bin (llm.c header), .txt (raw bytes).
//
//   .h5   dataset /tokens (uint16 or uint32, 1-D); attributes vocab_size
//         (integer) and tokenizer (string, fixed or variable length; optional,
//         "unknown" when absent); optional /doc_offsets (uint64, 1-D).
//   .bin  llm.c: 256 int32 header (magic 20240520, version 1 = uint16 tokens,
//         header[2] = number of tokens), then the tokens. The format stores no
//         vocabulary: a file whose tokens are all < 256 reads as vocab 256 /
//         "bytes", else < 50257 as GPT-2 (vocab 50257, "gpt2"), else 65536.
//   .txt  text: one token per byte, vocab 256, tokenizer "bytes"; or, when a
//         tokenizer is given (the model's), encoded with it.
//
// The tokenizer attribute is a tokenizer id (data/tokenizer.h): "bytes" or
// "sentencepiece:sha256=<hex>".
//
// Errors: missing or unreadable file -> IoError (exit 3) naming the path;
// malformed content (unknown extension, not an HDF5 file, bad magic, wrong
// version, size mismatch, missing /tokens, wrong dtype or rank, missing
// vocab_size, token >= vocab_size) -> UsageError (exit 2) naming the path,
// what is wrong and how to make a valid file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

class Tokenizer;

struct TokenData {
  std::vector<uint32_t> tokens;
  int64_t vocab_size = 256;
  std::string tokenizer = "bytes";
  // The file says which tokenizer made it (.h5 with the attribute, .txt);
  // false for .bin (a guess from the ids) and .h5 without the attribute.
  bool tokenizer_recorded = true;
  std::vector<uint64_t> doc_offsets;  // optional (h5 only): start of each document
};

// llm.c .bin header constants.
inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr int32_t kLlmcVersion = 1;  // uint16 tokens
inline constexpr int kLlmcHeaderInts = 256;

// Reads by extension (.h5, .bin, .txt; case-insensitive). .txt files are
// encoded with `tok` (null = bytes).
TokenData read_token_file(const std::string& path, const Tokenizer* tok = nullptr);

// Writers (write `path` directly, replacing it; failure to create or write ->
// IoError). h5 dtype: uint16 when vocab_size <= 65536, else uint32; doc_offsets
// written when non-empty. Tokens >= vocab_size -> UsageError.
void write_token_file_h5(const std::string& path, const TokenData& data);
// Version 1 (uint16) only: vocab_size > 65536 -> UsageError. doc_offsets are
// not stored (the format has no place for them).
void write_token_file_bin(const std::string& path, const TokenData& data);

// Byte tokenizer: one token per byte (vocab 256).
std::vector<uint32_t> tokenize_bytes(const std::string& text);
std::string detokenize_bytes(const uint32_t* tokens, size_t n);

// `ringtrain data prepare IN... --out OUT --tokenizer bytes|PATH`: encode
// each input with the tokenizer (load_tokenizer: "bytes" or a SentencePiece
// tokenizer.model) and concatenate (doc_offsets = start of each input); write
// .h5 or .bin by OUT's extension, vocab_size and tokenizer from the tokenizer.
// val_fraction in (0, 1): the last val_fraction of the tokens go to a
// validation file, val_output_path(out), and the rest to out (a held-out
// split for data.val). Returns the files written.
std::vector<std::string> prepare_token_file(const std::vector<std::string>& inputs,
                                            const std::string& out, const std::string& tokenizer,
                                            double val_fraction = 0.0);

// "train.h5" -> "train.val.h5" (the validation half of a --val-fraction split).
std::string val_output_path(const std::string& out);

}  // namespace rt
