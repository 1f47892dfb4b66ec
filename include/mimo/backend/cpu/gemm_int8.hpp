// Prefill products over quantized weights (q8, q4) with int8 activations, on AVX512_VNNI.
//
// Each activation row is quantized per block of 32 columns exactly as decoding quantizes it
// (matvec_quant.hpp: scale = max|x| / 127, codes rounded to nearest even), and each block's 32
// codes meet 32 weight codes in an exact integer dot product (vpdpbusd), scaled by the weight's
// group scale times the block's activation scale and summed in fp32. So a prompt's products are
// the ones decoding its tokens one at a time computes, up to the order of the fp32 sums; and
// vpdpbusd multiplies 64 pairs per instruction where vfmadd231ps multiplies 16, at the same two
// instructions a cycle (an Intel Xeon with AVX512_BF16: 5.5 G instructions/s per core each, where
// vdpbf16ps ran 1.3 G; /tmp peak test of 2026-12-05).
//
// Weights are packed, per K block of kInt8Blocks blocks and 32 weight rows (a panel), as unsigned
// bytes u whose value is scale * (u - 128) (+ the group's minimum): q8 u = c + 128, symmetric q4
// u = c + 120 (its value is scale * (c - 8)), q4 with minimums u = c + 128. So one correction
// serves every format: each block's integer sum starts at -128 times the sum of the block's
// activation codes, which quantizing the activations computes once per row and block.
//
// A panel block holds 8 steps of 4 columns, each 32 weight rows x 4 bytes (two vectors: lane l of
// the first is row l, of the second row 16 + l), then the 32 rows' fp32 scales and minimums. The
// micro-kernel keeps 6 activation rows x 32 weight rows of outputs in registers (12 fp32
// accumulators, 12 integer sums for the current block), loads a step of the panel from L1 and
// broadcasts 4 activation codes per tile row.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/matvec_quant.hpp"
#include "mimo/backend/cpu/weight_matrix.hpp"
#include "mimo/quant.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

inline constexpr int kInt8MR = 6;                                // activation rows of a micro-tile
inline constexpr int64_t kInt8PanelRows = 32;                    // weight rows of a panel
inline constexpr int64_t kInt8Blocks = 8;                        // blocks of 32 columns per K block
inline constexpr int64_t kInt8PanelBlock = 8 * 128 + 2 * 32 * 4;  // codes, then scales and minimums
inline constexpr int64_t kInt8PanelBytes = kInt8Blocks * kInt8PanelBlock;

// Activation rows quantized for the int8 products, in tiles of kInt8MR rows (the micro-kernel's),
// so that the kernel reads a tile through one pointer: per tile and block of 32 columns a record
// of the codes (8 steps of 4 columns, each kInt8MR rows x 4 bytes), then per row the scale, -128
// times the sum of the codes (the integer sums' start) and the scale times that sum (which a q4
// group's minimum multiplies). A partial last tile leaves its missing rows unwritten.
struct Int8Rows {
  static constexpr int64_t kCodes = 8 * kInt8MR * 4, kRecord = kCodes + 3 * kInt8MR * 4;
  int64_t blocks = 0;  // per row
  std::byte* data = nullptr;

  std::byte* record(int64_t tile, int64_t b) const { return data + (tile * blocks + b) * kRecord; }
  // Bytes for `rows` rows of up to `cols` columns.
  static uint64_t bytes_for(int64_t rows, int64_t cols) {
    return static_cast<uint64_t>((rows + kInt8MR - 1) / kInt8MR) * static_cast<uint64_t>((cols + 31) / 32 * kRecord);
  }
  void bind(std::byte* storage, int64_t cols) {
    blocks = (cols + 31) / 32;
    data = storage;
  }
};

// Bytes of a thread's scratch for one work item of up to `item_rows` weight rows.
constexpr int64_t int8_item_scratch_bytes(int64_t item_rows) {
  return (item_rows + kInt8PanelRows - 1) / kInt8PanelRows * kInt8PanelBytes + kInt8PanelRows * kInt8Blocks * 32;
}

