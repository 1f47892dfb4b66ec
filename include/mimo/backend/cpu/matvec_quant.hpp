// Decode products over quantized weights (mimo/quant.hpp): the activation rows are quantized to
// int8 per block of 32 columns (scale = max|x| / 127, round to nearest even), then every block
// of 32 codes meets its 32 activations in an exact integer dot product, scaled by the weight's
// group scale times the block's activation scale and summed in fp32.
//
//   q8, with VNNI (AVX512_VNNI, AVX-VNNI): vpdpbusd multiplies the activations, stored offset by
//     128 as unsigned bytes, by the signed codes; the offset's share, 128 times the sum of each
//     lane's codes, starts the integer accumulator negated;
//   q4: vpdpbusd (or vpmaddubsw + vpmaddwd) multiplies the codes c in [0, 15] as unsigned bytes
//     by the signed activations; what the codes' offset adds (a group's minimum, or -8 times its
//     scale for symmetric codes) meets the group's sum of activations once per group, in fp32;
//   q8 on AVX2 without VNNI: vpmaddubsw + vpmaddwd with the codes' signs moved onto the
//     activations, so no pair of products overflows 16 bits;
//   scalar: the same integers, for other machines and as the tests' reference.
// The integer parts are identical on every path; the fp32 sums differ only in order.
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

// Activation rows quantized for the kernels of one weight format, in memory the caller reserves.
// Each row is a sequence of records of codes, beside one fp32 scale per block:
//   q8: a record per pair of blocks (64 columns), 64 bytes: the activations + 128 as unsigned bytes;
//   q4: a record per quad of blocks (128 columns), 128 bytes, laid out like the q4 codes of
//       64 weight bytes (block j's low nibbles hold its columns 0-15, the high ones 16-31):
//       columns 0-15 of blocks 0..3 | columns 16-31 of blocks 0..3 (signed bytes).
// The scales stay apart and compact so that a row of down_proj's 11008 columns (11 KiB of codes)
// stays in L1 beside the weight stream; spread over the lanes, they doubled that, and the
// activations were read from L2 at a third less speed.
// A partial last record is zero past the last block. q4 also keeps, per weight group, the sum of
// scale * (the codes), which the codes' offsets multiply.
struct QuantizedRows {
  static constexpr int64_t kRecord8 = 64, kRecord4 = 128;
  QuantType format = QuantType::none;  // the weights these rows were prepared for
  int64_t group = 0;                   // and their group size
  int n = 0;
  int64_t cols = 0, blocks = 0, records_per_row = 0, groups = 0;  // blocks of 32 columns
  std::byte* records = nullptr;  // [n][records_per_row]
  float* scale = nullptr;        // [n][blocks] activation scales, and 4 floats of zeros after them
  float* group_sum = nullptr;    // q4: [n][groups] sum over the group's blocks of scale * (sum of codes)

  int64_t record_bytes() const { return format == QuantType::q4 ? kRecord4 : kRecord8; }
  int64_t blocks_per_record() const { return format == QuantType::q4 ? 4 : 2; }
  const std::byte* record(int i, int64_t k) const { return records + (i * records_per_row + k) * record_bytes(); }
  // Whether these rows feed products with w.
  bool prepared_for(const WeightMatrix& w) const { return n > 0 && format == w.quant && group == w.group; }
  // The integer activation of row i, column k.
  int code(int i, int64_t k) const {
    const int64_t b = k / 32, c = k % 32;
    if (format == QuantType::q4) {
      return static_cast<int8_t>(record(i, b / 4)[(c / 16) * 64 + (b % 4) * 16 + c % 16]);
    }
    return static_cast<int>(static_cast<uint8_t>(record(i, b / 2)[(b % 2) * 32 + c])) - 128;
  }
  // What the kernels use for x[i][k]: scale * code.
  float value(int i, int64_t k) const { return scale[i * blocks + k / 32] * static_cast<float>(code(i, k)); }

