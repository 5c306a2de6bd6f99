// Portable deterministic random numbers: the same stream on every platform and
// compiler (std:: distributions are implementation-defined), so a seed means
// the same weights, data order and synthetic data everywhere.
#pragma once

#include <cmath>
#include <cstdint>

namespace rt {

// splitmix64 step: a good 64-bit mixer, also used to derive sub-seeds.
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Hash of (seed, a, b): independent streams per (seed, purpose, index).
inline uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
  uint64_t s = seed;
  uint64_t h = splitmix64(s);
  s = h ^ (a * 0xD1B54A32D192ED03ull);
  h = splitmix64(s);
  s = h ^ (b * 0x8CB92BA72F3D8DD7ull);
  return splitmix64(s);
}

// Uniform double in [0, 1) from the top 53 bits of a hash.
inline double unit_double(uint64_t h) { return double(h >> 11) * 0x1.0p-53; }

// Stream ids, so that the draws of different purposes never coincide.
inline constexpr uint64_t kStreamPasskey = 0x7061737300000001ull;  // passkey digits
inline constexpr uint64_t kStreamDepth = 0x6465707400000002ull;    // needle depth
inline constexpr uint64_t kStreamShuffle = 0x7368756600000003ull;  // epoch permutation
inline constexpr uint64_t kStreamRecall = 0x7265636100000004ull;   // recall keys, values, places

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64() { return splitmix64(state_); }
  // uniform in [0, 1) with 53 random bits
  double uniform() { return unit_double(next_u64()); }
  // uniform integer in [0, n), n >= 1, without modulo bias (rejection)
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next_u64();
    while (x >= limit);
    return x % n;
  }
  // standard normal (Box–Muller, one value per call for simplicity)
  double normal() {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

}  // namespace rt
