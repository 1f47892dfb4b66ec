// Products of a weight matrix with a few fp32 activation rows: the decode and verification path,
// which streams each weight once for up to kMaxMatvecRows rows, so it runs at memory bandwidth.
//
// Float weights (BF16, F16, F32, used in place): exact fp32 arithmetic (weights widen exactly);
// or, for BF16 weights on CPUs with AVX512_BF16 when the caller passes the activations rounded
// to bf16 (MatvecArgs::x16, the default "fast" products), vdpbf16ps dot products of bf16 pairs
// with fp32 accumulation: half the instructions and half the activation bytes per weight, which
// keeps several vectors (verification of drafts) at memory speed.
// Quantized weights (q8, q4): integer dot products of the codes with the activations quantized
// to int8 per group of 32 (matvec_quant.hpp).
//
// The value of output (row r, vector i) does not depend on how many vectors are processed
// together, nor on how rows are split between threads: one accumulator per (row, vector) runs
// over the columns in a fixed order, then a fixed reduction. So verifying draft tokens in one
// pass (speculative decoding) computes exactly what decoding them one at a time would.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/matvec_quant.hpp"
#include "mimo/backend/cpu/weight_matrix.hpp"
#include "mimo/dtype.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

inline constexpr int kMaxMatvecRows = 16;

// The arguments of one y = x W^T (+ bias) (+ y) over output rows [r0, r1).
struct MatvecArgs {
  const float* x;      // n rows of W.cols floats, ldx apart
  int64_t ldx;
  int n;               // 1..kMaxMatvecRows
  float* y;            // n rows, ldy apart; columns r0..r1-1 are written
  int64_t ldy;
  const float* bias;   // W.rows floats or null
  bool accumulate;     // add to y instead of overwriting it (fuses the residual add)
  const QuantizedRows* xq = nullptr;  // quantized weights: x prepared by prepare_rows for W's format
  const uint16_t* x16 = nullptr;      // or null: x rounded to bf16 (round_rows_bf16), for matvec_fast weights
  int64_t ldx16 = 0;                  // a multiple of 32 elements, zero past W.cols
  WeightPrefetch prefetch = WeightPrefetch::non_temporal;  // the hint for weights streamed once
};

// Whether matvec uses bf16 dot products for w when given rounded activations.
inline bool matvec_fast(Isa isa, const WeightMatrix& w) {
  return has_bf16(isa) && !w.quantized() && w.dtype == DType::bf16;
}

// Elements of a row of bf16 activations for `cols` columns: padded to whole 32-column steps.
// One step more than that: rows whose stride is a multiple of 4 KiB (4096 columns) map to the
// same L1 sets, and 3 to 5 of them beside the weight stream verified about a tenth slower.
constexpr int64_t bf16_row_stride(int64_t cols) { return (cols + 31) / 32 * 32 + 32; }

namespace detail {
#if MIMO_X86
// f32_to_bf16 over the whole 16-column steps of a row; returns the columns done.
MIMO_TARGET_AVX512 inline int64_t round_row_bf16_avx512(const float* x, int64_t cols, uint16_t* dst) {
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    const __m512i bits = _mm512_loadu_si512(x + k);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i odd = _mm512_and_si512(_mm512_maskz_srli_epi32(0xffff, bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __m512i quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x400000));  // NaNs made quiet
    const __m512i result = _mm512_maskz_srli_epi32(0xffff, _mm512_mask_blend_epi32(nan, rounded, quiet), 16);
    // (The masked forms: GCC 12 warns that the plain ones read an "undefined" vector.)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm512_maskz_cvtepi32_epi16(0xffff, result));
  }
  return k;
}
#endif
}  // namespace detail

// Rows of x rounded to bf16 (nearest even), stride bf16_row_stride(cols), zero-padded; AVX-512
// gives the scalar loop's bits (it ran 1.5 us per row of 4096 columns, per product and thread).
inline void round_rows_bf16(Isa isa, const float* x, int64_t ldx, int n, int64_t cols, uint16_t* dst) {
  const int64_t stride = bf16_row_stride(cols);
  for (int i = 0; i < n; ++i) {
    int64_t k = 0;
#if MIMO_X86
    if (has_avx512(isa)) k = detail::round_row_bf16_avx512(x + i * ldx, cols, dst + i * stride);
#endif
    for (; k < cols; ++k) dst[i * stride + k] = f32_to_bf16(x[i * ldx + k]);
    for (k = cols; k < stride; ++k) dst[i * stride + k] = 0;
  }
}

