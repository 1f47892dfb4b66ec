// Prefill products y (+)= x W^T (+ bias) over many activation rows: blocked, packed
// matrix-matrix products with register-tiled micro-kernels.
//
//   exact  fp32 activations times weights widened (or dequantized) exactly to fp32, fp32 FMA:
//          AVX-512 (6 x 64 tiles), AVX2 (6 x 16), scalar.
//   fast   activations rounded to bf16, weights in bf16 (as stored, or dequantized then rounded),
//          AVX512_BF16 vdpbf16ps dot products of pairs with fp32 accumulation (6 x 64 tiles).
//          Only for BF16 and quantized weights on CPUs with AVX512_BF16; otherwise exact.
//   int8   quantized weights: activations quantized to int8 as decoding quantizes them, integer
//          dot products with the codes (gemm_int8.hpp), on CPUs with AVX512_VNNI.
//
// Work is split into items of kGemmNB weight rows, taken by the threads from a shared counter
// (so a thread slowed by another process does not hold the others up). For each block of K, an
// item packs its weight rows once into panels of NR columns (16 x 16 transposes; two bf16
// columns per 32-bit word in fast mode), which stay in L2 while every activation row streams
// past them; the micro-kernel keeps a 6 x NR tile of outputs in registers, loads a row of the
// panel (from L2 or L1) and broadcasts one activation (or bf16 pair) per tile row per step.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/gemm_int8.hpp"
#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/backend/cpu/weight_matrix.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/dtype.hpp"
#include "mimo/error.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

inline constexpr int kGemmMR = 6;         // activation rows of a micro-tile
inline constexpr int64_t kGemmNB = 256;   // weight rows of a work item
// 32-bit words of a packed row per K block: 512 fp32, or 1024 bf16 columns. A panel of 64 rows
// (128 KiB in fp32) then outgrows L1 but streams from L2, and each tile's outputs are read and
// written a quarter as often as with 128 words: the fp32 kernel alone ran 178 GFLOP/s a core
// instead of 147 on the Intel Xeon (2026-12-05).
inline constexpr int64_t kGemmKW = 512;
inline constexpr int64_t kGemmMB = 256;   // activation rows per pass (rounded to bf16 together in fast mode)

// One product of a linear call.
struct LinearJob {
  const WeightMatrix* weight;
  const float* bias;  // weight->rows floats, or null
  Rows out;           // x.count rows of weight->rows values
  bool accumulate;    // out += x W^T instead of out = x W^T
};

// Scratch of a context: activations rounded to bf16 or quantized to int8 (shared), and each
// thread's packed panels.
struct GemmScratch {
  mimo::detail::AlignedBuffer<uint32_t> a16;     // kGemmMB rows of a16_stride words
  mimo::detail::AlignedBuffer<std::byte> a8;     // kGemmMB rows quantized (Int8Rows)
  mimo::detail::AlignedBuffer<uint32_t> panels;  // per thread: packed rows, 16 staging rows, a row of floats
  Int8Rows rows8;
  int64_t a16_stride = 0;
  int64_t per_thread = 0;  // words, a multiple of 16
  int64_t max_cols = 0;

  Status reserve(int threads, int64_t cols) {
    max_cols = cols;
    a16_stride = ((cols + 1) / 2 + 15) / 16 * 16;
    per_thread = kGemmNB * kGemmKW + 16 * kGemmKW + std::max<int64_t>(2 * kGemmKW, (cols + 15) / 16 * 16);
    per_thread = std::max(per_thread, (int8_item_scratch_bytes(kGemmNB) / 4 + 15) / 16 * 16);
    if (auto s = a16.reserve(static_cast<uint64_t>(kGemmMB) * a16_stride, "bf16 activation scratch"); !s) return s;
    if (auto s = a8.reserve(Int8Rows::bytes_for(kGemmMB, cols), "int8 activation scratch"); !s) return s;
    rows8.bind(a8.data(), cols);
    return panels.reserve(static_cast<uint64_t>(threads) * per_thread, "weight panel scratch");
  }
};

