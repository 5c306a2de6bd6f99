// The integrity record of a checkpoint (in the spirit of torch DCP's
// metadata file): what the writer meant to store, so that a reader can tell
// a complete, consistent file from one that HDF5 opens but that is damaged in
// a place its own checksums do not cover (a chunk index key that makes a
// dataset read as its fill value, a flipped integer attribute, a variable-
// length string whose heap object is corrupt).
//
// Stored as two extra root attributes (SPEC §8's layout is unchanged; readers
// that do not know them ignore them), both fixed-length UTF-8 strings, so
// that they live inside the checksummed object header and never in HDF5's
// global heap:
//   integrity         JSON: {"version": 1, "hash": "xxh3_64",
//                            "attributes": {format, format_version, step, tokens_seen,
//                                           config, optimizer_type, optimizer_step,
//                                           trainer_state},
//                            "datasets": {"/model/<name>": {"shape": [...],
//                                                           "digest": "<16 hex>"}, ...}}
//   integrity_digest  xxh3_64 of the `integrity` text, 16 hex digits
// Digests are XXH3-64 of the decoded float32 contents (little-endian, C
// order), i.e. of what a loader gets, whatever the chunking or filters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace rt {

constexpr int kIntegrityVersion = 1;

// XXH3-64 as 16 lowercase hex digits.
std::string digest_hex(const void* data, size_t bytes);

struct IntegrityDataset {
  std::vector<int64_t> shape;
  std::string digest;
};

struct IntegrityRecord {
  // attributes
  std::string format = "ringtrain";
  int64_t format_version = 1;
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::string config;
  std::string optimizer_type;          // "" when there is no /optimizer
  std::optional<int64_t> optimizer_step;
  std::string trainer_state;
  // "/model/<name>", "/optimizer/exp_avg/<name>", ...
  std::map<std::string, IntegrityDataset> datasets;

  std::string to_json() const;
  // Throws std::runtime_error describing what is malformed.
  static IntegrityRecord from_json(const std::string& text);
};

}  // namespace rt
