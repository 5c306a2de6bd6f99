// Token files (SPEC §7): .h5, .bin (llm.c header), .txt (raw bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

struct TokenData {
  std::vector<uint32_t> tokens;
  int64_t vocab_size = 256;
  std::string tokenizer = "bytes";
  std::vector<uint64_t> doc_offsets;  // optional (h5 only)
};

// Reads by extension. Missing/unreadable file -> IoError (exit 3) naming the
// path; malformed content (bad magic, wrong version, size mismatch, missing
// /tokens, wrong dtype) -> UsageError (exit 2) naming the path and the fix.
TokenData read_token_file(const std::string& path);

// Writers. dtype: uint16 when vocab_size <= 65536, else uint32.
void write_token_file_h5(const std::string& path, const TokenData& data);
void write_token_file_bin(const std::string& path, const TokenData& data);  // vocab <= 65536

// Byte tokenizer: one token per byte (vocab 256).
std::vector<uint32_t> tokenize_bytes(const std::string& text);
std::string detokenize_bytes(const uint32_t* tokens, size_t n);

// `ringtrain data prepare IN... --out OUT`: concatenate the inputs' bytes
// (recording doc offsets), write .h5 or .bin by OUT's extension.
void prepare_token_file(const std::vector<std::string>& inputs, const std::string& out,
                        const std::string& tokenizer);

}  // namespace rt