// Whether prefill's products of BF16 and quantized weights take bf16 dot products (where the CPU
// has them) rather than fp32 panels, by default: on AMD, whose Zen 5 runs two 512-bit vdpbf16ps a
// cycle. An Intel Xeon with AVX512_BF16 (no AMX exposed) ran the fp32 panels faster: bench_kernels
// 232-270 GFLOP/s against 144-165 at M = 256, a q4 7B prefill of 512 tokens 21.2 tokens/s against
// 14.6 (2 threads).
inline bool default_bf16_prefill() { return is_amd_cpu(); }

// How prefill multiplies by a weight: fp32 panels, bf16 dot products, or int8 activations.
enum class GemmPath { f32, bf16, int8 };

constexpr const char* to_string(GemmPath p) {
  return p == GemmPath::int8 ? "int8 dot products" : p == GemmPath::bf16 ? "bf16 dot products" : "fp32";
}

// What a context allows prefill's products (Cpu::ContextOptions).
struct PrefillProducts {
  bool exact = false;  // fp32 for every weight
  bool bf16 = true;    // BF16 and quantized weights may take bf16 dot products
  bool int8 = true;    // quantized weights take int8 activations (first choice where the CPU can)
};

// The path of a weight's products: int8 for quantized weights where allowed and the CPU has
// AVX512_VNNI, else bf16 for BF16 and quantized weights where allowed and the CPU has
// AVX512_BF16, else fp32.
inline GemmPath gemm_path(Isa isa, const PrefillProducts& p, QuantType quant, DType dtype) {
  if (p.exact) return GemmPath::f32;
  const bool quantized = quant != QuantType::none;
  if (quantized && p.int8 && has_avx512(isa) && has_vnni(isa)) return GemmPath::int8;
  if (p.bf16 && has_bf16(isa) && (quantized || dtype == DType::bf16)) return GemmPath::bf16;
  return GemmPath::f32;
}
inline GemmPath gemm_path(Isa isa, const PrefillProducts& p, const WeightMatrix& w) {
  return gemm_path(isa, p, w.quant, w.dtype);
}

namespace detail {

// out[i] = (accumulate ? out[i] : 0) + bias over rows [m0, m1) and columns [n0, n1).
inline void gemm_init_outputs(const LinearJob& j, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t m = m0; m < m1; ++m) {
    float* y = j.out.row(m);
    for (int64_t n = n0; n < n1; ++n) y[n] = (j.accumulate ? y[n] : 0.0f) + (j.bias ? j.bias[n] : 0.0f);
  }
}

// Scalar: each weight row widened once, then dotted with every activation row in column order.
inline void gemm_item_scalar(const LinearJob& j, const Rows& x, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                             float* row) {
  const WeightMatrix& w = *j.weight;
  for (int64_t n = n0; n < n1; ++n) {
    widen_row_range(Isa::scalar, w, n, 0, w.cols, row);
    for (int64_t m = m0; m < m1; ++m) {
      const float* xm = x.row(m);
      float acc = 0.0f;
      for (int64_t k = 0; k < w.cols; ++k) acc += xm[k] * row[k];
      j.out.row(m)[n] += acc;
    }
  }
}

#if MIMO_X86
// Rounds 32 floats to bf16 (nearest even), as 16 pair words.
MIMO_TARGET_AVX512_BF16 inline void to_bf16_pairs32(const float* src, uint32_t* dst) {
  const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
  _mm512_storeu_si512(dst, reinterpret_cast<const __m512i&>(h));
}

#endif

// 32-bit words [k0 / per_word, ...) of one weight row for a K block: fp32 values (exact), or
// bf16 pairs (fast; an odd last column pairs with zero). Returns the words written; the rest of
// kGemmKW is zero.
inline int64_t gemm_row_words(Isa isa, bool fast, const WeightMatrix& w, int64_t r, int64_t k0, int64_t kc,
                              uint32_t* dst, float* tmp) {
  std::memset(dst, 0, kGemmKW * sizeof(uint32_t));
  if (!fast) {
    widen_row_range(isa, w, r, k0, kc, reinterpret_cast<float*>(dst));
    return kc;
  }
  const int64_t words = (kc + 1) / 2;
  if (!w.quantized()) {  // BF16 as stored
    std::memcpy(dst, w.row(r) + 2 * k0, static_cast<size_t>(2 * kc));
    return words;
  }
  widen_row_range(isa, w, r, k0, kc, tmp);
#if MIMO_X86
  if (has_bf16(isa) && kc % 32 == 0) {
    for (int64_t k = 0; k < kc; k += 32) to_bf16_pairs32(tmp + k, dst + k / 2);
    return words;
  }
#endif
  for (int64_t p = 0; p < words; ++p) {
    const uint32_t lo = f32_to_bf16(tmp[2 * p]);
    const uint32_t hi = 2 * p + 1 < kc ? f32_to_bf16(tmp[2 * p + 1]) : 0u;
    dst[p] = lo | hi << 16;
  }
  return words;
}