  // Bytes of storage for `rows` rows of up to `max_cols` columns, in either format.
  static uint64_t bytes_for(int rows, int64_t max_cols) {
    const uint64_t blocks = static_cast<uint64_t>(max_cols + 31) / 32;
    const uint64_t record_bytes = std::max((blocks + 1) / 2 * kRecord8, (blocks + 3) / 4 * kRecord4);
    return static_cast<uint64_t>(rows) * (record_bytes + blocks * 8) + 16 + 64;
  }
  // Points the arrays into `storage` (bytes_for(rows, max_cols) bytes, 64-byte aligned).
  void bind(std::byte* storage, int rows, int64_t max_cols) {
    const uint64_t b = static_cast<uint64_t>(max_cols + 31) / 32;
    const uint64_t record_bytes = std::max((b + 1) / 2 * kRecord8, (b + 3) / 4 * kRecord4);
    records = storage;
    scale = reinterpret_cast<float*>(storage + rows * record_bytes);
    group_sum = scale + rows * b + 4;
    n = 0;
  }
};

namespace detail {

// One block of 32 activations quantized: codes v = round-to-nearest-even(x * 127 / max|x|), code k
// stored (as v ^ flip: 0x80 makes q8's offset-by-128 bytes) at lo[k] for k < 16 and hi[k - 16]
// after. Returns the scale max|x| / 127 and sets total to the sum of the codes.
inline float quantize_block_scalar(const float* x, std::byte* lo, std::byte* hi, uint8_t flip, int& total) {
  float amax = 0.0f;
  for (int k = 0; k < 32; ++k) amax = std::max(amax, std::abs(x[k]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  total = 0;
  for (int k = 0; k < 32; ++k) {
    // Round to nearest even (1.5 * 2^23 pushes the fraction out; |x * inv| <= 127).
    const int v = static_cast<int>((x[k] * inv + 12582912.0f) - 12582912.0f);
    (k < 16 ? lo[k] : hi[k - 16]) = static_cast<std::byte>(static_cast<uint8_t>(v) ^ flip);
    total += v;
  }
  return amax / 127.0f;
}

#if MIMO_X86
// The same codes, scale and sum (the product x * inv and its rounding, to nearest even, are the
// scalar loop's); about a tenth of its time, which was 1.3 ns per activation and each thread
// quantizes every row it uses: 1 ms of a 75 ms int4 decoding step.
MIMO_TARGET_AVX2 inline float quantize_block_avx2(const float* x, std::byte* lo, std::byte* hi, uint8_t flip, int& total) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[4], amax = _mm256_setzero_ps();
MIMO_UNROLL_TILE
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(x + 8 * j);
    amax = _mm256_max_ps(_mm256_and_ps(v[j], magnitude), amax);  // a NaN is skipped, as std::max skips it
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  const float a = _mm_cvtss_f32(m);
  const __m256 inv = _mm256_set1_ps(a > 0.0f ? 127.0f / a : 0.0f);
  __m256i c[4], sum = _mm256_setzero_si256();
MIMO_UNROLL_TILE
  for (int j = 0; j < 4; ++j) {
    c[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));  // the default rounding: nearest even
    sum = _mm256_add_epi32(sum, c[j]);
  }
  // Packing works within 128-bit lanes: dword d of the result holds codes 4(d/2)..+3 of vector
  // d%2 of each half, so the permutation restores column order.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
  const __m256i bytes = _mm256_xor_si256(_mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)),
                                         _mm256_set1_epi8(static_cast<char>(flip)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lo), _mm256_castsi256_si128(bytes));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(hi), _mm256_extracti128_si256(bytes, 1));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  total = _mm_cvtsi128_si32(s4);
  return a / 127.0f;
}
#endif

}  // namespace detail

