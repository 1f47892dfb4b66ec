// Products of a stored weight matrix (BF16, F16 or F32, used in place) with a few fp32 activation
// rows: the decode and verification path, which streams each weight once for up to
// kMaxMatvecRows rows, so it runs at memory bandwidth. Arithmetic is fp32 (weights widen exactly).
#pragma once

#include <cstddef>
#include <cstdint>

#include "mimo/backend/cpu/isa.hpp"
#include "mimo/dtype.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

// A row-major [rows, cols] matrix of stored weights.
struct WeightMatrix {
  const std::byte* data = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
};

inline constexpr int kMaxMatvecRows = 8;

// The arguments of one y = x W^T (+ bias) (+ y) over output rows [r0, r1).
struct MatvecArgs {
  const float* x;      // n rows of W.cols floats, ldx apart
  int64_t ldx;
  int n;               // 1..kMaxMatvecRows
  float* y;            // n rows, ldy apart; columns r0..r1-1 are written
  int64_t ldy;
  const float* bias;   // W.rows floats or null
  bool accumulate;     // add to y instead of overwriting it (fuses the residual add)
};

namespace detail {

inline void matvec_scalar(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float acc[kMaxMatvecRows] = {};
    const uint64_t row = static_cast<uint64_t>(r) * static_cast<uint64_t>(w.cols);
    for (int64_t k = 0; k < w.cols; ++k) {
      const float wk = load_float(w.data, w.dtype, row + k);
      for (int i = 0; i < a.n; ++i) acc[i] += wk * a.x[i * a.ldx + k];
    }
    for (int i = 0; i < a.n; ++i) {
      float v = acc[i] + (a.bias ? a.bias[r] : 0.0f);
      float& out = a.y[i * a.ldy + r];
      out = a.accumulate ? out + v : v;
    }
  }
}

#if MIMO_X86

// 16 weights widened to fp32.
MIMO_TARGET_AVX512 inline __m512 load16(const std::byte* p, DType t, __mmask16 m) {
  switch (t) {
    case DType::bf16:
      return _mm512_castsi512_ps(
          _mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m, p)), 16));
    case DType::f16: return _mm512_maskz_cvtph_ps(0xffff, _mm256_maskz_loadu_epi16(m, p));
    default: return _mm512_maskz_loadu_ps(m, p);
  }
}

// Through memory: the shuffle intrinsics leave lanes "undefined", which GCC 12 warns about, and
// this runs once per output value.
MIMO_TARGET_AVX512 inline float hsum512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

template <int N, DType T>
MIMO_TARGET_AVX512 void matvec_avx512_n(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  constexpr int64_t esize = static_cast<int64_t>(dtype_size(T));
  const int64_t cols = w.cols;
  const int64_t full = cols / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (cols - full)) - 1u);
  // Two rows at a time share each activation load; N accumulators per row.
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    const std::byte* w0 = w.data + r * cols * esize;
    const std::byte* w1 = w0 + cols * esize;
    __m512 acc0[N], acc1[N];
    for (int i = 0; i < N; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < full; k += 16) {
      const __m512 a0 = load16(w0 + k * esize, T, 0xffff);
      const __m512 a1 = load16(w1 + k * esize, T, 0xffff);
      for (int i = 0; i < N; ++i) {
        const __m512 xv = _mm512_loadu_ps(a.x + i * a.ldx + k);
        acc0[i] = _mm512_fmadd_ps(a0, xv, acc0[i]);
        acc1[i] = _mm512_fmadd_ps(a1, xv, acc1[i]);
      }
    }
    if (full < cols) {
      const __m512 a0 = load16(w0 + full * esize, T, tail);
      const __m512 a1 = load16(w1 + full * esize, T, tail);
      for (int i = 0; i < N; ++i) {
        const __m512 xv = _mm512_maskz_loadu_ps(tail, a.x + i * a.ldx + full);
        acc0[i] = _mm512_fmadd_ps(a0, xv, acc0[i]);
        acc1[i] = _mm512_fmadd_ps(a1, xv, acc1[i]);
      }
    }
    for (int i = 0; i < N; ++i) {
      float* out = a.y + i * a.ldy + r;
      const float b0 = a.bias ? a.bias[r] : 0.0f, b1 = a.bias ? a.bias[r + 1] : 0.0f;
      const float v0 = hsum512(acc0[i]) + b0, v1 = hsum512(acc1[i]) + b1;
      out[0] = a.accumulate ? out[0] + v0 : v0;
      out[1] = a.accumulate ? out[1] + v1 : v1;
    }
  }
  if (r < r1) {
    const std::byte* w0 = w.data + r * cols * esize;
    __m512 acc0[N];
    for (int i = 0; i < N; ++i) acc0[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < cols; k += 16) {
      const __mmask16 m = k + 16 <= cols ? static_cast<__mmask16>(0xffff) : tail;
      const __m512 a0 = load16(w0 + k * esize, T, m);
      for (int i = 0; i < N; ++i) acc0[i] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m, a.x + i * a.ldx + k), acc0[i]);
    }
    for (int i = 0; i < N; ++i) {
      float* out = a.y + i * a.ldy + r;
      const float v = hsum512(acc0[i]) + (a.bias ? a.bias[r] : 0.0f);
      out[0] = a.accumulate ? out[0] + v : v;
    }
  }
}

