// The sampler's random number generator: xoshiro256** (Blackman and Vigna, 2018) seeded with
// SplitMix64. Both are fixed integer recurrences and the conversions to [0, 1) are explicit bit
// arithmetic, so a seed gives the same numbers with every compiler, standard library and platform
// (std::uniform_real_distribution and friends do not promise that).
#pragma once

#include <array>
#include <cstdint>

#include "mimo/error.hpp"

namespace mimo {

class Rng {
 public:
  // The four state words are the first four outputs of SplitMix64 started at `seed`, as the
  // xoshiro authors recommend; they are never all zero.
  explicit Rng(uint64_t seed = 0) {
    uint64_t splitmix = seed;
    for (uint64_t& word : state_) word = splitmix64(splitmix);
  }

  // The next 64 random bits.
  uint64_t next_u64() {
    const uint64_t result = rotate_left(state_[1] * 5, 7) * 9;
    const uint64_t shifted = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= shifted;
    state_[3] = rotate_left(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) on a grid of 2^-53: the top 53 bits of one next_u64(), scaled exactly.
  double next_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  // Uniform in [0, 1) on a grid of 2^-24: the top 24 bits of one next_u64(), scaled exactly.
  float next_float() { return static_cast<float>(next_u64() >> 40) * 0x1.0p-24f; }

  // The raw state, for saving alongside a session; from_state() restores it. An all-zero state
  // (which xoshiro never reaches, and would stay in forever) is rejected as corrupt.
  std::array<uint64_t, 4> state() const { return state_; }
  static Expected<Rng> from_state(const std::array<uint64_t, 4>& state) {
    if (state == std::array<uint64_t, 4>{}) {
      return Error(Errc::corrupt_state, "random generator state is all zero");
    }
    Rng rng;
    rng.state_ = state;
    return rng;
  }

  friend bool operator==(const Rng&, const Rng&) = default;

 private:
  static uint64_t rotate_left(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E37'79B9'7F4A'7C15u);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9u;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBu;
    return z ^ (z >> 31);
  }

  std::array<uint64_t, 4> state_{};
};

}  // namespace mimo
