// Element-wise and attention ops of the CPU backend, over rows of fp32 activations.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/matvec.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/detail/sampler_select.hpp"
#include "mimo/dtype.hpp"

namespace mimo::cpu {

// The element-wise ops run once per layer on rows of 4096 to 11008 floats. In scalar code they
// took about 40 us a layer (silu's expf alone 27 us), 1.5 ms of a 75 ms int4 decoding step; the
// AVX2 forms below take a few us. Each keeps the scalar form's arithmetic except where noted, and
// the scalar form stays the portable path and the tests' reference.

namespace detail {

inline void rms_norm_row_scalar(const float* x, const float* w, double eps, int64_t n, float* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * scale);
}

inline void silu_mul_row_scalar(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

#if MIMO_X86
// The sum of squares in double (squares of floats are exact there) over four chains of 4 lanes:
// another order of the same exact terms than the scalar loop's, so the scale can differ from it
// in its last bit at most.
MIMO_TARGET_AVX2 inline void rms_norm_row_avx2(const float* x, const float* w, double eps, int64_t n, float* y) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    const __m256d d[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                          _mm256_cvtps_pd(_mm256_castps256_ps128(b)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1))};
MIMO_UNROLL_TILE
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_pd(d[j], d[j], acc[j]);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3])));
  double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  const __m256 sv = _mm256_set1_ps(scale);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(y + k, _mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_mul_ps(_mm256_loadu_ps(x + k), sv)));
  for (; k < n; ++k) y[k] = w[k] * (x[k] * scale);
}

// e^x within about 1 ulp over the range that matters: x = n ln2 + r (ln2 in two parts, so r is
// exact), e^r by Cephes' degree-7 polynomial on |r| <= ln2 / 2, 2^n through the exponent bits.
// Inputs are clamped to [-87.33, 88.02] (results from FLT_MIN to 1.6e38, where expf would give
// 0 or inf further out); NaN stays NaN. Not attention's exp2 of x * log2(e): rounding that
// product alone costs up to about 7e-6 relative error at |x| near 88, where this stays within an ulp.
MIMO_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  // The constant first: min and max return their second operand when either is NaN.
  x = _mm256_max_ps(_mm256_set1_ps(-87.33654f), _mm256_min_ps(_mm256_set1_ps(88.02f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));  // r + 1 first would drop r's low bits
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// The scalar form with exp_avx2 for expf: the same division and product.
MIMO_TARGET_AVX2 inline void silu_mul_row_avx2(float* g, const float* u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(u + i)));
  }
  silu_mul_row_scalar(g + i, u + i, n - i);
}
#endif

