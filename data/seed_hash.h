// Portable hash-based random numbers for the data layer: the same values on
// every platform and compiler (std:: distributions are implementation-defined),
// so a seed means the same data order and synthetic samples everywhere.
#pragma once

#include <cstdint>

namespace rt::data_rng {

// splitmix64 finalizer: a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Hash of (seed, stream, index): independent values per purpose and index.
inline uint64_t hash3(uint64_t seed, uint64_t stream, uint64_t index) {
  return mix64(mix64(mix64(seed) ^ stream) ^ index);
}

// Streams (purposes) so that the draws of different uses never coincide.
inline constexpr uint64_t kStreamPasskey = 0x7061737300000001ull;  // passkey digits
inline constexpr uint64_t kStreamDepth = 0x6465707400000002ull;    // needle depth
inline constexpr uint64_t kStreamShuffle = 0x7368756600000003ull;  // epoch permutation

// splitmix64 sequence generator.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n >= 1, without modulo bias (rejection sampling).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

// Uniform double in [0, 1) from 53 bits of h.
inline double to_unit(uint64_t h) { return double(h >> 11) * 0x1.0p-53; }

}  // namespace rt::data_rng