namespace detail {

inline void store_output(const MatvecArgs& a, int i, int64_t r, float dot) {
  const float v = dot + (a.bias ? a.bias[r] : 0.0f);
  float& out = a.y[i * a.ldy + r];
  out = a.accumulate ? out + v : v;
}

inline void matvec_scalar(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float acc[kMaxMatvecRows] = {};
    const std::byte* row = w.row(r);
    for (int64_t k = 0; k < w.cols; ++k) {
      const float wk = load_float(row, w.dtype, static_cast<uint64_t>(k));
      for (int i = 0; i < a.n; ++i) acc[i] += wk * a.x[i * a.ldx + k];
    }
    for (int i = 0; i < a.n; ++i) store_output(a, i, r, acc[i]);
  }
}

#if MIMO_X86

// One weight row times N vectors, two accumulators per vector (columns k with k mod 32 < 16, and
// the others) so that one vector still has two independent FMA chains; lane l of each sums its
// columns in increasing order, masked steps cover a partial tail, and the result is the fixed
// sum of the lanes of acc0 + acc1.
template <int N, DType T, bool Keep>
MIMO_TARGET_AVX512 void matvec_row_avx512(const std::byte* w0, int64_t cols, const float* x, int64_t ldx, float* out) {
  constexpr int64_t esize = static_cast<int64_t>(dtype_size(T));
  const int64_t full = cols / 32 * 32;
  __m512 acc0[N], acc1[N];
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < full; k += 32) {
    prefetch_weights<Keep>(w0 + k * esize + kPrefetchAhead);
    if constexpr (esize > 2) prefetch_weights<Keep>(w0 + k * esize + kPrefetchAhead + 64);
    const __m512 wa = load16(w0 + k * esize, T, 0xffff), wb = load16(w0 + (k + 16) * esize, T, 0xffff);
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) {
      acc0[i] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(x + i * ldx + k), acc0[i]);
      acc1[i] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(x + i * ldx + k + 16), acc1[i]);
    }
  }
  int64_t k = full;
  if (cols - k >= 16) {
    const __m512 wa = load16(w0 + k * esize, T, 0xffff);
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) acc0[i] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(x + i * ldx + k), acc0[i]);
    k += 16;
  }
  if (k < cols) {
    const __mmask16 m = static_cast<__mmask16>((1u << (cols - k)) - 1u);
    const __m512 wb = load16(w0 + k * esize, T, m);
    if (k == full) {
MIMO_UNROLL_TILE
      for (int i = 0; i < N; ++i) acc0[i] = _mm512_fmadd_ps(wb, _mm512_maskz_loadu_ps(m, x + i * ldx + k), acc0[i]);
    } else {
MIMO_UNROLL_TILE
      for (int i = 0; i < N; ++i) acc1[i] = _mm512_fmadd_ps(wb, _mm512_maskz_loadu_ps(m, x + i * ldx + k), acc1[i]);
    }
  }
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) out[i] = hsum512(_mm512_add_ps(acc0[i], acc1[i]));
}