// Runs fn(r) for every row: over the pool for a prefill's rows; on the caller for decoding and
// verification (up to 16 rows of about a microsecond each, less than handing out a job).
template <class Fn>
void for_each_row(ThreadPool* pool, int64_t count, Fn&& fn) {
  if (pool == nullptr || count <= 16) {
    for (int64_t r = 0; r < count; ++r) fn(r);
    return;
  }
  pool->parallel_for(count, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

}  // namespace detail

// y = w * x / sqrt(mean(x^2) + eps), per row. y may alias x.
inline void rms_norm_rows(Isa isa, ThreadPool* pool, const Rows& x, const float* w, double eps, const Rows& y) {
  detail::for_each_row(pool, x.count, [&](int64_t r) {
#if MIMO_X86
    if (has_avx2(isa)) return detail::rms_norm_row_avx2(x.row(r), w, eps, x.width, y.row(r));
#endif
    detail::rms_norm_row_scalar(x.row(r), w, eps, x.width, y.row(r));
  });
}

// The cos and sin of RoPE's angles for some positions: [row][head_dim], cos for j < head_dim / 2,
// sin after. A forward pass asks for the same positions in every layer (q, k and the MTP layers
// too), so the table is kept for the next call: its pow, cos and sin in double took 5 us a layer.
struct RopeTable {
  std::vector<float> cos_sin;
  std::vector<int64_t> positions;
  double theta = 0.0;
  int64_t head_dim = 0;
};
inline constexpr int64_t kRopeTableRows = 16;  // more positions (prefill) are computed row by row

namespace detail {
inline void rope_angles(int64_t position, double theta, int64_t head_dim, float* out) {
  const int64_t half = head_dim / 2;
  const double pos = static_cast<double>(position);
  for (int64_t j = 0; j < half; ++j) {
    const double angle = pos * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
    out[j] = static_cast<float>(std::cos(angle));
    out[half + j] = static_cast<float>(std::sin(angle));
  }
}
}  // namespace detail

// Rotates pairs (i, i + D/2) of every head of every row by position * theta^(-2i/D): the
// Hugging Face "rotate_half" (NEOX) form. Angles are computed in double precision.
inline void rope_rows(const Rows& x, int64_t heads, int64_t head_dim, std::span<const int64_t> positions,
                      double theta, RopeTable& table) {
  const int64_t half = head_dim / 2;
  const bool cached = x.count <= kRopeTableRows;
  const bool hit = cached && table.theta == theta && table.head_dim == head_dim &&
                   std::equal(positions.begin(), positions.begin() + x.count, table.positions.begin(), table.positions.end());
  if (!hit) {
    table.cos_sin.resize(static_cast<size_t>((cached ? x.count : 1) * head_dim));
    table.positions.assign(positions.begin(), positions.begin() + (cached ? x.count : 0));
    table.theta = theta;
    table.head_dim = head_dim;
    if (cached) {
      for (int64_t r = 0; r < x.count; ++r) detail::rope_angles(positions[r], theta, head_dim, table.cos_sin.data() + r * head_dim);
    }
  }
  for (int64_t r = 0; r < x.count; ++r) {
    const float* cos_sin = table.cos_sin.data() + (cached ? r * head_dim : 0);
    if (!cached) detail::rope_angles(positions[r], theta, head_dim, table.cos_sin.data());
    float* row = x.row(r);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = row + h * head_dim;
      for (int64_t j = 0; j < half; ++j) {
        const float c = cos_sin[j], s = cos_sin[half + j];
        const float a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
      }
    }
  }
}

// gate = silu(gate) * up, element-wise.
inline void silu_mul_rows(Isa isa, ThreadPool* pool, const Rows& gate, const Rows& up) {
  detail::for_each_row(pool, gate.count, [&](int64_t r) {
#if MIMO_X86
    if (has_avx2(isa)) return detail::silu_mul_row_avx2(gate.row(r), up.row(r), gate.width);
#endif
    detail::silu_mul_row_scalar(gate.row(r), up.row(r), gate.width);
  });
}

// The index of the largest of x[0, n) (the first on ties), or -1 when x holds NaN or +inf, or
// nothing above -inf: the rows a sampler refuses (Sampler::sample reports why).
inline int32_t argmax_or_invalid(const float* x, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = -1;
  bool invalid = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    invalid |= !(v < std::numeric_limits<float>::infinity());  // NaN or +inf
    if (v > best) {
      best = v;
      at = i;
    }
  }
  return invalid ? -1 : static_cast<int32_t>(at);
}

// Buffers top_or_invalid reuses between rows.
struct TopScratch {
  std::vector<uint64_t> heap;
  std::vector<uint32_t> positions;
};

// The `count` largest of x[0, n) in the sampler's order (value descending, -0 == +0, then lower
// index), written in ascending index order to ids and values; false, with ids all -1, when x holds
// NaN or +inf, or nothing above -inf. 1 <= count <= n.
inline bool top_or_invalid(const float* x, int64_t n, int32_t count, int32_t* ids, float* values, TopScratch& scratch) {
  const std::span<const float> row(x, static_cast<size_t>(n));
  const size_t k = static_cast<size_t>(count);
  bool valid = true;
  if (k < row.size()) {
    valid = mimo::detail::select_top_k(row, k, scratch.heap, scratch.positions);
  } else {
    valid = !mimo::detail::check_logits(row).any_invalid;
    scratch.positions.resize(k);
    for (size_t i = 0; i < k; ++i) scratch.positions[i] = static_cast<uint32_t>(i);
  }
  bool any_finite = false;
  for (size_t j = 0; valid && j < k; ++j) {
    ids[j] = static_cast<int32_t>(scratch.positions[j]);
    values[j] = row[scratch.positions[j]];
    any_finite |= values[j] > -std::numeric_limits<float>::infinity();
  }
  if (valid && any_finite) return true;
  std::fill(ids, ids + count, -1);
  return false;
}

}  // namespace mimo::cpu
