// A weight matrix as the CPU kernels see it: stored floats used in place from the mapped
// checkpoint (BF16, F16, F32), or quantized codes with their group scales (mimo/quant.hpp), in
// the mapping or in memory quantized while loading. Widening rows to fp32 is exact for every
// format (quantized codes give the values of mimo::dequantize_row).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mimo/backend/cpu/isa.hpp"
#include "mimo/dtype.hpp"
#include "mimo/quant.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

// Bytes ahead of the weight stream that the decode kernels prefetch. With several activation rows
// a step does more work per weight byte, the out-of-order window covers fewer cache lines ahead,
// and the hardware prefetcher alone left the stream at half speed (bench_kernels: 2 rows 15.7 ->
// 25.8 GB/s, 4 rows 10.2 -> 21.0 on one thread of a Zen 5 with 2 KiB).
inline constexpr int64_t kPrefetchAhead = 2048;

// The hint the decode kernels prefetch the weights they stream with. Each weight is read once per
// step, and CPUs disagree on what suits that (2 threads, whole decoding steps of the 7B, builds
// alternating):
//   non_temporal: on AMD Zen 5, bf16 242-246 ms instead of 244-252 with T0, q8 157-161 instead
//     of 166-192;
//   t0: on an Intel Xeon with AVX512_BF16 (260 MiB of L3), bf16 472-476 ms instead of 728-730 with
//     the non-temporal hint, q4 153-155 instead of 200-201: that hint left each thread's stream at
//     two thirds of the memory's speed.
// Where more chunks of activation rows read the same block of weight rows next, the kernels use
// T0 whatever this says: with the non-temporal hint the later chunks went back to memory.
enum class WeightPrefetch { non_temporal, t0 };

// The hint's name on the command line (--prefetch) and in benchmark tables.
constexpr const char* to_string(WeightPrefetch p) { return p == WeightPrefetch::t0 ? "t0" : "nta"; }

// What this machine's vendor measured faster: the non-temporal hint on AMD (and Hygon), T0 elsewhere.
inline WeightPrefetch default_weight_prefetch() {
  return is_amd_cpu() ? WeightPrefetch::non_temporal : WeightPrefetch::t0;
}

#if MIMO_X86
// Prefetches the weight line at p (kPrefetchAhead bytes ahead of the stream): with T0 if Kept,
// else non-temporal.
template <bool Kept = false>
inline void prefetch_weights(const std::byte* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), Kept ? _MM_HINT_T0 : _MM_HINT_NTA);
}
#endif

// A row-major [rows, cols] matrix: a view (the memory belongs to the checkpoint or the model).
struct WeightMatrix {
  const std::byte* data = nullptr;  // the floats, or the codes of a quantized matrix
  DType dtype = DType::f32;         // of the floats: BF16, F16 or F32 (unused when quantized)
  int64_t rows = 0;
  int64_t cols = 0;
  QuantType quant = QuantType::none;
  int64_t group = 0;                 // quantized: columns per scale (a power of two >= 32 dividing cols)
  const std::byte* scales = nullptr; // quantized: f16 [rows, cols / group]
  const std::byte* mins = nullptr;   // q4 with minimums: f16 [rows, cols / group]; null when symmetric

  bool quantized() const { return quant != QuantType::none; }
  // Bytes of one row of data (floats or codes).
  int64_t row_bytes() const {
    return quantized() ? quant_row_bytes(quant, cols) : cols * static_cast<int64_t>(dtype_size(dtype));
  }
  const std::byte* row(int64_t r) const { return data + r * row_bytes(); }
  const std::byte* row_scales(int64_t r) const { return scales + 2 * r * (cols / group); }
  const std::byte* row_mins(int64_t r) const { return mins ? mins + 2 * r * (cols / group) : nullptr; }
  // Bytes a pass over the whole matrix reads.
  uint64_t bytes() const {
    uint64_t b = static_cast<uint64_t>(rows) * static_cast<uint64_t>(row_bytes());
    if (quantized()) b += static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols / group) * (mins ? 4 : 2);
    return b;
  }
};

namespace detail {

#if MIMO_X86

// 16 stored floats widened to fp32; with a mask other than all lanes, lanes outside it read
// nothing and are zero. (Masked loads are several times slower than plain ones on some CPUs, Zen 5
// among them: only tails use them.)
MIMO_TARGET_AVX512 inline __m512 load16(const std::byte* p, DType t, __mmask16 m) {
  const bool all = m == 0xffff;
  switch (t) {
    case DType::bf16: {
      const __m256i h = all ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
      return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16));
    }
    case DType::f16: {
      const __m256i h = all ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
      return _mm512_maskz_cvtph_ps(0xffff, h);
    }
    default: return all ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
  }
}