// R consecutive BF16 weight rows times N bf16 vectors: per 32 columns one vdpbf16ps per (row,
// vector), whose lane l adds the products of columns 2l+1 and 2l of the step (exact in fp32) to
// its sum. Two accumulators per (row, vector) (alternate steps) keep two chains in flight; the
// padded tail of x is zero, and the weight tail is read under a mask. Result: the fixed sum of the
// lanes of acc0 + acc1, whatever R and N are.
template <int R, int N, bool Keep>
MIMO_TARGET_AVX512_BF16 void matvec_rows_bf16dot(const std::byte* w0, int64_t ldw, int64_t cols, const uint16_t* x,
                                                 int64_t ldx, float (&out)[R][N]) {
  // One stream of one vector (decoding, products over 4096 columns) prefetches 1 KiB ahead: a
  // decoding step of the bf16 7B took 761-771 ms instead of 860-872 with 2 KiB (a slow phase,
  // alternating; bench_kernels 18.2-18.5 GB/s instead of 14.3), where 1 KiB slowed the other
  // kernels (q4 14.5-15.0 instead of 16.6-17.0).
  constexpr int64_t ahead = R == 1 && N == 1 ? 1024 : kPrefetchAhead;
  const int64_t full = cols / 64 * 64;
  __m512 acc0[R][N], acc1[R][N];
MIMO_UNROLL_TILE
  for (int j = 0; j < R; ++j) {
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) acc0[j][i] = acc1[j][i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < full; k += 64) {
    __m512bh xa[N], xb[N];
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) {
      xa[i] = (__m512bh)_mm512_loadu_si512(x + i * ldx + k);
      xb[i] = (__m512bh)_mm512_loadu_si512(x + i * ldx + k + 32);
    }
MIMO_UNROLL_TILE
    for (int j = 0; j < R; ++j) {
      const std::byte* wj = w0 + j * ldw + 2 * k;
      prefetch_weights<Keep>(wj + ahead);
      prefetch_weights<Keep>(wj + ahead + 64);
      const __m512bh wa = (__m512bh)_mm512_loadu_si512(wj), wb = (__m512bh)_mm512_loadu_si512(wj + 64);
MIMO_UNROLL_TILE
      for (int i = 0; i < N; ++i) {
        acc0[j][i] = _mm512_dpbf16_ps(acc0[j][i], wa, xa[i]);
        acc1[j][i] = _mm512_dpbf16_ps(acc1[j][i], wb, xb[i]);
      }
    }
  }
  for (int64_t k = full; k < cols; k += 32) {
    const int64_t left = cols - k;
    const __mmask32 m = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1u);
MIMO_UNROLL_TILE
    for (int j = 0; j < R; ++j) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w0 + j * ldw + 2 * k);
MIMO_UNROLL_TILE
      for (int i = 0; i < N; ++i) acc0[j][i] = _mm512_dpbf16_ps(acc0[j][i], wv, (__m512bh)_mm512_loadu_si512(x + i * ldx + k));
    }
  }
MIMO_UNROLL_TILE
  for (int j = 0; j < R; ++j) {
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) out[j][i] = hsum512(_mm512_add_ps(acc0[j][i], acc1[j][i]));
  }
}

// How many weight rows a chunk of N vectors takes at a time, measured on the 7B (2 threads, passes
// of the whole model against a one-token step):
// - one vector, one row at a time (a single stream per thread measured fastest), except where its
//   activations crowd L1 (more than 16 KiB: down_proj's 11008 columns take 22 KiB): there 4 rows,
//   so that each activation load serves 4 rows. All 36 down_proj of one vector 55-65 ms a step
//   instead of 77-79 (4 rows for every product of one vector measured no faster).
// - two vectors, 4 rows: the products of 12 layers over 4096 columns (q/k/v, o, gate/up) took
//   0.94-1.00x one vector's time, where one row at a time took 1.43-1.56x (bf16, alternating in
//   one process). down_proj already took 4 rows: 1.08-1.16x in the same runs, 0.89-0.96x in
//   whole-model passes (one row at a time: 1.08).
// - three vectors, 4 rows (24 accumulators): 1.11-1.17x a step, where chunks of 2 and 1 over
//   16-row blocks took 1.24-1.45 and 2 rows at a time 1.75 (not understood: the same 2-row tile
//   took 1.05-1.27x in a benchmark of the products alone).
// More vectors go in chunks of 2 and 3 (matvec_bf16dot).
template <int N, bool Keep>
MIMO_TARGET_AVX512_BF16 void matvec_chunk_bf16dot(const WeightMatrix& w, const MatvecArgs& a, int i0, int64_t r0,
                                                  int64_t r1) {
  static_assert(N <= 3, "4 rows of more vectors would spill the accumulators");
  constexpr int R = 4;
  const int64_t ldw = w.row_bytes();
  const uint16_t* x = a.x16 + i0 * a.ldx16;
  int64_t r = r0;
  if (N >= 2 || w.cols * 2 > 16 * 1024) {
    for (; r + R <= r1; r += R) {
      float out[R][N];
      matvec_rows_bf16dot<R, N, Keep>(w.data + r * ldw, ldw, w.cols, x, a.ldx16, out);
MIMO_UNROLL_TILE
      for (int j = 0; j < R; ++j) {
MIMO_UNROLL_TILE
        for (int i = 0; i < N; ++i) store_output(a, i0 + i, r + j, out[j][i]);
      }
    }
  }
  for (; r < r1; ++r) {
    float out[1][N];
    matvec_rows_bf16dot<1, N, Keep>(w.data + r * ldw, ldw, w.cols, x, a.ldx16, out);
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) store_output(a, i0 + i, r, out[0][i]);
  }
}

