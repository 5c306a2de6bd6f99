// A data source of the config (SPEC §7). Parsed and validated by
// trainer/config/config.cpp; data/ only reads it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rt {

// A data source: a token file path, or a synthetic generator (SPEC §7).
struct DataSourceConfig {
  std::string path;       // .h5 | .bin | .txt; empty when synthetic
  std::string synthetic;  // "" | passkey | recall
  std::string loss = "all";  // synthetic only: answer | all (targets outside the answer ignored)
  int64_t num_sequences = 100000;  // synthetic only: size of the virtual dataset
  std::optional<double> depth;     // synthetic passkey: fixed needle depth in [0,1]; null = uniform
  int64_t pairs = 4;               // synthetic recall: key-value pairs per sample, [1, 26]
  int64_t seed_offset = 0;         // synthetic only: added to run.seed (val uses a different stream)
  bool is_synthetic() const { return !synthetic.empty(); }
};

}  // namespace rt