// Quantizes rows x[0..n) (cols % 32 == 0, n <= the rows `out` was bound for) for products with
// weights of w's format; `isa` picks the code that does it (every level gives the same bytes).
inline void prepare_rows(Isa isa, const float* x, int64_t ldx, int n, int64_t cols, const WeightMatrix& w,
                         QuantizedRows& out) {
  const int64_t blocks = cols / 32;
  out.format = w.quant;
  out.group = w.group;
  out.n = n;
  out.cols = cols;
  out.blocks = blocks;
  const int64_t per = out.blocks_per_record(), rb = out.record_bytes();
  out.records_per_row = (blocks + per - 1) / per;
  const bool q4 = w.quant == QuantType::q4;
  const int64_t blocks_per_group = std::max<int64_t>(1, w.group / 32);
  out.groups = q4 ? (blocks + blocks_per_group - 1) / blocks_per_group : 0;
  // Kernels load a record's 2 or 4 scales at once: the last row's may run past its end.
  std::fill(out.scale + n * blocks, out.scale + n * blocks + 4, 0.0f);
  for (int i = 0; i < n; ++i) {
    const float* xi = x + i * ldx;
    if (blocks % per) std::memset(out.records + (i * out.records_per_row + out.records_per_row - 1) * rb, 0, rb);
    for (int64_t g = 0; g < out.groups; ++g) out.group_sum[i * out.groups + g] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      std::byte* rec = out.records + (i * out.records_per_row + b / per) * rb;
      // q4: columns 0-15 of the record's blocks, then their columns 16-31 (see QuantizedRows).
      std::byte* lo = q4 ? rec + (b % 4) * 16 : rec + (b % 2) * 32;
      std::byte* hi = q4 ? lo + 64 : lo + 16;
      const uint8_t flip = q4 ? 0 : 0x80;
      int total = 0;
      float s;
#if MIMO_X86
      if (has_avx2(isa)) s = detail::quantize_block_avx2(xi + b * 32, lo, hi, flip, total);
      else
#endif
        s = detail::quantize_block_scalar(xi + b * 32, lo, hi, flip, total);
      if (q4) out.group_sum[i * out.groups + b / blocks_per_group] += s * static_cast<float>(total);
      out.scale[i * blocks + b] = s;
    }
  }
}

