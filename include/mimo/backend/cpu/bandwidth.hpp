// Measures the memory read bandwidth the thread pool achieves, the limit of decoding speed: one
// decoding step reads every weight once. Benchmarks report their speed as a fraction of it,
// measured in the same run.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
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

#if MIMO_X86
MIMO_TARGET_AVX2 inline float sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}
#endif

inline float sum_scalar(const float* p, size_t n) {
  float s = 0.0f;
  for (size_t i = 0; i < n; i += 16) s += p[i];  // one load per cache line
  return s;
}

}  // namespace detail_bw

// Read bandwidth in GB/s: the median of `repeats` passes over a fresh `bytes`-sized buffer, each
// thread of the pool reading its share.
inline Expected<double> measure_read_bandwidth(ThreadPool& pool, uint64_t bytes = 1ull << 30, int repeats = 5) {
  mimo::detail::AlignedBuffer<float> buffer;
  const uint64_t n = bytes / sizeof(float) / 64 * 64;
  if (auto s = buffer.reserve(n, "bandwidth probe"); !s) return std::move(s).error();
  float* data = buffer.data();
  pool.parallel_for(static_cast<int64_t>(n / 64), [&](int64_t b, int64_t e) {
    std::memset(data + b * 64, 1, static_cast<size_t>(e - b) * 64 * sizeof(float));
  });
  const bool simd = detect_isa() != Isa::scalar;
  std::vector<double> rates;
  std::atomic<float> sink{0.0f};  // keeps the reads from being optimised away
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(static_cast<int64_t>(n / 64), [&](int64_t b, int64_t e) {
      const float* p = data + b * 64;
      const size_t count = static_cast<size_t>(e - b) * 64;
#if MIMO_X86
      const float s = simd ? detail_bw::sum_avx2(p, count) : detail_bw::sum_scalar(p, count);
#else
      (void)simd;
      const float s = detail_bw::sum_scalar(p, count);
#endif
      sink.fetch_add(s, std::memory_order_relaxed);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(static_cast<double>(n * sizeof(float)) / seconds / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace mimo::cpu
