// Decode products over quantized weights (mimo/quant.hpp): the activation rows are quantized to
// int8 per block of 32 columns (scale = max|x| / 127, round to nearest even), then every block
// of 32 codes meets its 32 activations in an exact integer dot product, scaled by the weight's
// group scale times the block's activation scale and summed in fp32.
//
//   with VNNI (AVX512_VNNI, AVX-VNNI): vpdpbusd multiplies the activations, stored offset by 128
//     as unsigned bytes, by the codes as signed bytes (q8: c; q4: c - 8, or c with minimums);
//     the offset's share, 128 times the sum of each lane's codes, is computed once per row and
//     block and starts the integer accumulator negated;
//   AVX2 without VNNI: vpmaddubsw + vpmaddwd (q8 moves the codes' signs onto the activations so
//     no pair of products overflows 16 bits);
//   scalar: the same integers, for other machines and as the tests' reference.
// The integer parts are identical on every path; the fp32 sums differ only in order. q4 with
// minimums adds, per group, min * (the sum of the group's quantized activations).
//
// Quantizing activations costs little next to streaming the weights, and keeps int4 decoding at
// memory bandwidth on two cores, where widening codes to fp32 would make it compute-bound. Its
// error (under 0.4% of the block's largest activation) is small next to the weights' own.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/weight_matrix.hpp"
#include "mimo/quant.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

// Activation rows quantized for the kernels, in memory the caller reserves. Each pair of blocks
// (64 columns) of a row is one 128-byte record, so a kernel follows one stream per row:
//   64 activations + 128 as unsigned bytes | 16 fp32 scales
// where lane l of the scales is the scale of the block that 4-byte lane l covers. An odd last
// block leaves the second half of its record zero.
struct QuantizedRows {
  static constexpr int64_t kRecord = 128;
  int n = 0;
  int64_t cols = 0, blocks = 0, pairs = 0;  // blocks of 32 columns
  std::byte* records = nullptr;             // [n][pairs] records
  float* scale = nullptr;                   // [n][blocks] activation scales
  float* sum = nullptr;                     // [n][blocks] scale * (sum of the block's quantized activations)

  const std::byte* record(int i, int64_t pair) const { return records + (i * pairs + pair) * kRecord; }
  // The quantized activations of block b of row i, plus 128.
  const uint8_t* block_q(int i, int64_t b) const {
    return reinterpret_cast<const uint8_t*>(record(i, b / 2) + (b % 2) * 32);
  }
  // What the kernels use for x[i][k]: scale * code.
  float value(int i, int64_t k) const {
    return scale[i * blocks + k / 32] * static_cast<float>(block_q(i, k / 32)[k % 32] - 128);
  }

  // Bytes of storage for `rows` rows of up to `max_cols` columns.
  static uint64_t bytes_for(int rows, int64_t max_cols) {
    const uint64_t blocks = static_cast<uint64_t>(max_cols + 31) / 32, pairs = (blocks + 1) / 2;
    return static_cast<uint64_t>(rows) * (pairs * kRecord + blocks * 8) + 64;
  }
  // Points the arrays into `storage` (bytes_for(rows, max_cols) bytes, 64-byte aligned).
  void bind(std::byte* storage, int rows, int64_t max_cols) {
    const int64_t b = (max_cols + 31) / 32, p = (b + 1) / 2;
    records = storage;
    scale = reinterpret_cast<float*>(storage + rows * p * kRecord);
    sum = scale + rows * b;
  }
};

// Quantizes rows x[0..n) (cols % 32 == 0, n <= the rows `out` was bound for) for the decode
// kernels of any instruction set.
inline void prepare_rows(const float* x, int64_t ldx, int n, int64_t cols, QuantizedRows& out) {
  const int64_t blocks = cols / 32;
  out.n = n;
  out.cols = cols;
  out.blocks = blocks;
  out.pairs = (blocks + 1) / 2;
  for (int i = 0; i < n; ++i) {
    const float* xi = x + i * ldx;
    if (blocks % 2) std::memset(out.records + (i * out.pairs + out.pairs - 1) * QuantizedRows::kRecord, 0, QuantizedRows::kRecord);
    for (int64_t b = 0; b < blocks; ++b) {
      std::byte* rec = out.records + (i * out.pairs + b / 2) * QuantizedRows::kRecord;
      auto* q = reinterpret_cast<uint8_t*>(rec + (b % 2) * 32);
      auto* lanes = reinterpret_cast<float*>(rec + 64) + (b % 2) * 8;
      float amax = 0.0f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::abs(xi[b * 32 + k]));
      const float s = amax / 127.0f;
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int total = 0;
      for (int k = 0; k < 32; ++k) {
        // Round to nearest even (1.5 * 2^23 pushes the fraction out; |x * inv| <= 127).
        const int v = static_cast<int>((xi[b * 32 + k] * inv + 12582912.0f) - 12582912.0f);
        q[k] = static_cast<uint8_t>(v + 128);
        total += v;
      }
      for (int l = 0; l < 8; ++l) lanes[l] = s;
      out.scale[i * blocks + b] = s;
      out.sum[i * blocks + b] = s * static_cast<float>(total);
    }
  }
}