// Rows [r0, r1), vectors [i0, i0 + N), one row at a time: a single stream per thread measured
// fastest (two rows 8 KiB apart were a third slower); the N vectors are N independent chains.
template <int N, DType T>
MIMO_TARGET_AVX512 void matvec_chunk_avx512(const WeightMatrix& w, const MatvecArgs& a, int i0, int64_t r0, int64_t r1) {
  const int64_t ldw = w.row_bytes();
  const float* x = a.x + i0 * a.ldx;
  const bool t0 = a.prefetch == WeightPrefetch::t0;
  for (int64_t r = r0; r < r1; ++r) {
    float out[N];
    if (t0) matvec_row_avx512<N, T, true>(w.data + r * ldw, w.cols, x, a.ldx, out);
    else matvec_row_avx512<N, T, false>(w.data + r * ldw, w.cols, x, a.ldx, out);
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) store_output(a, i0 + i, r, out[i]);
  }
}

// Rows [r0, r1), vectors [i0, i0 + N), one row at a time (16 registers).
template <int N, DType T>
MIMO_TARGET_AVX2 void matvec_chunk_avx2(const WeightMatrix& w, const MatvecArgs& a, int i0, int64_t r0, int64_t r1) {
  constexpr int64_t esize = static_cast<int64_t>(dtype_size(T));
  const int64_t cols = w.cols;
  const int64_t full = cols / 8 * 8;
  const float* x = a.x + i0 * a.ldx;
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* w0 = w.row(r);
    __m256 acc[N];
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < full; k += 8) {
      const __m256 wv = load8(w0 + k * esize, T);
MIMO_UNROLL_TILE
      for (int i = 0; i < N; ++i) acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i * a.ldx + k), acc[i]);
    }
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) {
      float v = hsum256(acc[i]);
      for (int64_t k = full; k < cols; ++k) v += load_float(w0, T, static_cast<uint64_t>(k)) * x[i * a.ldx + k];
      store_output(a, i0 + i, r, v);
    }
  }
}

// Vectors in chunks of up to `width` (8: the accumulators of one chunk fill the registers).
#define MIMO_MATVEC_CHUNKS(chunk, width)                                              \
  for (int i0 = 0; i0 < a.n; i0 += width) {                                          \
    switch (std::min(width, a.n - i0)) {                                              \
      case 1: chunk<1, T>(w, a, i0, b0, b1); break;                                   \
      case 2: chunk<2, T>(w, a, i0, b0, b1); break;                                   \
      case 3: chunk<3, T>(w, a, i0, b0, b1); break;                                   \
      case 4: chunk<4, T>(w, a, i0, b0, b1); break;                                   \
      case 5: chunk<5, T>(w, a, i0, b0, b1); break;                                   \
      case 6: chunk<6, T>(w, a, i0, b0, b1); break;                                   \
      case 7: chunk<7, T>(w, a, i0, b0, b1); break;                                   \
      default: chunk<8, T>(w, a, i0, b0, b1); break;                                  \
    }                                                                                 \
  }