#if MIMO_X86

// Rows [m0, m1) of x rounded to bf16 pairs, a16_stride words apart.
MIMO_TARGET_AVX512_BF16 inline void gemm_round_rows(const Rows& x, int64_t m0, int64_t m1, uint32_t* dst,
                                                    int64_t stride) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* src = x.row(m);
    uint32_t* d = dst + (m - m0) * stride;
    int64_t k = 0;
    for (; k + 32 <= x.width; k += 32) to_bf16_pairs32(src + k, d + k / 2);
    for (; k < x.width; k += 2) {
      const uint32_t lo = f32_to_bf16(src[k]);
      const uint32_t hi = k + 1 < x.width ? f32_to_bf16(src[k + 1]) : 0u;
      d[k / 2] = lo | hi << 16;
    }
  }
}

// Staging rows (16 x kGemmKW words) into a panel of 64 columns at column offset `col`.
MIMO_TARGET_AVX512 inline void transpose_into_panel64(const uint32_t* staging, int64_t words, uint32_t* panel,
                                                      int64_t col) {
  for (int64_t q = 0; q < words; q += 16) {
    __m512i r[16], out[16];
MIMO_UNROLL_TILE
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(staging + i * kGemmKW + q);
    transpose16(r, out);
MIMO_UNROLL_TILE
    for (int t = 0; t < 16; ++t) _mm512_storeu_si512(panel + (q + t) * 64 + col, out[t]);
  }
}

// C[MR x 64] += A[MR x kc] B[kc x 64]; A rows lda floats apart, B packed 64 floats a step.
template <int MR>
MIMO_TARGET_AVX512 void gemm_kernel_f32_avx512(const float* a, int64_t lda, const float* b, int64_t kc, float* c,
                                               int64_t ldc, int valid) {
  __m512 acc[MR][4];
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) {
MIMO_UNROLL_TILE
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b + k * 64), b1 = _mm512_load_ps(b + k * 64 + 16);
    const __m512 b2 = _mm512_load_ps(b + k * 64 + 32), b3 = _mm512_load_ps(b + k * 64 + 48);
MIMO_UNROLL_TILE
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * lda + k]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(av, b3, acc[i][3]);
    }
  }
  add_tile(c, ldc, valid, acc);
}

// C[MR x 64] += A B over `pairs` bf16 pairs; A rows lda words apart, B packed 64 words a step.
template <int MR>
MIMO_TARGET_AVX512_BF16 void gemm_kernel_bf16_avx512(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t pairs,
                                                     float* c, int64_t ldc, int valid) {
  __m512 acc[MR][4];
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) {
MIMO_UNROLL_TILE
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512i b0 = _mm512_load_si512(b + p * 64), b1 = _mm512_load_si512(b + p * 64 + 16);
    const __m512i b2 = _mm512_load_si512(b + p * 64 + 32), b3 = _mm512_load_si512(b + p * 64 + 48);
MIMO_UNROLL_TILE
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(b0));
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(b1));
      acc[i][2] = _mm512_dpbf16_ps(acc[i][2], reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(b2));
      acc[i][3] = _mm512_dpbf16_ps(acc[i][3], reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(b3));
    }
  }
  add_tile(c, ldc, valid, acc);
}

// C[MR x 16] += A[MR x kc] B[kc x 16] (AVX2: 12 accumulators of 16 registers).
template <int MR>
MIMO_TARGET_AVX2 void gemm_kernel_f32_avx2(const float* a, int64_t lda, const float* b, int64_t kc, float* c,
                                           int64_t ldc, int valid) {
  __m256 acc[MR][2];
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * 16), b1 = _mm256_load_ps(b + k * 16 + 8);
MIMO_UNROLL_TILE
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) {
    float* cp = c + i * ldc;
    if (valid >= 16) {
      _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), acc[i][0]));
      _mm256_storeu_ps(cp + 8, _mm256_add_ps(_mm256_loadu_ps(cp + 8), acc[i][1]));
    } else {
      alignas(32) float t[16];
      _mm256_store_ps(t, acc[i][0]);
      _mm256_store_ps(t + 8, acc[i][1]);
      for (int l = 0; l < valid; ++l) cp[l] += t[l];
    }
  }
}