namespace detail {

// Per-group values (scales or minimums) of row r, groups [g0, g0 + count), widened to fp32.
inline void row_group_values(const std::byte* per_row, int64_t g0, int64_t count, float* out) {
  for (int64_t g = 0; g < count; ++g) out[g] = read_f16(per_row, g0 + g);
}

// log2 of the blocks of 32 columns in a group (groups are powers of two).
inline int group_shift(const WeightMatrix& w) {
  int s = 0;
  while ((int64_t{32} << s) < w.group) ++s;
  return s;
}

// Exact integer dot product of block b of a row's codes with 32 activations (stored plus 128):
// codes as values (q8: signed; q4: c - 8 when symmetric, c with minimums).
inline int32_t block_dot_scalar(QuantType t, bool symmetric, const std::byte* codes, int64_t b, const uint8_t* xq) {
  int32_t acc = 0;
  if (t == QuantType::q8) {
    const auto* c = reinterpret_cast<const int8_t*>(codes) + b * 32;
    for (int k = 0; k < 32; ++k) acc += static_cast<int32_t>(c[k]) * (xq[k] - 128);
  } else {
    const auto* c = reinterpret_cast<const uint8_t*>(codes) + b * 16;
    const int off = symmetric ? 8 : 0;
    for (int k = 0; k < 16; ++k) {
      acc += ((c[k] & 15) - off) * (xq[k] - 128);
      acc += ((c[k] >> 4) - off) * (xq[k + 16] - 128);
    }
  }
  return acc;
}

template <class Store>
void matvec_quantized_scalar(const WeightMatrix& w, const QuantizedRows& x, int64_t r0, int64_t r1, Store&& store) {
  const bool symmetric = w.mins == nullptr;
  const int shift = group_shift(w);
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < x.n; ++i) {
      float acc = 0.0f, acc_min = 0.0f;
      for (int64_t b = 0; b < x.blocks; ++b) {
        const float s = read_f16(w.row_scales(r), b >> shift);
        const int32_t dot = block_dot_scalar(w.quant, symmetric, w.row(r), b, x.block_q(i, b));
        acc += s * x.scale[i * x.blocks + b] * static_cast<float>(dot);
        if (w.mins) acc_min += read_f16(w.row_mins(r), b >> shift) * x.sum[i * x.blocks + b];
      }
      store(i, r, acc + acc_min);
    }
  }
}

#if MIMO_X86

// Per-group values of a row widened with F16C; out has room for count rounded up to 8, plus 1.
MIMO_TARGET_AVX2 inline void row_group_values_f16c(const std::byte* per_row, int64_t g0, int64_t count, float* out) {
  const std::byte* src = per_row + 2 * g0;
  int64_t g = 0;
  for (; g + 8 <= count; g += 8) {
    _mm256_storeu_ps(out + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * g))));
  }
  for (; g < count; ++g) {
    uint16_t h;
    std::memcpy(&h, src + 2 * g, 2);
    out[g] = _cvtsh_ss(h);
  }
  out[count] = 0.0f;
}

// 64 codes of blocks b, b + 1 as signed bytes in column order (q4: minus 8 when symmetric); with
// `one_block`, only block b (the rest zero).
template <QuantType Q, bool Min>
MIMO_TARGET_AVX512_VNNI inline __m512i load_codes64(const std::byte* row, int64_t b, bool one_block) {
  if constexpr (Q == QuantType::q8) {
    return one_block ? _mm512_maskz_loadu_epi64(0x0f, row + b * 32) : _mm512_loadu_si512(row + b * 32);
  } else {
    // [g0 g0 g1 g1] (16 bytes each), the second copy of each shifted by 4, then the low nibbles:
    // [g0 low, g0 high, g1 low, g1 high] = columns in order.
    const __m256i y = one_block ? _mm256_maskz_loadu_epi64(0x3, row + b * 16)
                                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 16));
    const __m512i z = _mm512_maskz_permutexvar_epi64(0xff, _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
                                                     _mm512_maskz_broadcast_i64x4(0xff, y));
    const __m512i shifted = _mm512_maskz_srlv_epi64(0xff, z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    const __m512i c = _mm512_and_si512(shifted, _mm512_set1_epi8(15));
    if constexpr (Min) return c;
    // (the missing block of `one_block` stays zero)
    return _mm512_maskz_sub_epi8(one_block ? 0xffffffffull : ~0ull, c, _mm512_set1_epi8(8));
  }
}