namespace detail {


// log2 of the blocks of 32 columns in a group (groups are powers of two).
inline int group_shift(const WeightMatrix& w) {
  int s = 0;
  while ((int64_t{32} << s) < w.group) ++s;
  return s;
}

// Exact integer dot product of block b of a row's codes with the activations of row i: the signed
// codes for q8; for q4 the codes c in [0, 15] as they are (the offset or minimums come apart).
inline int32_t block_dot_scalar(const WeightMatrix& w, int64_t r, int64_t b, const QuantizedRows& x, int i) {
  int32_t acc = 0;
  if (w.quant == QuantType::q8) {
    const auto* c = reinterpret_cast<const int8_t*>(w.row(r)) + b * 32;
    const auto* xq = reinterpret_cast<const uint8_t*>(x.record(i, b / 2)) + (b % 2) * 32;
    for (int k = 0; k < 32; ++k) acc += static_cast<int32_t>(c[k]) * (xq[k] - 128);
  } else {
    const auto* c = reinterpret_cast<const uint8_t*>(w.row(r)) + b * 16;
    const auto* lo = reinterpret_cast<const int8_t*>(x.record(i, b / 4)) + (b % 4) * 16;
    for (int k = 0; k < 16; ++k) acc += (c[k] & 15) * lo[k] + (c[k] >> 4) * lo[k + 64];
  }
  return acc;
}

// q4: the share in output (row r, vector i) of the codes' offsets, the sum over groups of the
// offset times the group's activation sum; the offset is the group's minimum, or for symmetric
// codes -8 times its scale.
inline float q4_offset_share_scalar(const WeightMatrix& w, int64_t r, const QuantizedRows& x, int i) {
  float acc = 0.0f;
  const std::byte* offsets = w.mins ? w.row_mins(r) : w.row_scales(r);
  for (int64_t g = 0; g < x.groups; ++g) acc += read_f16(offsets, g) * x.group_sum[i * x.groups + g];
  return w.mins ? acc : -8.0f * acc;
}

template <class Store>
void matvec_quantized_scalar(const WeightMatrix& w, const QuantizedRows& x, int64_t r0, int64_t r1, Store&& store) {
  const int shift = group_shift(w);
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < x.n; ++i) {
      float acc = 0.0f;
      for (int64_t b = 0; b < x.blocks; ++b) {
        const float s = read_f16(w.row_scales(r), b >> shift);
        acc += s * x.scale[i * x.blocks + b] * static_cast<float>(block_dot_scalar(w, r, b, x, i));
      }
      store(i, r, w.quant == QuantType::q4 ? acc + q4_offset_share_scalar(w, r, x, i) : acc);
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

// Weight scales of a row for blocks [b0, b0 + count) of 32 columns (whole groups of 2^shift
// blocks), one per block so that the kernels load them alike for every group size: out has room
// for count rounded up to 16, and out[count] is 0. Groups of several blocks are widened into
// `groups` (room for count / 2 rounded up to 8, plus 1), which then holds one value per group.
MIMO_TARGET_AVX512 inline void row_block_scales(const std::byte* per_row, int64_t b0, int64_t count, int shift,
                                                float* groups, float* out) {
  if (shift == 0) return row_group_values_f16c(per_row, b0, count, out);
  const int64_t gc = count >> shift;
  row_group_values_f16c(per_row, b0 >> shift, gc, groups);
  // (The masked forms: GCC 12 warns that the plain ones read an "undefined" vector.)
  const __m512i group_of_lane = _mm512_maskz_srli_epi32(
      0xffff, _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), static_cast<unsigned>(shift));
  for (int64_t b = 0; b < count; b += 16) {
    const int64_t g = b >> shift;
    const __m512 values = _mm512_maskz_loadu_ps(lanes_mask(static_cast<int>(gc - g)), groups + g);
    _mm512_storeu_ps(out + b, _mm512_maskz_permutexvar_ps(0xffff, group_of_lane, values));
  }
  out[count] = 0.0f;
}

// Blocks of a row whose weight scales are widened at once (a multiple of every group's blocks).
inline constexpr int64_t kScaleChunk = 1024;

// Where vectors [i0, i0 + N) of x start: their first record and their first block's scale. The
// kernels step from these: indexing x in the loop (x.record(i, k)) cost about ten scalar
// instructions per 64 bytes of weights.
#define MIMO_VECTOR_STARTS(x, i0, N)                                                                   \
  const std::byte* rec[N];                                                                             \
  const float* xsc[N];                                                                                 \
  MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) {                                                       \
    rec[i] = (x).record((i0) + i, 0);                                                                  \
    xsc[i] = (x).scale + ((i0) + i) * (x).blocks;                                                      \
  }

// q8: pair P of blocks of a row times N vectors, added to acc[0..N). A macro: the body runs in
// the main loop and, masked, for an odd last block (a lambda would lose the function's target
// attribute).
#define MIMO_Q8PAIR_AVX512(one, P, acc)                                                                        \
  {                                                                                                            \
    const int64_t pair_ = (P);                                                                                 \
    prefetch_weights<Keep>(row + pair_ * 64 + kPrefetchAhead);                                                 \
    const __m512i codes = one ? _mm512_maskz_loadu_epi64(0x0f, row + pair_ * 64) : _mm512_loadu_si512(row + pair_ * 64); \
    /* -128 * (the sum of each lane's 4 codes): the share of the activations' offset */                        \
    const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(),                                              \
                                          _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, codes));         \
    /* the two blocks' weight scales; lanes 0-7 take the first block's product of scales, 8-15 the second's */ \
    const __m128 ws = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + (2 * pair_ - b0))));      \
    MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) {                                                             \
      const __m512i dot = _mm512_dpbusd_epi32(init, _mm512_load_si512(rec[i] + pair_ * 64), codes);            \
      const __m128 xs = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(xsc[i] + 2 * pair_)));      \
      const __m512 sc = _mm512_maskz_permutexvar_ps(0xffff, pick, _mm512_castps128_ps512(_mm_mul_ps(ws, xs))); \
      acc[i] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dot), sc, acc[i]);                             \
    }                                                                                                          \
  }