#if MIMO_X86
namespace detail {

// Rows [m0, m1) of x (width a multiple of 32) quantized into rows m0 - first.. of `a`: the same
// codes and scales as prepare_rows.
MIMO_TARGET_AVX2 inline void int8_quantize_rows(const Rows& x, int64_t m0, int64_t m1, int64_t first, const Int8Rows& a) {
  const int64_t blocks = x.width / 32;
  alignas(32) std::byte codes[32];
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t tile = (m - first) / kInt8MR, lane = (m - first) % kInt8MR;
    for (int64_t b = 0; b < blocks; ++b) {
      int total = 0;
      const float s = quantize_block_avx2(x.row(m) + 32 * b, codes, codes + 16, 0, total);
      std::byte* rec = a.record(tile, b);
      for (int step = 0; step < 8; ++step) std::memcpy(rec + (step * kInt8MR + lane) * 4, codes + 4 * step, 4);
      const int32_t start = -128 * total;
      const float sum = s * static_cast<float>(total);
      std::memcpy(rec + Int8Rows::kCodes + 4 * lane, &s, 4);
      std::memcpy(rec + Int8Rows::kCodes + 4 * (kInt8MR + lane), &start, 4);
      std::memcpy(rec + Int8Rows::kCodes + 4 * (2 * kInt8MR + lane), &sum, 4);
    }
  }
}

// Row r's codes of blocks [b0, b0 + nb), in column order, as the unsigned bytes u of the packed
// panels (value = scale * (u - 128), plus the minimum).
MIMO_TARGET_AVX2 inline void int8_row_codes(const WeightMatrix& w, int64_t r, int64_t b0, int64_t nb, uint8_t* dst) {
  const std::byte* row = w.row(r);
  if (w.quant == QuantType::q8) {
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));  // c + 128, as a byte
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + (b0 + b) * 32));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * b), _mm256_xor_si256(c, flip));
    }
    return;
  }
  const __m128i nibble = _mm_set1_epi8(15), bias = _mm_set1_epi8(static_cast<char>(w.mins ? 128 : 120));
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (b0 + b) * 16));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 32 * b), _mm_add_epi8(_mm_and_si128(v, nibble), bias));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 32 * b + 16),
                     _mm_add_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), nibble), bias));
  }
}

// Weight rows [r0, r0 + rows) (rows <= 32), blocks [b0, b0 + nb), packed into a panel; missing rows
// are zero codes with zero scales. staging: 32 rows of kInt8Blocks * 32 bytes.
MIMO_TARGET_AVX512 inline void int8_pack_panel(const WeightMatrix& w, int64_t r0, int64_t rows, int64_t b0, int64_t nb,
                                               std::byte* panel, uint8_t* staging) {
  constexpr int64_t kStagingRow = kInt8Blocks * 32;
  const int64_t words = nb * 8, padded = (words + 15) / 16 * 16;  // 32-bit words (4 columns) of a row
  for (int64_t i = 0; i < kInt8PanelRows; ++i) {
    uint8_t* d = staging + i * kStagingRow;
    if (i < rows) int8_row_codes(w, r0 + i, b0, nb, d);
    else std::memset(d, 0, static_cast<size_t>(words * 4));
    std::memset(d + words * 4, 0, static_cast<size_t>((padded - words) * 4));
  }
  for (int64_t half = 0; half < 2; ++half) {
    for (int64_t q = 0; q < padded; q += 16) {
      __m512i in[16], out[16];
MIMO_UNROLL_TILE
      for (int i = 0; i < 16; ++i) in[i] = _mm512_loadu_si512(staging + (16 * half + i) * kStagingRow + 4 * q);
      transpose16(in, out);
      for (int64_t t = 0; t < 16 && q + t < words; ++t) {
        const int64_t word = q + t;  // block word / 8, step word % 8
        _mm512_store_si512(panel + (word / 8) * kInt8PanelBlock + (word % 8) * 128 + 64 * half, out[t]);
      }
    }
  }
  const int shift = group_shift(w);
  for (int64_t b = 0; b < nb; ++b) {
    auto* scales = reinterpret_cast<float*>(panel + b * kInt8PanelBlock + 1024);
    float* mins = scales + 32;
    const int64_t g = (b0 + b) >> shift;
    for (int64_t i = 0; i < kInt8PanelRows; ++i) {
      scales[i] = i < rows ? read_f16c(w.row_scales(r0 + i), g) : 0.0f;
      mins[i] = i < rows && w.mins ? read_f16c(w.row_mins(r0 + i), g) : 0.0f;
    }
  }
}

