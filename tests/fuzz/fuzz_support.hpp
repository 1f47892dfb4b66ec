// Helpers shared by the libFuzzer targets: a check that crashes (so libFuzzer records the input)
// and a reader of structured values from the input bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

// A property the code under test promises. libFuzzer saves the input when the process dies. The
// regression test defines FUZZ_CHECK as a doctest CHECK before including the harnesses.
#ifndef FUZZ_CHECK
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
#endif

namespace fuzz {

// Reads structured values from the front of a fuzz input; past its end every value is zero (or
// the low end of its range). Plain C++ so that the harnesses also build with GCC, where the
// regression test (tests/test_fuzz_regressions.cpp) replays saved inputs through them.
class ByteSource {
 public:
  ByteSource(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  bool flag() { return byte() & 1; }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(byte()) << (8 * i);
    return v;
  }
  uint32_t u32() { return static_cast<uint32_t>(u64() & 0xFFFFFFFFu); }
  // An integer in [lo, hi] from as few bytes as the range needs.
  int64_t in_range(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
    uint64_t v = 0;
    for (uint64_t covered = 0; covered < span; covered = (covered << 8) | 0xFF) v = (v << 8) | byte();
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + (span == UINT64_MAX ? v : v % (span + 1)));
  }
  // The bits of a float, any of them (NaN, infinities, denormals).
  float any_float() {
    const uint32_t bits = u32();
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  // A float in [lo, hi].
  float float_in(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(u32() >> 8) / 16777215.0f; }
  // Up to max_len bytes: a length byte pair, then the bytes.
  std::string text(size_t max_len) {
    const size_t want = static_cast<size_t>(in_range(0, static_cast<int64_t>(max_len)));
    const size_t n = std::min(want, remaining());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace fuzz
