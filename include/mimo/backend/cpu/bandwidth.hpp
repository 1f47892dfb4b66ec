// Measures the memory read bandwidth the thread pool achieves, the limit of decoding speed: one
// decoding step reads every weight once. Benchmarks report their speed as a fraction of it,
// measured in the same run.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/error.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

namespace detail_bw {

// Integer sums, one 32-byte load after another: any bytes (weights included) are valid input,
// and no floating-point assist can slow a denormal down.
#if MIMO_X86
MIMO_TARGET_AVX2 inline uint64_t sum_avx2(const std::byte* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi32(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi32(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi32(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi32(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
  uint64_t s = 0;
  for (uint32_t x : lanes) s += x;
  return s;
}
#endif

inline uint64_t sum_scalar(const std::byte* p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i += 64) s += static_cast<uint64_t>(p[i]);  // one load per cache line
  return s;
}

}  // namespace detail_bw

// Read bandwidth in GB/s over memory that exists already: the median of `repeats` passes over the
// spans, each split between the pool's threads. Benchmarks pass the model's own weights, so the
// probe reads the very pages decoding reads and takes no memory of its own.
inline double measure_read_bandwidth(ThreadPool& pool, const std::vector<std::span<const std::byte>>& spans,
                                     int repeats = 3) {
  const bool simd = detect_isa() != Isa::scalar;
  uint64_t total = 0;
  for (const auto& s : spans) total += s.size() / 4096 * 4096;
  if (total == 0) return 0.0;
  std::vector<double> rates;
  std::atomic<uint64_t> sink{0};  // keeps the reads from being optimised away
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& span : spans) {
      pool.parallel_for(static_cast<int64_t>(span.size() / 4096), [&](int64_t b, int64_t e) {
        const std::byte* p = span.data() + b * 4096;
        const size_t count = static_cast<size_t>(e - b) * 4096;
#if MIMO_X86
        const uint64_t s = simd ? detail_bw::sum_avx2(p, count) : detail_bw::sum_scalar(p, count);
#else
        (void)simd;
        const uint64_t s = detail_bw::sum_scalar(p, count);
#endif
        sink.fetch_add(s, std::memory_order_relaxed);
      });
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(static_cast<double>(total) / seconds / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates.empty() ? 0.0 : rates[rates.size() / 2];
}

// The same over a fresh `bytes`-sized buffer (larger than the last-level cache), for benchmarks
// that have no model loaded.
inline Expected<double> measure_read_bandwidth(ThreadPool& pool, uint64_t bytes = 1ull << 30, int repeats = 5) {
  mimo::detail::AlignedBuffer<std::byte> buffer;
  const uint64_t n = bytes / 4096 * 4096;
  if (auto s = buffer.reserve(n, "bandwidth probe"); !s) return std::move(s).error();
  std::byte* data = buffer.data();
  pool.parallel_for(static_cast<int64_t>(n / 4096), [&](int64_t b, int64_t e) {
    std::memset(data + b * 4096, 1, static_cast<size_t>(e - b) * 4096);
  });
  return measure_read_bandwidth(pool, {std::span<const std::byte>(data, n)}, repeats);
}

}  // namespace mimo::cpu