// One weight row r times vectors [i0, i0 + N): out[i]. One row at a time streams fastest (two
// rows 8 KiB apart measured a third slower); the N vectors give N independent FMA chains.
template <int N, bool Keep>
MIMO_TARGET_AVX512_VNNI void q8row_avx512(const WeightMatrix& w, int64_t r, const QuantizedRows& x, int i0, float* out) {
  alignas(64) float s[kScaleChunk + 16], groups[kScaleChunk / 2 + 16];  // groups: with 2 blocks or more
  const int shift = group_shift(w);
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const std::byte* row = w.row(r);
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  MIMO_VECTOR_STARTS(x, i0, N)
  __m512 acc[N], acc1[N];  // even and odd pairs: two FMA chains
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) acc[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < x.blocks; b0 += kScaleChunk) {
    const int64_t bc = std::min(kScaleChunk, x.blocks - b0);
    row_block_scales(w.row_scales(r), b0, bc, shift, groups, s);
    const int64_t p0 = b0 / 2, p1 = (b0 + bc) / 2;  // whole pairs
    int64_t p = p0;
    for (; p + 2 <= p1; p += 2) {
      MIMO_Q8PAIR_AVX512(false, p, acc)
      MIMO_Q8PAIR_AVX512(false, p + 1, acc1)
    }
    if (p < p1) MIMO_Q8PAIR_AVX512(false, p, acc)
    if (((b0 + bc) & 1) != 0) MIMO_Q8PAIR_AVX512(true, p1, acc1)  // an odd last block (groups of one block)
  }
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) out[i] = hsum512(_mm512_add_ps(acc[i], acc1[i]));
}
#undef MIMO_Q8PAIR_AVX512

// q4: quad Q of blocks (64 bytes of codes) of a row times N vectors, added to acc[0..N); `tail`
// blocks (1-3) of a partial last quad, or 0. The low nibbles of the 64 bytes are columns 0-15 of
// each block, the high nibbles columns 16-31, as the activation records are laid out: two
// vpdpbusd per quad.
#define MIMO_Q4QUAD_AVX512(tail, Q, acc)                                                                       \
  {                                                                                                            \
    const int64_t quad_ = (Q);                                                                                 \
    prefetch_weights<Keep>(row + quad_ * 64 + kPrefetchAhead);                                                 \
    const __m512i packed = tail ? _mm512_maskz_loadu_epi8((1ull << (16 * (tail))) - 1, row + quad_ * 64)       \
                                : _mm512_loadu_si512(row + quad_ * 64);                                        \
    const __m512i lo = _mm512_and_si512(packed, nibble);                                                       \
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);                                 \
    /* the four blocks' weight scales; lane l takes block l / 4's product of scales */                         \
    const __m128 ws = _mm_loadu_ps(s + (4 * quad_ - b0));                                                      \
    MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) {                                                             \
      const std::byte* rq = rec[i] + quad_ * 128;                                                              \
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(rq)), hi, \
                                              _mm512_load_si512(rq + 64));                                     \
      const __m128 xs = _mm_loadu_ps(xsc[i] + 4 * quad_);                                                      \
      const __m512 sc = _mm512_maskz_permutexvar_ps(0xffff, pick, _mm512_castps128_ps512(_mm_mul_ps(ws, xs))); \
      acc[i] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dot), sc, acc[i]);                             \
    }                                                                                                          \
  }