// One pair of blocks (p) of a row times N vectors. A macro: the body runs in the main loop and,
// masked, for an odd last block (a lambda would lose the function's target attribute).
#define MIMO_QPAIR_AVX512(one)                                                                                  \
  {                                                                                                            \
    _mm_prefetch(reinterpret_cast<const char*>(row + p * (Q == QuantType::q8 ? 64 : 32) + kPrefetchAhead),    \
                 _MM_HINT_T0);                                                                                 \
    const __m512i codes = load_codes64<Q, Min>(row, 2 * p, one);                                               \
    /* -128 * (the sum of each lane's 4 codes): the share of the activations' offset */                        \
    const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(),                                              \
                                          _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, codes));         \
    const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + (((2 * p) >> shift) - g0)))); \
    const __m512 ws = _mm512_maskz_permutexvar_ps(0xffff, pick, _mm512_maskz_broadcast_f32x4(0xffff, two));   \
    _Pragma("GCC unroll 8") for (int i = 0; i < N; ++i) {                                                      \
      const std::byte* rec = x.record(i0 + i, p);                                                              \
      const __m512i dot = _mm512_dpbusd_epi32(init, _mm512_load_si512(rec), codes);                            \
      const __m512 xs = _mm512_load_ps(reinterpret_cast<const float*>(rec + 64));                              \
      acc[i] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dot), _mm512_mul_ps(ws, xs), acc[i]);          \
    }                                                                                                          \
  }

// One weight row r times vectors [i0, i0 + N): out[i]. One row at a time streams fastest (two
// rows 8 KiB apart measured a third slower); the N vectors give N independent FMA chains.
template <QuantType Q, bool Min, int N>
MIMO_TARGET_AVX512_VNNI void qrow_avx512(const WeightMatrix& w, int64_t r, const QuantizedRows& x, int i0, float* out) {
  constexpr int64_t kChunk = 1024;  // groups whose scales are widened at once
  alignas(64) float s[kChunk + 8], m[Min ? kChunk + 8 : 1];
  const int shift = group_shift(w);
  // Lanes 0-7 take the first block's scale, 8-15 the second's (the same group when groups are
  // larger than a block).
  const __m512i pick = shift == 0 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                  : _mm512_setzero_si512();
  const std::byte* row = w.row(r);
  const int64_t groups = x.blocks >> shift;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[N], accm[N];
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) acc[i] = accm[i] = _mm512_setzero_ps();
  // Chunks of whole groups, an even number of blocks each (but the last).
  for (int64_t g0 = 0; g0 < groups; g0 += kChunk) {
    const int64_t gc = std::min(kChunk, groups - g0);
    row_group_values_f16c(w.row_scales(r), g0, gc, s);
    const int64_t p0 = (g0 << shift) / 2, p1 = ((g0 + gc) << shift) / 2;  // whole pairs
    for (int64_t p = p0; p < p1; ++p) MIMO_QPAIR_AVX512(false)
    if ((((g0 + gc) << shift) & 1) != 0) {  // an odd last block (groups of one block)
      const int64_t p = p1;
      MIMO_QPAIR_AVX512(true)
    }
    if constexpr (Min) {
      // sum over groups of min * (the sum of its blocks' activation sums)
      row_group_values_f16c(w.row_mins(r), g0, gc, m);
      for (int i = 0; i < N; ++i) {
        const float* sums = x.sum + (i0 + i) * x.blocks;
        if (shift == 0) {
          for (int64_t g = 0; g < gc; g += 16) {
            if (gc - g >= 16) {
              accm[i] = _mm512_fmadd_ps(_mm512_loadu_ps(m + g), _mm512_loadu_ps(sums + g0 + g), accm[i]);
            } else {
              const __mmask16 lanes = static_cast<__mmask16>((1u << (gc - g)) - 1u);
              accm[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, m + g), _mm512_maskz_loadu_ps(lanes, sums + g0 + g), accm[i]);
            }
          }
        } else {
          float t = 0.0f;
          for (int64_t g = 0; g < gc; ++g) {
            float gs = 0.0f;
            for (int64_t b = (g0 + g) << shift; b < (g0 + g + 1) << shift; ++b) gs += sums[b];
            t += m[g] * gs;
          }
          accm[i] = _mm512_add_ps(accm[i], _mm512_maskz_mov_ps(1, _mm512_set1_ps(t)));
        }
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    alignas(64) float l[16], lm[16];
    _mm512_store_ps(l, acc[i]);
    _mm512_store_ps(lm, accm[i]);
    float v = 0.0f, vm = 0.0f;
    for (int k = 0; k < 16; ++k) v += l[k];
    for (int k = 0; k < 16; ++k) vm += lm[k];
    out[i] = v + vm;
  }
}
#undef MIMO_QPAIR_AVX512

