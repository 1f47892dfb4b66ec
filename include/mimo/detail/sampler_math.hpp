// Not API: scalar building blocks the sampling stages share. The loops are written as plain
// element-wise loops (with several independent accumulators where they reduce) so compilers
// vectorise them at -O2/-O3 without -ffast-math; they are the passes over the whole vocabulary.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>

namespace mimo::detail {

// Maps a float to an unsigned key with the same order (larger key, larger value), so selections
// compare integers: a strict total order even on inputs a caller corrupted. -0 and +0 map to the
// same key, as they compare equal as floats.
inline uint32_t order_key(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value + 0.0f);  // + 0 turns -0 into +0
  return (bits & 0x8000'0000u) ? ~bits : (bits | 0x8000'0000u);
}

// A candidate's rank in the order every stage uses: logit descending, then id (position, since
// candidates are kept in ascending id order) ascending. Larger rank = better.
inline uint64_t rank_of(float logit, size_t position) {
  return (uint64_t{order_key(logit)} << 32) | uint64_t{~static_cast<uint32_t>(position)};
}
inline size_t position_of_rank(uint64_t rank) { return ~static_cast<uint32_t>(rank); }

// e^x for x <= 0, -inf included (gives 0), within 2 ulp of the exact value. Written with +, -, *
// and bit operations only: it vectorises, and it gives the same bits on every IEEE-754 platform
// (unlike std::exp, whose last bit differs between C libraries) unless the compiler contracts
// a*b+c into FMA. Results below 2^-125 are flushed to 0.
inline float exp_nonpositive(float x) {
  // Compared as integers (an FP compare would keep the loop from being if-converted under the
  // default -ftrapping-math): for x <= 0, a larger bit pattern is a more negative value.
  const uint32_t limit_bits = std::bit_cast<uint32_t>(-87.0f);
  const bool underflows = std::bit_cast<uint32_t>(x) > limit_bits;
  x = std::bit_cast<float>(underflows ? limit_bits : std::bit_cast<uint32_t>(x));
  // e^x = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2. Adding 1.5 * 2^23 rounds to an
  // integer in the low mantissa bits, which also gives n as an int without a conversion.
  const float round_magic = 12582912.0f;
  const float shifted = x * 1.44269504f + round_magic;
  const float n = shifted - round_magic;
  const int32_t n_int = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(round_magic);
  // ln 2 split in two (Cody and Waite) so that n * ln2_high is exact.
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  // Taylor series to r^7: truncation error below 1e-8 relative on |r| <= 0.347.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t scale_bits = underflows ? 0 : (n_int + 127) << 23;  // 2^n, or 0 when flushed
  return p * std::bit_cast<float>(scale_bits);
}

// The passes over the whole vocabulary below walk blocks of `block` entries with a constant trip
// count and accumulate into int or float lanes (never bool): the shape that GCC and Clang
// vectorise even at -O2 and without -ffast-math. A scalar loop finishes the remainder.
constexpr size_t block = 64;

// 1 for NaN (either sign) and +inf, 0 otherwise; -inf (a banned token) is an ordinary logit.
inline uint32_t is_invalid_logit(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  return static_cast<uint32_t>((bits & 0x7FFF'FFFFu) >= 0x7F80'0000u) & static_cast<uint32_t>(bits != 0xFF80'0000u);
}

// What one pass over a logits array found, on the bits (integer flags vectorise; see above).
struct LogitCheck {
  bool any_invalid = false;            // a NaN or +inf
  bool all_negative_infinity = false;  // nothing can be drawn (or the span is empty)
};

inline LogitCheck check_logits(std::span<const float> logits) {
  const size_t n = logits.size();
  const size_t full = n - n % block;
  const float* data = logits.data();
  uint32_t invalid = 0;
  uint32_t not_negative_infinity = 0;
  const auto check_one = [&](float value) {
    invalid |= is_invalid_logit(value);
    not_negative_infinity |= static_cast<uint32_t>(std::bit_cast<uint32_t>(value) != 0xFF80'0000u);
  };
  for (size_t start = 0; start < full; start += block) {
    for (size_t i = 0; i < block; ++i) check_one(data[start + i]);
  }
  for (size_t i = full; i < n; ++i) check_one(data[i]);
  return {.any_invalid = invalid != 0, .all_negative_infinity = not_negative_infinity == 0};
}

// The largest value, ignoring NaN; -inf for an empty span.
inline float max_logit(std::span<const float> logits) {
  constexpr size_t lanes = 8;
  float lane_max[lanes];
  for (float& m : lane_max) m = -std::numeric_limits<float>::infinity();
  const size_t n = logits.size();
  const size_t full = n - n % block;
  const float* data = logits.data();
  for (size_t start = 0; start < full; start += lanes) {
    for (size_t j = 0; j < lanes; ++j) {
      const float value = data[start + j];
      lane_max[j] = value > lane_max[j] ? value : lane_max[j];
    }
  }
  float max = -std::numeric_limits<float>::infinity();
  for (float m : lane_max) max = m > max ? m : max;
  for (size_t i = full; i < n; ++i) max = data[i] > max ? data[i] : max;
  return max;
}

// The first position holding `value` (present in `logits`), block by block: a vectorised test
// per block, a scalar search only in the block that has it.
inline size_t first_position_of(std::span<const float> logits, float value) {
  const size_t n = logits.size();
  const size_t full = n - n % block;
  const float* data = logits.data();
  size_t start = 0;
  for (; start < full; start += block) {
    int found = 0;
    for (size_t i = 0; i < block; ++i) found |= data[start + i] == value;
    if (found) break;
  }
  while (start < n && data[start] != value) ++start;
  return start;
}

// weights[i] = e^(logits[i] - max) for logits <= max; returns their sum. The sum runs in eight
// double lanes: a fixed order (so the result does not depend on vectorisation) and no precision
// lost over 151,680 terms.
inline double exp_shifted(std::span<const float> logits, float max, std::span<float> weights) {
  const size_t n = logits.size();
  const size_t full = n - n % block;
  const float* in = logits.data();
  float* out = weights.data();
  for (size_t start = 0; start < full; start += block) {
    // Through a local array, which cannot alias: no runtime overlap check, which the -O2
    // vectoriser would refuse to emit.
    float local[block];
    for (size_t i = 0; i < block; ++i) local[i] = exp_nonpositive(in[start + i] - max);
    for (size_t i = 0; i < block; ++i) out[start + i] = local[i];
  }
  for (size_t i = full; i < n; ++i) out[i] = exp_nonpositive(in[i] - max);
  constexpr size_t lanes = 8;
  double lane_sum[lanes] = {};
  for (size_t start = 0; start < full; start += lanes) {
    for (size_t j = 0; j < lanes; ++j) lane_sum[j] += double{out[start + j]};
  }
  double sum = 0.0;
  for (double s : lane_sum) sum += s;
  for (size_t i = full; i < n; ++i) sum += double{out[i]};
  return sum;
}

}  // namespace mimo::detail