template <bool Min, int N, bool Keep>
MIMO_TARGET_AVX512_VNNI void q4row_avx512(const WeightMatrix& w, int64_t r, const QuantizedRows& x, int i0, float* out) {
  // s: per block (whole quads); groups: per group, the scales (then the minimums).
  alignas(64) float s[kScaleChunk + 16], groups[kScaleChunk + 16];
  const int shift = group_shift(w);
  const __m512i pick = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);  // lane l: block l / 4
  const __m512i nibble = _mm512_set1_epi8(15);
  const std::byte* row = w.row(r);
  MIMO_VECTOR_STARTS(x, i0, N)
  __m512 acc[N], acc1[N], offset_share[N];  // even and odd quads: two FMA chains
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) acc[i] = acc1[i] = offset_share[i] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < x.blocks; b0 += kScaleChunk) {
    const int64_t bc = std::min(kScaleChunk, x.blocks - b0), g0 = b0 >> shift, gc = bc >> shift;
    row_block_scales(w.row_scales(r), b0, bc, shift, groups, s);
    std::fill(s + bc, s + bc + 16, 0.0f);  // a partial quad's missing blocks: scale 0, not garbage
    const int64_t q0 = b0 / 4, q1 = (b0 + bc) / 4;  // whole quads
    int64_t q = q0;
    for (; q + 2 <= q1; q += 2) {
      MIMO_Q4QUAD_AVX512(0, q, acc)
      MIMO_Q4QUAD_AVX512(0, q + 1, acc1)
    }
    if (q < q1) MIMO_Q4QUAD_AVX512(0, q, acc)
    if (const int64_t tail = (b0 + bc) & 3; tail != 0) MIMO_Q4QUAD_AVX512(tail, q1, acc1)
    // The codes' offsets, per group: the minimums, or the scales (times -8 at the end), which
    // row_block_scales left per group in `groups`, or in `s` for groups of one block. Once per
    // group instead of starting each block's integer sum from its offset share: a shuffle and a
    // load fewer per 64 bytes of codes (llvm-mca, Sapphire Rapids: 7 cycles of throughput per two
    // quads instead of 8), and no array of shares beside the activations.
    const float* offsets = shift == 0 ? s : groups;
    if constexpr (Min) row_group_values_f16c(w.row_mins(r), g0, gc, groups), offsets = groups;
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) {
      const float* sums = x.group_sum + (i0 + i) * x.groups + g0;
      for (int64_t g = 0; g < gc; g += 16) {
        const __mmask16 lanes = lanes_mask(static_cast<int>(gc - g));
        offset_share[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, offsets + g), _mm512_maskz_loadu_ps(lanes, sums + g),
                                          offset_share[i]);
      }
    }
  }
MIMO_UNROLL_TILE
  for (int i = 0; i < N; ++i) out[i] = hsum512(_mm512_add_ps(acc[i], acc1[i])) + (Min ? 1.0f : -8.0f) * hsum512(offset_share[i]);
}
#undef MIMO_Q4QUAD_AVX512
#undef MIMO_VECTOR_STARTS

template <QuantType Q, bool Min, int N, bool Keep, class Store>
MIMO_TARGET_AVX512_VNNI void qchunk_avx512(const WeightMatrix& w, const QuantizedRows& x, int i0, int64_t r0, int64_t r1,
                                           Store& store) {
  for (int64_t r = r0; r < r1; ++r) {
    float out[N];
    if constexpr (Q == QuantType::q8) q8row_avx512<N, Keep>(w, r, x, i0, out);
    else q4row_avx512<Min, N, Keep>(w, r, x, i0, out);
MIMO_UNROLL_TILE
    for (int i = 0; i < N; ++i) store(i0 + i, r, out[i]);
  }
}

MIMO_TARGET_AVX2 inline float read_f16c(const std::byte* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return _cvtsh_ss(h);
}