template <QuantType Q, bool Min, int N, class Store>
MIMO_TARGET_AVX512_VNNI void qchunk_avx512(const WeightMatrix& w, const QuantizedRows& x, int i0, int64_t r0, int64_t r1,
                                           Store& store) {
  for (int64_t r = r0; r < r1; ++r) {
    float out[N];
    qrow_avx512<Q, Min, N>(w, r, x, i0, out);
    for (int i = 0; i < N; ++i) store(i0 + i, r, out[i]);
  }
}

MIMO_TARGET_AVX2 inline float read_f16c(const std::byte* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return _cvtsh_ss(h);
}

// 32 codes of block b as signed bytes in column order (q4: minus 8 when symmetric).
template <QuantType Q, bool Min>
MIMO_TARGET_AVX2 inline __m256i load_codes32(const std::byte* row, int64_t b) {
  if constexpr (Q == QuantType::q8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
    const __m128i nib = _mm_set1_epi8(15);
    const __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), nib), _mm_and_si128(v, nib));
    return Min ? c : _mm256_sub_epi8(c, _mm256_set1_epi8(8));
  }
}

// -128 * (the sum of each lane's 4 codes): the share of the activations' offset.
MIMO_TARGET_AVX2_VNNI inline __m256i offset_share_avx2_vnni(__m256i codes) {
  return _mm256_sub_epi32(_mm256_setzero_si256(),
                          _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(static_cast<char>(0x80)), codes));
}
MIMO_TARGET_AVX2 inline __m256i offset_share_avx2(__m256i codes) {
  const __m256i quads = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), codes), _mm256_set1_epi16(1));
  return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(quads, 7));
}

// Integer lanes of one block: 8 sums of 4 products, plus `init`.
template <QuantType Q>
MIMO_TARGET_AVX2_VNNI inline __m256i block_dot_avx2_vnni(__m256i codes, __m256i xq, __m256i init) {
  return _mm256_dpbusd_avx_epi32(init, xq, codes);
}
template <QuantType Q>
MIMO_TARGET_AVX2 inline __m256i block_dot_avx2(__m256i codes, __m256i xq, __m256i init) {
  if constexpr (Q == QuantType::q8) {
    // |c| * (x * sign(c)) with the activations back to signed: no pair overflows 16 bits (and
    // no offset to take back: `init` is zero).
    const __m256i xs = _mm256_xor_si256(xq, _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(codes), _mm256_sign_epi8(xs, codes));
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), init);
  } else {
    const __m256i pairs = _mm256_maddubs_epi16(xq, codes);  // |codes| <= 15: pairs stay within 16 bits
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), init);
  }
}

