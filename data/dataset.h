// Sequences and their order (SPEC §7).
//
// A SequenceSource yields sequence i of length T: T input tokens and T targets
// (the inputs shifted by one; a target < 0 is ignored by the loss). A
// SequenceOrder maps (step, j) to a sequence index, deterministically from the
// seed, so the data position is a function of the step alone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "data/token_file.h"
#include "data/tokenizer.h"

namespace rt {

// see data/data_config.h

class SequenceSource {
 public:
  virtual ~SequenceSource() = default;
  virtual int64_t vocab_size() const = 0;
  // How many whole sequences of length T exist (>= 1, else the constructor or
  // this throws UsageError saying the data is too short for T).
  virtual int64_t num_sequences(int64_t T) const = 0;
  // inputs, targets: T entries each. Positions [begin, end) of the sequence
  // only may be requested (a context-parallel rank reads only its chunks):
  // writes inputs[0..end-begin) and targets[0..end-begin).
  virtual void read(int64_t index, int64_t T, int64_t begin, int64_t end, int32_t* inputs,
                    int32_t* targets) const = 0;
  // Positions in [0, T) of sequence `index` where a document starts (token
  // files with /doc_offsets; memory stores are cleared there, docs/memory.md).
  // Empty when the source records no documents.
  virtual std::vector<int64_t> doc_starts(int64_t index, int64_t T) const { return {}; }
  virtual std::string describe() const = 0;
};

// Token-file-backed: sequence i = tokens[i*T : i*T + T + 1]. `tok` is the
// model's tokenizer (null = bytes): .txt files are encoded with it, and a
// token file that records another tokenizer ringtrain knows ("bytes",
// "sentencepiece:sha256=...") is a UsageError naming both (other recorded
// names only warn; .bin files record none: when their ids fit `tok`, they are
// taken as its, with its vocab).
std::unique_ptr<SequenceSource> make_token_source(const std::string& path,
                                                  std::shared_ptr<const Tokenizer> tok = nullptr);
// From the config (path or synthetic). seed = run.seed. Synthetic samples are
// built as text and tokenized with `tok` (null = bytes).
std::unique_ptr<SequenceSource> make_source(const DataSourceConfig& cfg, uint64_t seed,
                                            std::shared_ptr<const Tokenizer> tok = nullptr);
// The check make_token_source applies: UsageError when `data` records a
// tokenizer ringtrain knows that is not `tok`.
void check_token_file_tokenizer(const std::string& path, const TokenData& data,
                                const Tokenizer& tok);

// Order of sequences over steps: with shuffle=false step s uses sequences
// s*G .. s*G+G-1 (mod N); with shuffle=true the global position p = s*G + j
// lies in epoch e = p / N and maps to perm_e[p % N], perm_e a seeded
// permutation (seed, e). Stateless: resume only needs the step.
class SequenceOrder {
 public:
  SequenceOrder(int64_t num_sequences, int64_t global_batch, bool shuffle, uint64_t seed);
  int64_t index(int64_t step, int64_t j) const;  // j in [0, global_batch)
  int64_t num_sequences() const { return n_; }

 private:
  const std::vector<int64_t>& perm(int64_t epoch) const;
  int64_t n_, g_;
  bool shuffle_;
  uint64_t seed_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> cached_perm_;
};

}  // namespace rt