#define MIMO_GEMM_MR_SWITCH(mr, call) \
  switch (mr) {                       \
    case 1: call(1); break;           \
    case 2: call(2); break;           \
    case 3: call(3); break;           \
    case 4: call(4); break;           \
    case 5: call(5); break;           \
    default: call(6); break;          \
  }

// One work item on AVX-512: rows [n0, n1) of the weight (at most kGemmNB) for activation rows
// [m0, m1). a16: the rows rounded to bf16 (fast mode), row m0 first.
inline void gemm_item_avx512(Isa isa, bool fast, const LinearJob& j, const Rows& x, const uint32_t* a16,
                             int64_t a16_stride, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* scratch) {
  const WeightMatrix& w = *j.weight;
  uint32_t* packed = scratch;                        // kGemmNB / 64 panels of kGemmKW x 64 words
  uint32_t* staging = packed + kGemmNB * kGemmKW;    // 16 rows of kGemmKW words
  float* tmp = reinterpret_cast<float*>(staging + 16 * kGemmKW);
  const int64_t kstep = fast ? 2 * kGemmKW : kGemmKW;
  const int64_t rows = n1 - n0, panels = (rows + 63) / 64;
  for (int64_t k0 = 0; k0 < w.cols; k0 += kstep) {
    const int64_t kc = std::min(kstep, w.cols - k0);
    int64_t words = 0;
    for (int64_t g = 0; g < (rows + 15) / 16; ++g) {
      for (int i = 0; i < 16; ++i) {
        const int64_t r = n0 + g * 16 + i;
        if (r < n1) words = gemm_row_words(isa, fast, w, r, k0, kc, staging + i * kGemmKW, tmp);
        else std::memset(staging + i * kGemmKW, 0, kGemmKW * sizeof(uint32_t));
      }
      transpose_into_panel64(staging, (words + 15) / 16 * 16, packed + (g / 4) * kGemmKW * 64, (g % 4) * 16);
    }
    // A tile of activation rows meets every panel while it is in L1 (the panels stream from L2):
    // the 7B's prefill 22.4 tokens/s instead of 21.6-22.0 with the panels outside (bf16 weights).
    for (int64_t m = m0; m < m1; m += kGemmMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, m1 - m));
      for (int64_t p = 0; p < panels; ++p) {
        const uint32_t* panel = packed + p * kGemmKW * 64;
        const int valid = static_cast<int>(std::min<int64_t>(64, rows - p * 64));
        float* c = j.out.row(m) + n0 + p * 64;
        if (fast) {
          const uint32_t* a = a16 + (m - m0) * a16_stride + k0 / 2;
#define MIMO_CALL(MR) gemm_kernel_bf16_avx512<MR>(a, a16_stride, panel, words, c, j.out.stride, valid)
          MIMO_GEMM_MR_SWITCH(mr, MIMO_CALL)
#undef MIMO_CALL
        } else {
          const float* a = x.row(m) + k0;
          const float* b = reinterpret_cast<const float*>(panel);
#define MIMO_CALL(MR) gemm_kernel_f32_avx512<MR>(a, x.stride, b, kc, c, j.out.stride, valid)
          MIMO_GEMM_MR_SWITCH(mr, MIMO_CALL)
#undef MIMO_CALL
        }
      }
    }
  }
}