// One row at a time (16 registers), vectors [i0, i0 + N). Stamped out for AVX2 and AVX-VNNI
// (a function's target attribute cannot depend on a template argument).
#define MIMO_QCHUNK_AVX2(name, target, dot, share)                                                            \
  template <QuantType Q, bool Min, int N, class Store>                                                       \
  target void name(const WeightMatrix& w, const QuantizedRows& x, int i0, int64_t r0, int64_t r1, Store& store) { \
    const int shift = group_shift(w);                                                                        \
    for (int64_t r = r0; r < r1; ++r) {                                                                      \
      __m256 acc[N];                                                                                         \
      float accm[N];                                                                                         \
      for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps(), accm[i] = 0.0f;                              \
      for (int64_t b = 0; b < x.blocks; ++b) {                                                               \
        const __m256i codes = load_codes32<Q, Min>(w.row(r), b);                                             \
        const __m256i init = Q == QuantType::q8 && !Vnni ? _mm256_setzero_si256() : share(codes);            \
        const __m256 ws = _mm256_set1_ps(read_f16c(w.row_scales(r), b >> shift));                            \
        const float mn = Min ? read_f16c(w.row_mins(r), b >> shift) : 0.0f;                                  \
        for (int i = 0; i < N; ++i) {                                                                        \
          const std::byte* rec = x.record(i0 + i, b / 2) + (b % 2) * 32;                                     \
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec));                      \
          const __m256 d = _mm256_cvtepi32_ps(dot<Q>(codes, xq, init));                                      \
          const __m256 xs = _mm256_loadu_ps(reinterpret_cast<const float*>(rec + 64));                       \
          acc[i] = _mm256_fmadd_ps(d, _mm256_mul_ps(ws, xs), acc[i]);                                        \
          if (Min) accm[i] += mn * x.sum[(i0 + i) * x.blocks + b];                                           \
        }                                                                                                    \
      }                                                                                                      \
      for (int i = 0; i < N; ++i) {                                                                          \
        alignas(32) float l[8];                                                                              \
        _mm256_store_ps(l, acc[i]);                                                                          \
        float v = 0.0f;                                                                                      \
        for (float e : l) v += e;                                                                            \
        store(i0 + i, r, v + accm[i]);                                                                       \
      }                                                                                                      \
    }                                                                                                        \
  }
constexpr bool Vnni = true;
MIMO_QCHUNK_AVX2(qchunk_avx2_vnni, MIMO_TARGET_AVX2_VNNI, block_dot_avx2_vnni, offset_share_avx2_vnni)
namespace novnni {
constexpr bool Vnni = false;
MIMO_QCHUNK_AVX2(qchunk_avx2, MIMO_TARGET_AVX2, block_dot_avx2, offset_share_avx2)
}  // namespace novnni
using novnni::qchunk_avx2;
#undef MIMO_QCHUNK_AVX2

#endif  // MIMO_X86

}  // namespace detail

// Columns [r0, r1) of the n rows of x W^T for quantized W, x prepared by prepare_rows for this
// isa and format; store(i, r, value) receives each output.
template <class Store>
void matvec_quantized(Isa isa, const WeightMatrix& w, const QuantizedRows& x, int64_t r0, int64_t r1, Store&& store) {
#if MIMO_X86
  if (has_avx2(isa)) {
    const bool mins = w.mins != nullptr, q8 = w.quant == QuantType::q8;
    // Blocks of 16 rows when there are two chunks of vectors: the second reads them from cache.
    const int64_t block = x.n > 8 ? 16 : r1 - r0;
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t b1 = std::min(r1, b0 + block);
      for (int i0 = 0; i0 < x.n; i0 += 8) {
        const int n = std::min(8, x.n - i0);
        auto run = [&]<int N>() {
          if (has_avx512(isa) && has_vnni(isa)) {
            if (q8) detail::qchunk_avx512<QuantType::q8, false, N>(w, x, i0, b0, b1, store);
            else if (mins) detail::qchunk_avx512<QuantType::q4, true, N>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx512<QuantType::q4, false, N>(w, x, i0, b0, b1, store);
          } else if (has_vnni(isa)) {
            if (q8) detail::qchunk_avx2_vnni<QuantType::q8, false, N>(w, x, i0, b0, b1, store);
            else if (mins) detail::qchunk_avx2_vnni<QuantType::q4, true, N>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx2_vnni<QuantType::q4, false, N>(w, x, i0, b0, b1, store);
          } else {
            if (q8) detail::qchunk_avx2<QuantType::q8, false, N>(w, x, i0, b0, b1, store);
            else if (mins) detail::qchunk_avx2<QuantType::q4, true, N>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx2<QuantType::q4, false, N>(w, x, i0, b0, b1, store);
          }
        };
        switch (n) {
          case 1: run.template operator()<1>(); break;
          case 2: run.template operator()<2>(); break;
          case 3: run.template operator()<3>(); break;
          case 4: run.template operator()<4>(); break;
          case 5: run.template operator()<5>(); break;
          case 6: run.template operator()<6>(); break;
          case 7: run.template operator()<7>(); break;
          default: run.template operator()<8>(); break;
        }
      }
    }
    return;
  }
#else
  (void)isa;
#endif
  detail::matvec_quantized_scalar(w, x, r0, r1, store);
}

}  // namespace mimo::cpu