// Blocks of 16 rows when there are several chunks: each block's weights are read from memory
// once and from cache for the other chunks.
#define MIMO_MATVEC_BLOCKS(name, chunk, width)                                        \
  template <DType T>                                                                  \
  void name(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {     \
    const int64_t block = a.n > width ? 16 : r1 - r0;                                 \
    for (int64_t b0 = r0; b0 < r1; b0 += block) {                                     \
      const int64_t b1 = std::min(r1, b0 + block);                                    \
      MIMO_MATVEC_CHUNKS(chunk, width)                                                \
    }                                                                                 \
  }
MIMO_MATVEC_BLOCKS(matvec_avx512, matvec_chunk_avx512, 8)
MIMO_MATVEC_BLOCKS(matvec_avx2, matvec_chunk_avx2, 8)
#undef MIMO_MATVEC_BLOCKS
#undef MIMO_MATVEC_CHUNKS

// bf16 dot products: the vectors in ceil(n / 3) chunks as even as possible (4 = 2 + 2, 5 = 3 + 2,
// 8 = 3 + 3 + 2), so that every chunk of several vectors takes 4 weight rows at a time. Several
// chunks go over blocks of 16 rows, prefetched to stay in cache for the chunks after the first
// (bench_kernels, 2 threads, a slow phase with a 28 GB/s probe, GB/s for 4 / 5 / 8 / 16 vectors:
// 18.5-19.1 / 17.4 / 13.1-13.2 / 7.9-8.2, where chunks of 4 (2 rows at a time) and the
// non-temporal hint gave 15.2 / 7.5-7.9 / 7.1-7.7 / 4.1: the later chunks read the block from
// memory again; chunks of 4 with the kept hint 14.6-16.4 / 16.0-17.2 / 12.7-13.9 / 8.0-8.7).
template <bool Keep>
void matvec_bf16dot_chunks(const WeightMatrix& w, const MatvecArgs& a, int chunks, int64_t r0, int64_t r1) {
  for (int c = 0, i0 = 0; c < chunks; ++c) {
    const int size = a.n / chunks + (c < a.n % chunks ? 1 : 0);
    switch (size) {
      case 1: matvec_chunk_bf16dot<1, Keep>(w, a, i0, r0, r1); break;
      case 2: matvec_chunk_bf16dot<2, Keep>(w, a, i0, r0, r1); break;
      default: matvec_chunk_bf16dot<3, Keep>(w, a, i0, r0, r1); break;
    }
    i0 += size;
  }
}

inline void matvec_bf16dot(const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  const int chunks = (a.n + 2) / 3;
  if (chunks == 1) {
    if (a.prefetch == WeightPrefetch::t0) return matvec_bf16dot_chunks<true>(w, a, 1, r0, r1);
    return matvec_bf16dot_chunks<false>(w, a, 1, r0, r1);
  }
  for (int64_t b0 = r0; b0 < r1; b0 += 16) matvec_bf16dot_chunks<true>(w, a, chunks, b0, std::min(r1, b0 + 16));
}

#endif  // MIMO_X86

}  // namespace detail

// y rows [0, n) x columns [r0, r1) of x W^T (+ bias) (+ y), on the given instruction set; bf16 dot
// products when a.x16 is given and matvec_fast(isa, w).
inline void matvec(Isa isa, const WeightMatrix& w, const MatvecArgs& a, int64_t r0, int64_t r1) {
  if (w.quantized()) {
    matvec_quantized(isa, w, *a.xq, r0, r1, [&](int i, int64_t r, float dot) { detail::store_output(a, i, r, dot); },
                     a.prefetch);
    return;
  }
#if MIMO_X86
  if (a.x16 && matvec_fast(isa, w)) return detail::matvec_bf16dot(w, a, r0, r1);
  if (has_avx512(isa)) {
    switch (w.dtype) {
      case DType::bf16: return detail::matvec_avx512<DType::bf16>(w, a, r0, r1);
      case DType::f16: return detail::matvec_avx512<DType::f16>(w, a, r0, r1);
      case DType::f32: return detail::matvec_avx512<DType::f32>(w, a, r0, r1);
      default: break;
    }
  } else if (has_avx2(isa)) {
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

}  // namespace mimo::cpu