// C[MR x 32] += the products of a tile of activation rows (its record of the first block: `rec`)
// with a panel, over nb blocks; the first `valid` columns of C are written.
template <int MR, bool Min>
MIMO_TARGET_AVX512_VNNI void gemm_kernel_int8(const std::byte* rec, int64_t nb, const std::byte* panel, float* c,
                                              int64_t ldc, int valid) {
  auto lane32 = [](const std::byte* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  };
  auto lane_f = [](const std::byte* p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  };
  __m512 acc[MR][2];
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, rec += Int8Rows::kRecord) {
    const std::byte* p = panel + b * kInt8PanelBlock;
    __m512i dot[MR][2];
MIMO_UNROLL_TILE
    for (int i = 0; i < MR; ++i) {
      dot[i][0] = dot[i][1] = _mm512_set1_epi32(lane32(rec + Int8Rows::kCodes + 4 * (kInt8MR + i)));
    }
MIMO_UNROLL_TILE
    for (int s = 0; s < 8; ++s) {
      const __m512i w0 = _mm512_load_si512(p + 128 * s), w1 = _mm512_load_si512(p + 128 * s + 64);
MIMO_UNROLL_TILE
      for (int i = 0; i < MR; ++i) {
        const __m512i xv = _mm512_set1_epi32(lane32(rec + (s * kInt8MR + i) * 4));
        dot[i][0] = _mm512_dpbusd_epi32(dot[i][0], w0, xv);
        dot[i][1] = _mm512_dpbusd_epi32(dot[i][1], w1, xv);
      }
    }
    const __m512 ws0 = _mm512_load_ps(p + 1024), ws1 = _mm512_load_ps(p + 1024 + 64);
MIMO_UNROLL_TILE
    for (int i = 0; i < MR; ++i) {
      // The weight scale times the activation scale, then the block's sum: as the decode kernels round it.
      const __m512 sx = _mm512_set1_ps(lane_f(rec + Int8Rows::kCodes + 4 * i));
      // (maskz: GCC 12 warns that _mm512_cvtepi32_ps's undefined pass-through may be uninitialized.)
      acc[i][0] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dot[i][0]), _mm512_mul_ps(ws0, sx), acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dot[i][1]), _mm512_mul_ps(ws1, sx), acc[i][1]);
    }
    if constexpr (Min) {
      const __m512 mn0 = _mm512_load_ps(p + 1024 + 128), mn1 = _mm512_load_ps(p + 1024 + 192);
MIMO_UNROLL_TILE
      for (int i = 0; i < MR; ++i) {
        const __m512 sm = _mm512_set1_ps(lane_f(rec + Int8Rows::kCodes + 4 * (2 * kInt8MR + i)));
        acc[i][0] = _mm512_fmadd_ps(mn0, sm, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(mn1, sm, acc[i][1]);
      }
    }
  }
  add_tile(c, ldc, valid, acc);
}

// One work item: weight rows [n0, n1) (at most kGemmNB) times activation rows [m0, m1), whose
// quantized form starts at row 0 of `a` (m0 begins a tile). out must hold its start values (bias, or what to add to).
inline void gemm_item_int8(const WeightMatrix& w, const Rows& out, const Int8Rows& a, int64_t m0, int64_t m1, int64_t n0,
                           int64_t n1, std::byte* scratch) {
  const int64_t rows = n1 - n0, panels = (rows + kInt8PanelRows - 1) / kInt8PanelRows, blocks = w.cols / 32;
  std::byte* packed = scratch;
  auto* staging = reinterpret_cast<uint8_t*>(scratch + panels * kInt8PanelBytes);
  for (int64_t b0 = 0; b0 < blocks; b0 += kInt8Blocks) {
    const int64_t nb = std::min(kInt8Blocks, blocks - b0);
    for (int64_t p = 0; p < panels; ++p) {
      int8_pack_panel(w, n0 + p * kInt8PanelRows, std::min(kInt8PanelRows, rows - p * kInt8PanelRows), b0, nb,
                      packed + p * kInt8PanelBytes, staging);
    }
    for (int64_t p = 0; p < panels; ++p) {
      const std::byte* panel = packed + p * kInt8PanelBytes;
      const int valid = static_cast<int>(std::min(kInt8PanelRows, rows - p * kInt8PanelRows));
      for (int64_t m = m0; m < m1; m += kInt8MR) {
        const int mr = static_cast<int>(std::min<int64_t>(kInt8MR, m1 - m));
        float* c = out.row(m) + n0 + p * kInt8PanelRows;
        const std::byte* rec = a.record((m - m0) / kInt8MR, b0);
#define MIMO_CALL(MR)                                                                                     \
  (w.mins ? gemm_kernel_int8<MR, true>(rec, nb, panel, c, out.stride, valid)                              \
          : gemm_kernel_int8<MR, false>(rec, nb, panel, c, out.stride, valid))
        switch (mr) {
          case 1: MIMO_CALL(1); break;
          case 2: MIMO_CALL(2); break;
          case 3: MIMO_CALL(3); break;
          case 4: MIMO_CALL(4); break;
          case 5: MIMO_CALL(5); break;
          default: MIMO_CALL(6); break;
        }
#undef MIMO_CALL
      }
    }
  }
}

}  // namespace detail
#endif  // MIMO_X86

}  // namespace mimo::cpu