// One work item on AVX2 (exact): panels of 16 columns.
inline void gemm_item_avx2(const LinearJob& j, const Rows& x, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                           uint32_t* scratch) {
  const WeightMatrix& w = *j.weight;
  auto* packed = reinterpret_cast<float*>(scratch);  // kGemmNB / 16 panels of kGemmKW x 16 floats
  auto* staging = reinterpret_cast<float*>(scratch + kGemmNB * kGemmKW);
  const int64_t rows = n1 - n0, panels = (rows + 15) / 16;
  for (int64_t k0 = 0; k0 < w.cols; k0 += kGemmKW) {
    const int64_t kc = std::min(kGemmKW, w.cols - k0);
    for (int64_t p = 0; p < panels; ++p) {
      float* panel = packed + p * kGemmKW * 16;
      for (int i = 0; i < 16; ++i) {
        const int64_t r = n0 + p * 16 + i;
        if (r < n1) widen_row_range(Isa::avx2, w, r, k0, kc, staging);
        for (int64_t k = 0; k < kc; ++k) panel[k * 16 + i] = r < n1 ? staging[k] : 0.0f;
      }
    }
    for (int64_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * kGemmKW * 16;
      const int valid = static_cast<int>(std::min<int64_t>(16, rows - p * 16));
      for (int64_t m = m0; m < m1; m += kGemmMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, m1 - m));
        const float* a = x.row(m) + k0;
        float* c = j.out.row(m) + n0 + p * 16;
#define MIMO_CALL(MR) gemm_kernel_f32_avx2<MR>(a, x.stride, panel, kc, c, j.out.stride, valid)
        MIMO_GEMM_MR_SWITCH(mr, MIMO_CALL)
#undef MIMO_CALL
      }
    }
  }
}
#undef MIMO_GEMM_MR_SWITCH

#endif  // MIMO_X86

}  // namespace detail

// out (+)= x W^T + bias for every job, over all rows of x, on all threads of the pool, each job
// on its gemm_path.
inline void gemm(ThreadPool& pool, Isa isa, const PrefillProducts& products, const Rows& x, std::span<const LinearJob> jobs,
                 GemmScratch& scratch) {
  bool any_bf16 = false, any_int8 = false;
  int64_t items = 0;
  for (const auto& j : jobs) {
    const GemmPath path = gemm_path(isa, products, *j.weight);
    any_bf16 = any_bf16 || path == GemmPath::bf16;
    any_int8 = any_int8 || path == GemmPath::int8;
    items += (j.weight->rows + kGemmNB - 1) / kGemmNB;
  }
  for (int64_t m0 = 0; m0 < x.count; m0 += kGemmMB) {
    const int64_t m1 = std::min(x.count, m0 + kGemmMB);
#if MIMO_X86
    if (any_bf16 || any_int8) {
      pool.run([&](int t, int nt) {
        const int64_t n = m1 - m0, begin = m0 + n * t / nt, end = m0 + n * (t + 1) / nt;
        if (any_bf16) {
          detail::gemm_round_rows(x, begin, end, scratch.a16.data() + (begin - m0) * scratch.a16_stride, scratch.a16_stride);
        }
        if (any_int8) detail::int8_quantize_rows(x, begin, end, m0, scratch.rows8);
      });
    }
#endif
    std::atomic<int64_t> next{0};
    pool.run([&](int t, int) {
      uint32_t* mine = scratch.panels.data() + t * scratch.per_thread;
      for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < items;
           item = next.fetch_add(1, std::memory_order_relaxed)) {
        int64_t rest = item;
        const LinearJob* job = nullptr;
        for (const auto& j : jobs) {
          const int64_t count = (j.weight->rows + kGemmNB - 1) / kGemmNB;
          if (rest < count) {
            job = &j;
            break;
          }
          rest -= count;
        }
        const int64_t n0 = rest * kGemmNB, n1 = std::min(job->weight->rows, n0 + kGemmNB);
        detail::gemm_init_outputs(*job, m0, m1, n0, n1);
#if MIMO_X86
        const GemmPath path = gemm_path(isa, products, *job->weight);
        if (path == GemmPath::int8) {
          detail::gemm_item_int8(*job->weight, job->out, scratch.rows8, m0, m1, n0, n1, reinterpret_cast<std::byte*>(mine));
          continue;
        }
        if (has_avx512(isa)) {
          detail::gemm_item_avx512(isa, path == GemmPath::bf16, *job, x, scratch.a16.data(), scratch.a16_stride, m0, m1, n0,
                                   n1, mine);
          continue;
        }
        if (has_avx2(isa)) {
          detail::gemm_item_avx2(*job, x, m0, m1, n0, n1, mine);
          continue;
        }
#endif
        detail::gemm_item_scalar(*job, x, m0, m1, n0, n1, reinterpret_cast<float*>(mine));
      }
    });
  }
}

}  // namespace mimo::cpu