// 8 weights widened to fp32.
MIMO_TARGET_AVX2 inline __m256 load8(const std::byte* p, DType t) {
  switch (t) {
    case DType::bf16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    case DType::f16: return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    default: return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
}

MIMO_TARGET_AVX2 inline float hsum256(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

template <int N, DType T>
MIMO_TARGET_AVX2 void matvec_avx2_n(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  constexpr int64_t esize = static_cast<int64_t>(dtype_size(T));
  const int64_t cols = w.cols;
  const int64_t full = cols / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* w0 = w.data + r * cols * esize;
    __m256 acc[N];
    for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < full; k += 8) {
      const __m256 wv = load8(w0 + k * esize, T);
      for (int i = 0; i < N; ++i) acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a.x + i * a.ldx + k), acc[i]);
    }
    for (int i = 0; i < N; ++i) {
      float v = hsum256(acc[i]);
      for (int64_t k = full; k < cols; ++k) v += load_float(w0, T, static_cast<uint64_t>(k)) * a.x[i * a.ldx + k];
      v += a.bias ? a.bias[r] : 0.0f;
      float& out = a.y[i * a.ldy + r];
      out = a.accumulate ? out + v : v;
    }
  }
}

#define MIMO_MATVEC_DISPATCH_N(fn, T)                     \
  switch (a.n) {                                          \
    case 1: return fn<1, T>(w, a, r0, r1);                \
    case 2: return fn<2, T>(w, a, r0, r1);                \
    case 3: return fn<3, T>(w, a, r0, r1);                \
    case 4: return fn<4, T>(w, a, r0, r1);                \
    case 5: return fn<5, T>(w, a, r0, r1);                \
    case 6: return fn<6, T>(w, a, r0, r1);                \
    case 7: return fn<7, T>(w, a, r0, r1);                \
    default: return fn<8, T>(w, a, r0, r1);               \
  }

template <DType T>
void matvec_avx512(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  MIMO_MATVEC_DISPATCH_N(matvec_avx512_n, T)
}
template <DType T>
void matvec_avx2(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  MIMO_MATVEC_DISPATCH_N(matvec_avx2_n, T)
}
#undef MIMO_MATVEC_DISPATCH_N

// Widens the first multiple of 16 of `count` bf16 values; returns how many it did.
MIMO_TARGET_AVX512 inline uint64_t widen_bf16_avx512(const unsigned char* src, uint64_t count, float* dst) {
  uint64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i h =
        _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, h, 16)));
  }
  return i;
}

#endif  // MIMO_X86

}  // namespace detail

// y rows [0, n) x columns [r0, r1) of x W^T (+ bias) (+ y), on the given instruction set.
inline void matvec(Isa isa, const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
#if MIMO_X86
  if (isa == Isa::avx512) {
    switch (w.dtype) {
      case DType::bf16: return detail::matvec_avx512<DType::bf16>(w, a, r0, r1);
      case DType::f16: return detail::matvec_avx512<DType::f16>(w, a, r0, r1);
      case DType::f32: return detail::matvec_avx512<DType::f32>(w, a, r0, r1);
      default: break;
    }
  } else if (isa == Isa::avx2) {
    switch (w.dtype) {
      case DType::bf16: return detail::matvec_avx2<DType::bf16>(w, a, r0, r1);
      case DType::f16: return detail::matvec_avx2<DType::f16>(w, a, r0, r1);
      case DType::f32: return detail::matvec_avx2<DType::f32>(w, a, r0, r1);
      default: break;
    }
  }
#else
  (void)isa;
#endif
  detail::matvec_scalar(w, a, r0, r1);
}

// Widens rows [r0, r1) of w into dst (row-major, w.cols floats a row).
inline void widen_rows(Isa isa, const WeightMatrix& w, int64_t r0, int64_t r1, float* dst) {
  const uint64_t begin = static_cast<uint64_t>(r0) * static_cast<uint64_t>(w.cols);
  const uint64_t count = static_cast<uint64_t>(r1 - r0) * static_cast<uint64_t>(w.cols);
#if MIMO_X86
  if (isa != Isa::scalar && w.dtype == DType::bf16) {
    const auto* src = reinterpret_cast<const unsigned char*>(w.data) + 2 * begin;
    uint64_t i = 0;
    if (isa == Isa::avx512) i = detail::widen_bf16_avx512(src, count, dst);
    for (; i < count; ++i) dst[i] = load_float(src, DType::bf16, i);
    return;
  }
#else
  (void)isa;
#endif
  if (w.dtype == DType::f32) {
    std::memcpy(dst, w.data + 4 * begin, static_cast<size_t>(4 * count));
    return;
  }
  for (uint64_t i = 0; i < count; ++i) dst[i] = load_float(w.data, w.dtype, begin + i);
}

}  // namespace mimo::cpu