// 32 codes of block b in the order of the activations: q8 signed, in column order; q4 unsigned,
// columns 0-15 then 16-31 (the low nibbles, then the high ones).
template <QuantType Q>
MIMO_TARGET_AVX2 inline __m256i load_codes32(const std::byte* row, int64_t b) {
  if constexpr (Q == QuantType::q8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
    const __m128i nib = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), nib), _mm_and_si128(v, nib));
  }
}

// The 32 activations of block b of a row's records, in the order load_codes32 gives the codes.
template <QuantType Q>
MIMO_TARGET_AVX2 inline __m256i load_activations32(const QuantizedRows& x, int i, int64_t b) {
  if constexpr (Q == QuantType::q8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.record(i, b / 2) + (b % 2) * 32));
  } else {
    const std::byte* lo = x.record(i, b / 4) + (b % 4) * 16;
    return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(lo + 64), reinterpret_cast<const __m128i*>(lo));
  }
}

// The integer accumulator's start: q8, -128 * (the sum of each lane's 4 codes), the share of
// the activations' offset; q4 (no offset), zero.
template <QuantType Q>
MIMO_TARGET_AVX2_VNNI inline __m256i offset_share_avx2_vnni(__m256i codes) {
  if constexpr (Q == QuantType::q4) return _mm256_setzero_si256();
  return _mm256_sub_epi32(_mm256_setzero_si256(),
                          _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(static_cast<char>(0x80)), codes));
}
template <QuantType>
MIMO_TARGET_AVX2 inline __m256i offset_share_avx2(__m256i) {
  return _mm256_setzero_si256();  // q8 takes the activations' offset off itself
}

// Integer lanes of one block: 8 sums of 4 products, plus `init`.
template <QuantType Q>
MIMO_TARGET_AVX2_VNNI inline __m256i block_dot_avx2_vnni(__m256i codes, __m256i xq, __m256i init) {
  if constexpr (Q == QuantType::q8) return _mm256_dpbusd_avx_epi32(init, xq, codes);
  return _mm256_dpbusd_avx_epi32(init, codes, xq);
}
template <QuantType Q>
MIMO_TARGET_AVX2 inline __m256i block_dot_avx2(__m256i codes, __m256i xq, __m256i init) {
  if constexpr (Q == QuantType::q8) {
    // |c| * (x * sign(c)) with the activations back to signed: no pair overflows 16 bits.
    const __m256i xs = _mm256_xor_si256(xq, _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(codes), _mm256_sign_epi8(xs, codes));
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), init);
  } else {
    const __m256i pairs = _mm256_maddubs_epi16(codes, xq);  // codes <= 15: pairs stay within 16 bits
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), init);
  }
}

// One row at a time (16 registers), vectors [i0, i0 + N). Stamped out for AVX2 and AVX-VNNI
// (a function's target attribute cannot depend on a template argument).
#define MIMO_QCHUNK_AVX2(name, target, dot, share)                                                            \
  template <QuantType Q, int N, class Store>  /* q4 offsets enter through q4_offset_share_scalar */       \
  target void name(const WeightMatrix& w, const QuantizedRows& x, int i0, int64_t r0, int64_t r1, Store& store) { \
    const int shift = group_shift(w);                                                                        \
    for (int64_t r = r0; r < r1; ++r) {                                                                      \
      __m256 acc[N];                                                                                         \
      MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();                             \
      for (int64_t b = 0; b < x.blocks; ++b) {                                                               \
        const __m256i codes = load_codes32<Q>(w.row(r), b);                                                  \
        const __m256i init = share<Q>(codes);                                                                \
        const float ws = read_f16c(w.row_scales(r), b >> shift);                                             \
        MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) {                                                       \
          const __m256 d = _mm256_cvtepi32_ps(dot<Q>(codes, load_activations32<Q>(x, i0 + i, b), init));    \
          acc[i] = _mm256_fmadd_ps(d, _mm256_set1_ps(ws * x.scale[(i0 + i) * x.blocks + b]), acc[i]);        \
        }                                                                                                    \
      }                                                                                                      \
      MIMO_UNROLL_TILE for (int i = 0; i < N; ++i) {                                                         \
        alignas(32) float l[8];                                                                              \
        _mm256_store_ps(l, acc[i]);                                                                          \
        float v = 0.0f;                                                                                      \
        for (float e : l) v += e;                                                                            \
        store(i0 + i, r, Q == QuantType::q4 ? v + q4_offset_share_scalar(w, r, x, i0 + i) : v);             \
      }                                                                                                      \
    }                                                                                                        \
  }