// 8 stored floats widened to fp32.
MIMO_TARGET_AVX2 inline __m256 load8(const std::byte* p, DType t) {
  switch (t) {
    case DType::bf16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    case DType::f16: return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    default: return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
}

// Columns [k0, k0 + count) of a stored float row, widened; count need not be a multiple of 16.
MIMO_TARGET_AVX512 inline void widen_floats_avx512(const std::byte* row, DType t, int64_t k0, int64_t count, float* dst) {
  const int64_t esize = static_cast<int64_t>(dtype_size(t));
  int64_t k = 0;
  for (; k + 16 <= count; k += 16) _mm512_storeu_ps(dst + k, load16(row + (k0 + k) * esize, t, 0xffff));
  if (k < count) {
    const __mmask16 m = static_cast<__mmask16>((1u << (count - k)) - 1u);
    _mm512_mask_storeu_ps(dst + k, m, load16(row + (k0 + k) * esize, t, m));
  }
}

// 32 quantized columns (one code block) starting at column k (a multiple of 32) of a row,
// dequantized: scale * code, or fma(scale, code, min) for q4.
MIMO_TARGET_AVX512 inline void dequant_block_avx512(QuantType q, const std::byte* codes, int64_t k, float s, float m,
                                                    float* dst) {
  __m512 lo, hi;
  if (q == QuantType::q8) {
    const __m512i c0 = _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k)));
    const __m512i c1 = _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k + 16)));
    lo = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, c0), _mm512_set1_ps(s));
    hi = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, c1), _mm512_set1_ps(s));
  } else {
    const __m512i b = _mm512_maskz_cvtepu8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2)));
    const __m512i nib = _mm512_set1_epi32(15);
    lo = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_maskz_cvtepi32_ps(0xffff, _mm512_and_si512(b, nib)), _mm512_set1_ps(m));
    hi = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_srli_epi32(0xffff, b, 4)), _mm512_set1_ps(m));
  }
  _mm512_storeu_ps(dst, lo);
  _mm512_storeu_ps(dst + 16, hi);
}

#endif  // MIMO_X86

inline float read_f16(const std::byte* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return f16_to_f32(h);
}

}  // namespace detail

// Columns [k0, k0 + count) of row r of w, widened to fp32 (exact). For quantized matrices k0 and
// count are multiples of 32.
inline void widen_row_range(Isa isa, const WeightMatrix& w, int64_t r, int64_t k0, int64_t count, float* dst) {
  const std::byte* row = w.row(r);
  if (w.quantized()) {
    const std::byte* sc = w.row_scales(r);
    const std::byte* mn = w.row_mins(r);
#if MIMO_X86
    if (has_avx512(isa)) {
      for (int64_t k = 0; k < count; k += kQuantBlock) {
        const int64_t g = (k0 + k) / w.group;
        const float s = detail::read_f16(sc, g);
        const float m = w.quant == QuantType::q4 ? (mn ? detail::read_f16(mn, g) : -8.0f * s) : 0.0f;
        detail::dequant_block_avx512(w.quant, row, k0 + k, s, m, dst + k);
      }
      return;
    }
#endif
    for (int64_t k = 0; k < count; ++k) {
      const int64_t g = (k0 + k) / w.group;
      const float s = detail::read_f16(sc, g);
      if (w.quant == QuantType::q8) {
        dst[k] = s * static_cast<float>(reinterpret_cast<const int8_t*>(row)[k0 + k]);
      } else {
        const float m = mn ? detail::read_f16(mn, g) : -8.0f * s;
        dst[k] = std::fma(s, static_cast<float>(q4_code(reinterpret_cast<const uint8_t*>(row), k0 + k)), m);
      }
    }
    return;
  }
#if MIMO_X86
  if (has_avx512(isa)) return detail::widen_floats_avx512(row, w.dtype, k0, count, dst);
#else
  (void)isa;
#endif
  if (w.dtype == DType::f32) {
    std::memcpy(dst, row + 4 * k0, static_cast<size_t>(4 * count));
    return;
  }
  for (int64_t k = 0; k < count; ++k) dst[k] = load_float(row, w.dtype, static_cast<uint64_t>(k0 + k));
}

// Rows [r0, r1) of w widened into dst (row-major, w.cols floats a row).
inline void widen_rows(Isa isa, const WeightMatrix& w, int64_t r0, int64_t r1, float* dst) {
  for (int64_t r = r0; r < r1; ++r) widen_row_range(isa, w, r, 0, w.cols, dst + (r - r0) * w.cols);
}

}  // namespace mimo::cpu
