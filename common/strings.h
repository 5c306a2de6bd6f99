// Small string helpers shared across the trainer (config reader, CLI, eval
// command, ablation runner).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

// The items with sep between them: join({"a", "b"}, ", ") == "a, b".
inline std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

// A tensor shape as text: shape_str({2, 3}) == "[2, 3]".
inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// FNV-1a, 64 bits: a stable short name for a string (eval JSON names, sweep
// run hashes); the same on every machine and run.
inline uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace rt