MIMO_QCHUNK_AVX2(qchunk_avx2_vnni, MIMO_TARGET_AVX2_VNNI, block_dot_avx2_vnni, offset_share_avx2_vnni)
MIMO_QCHUNK_AVX2(qchunk_avx2, MIMO_TARGET_AVX2, block_dot_avx2, offset_share_avx2)
#undef MIMO_QCHUNK_AVX2

#endif  // MIMO_X86

}  // namespace detail

// Columns [r0, r1) of the n rows of x W^T for quantized W, x prepared by prepare_rows for this
// isa and format; store(i, r, value) receives each output.
template <class Store>
void matvec_quantized(Isa isa, const WeightMatrix& w, const QuantizedRows& x, int64_t r0, int64_t r1, Store&& store,
                      WeightPrefetch prefetch = WeightPrefetch::non_temporal) {
#if MIMO_X86
  if (has_avx2(isa)) {
    const bool mins = w.mins != nullptr, q8 = w.quant == QuantType::q8;
    // Blocks of 16 rows when there are two chunks of vectors: the second reads them from cache,
    // where the first chunk's prefetches keep them (bench_kernels, a slow phase, GB/s for 12 and
    // 16 rows: q8 9.1-9.3 and 6.7-6.9, q4 6.7-6.8 and 5.1-5.2, where the non-temporal hint gave
    // 6.1-6.3 and 4.9-5.2, 4.6-4.8 and 3.7-3.8). (Chunks of 2, as the bf16 products take them,
    // measured no faster: these are compute-bound.)
    const int64_t block = x.n > 8 ? 16 : r1 - r0;
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t b1 = std::min(r1, b0 + block);
      for (int i0 = 0; i0 < x.n; i0 += 8) {
        const int n = std::min(8, x.n - i0);
        auto run = [&]<int N, bool Keep>() {
          if (has_avx512(isa) && has_vnni(isa)) {
            if (q8) detail::qchunk_avx512<QuantType::q8, false, N, Keep>(w, x, i0, b0, b1, store);
            else if (mins) detail::qchunk_avx512<QuantType::q4, true, N, Keep>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx512<QuantType::q4, false, N, Keep>(w, x, i0, b0, b1, store);
          } else if (has_vnni(isa)) {
            if (q8) detail::qchunk_avx2_vnni<QuantType::q8, N>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx2_vnni<QuantType::q4, N>(w, x, i0, b0, b1, store);
          } else {
            if (q8) detail::qchunk_avx2<QuantType::q8, N>(w, x, i0, b0, b1, store);
            else detail::qchunk_avx2<QuantType::q4, N>(w, x, i0, b0, b1, store);
          }
        };
        const bool keep = prefetch == WeightPrefetch::t0 || (x.n > 8 && i0 == 0);
        auto hinted = [&]<int N>() {
          if (keep) run.template operator()<N, true>();
          else run.template operator()<N, false>();
        };
        switch (n) {
          case 1: hinted.template operator()<1>(); break;
          case 2: hinted.template operator()<2>(); break;
          case 3: hinted.template operator()<3>(); break;
          case 4: hinted.template operator()<4>(); break;
          case 5: hinted.template operator()<5>(); break;
          case 6: hinted.template operator()<6>(); break;
          case 7: hinted.template operator()<7>(); break;
          default: hinted.template operator()<8>(); break;
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
