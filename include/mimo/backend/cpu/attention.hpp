// Causal attention of the CPU backend over its KV cache (kv_cache.hpp), with grouped-query heads.
//
// The work is cut into tasks of (KV head, a tile of query rows, a run of key segments). A task puts
// the query vectors of its rows that share the KV head (rows x group of them) side by side, so
// each key and value it loads serves all of them, and walks its segment in chunks of 256 keys:
//   scores    S = q K^T for 16 keys per register (keys are stored transposed in blocks of 16),
//             four queries x two blocks per pass; masked keys (causal, or past the end) get -inf
//   softmax   online: running max m and sum l per query; P = 2^(S - m) (the scale 1/sqrt(d) and
//             log2(e) are folded into q once, so the exponential is a polynomial exp2)
//   values    O = O * 2^(m_old - m) + P V, four queries x up to 64 columns per pass over the rows
// While the scores stream the chunk's keys they prefetch its values and the chunk's next two key
// blocks (decode at 256-2048 keys 3-25% faster than the hardware prefetcher alone), and the value
// step prefetches the next chunk's keys.
// Keys are cut into fixed segments of 512 whose partial results (O, m, l) are merged in order, so a
// row's output does not depend on the number of threads nor on the other rows of the call: decode,
// verification and prefill give bit-identical attention for the same row (given one ISA).
//   decode / verification (rows x group <= 32 query vectors): one task per (head, run of
//     consecutive segments), then a merge: every thread is busy even with 8 KV heads, and long
//     contexts split over the keys
//   prefill: one task per (head, tile of 64 query vectors), walking its segments; the K/V chunk of
//     a segment stays in cache while the tile's queries use it
// Tasks are taken dynamically (longest first), so causal tiles of different lengths balance.
//
// Kernels: AVX-512 (head_dim a multiple of 16), AVX2+FMA+F16C (a multiple of 8), and portable
// scalar code for everything else; the KV element type is a template parameter of each.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/kv_cache.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/detail/aligned_buffer.hpp"

#if MIMO_X86
#include <immintrin.h>
#endif

namespace mimo::cpu {

inline constexpr int64_t kAttentionChunk = 256;         // keys per softmax step
inline constexpr int64_t kAttentionSegment = 512;       // keys per partial result (fixed: see above)
inline constexpr int64_t kAttentionTileQueries = 64;    // query vectors of a prefill task
inline constexpr int64_t kAttentionSplitQueries = 32;   // at most this many split over segments

namespace detail {

// Every level from Isa::avx512 up has AVX-512 F/BW/VL/DQ; every level above scalar has AVX2.
constexpr bool uses_avx512(Isa isa) { return static_cast<int>(isa) >= static_cast<int>(Isa::avx512); }

// One chunk step of one task; see the header comment.
struct ChunkArgs {
  const std::byte* keys = nullptr;    // the chunk's first key block (kv_cache.hpp)
  const std::byte* values = nullptr;  // its first value block
  const std::byte* scales = nullptr;  // its first scale block (i8)
  int64_t part_bytes = 0, scale_bytes = 0;  // strides of key/value blocks and of scale blocks
  int64_t d = 0;
  int64_t nb = 0;      // blocks in the chunk
  int64_t n = 0;       // keys in the chunk (value rows read), <= 16 * nb
  int64_t first = 0;   // index of the chunk's first key
  bool next = false;   // the task's next chunk follows this one (its keys are prefetched)
  int64_t limit0 = 0;  // query vector r sees keys j < limit0 + r / group
  int64_t group = 1;
  int64_t queries = 0;  // R
  const float* q = nullptr;  // [R][d], scaled by log2(e) / sqrt(d)
  float* s = nullptr;        // [R][kAttentionChunk] scores, then probabilities
  float* o = nullptr;        // [R][d] unnormalised outputs
  float* m = nullptr;        // [R] running max (log2 units)
  float* l = nullptr;        // [R] running sum
  float* alpha = nullptr;    // [R] rescale of this step
  int64_t limit(int64_t r) const { return limit0 + r / group; }
  // Visible keys of query r in block b of the chunk (0..16).
  int64_t visible(int64_t r, int64_t b) const {
    return std::clamp<int64_t>(limit(r) - (first + b * kKvBlock), 0, kKvBlock);
  }
};
using ChunkFn = void (*)(const ChunkArgs&);

// Running max and rescale of query r for the scores of this chunk (scalar bookkeeping shared by
// every kernel). Returns false when the query has seen no key yet (its probabilities are 0).
inline bool softmax_step(const ChunkArgs& a, int64_t r, float chunk_max, float& m_new) {
  const float m_old = a.m[r];
  m_new = std::max(m_old, chunk_max);
  if (m_new == -INFINITY) {
    a.alpha[r] = 1.0f;
    return false;
  }
  a.alpha[r] = m_old == -INFINITY ? 0.0f : std::exp2(m_old - m_new);
  a.m[r] = m_new;
  return true;
}

// ----- scalar -----

template <KvType T>
inline float kv_element(const std::byte* p, int64_t i) {
  if constexpr (T == KvType::f32) {
    float x;
    std::memcpy(&x, p + 4 * i, 4);
    return x;
  } else if constexpr (T == KvType::f16) {
    return load_float(p, DType::f16, static_cast<uint64_t>(i));
  } else if constexpr (T == KvType::bf16) {
    return load_float(p, DType::bf16, static_cast<uint64_t>(i));
  } else {
    return static_cast<float>(static_cast<int8_t>(p[i]));
  }
}

inline float block_scale(const ChunkArgs& a, int64_t b, bool value, int64_t lane) {
  float x;
  std::memcpy(&x, a.scales + b * a.scale_bytes + ((value ? kKvBlock : 0) + lane) * 4, 4);
  return x;
}

template <KvType T>
void chunk_scalar(const ChunkArgs& a) {
  const int64_t d = a.d;
  for (int64_t r = 0; r < a.queries; ++r) {
    const float* q = a.q + r * d;
    float* s = a.s + r * kAttentionChunk;
    float mx = -INFINITY;
    for (int64_t b = 0; b < a.nb; ++b) {
      const std::byte* blk = a.keys + b * a.part_bytes;
      float acc[kKvBlock] = {};
      for (int64_t c = 0; c < d; ++c) {
        for (int64_t j = 0; j < kKvBlock; ++j) acc[j] += q[c] * kv_element<T>(blk, c * kKvBlock + j);
      }
      const int64_t vis = a.visible(r, b);
      for (int64_t j = 0; j < kKvBlock; ++j) {
        float x = acc[j];
        if constexpr (T == KvType::i8) x *= block_scale(a, b, false, j);
        x = j < vis ? x : -INFINITY;
        s[b * kKvBlock + j] = x;
        mx = std::max(mx, x);
      }
    }
    float m_new;
    const int64_t nl = a.nb * kKvBlock;
    if (!softmax_step(a, r, mx, m_new)) {
      std::fill(s, s + nl, 0.0f);
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nl; ++j) {
      s[j] = std::exp2(s[j] - m_new);
      sum += s[j];
    }
    a.l[r] = a.l[r] * a.alpha[r] + sum;
    if constexpr (T == KvType::i8) {
      for (int64_t j = 0; j < nl; ++j) s[j] *= block_scale(a, j / kKvBlock, true, j % kKvBlock);
    }
  }
  for (int64_t r = 0; r < a.queries; ++r) {
    float* o = a.o + r * d;
    const float* p = a.s + r * kAttentionChunk;
    for (int64_t c = 0; c < d; ++c) o[c] *= a.alpha[r];
    for (int64_t j = 0; j < a.n; ++j) {
      const std::byte* v = a.values + (j / kKvBlock) * a.part_bytes + (j % kKvBlock) * d * kv_element_bytes(T);
      for (int64_t c = 0; c < d; ++c) o[c] += p[j] * kv_element<T>(v, c);
    }
  }
}

#if MIMO_X86

// ----- AVX-512 -----

// 16 stored elements widened to f32 (maskz forms: the plain ones leave lanes "undefined", which
// GCC 12 warns about).
template <KvType T>
MIMO_TARGET_AVX512 inline __m512 kv_load16(const std::byte* p) {
  if constexpr (T == KvType::f32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (T == KvType::f16) {
    return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (T == KvType::bf16) {
    const __m512i w = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, w, 16));
  } else {
    const __m512i w = _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_maskz_cvtepi32_ps(0xffff, w);
  }
}

// 2^x to ~1 ulp: x = n + f, |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (truncation error
// below 1e-8 relative), 2^n by scalef. Inputs below -126 (and -inf) give exactly 0; NaN stays NaN.
MIMO_TARGET_AVX512 inline __m512 exp2_avx512(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
  x = _mm512_maskz_min_ps(0xffff, _mm512_set1_ps(127.0f), _mm512_maskz_max_ps(0xffff, _mm512_set1_ps(-126.0f), x));
  const __m512 n = _mm512_maskz_roundscale_ps(0xffff, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.525273380405984e-05f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381608e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Scores of queries [r0, r0 + NQ) for every block of the chunk, two blocks per pass.
template <KvType T, int NQ>
MIMO_TARGET_AVX512 void scores_avx512(const ChunkArgs& a, int64_t r0) {
  constexpr int64_t es = kv_element_bytes(T);
  const int64_t d = a.d;
  auto finish = [&](int64_t b, __m512* acc) MIMO_TARGET_AVX512 {
MIMO_UNROLL_TILE
    for (int r = 0; r < NQ; ++r) {
      __m512 x = acc[r];
      if constexpr (T == KvType::i8) x = _mm512_mul_ps(x, _mm512_loadu_ps(a.scales + b * a.scale_bytes));
      const int64_t vis = a.visible(r0 + r, b);
      const __mmask16 keep = static_cast<__mmask16>((1u << vis) - 1u);
      x = _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), x);
      _mm512_storeu_ps(a.s + (r0 + r) * kAttentionChunk + b * kKvBlock, x);
    }
  };
  const float* q = a.q + r0 * d;
  int64_t b = 0;
  for (; b + 2 <= a.nb; b += 2) {
    const std::byte* k0 = a.keys + b * a.part_bytes;
    const std::byte* k1 = k0 + a.part_bytes;
    // The first queries' pass fetches the values of these two blocks for the value step.
    const std::byte* vp = r0 == 0 ? a.values + b * a.part_bytes : k0;
    const int64_t vstep = r0 == 0 ? 2 * kKvBlock * es : 0;
    // And the keys of the next two blocks of the chunk.
    const bool ahead = r0 == 0 && b + 2 < a.nb;
    const std::byte* kp = ahead ? k0 + 2 * a.part_bytes : k0;
    const int64_t kstep = ahead ? 2 * kKvBlock * es : 0;
    __m512 acc0[NQ], acc1[NQ];
MIMO_UNROLL_TILE
    for (int r = 0; r < NQ; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(vp + c * vstep), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(kp + c * kstep), _MM_HINT_T0);
      if constexpr (es == 4) {
        _mm_prefetch(reinterpret_cast<const char*>(vp + c * vstep + 64), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(kp + c * kstep + 64), _MM_HINT_T0);
      }
      const __m512 x0 = kv_load16<T>(k0 + c * kKvBlock * es);
      const __m512 x1 = kv_load16<T>(k1 + c * kKvBlock * es);
MIMO_UNROLL_TILE
      for (int r = 0; r < NQ; ++r) {
        const __m512 qc = _mm512_set1_ps(q[r * d + c]);
        acc0[r] = _mm512_fmadd_ps(qc, x0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(qc, x1, acc1[r]);
      }
    }
    finish(b, acc0);
    finish(b + 1, acc1);
  }
  if (b < a.nb) {
    const std::byte* k0 = a.keys + b * a.part_bytes;
    const std::byte* vp = r0 == 0 ? a.values + b * a.part_bytes : k0;
    const int64_t vstep = r0 == 0 ? kKvBlock * es : 0;
    __m512 acc0[NQ];
MIMO_UNROLL_TILE
    for (int r = 0; r < NQ; ++r) acc0[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(vp + c * vstep), _MM_HINT_T0);
      const __m512 x0 = kv_load16<T>(k0 + c * kKvBlock * es);
MIMO_UNROLL_TILE
      for (int r = 0; r < NQ; ++r) acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + c]), x0, acc0[r]);
    }
    finish(b, acc0);
  }
}

// o[r][c0, c0 + 16 NV) = o * alpha + P V for queries [r0, r0 + NQ).
template <KvType T, int NQ, int NV>
MIMO_TARGET_AVX512 void values_avx512(const ChunkArgs& a, int64_t r0, int64_t c0) {
  constexpr int64_t es = kv_element_bytes(T);
  const int64_t d = a.d;
  __m512 acc[NQ][NV];
MIMO_UNROLL_TILE
  for (int r = 0; r < NQ; ++r) {
    const __m512 al = _mm512_set1_ps(a.alpha[r0 + r]);
MIMO_UNROLL_TILE
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_loadu_ps(a.o + (r0 + r) * d + c0 + 16 * v), al);
  }
  // The first pass fetches the keys of the task's next chunk, as far ahead as this chunk's.
  const std::byte* fetch = a.next && r0 == 0 && c0 == 0 ? a.keys + a.nb * a.part_bytes : nullptr;
  const float* p = a.s + r0 * kAttentionChunk;
  for (int64_t b = 0, j = 0; j < a.n; ++b) {
    const std::byte* rows = a.values + b * a.part_bytes + c0 * es;
    const int64_t end = std::min(a.n, j + kKvBlock);
    for (int64_t lane = 0; j < end; ++j, ++lane) {
      if (fetch) {
        for (int64_t x = 0; x < d * es; x += 64) _mm_prefetch(reinterpret_cast<const char*>(fetch + j * d * es + x), _MM_HINT_T0);
      }
      const std::byte* row = rows + lane * d * es;
      __m512 x[NV];
MIMO_UNROLL_TILE
      for (int v = 0; v < NV; ++v) x[v] = kv_load16<T>(row + 16 * v * es);
MIMO_UNROLL_TILE
      for (int r = 0; r < NQ; ++r) {
        const __m512 pr = _mm512_set1_ps(p[r * kAttentionChunk + j]);
MIMO_UNROLL_TILE
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(pr, x[v], acc[r][v]);
      }
    }
  }
MIMO_UNROLL_TILE
  for (int r = 0; r < NQ; ++r) {
MIMO_UNROLL_TILE
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(a.o + (r0 + r) * d + c0 + 16 * v, acc[r][v]);
  }
}

template <KvType T, int NQ>
MIMO_TARGET_AVX512 void values_avx512_cols(const ChunkArgs& a, int64_t r0) {
  for (int64_t c0 = 0; c0 < a.d; c0 += 64) {
    switch (std::min<int64_t>(4, (a.d - c0) / 16)) {
      case 1: values_avx512<T, NQ, 1>(a, r0, c0); break;
      case 2: values_avx512<T, NQ, 2>(a, r0, c0); break;
      case 3: values_avx512<T, NQ, 3>(a, r0, c0); break;
      default: values_avx512<T, NQ, 4>(a, r0, c0); break;
    }
  }
}

template <KvType T>
MIMO_TARGET_AVX512 void chunk_avx512(const ChunkArgs& a) {
  for (int64_t r0 = 0; r0 < a.queries; r0 += 4) {
    switch (std::min<int64_t>(4, a.queries - r0)) {
      case 1: scores_avx512<T, 1>(a, r0); break;
      case 2: scores_avx512<T, 2>(a, r0); break;
      case 3: scores_avx512<T, 3>(a, r0); break;
      default: scores_avx512<T, 4>(a, r0); break;
    }
  }
  for (int64_t r = 0; r < a.queries; ++r) {
    float* s = a.s + r * kAttentionChunk;
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t b = 0; b < a.nb; ++b) vmax = _mm512_maskz_max_ps(0xffff, vmax, _mm512_loadu_ps(s + b * kKvBlock));
    float m_new;
    if (!softmax_step(a, r, hmax512(vmax), m_new)) {
      for (int64_t b = 0; b < a.nb; ++b) _mm512_storeu_ps(s + b * kKvBlock, _mm512_setzero_ps());
      continue;
    }
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t b = 0; b < a.nb; ++b) {
      const __m512 p = exp2_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + b * kKvBlock), vm));
      vsum = _mm512_add_ps(vsum, p);
      if constexpr (T == KvType::i8) {
        const __m512 scale = _mm512_loadu_ps(a.scales + b * a.scale_bytes + kKvBlock * 4);
        _mm512_storeu_ps(s + b * kKvBlock, _mm512_mul_ps(p, scale));
      } else {
        _mm512_storeu_ps(s + b * kKvBlock, p);
      }
    }
    a.l[r] = a.l[r] * a.alpha[r] + detail::hsum512(vsum);
  }
  for (int64_t r0 = 0; r0 < a.queries; r0 += 4) {
    switch (std::min<int64_t>(4, a.queries - r0)) {
      case 1: values_avx512_cols<T, 1>(a, r0); break;
      case 2: values_avx512_cols<T, 2>(a, r0); break;
      case 3: values_avx512_cols<T, 3>(a, r0); break;
      default: values_avx512_cols<T, 4>(a, r0); break;
    }
  }
}

// ----- AVX2 -----

// 8 stored elements widened to f32.
template <KvType T>
MIMO_TARGET_AVX2 inline __m256 kv_load8(const std::byte* p) {
  if constexpr (T == KvType::f32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (T == KvType::f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (T == KvType::bf16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
}

// As exp2_avx512, with 2^n built in the exponent field (n is clamped to [-126, 127]).
MIMO_TARGET_AVX2 inline __m256 exp2_avx2(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
  x = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-126.0f), x));
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.525273380405984e-05f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381608e-04f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618129107628477e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550410866482158e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402265069591007e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931471805599453e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

// Lanes [0, count) of 8 set.
MIMO_TARGET_AVX2 inline __m256 lanes_below(int64_t count) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

template <KvType T, int NQ>
MIMO_TARGET_AVX2 void scores_avx2(const ChunkArgs& a, int64_t r0) {
  constexpr int64_t es = kv_element_bytes(T);
  const int64_t d = a.d;
  const float* q = a.q + r0 * d;
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int64_t b = 0; b < a.nb; ++b) {
    const std::byte* blk = a.keys + b * a.part_bytes;
    const std::byte* sc = a.scales + b * a.scale_bytes;
    const std::byte* vp = r0 == 0 ? a.values + b * a.part_bytes : blk;
    const int64_t vstep = r0 == 0 ? kKvBlock * es : 0;
    __m256 lo[NQ], hi[NQ];
MIMO_UNROLL_TILE
    for (int r = 0; r < NQ; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      if (c % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(vp + c * vstep), _MM_HINT_T0);
      if constexpr (es == 4) {
        if (c % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(vp + c * vstep + 64), _MM_HINT_T0);
      }
      const __m256 x0 = kv_load8<T>(blk + c * kKvBlock * es);
      const __m256 x1 = kv_load8<T>(blk + (c * kKvBlock + 8) * es);
MIMO_UNROLL_TILE
      for (int r = 0; r < NQ; ++r) {
        const __m256 qc = _mm256_broadcast_ss(q + r * d + c);
        lo[r] = _mm256_fmadd_ps(qc, x0, lo[r]);
        hi[r] = _mm256_fmadd_ps(qc, x1, hi[r]);
      }
    }
MIMO_UNROLL_TILE
    for (int r = 0; r < NQ; ++r) {
      __m256 x0 = lo[r], x1 = hi[r];
      if constexpr (T == KvType::i8) {
        x0 = _mm256_mul_ps(x0, _mm256_loadu_ps(reinterpret_cast<const float*>(sc)));
        x1 = _mm256_mul_ps(x1, _mm256_loadu_ps(reinterpret_cast<const float*>(sc + 32)));
      }
      const int64_t vis = a.visible(r0 + r, b);
      float* s = a.s + (r0 + r) * kAttentionChunk + b * kKvBlock;
      _mm256_storeu_ps(s, _mm256_blendv_ps(ninf, x0, lanes_below(vis)));
      _mm256_storeu_ps(s + 8, _mm256_blendv_ps(ninf, x1, lanes_below(vis - 8)));
    }
  }
}

template <KvType T, int NQ, int NV>
MIMO_TARGET_AVX2 void values_avx2(const ChunkArgs& a, int64_t r0, int64_t c0) {
  constexpr int64_t es = kv_element_bytes(T);
  const int64_t d = a.d;
  __m256 acc[NQ][NV];
MIMO_UNROLL_TILE
  for (int r = 0; r < NQ; ++r) {
    const __m256 al = _mm256_set1_ps(a.alpha[r0 + r]);
MIMO_UNROLL_TILE
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_mul_ps(_mm256_loadu_ps(a.o + (r0 + r) * d + c0 + 8 * v), al);
  }
  // The first pass fetches the keys of the task's next chunk, as far ahead as this chunk's.
  const std::byte* fetch = a.next && r0 == 0 && c0 == 0 ? a.keys + a.nb * a.part_bytes : nullptr;
  const float* p = a.s + r0 * kAttentionChunk;
  for (int64_t b = 0, j = 0; j < a.n; ++b) {
    const std::byte* rows = a.values + b * a.part_bytes + c0 * es;
    const int64_t end = std::min(a.n, j + kKvBlock);
    for (int64_t lane = 0; j < end; ++j, ++lane) {
      if (fetch) {
        for (int64_t x = 0; x < d * es; x += 64) _mm_prefetch(reinterpret_cast<const char*>(fetch + j * d * es + x), _MM_HINT_T0);
      }
      const std::byte* row = rows + lane * d * es;
      __m256 x[NV];
MIMO_UNROLL_TILE
      for (int v = 0; v < NV; ++v) x[v] = kv_load8<T>(row + 8 * v * es);
MIMO_UNROLL_TILE
      for (int r = 0; r < NQ; ++r) {
        const __m256 pr = _mm256_broadcast_ss(p + r * kAttentionChunk + j);
MIMO_UNROLL_TILE
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(pr, x[v], acc[r][v]);
      }
    }
  }
MIMO_UNROLL_TILE
  for (int r = 0; r < NQ; ++r) {
MIMO_UNROLL_TILE
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(a.o + (r0 + r) * d + c0 + 8 * v, acc[r][v]);
  }
}

template <KvType T, int NQ>
MIMO_TARGET_AVX2 void values_avx2_cols(const ChunkArgs& a, int64_t r0) {
  for (int64_t c0 = 0; c0 < a.d; c0 += 16) {
    if (a.d - c0 >= 16) values_avx2<T, NQ, 2>(a, r0, c0);
    else values_avx2<T, NQ, 1>(a, r0, c0);
  }
}

template <KvType T>
MIMO_TARGET_AVX2 void chunk_avx2(const ChunkArgs& a) {
  for (int64_t r0 = 0; r0 < a.queries; r0 += 4) {
    switch (std::min<int64_t>(4, a.queries - r0)) {
      case 1: scores_avx2<T, 1>(a, r0); break;
      case 2: scores_avx2<T, 2>(a, r0); break;
      case 3: scores_avx2<T, 3>(a, r0); break;
      default: scores_avx2<T, 4>(a, r0); break;
    }
  }
  const int64_t nv = a.nb * 2;  // registers of 8 per chunk row
  for (int64_t r = 0; r < a.queries; ++r) {
    float* s = a.s + r * kAttentionChunk;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int64_t i = 0; i < nv; ++i) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + 8 * i));
    float m_new;
    if (!softmax_step(a, r, hmax256(vmax), m_new)) {
      for (int64_t i = 0; i < nv; ++i) _mm256_storeu_ps(s + 8 * i, _mm256_setzero_ps());
      continue;
    }
    const __m256 vm = _mm256_set1_ps(m_new);
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t i = 0; i < nv; ++i) {
      const __m256 p = exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * i), vm));
      vsum = _mm256_add_ps(vsum, p);
      if constexpr (T == KvType::i8) {
        const std::byte* sc = a.scales + (i / 2) * a.scale_bytes;
        const __m256 scale = _mm256_loadu_ps(reinterpret_cast<const float*>(sc + (kKvBlock + 8 * (i % 2)) * 4));
        _mm256_storeu_ps(s + 8 * i, _mm256_mul_ps(p, scale));
      } else {
        _mm256_storeu_ps(s + 8 * i, p);
      }
    }
    a.l[r] = a.l[r] * a.alpha[r] + hsum256(vsum);
  }
  for (int64_t r0 = 0; r0 < a.queries; r0 += 4) {
    switch (std::min<int64_t>(4, a.queries - r0)) {
      case 1: values_avx2_cols<T, 1>(a, r0); break;
      case 2: values_avx2_cols<T, 2>(a, r0); break;
      case 3: values_avx2_cols<T, 3>(a, r0); break;
      default: values_avx2_cols<T, 4>(a, r0); break;
    }
  }
}

#endif  // MIMO_X86

#if MIMO_X86
MIMO_TARGET_AVX512 inline void exp2_array_avx512(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp2_avx512(_mm512_loadu_ps(x + i)));
}
MIMO_TARGET_AVX2 inline void exp2_array_avx2(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp2_avx2(_mm256_loadu_ps(x + i)));
}
#endif

// y = 2^x with the vector polynomial of `isa` (tests; n a multiple of 16; scalar: std::exp2).
inline void exp2_array(Isa isa, const float* x, float* y, int64_t n) {
#if MIMO_X86
  if (uses_avx512(isa)) return exp2_array_avx512(x, y, n);
  if (isa != Isa::scalar) return exp2_array_avx2(x, y, n);
#endif
  (void)isa;
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp2(x[i]);
}

template <KvType T>
ChunkFn chunk_kernel(Isa isa, int64_t d) {
#if MIMO_X86
  if (uses_avx512(isa) && d % 16 == 0) return &chunk_avx512<T>;
  if (isa != Isa::scalar && d % 8 == 0) return &chunk_avx2<T>;
#else
  (void)isa;
  (void)d;
#endif
  return &chunk_scalar<T>;
}

// The kernel of `isa` for a cache of type t and head_dim d (the one place a runtime type becomes
// a template instantiation).
inline ChunkFn select_chunk_kernel(Isa isa, KvType t, int64_t d) {
  switch (t) {
    case KvType::f16: return chunk_kernel<KvType::f16>(isa, d);
    case KvType::bf16: return chunk_kernel<KvType::bf16>(isa, d);
    case KvType::i8: return chunk_kernel<KvType::i8>(isa, d);
    case KvType::f32: break;
  }
  return chunk_kernel<KvType::f32>(isa, d);
}

// A partial result merged into a running one: (o, m, l) <- (o, m, l) + (o2, m2, l2). Not inlined,
// so every path merges with the same instructions (results independent of the schedule).
[[gnu::noinline]] inline void merge_partial(float* o, float* m, float* l, const float* o2, const float* m2,
                                            const float* l2, int64_t queries, int64_t d) {
  for (int64_t r = 0; r < queries; ++r) {
    float* orow = o + r * d;
    const float* o2row = o2 + r * d;
    if (m2[r] == -INFINITY) continue;
    if (m[r] == -INFINITY) {
      std::memcpy(orow, o2row, static_cast<size_t>(d) * sizeof(float));
      m[r] = m2[r];
      l[r] = l2[r];
      continue;
    }
    const float mx = std::max(m[r], m2[r]);
    const float wa = std::exp2(m[r] - mx), wb = std::exp2(m2[r] - mx);
    for (int64_t c = 0; c < d; ++c) orow[c] = orow[c] * wa + o2row[c] * wb;
    l[r] = l[r] * wa + l2[r] * wb;
    m[r] = mx;
  }
}

}  // namespace detail

// Per-thread working memory of attention and the partial results of split tasks, sized once per
// context (attention itself cannot fail).
struct AttentionScratch {
  mimo::detail::AlignedBuffer<float> data;
  int64_t head_dim = 0, group = 1;
  int64_t tile_queries = 0;   // query vectors of a prefill tile (whole rows)
  int64_t split_queries = 0;  // most query vectors split over segments (whole rows; 0: never)
  int64_t per_thread = 0;     // floats
  int64_t partial_stride = 0, partial_slots = 0;
  int threads = 0;

  Status reserve(int n_threads, const AttentionShape& s, int64_t capacity) {
    head_dim = s.head_dim;
    group = std::max<int64_t>(1, s.num_heads / std::max<int64_t>(1, s.num_kv_heads));
    tile_queries = std::max<int64_t>(1, kAttentionTileQueries / group) * group;
    split_queries = kAttentionSplitQueries / group * group;
    const int64_t d = head_dim, R = tile_queries;
    per_thread = (R * (3 * d + kAttentionChunk + 8) + 15) / 16 * 16;
    partial_stride = split_queries * (d + 2);
    const int64_t segments = (capacity + kAttentionSegment - 1) / kAttentionSegment;
    threads = n_threads;
    uint64_t partials = 0, total = 0;
    if (__builtin_mul_overflow(split_queries > 0 ? s.num_kv_heads : 0, segments, &partial_slots) ||
        __builtin_mul_overflow(static_cast<uint64_t>(partial_slots), static_cast<uint64_t>(partial_stride), &partials) ||
        __builtin_add_overflow(static_cast<uint64_t>(n_threads) * static_cast<uint64_t>(per_thread), partials, &total)) {
      return Error(Errc::out_of_memory, "attention scratch: size overflows");
    }
    return data.reserve(std::max<uint64_t>(total, 16), "attention scratch");
  }
  float* thread_area(int t) { return data.data() + static_cast<int64_t>(t) * per_thread; }
  float* partial(int64_t slot) { return data.data() + threads * per_thread + slot * partial_stride; }
};

namespace detail {

// Scaled queries of KV head h, rows [row0, row0 + rows): R = rows * group vectors of d.
inline void gather_queries(const Rows& q, int64_t h, int64_t group, int64_t d, int64_t row0, int64_t rows, float* dst) {
  const float scale = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(d)));
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = q.row(row0 + i) + h * group * d;
    float* out = dst + i * group * d;
    for (int64_t c = 0; c < group * d; ++c) out[c] = src[c] * scale;
  }
}

// One segment [k0, k1) of (layer, head) for R query vectors into (o, m, l).
inline void run_segment(ChunkFn fn, ChunkArgs a, const KvCache& kv, int64_t layer, int64_t h, int64_t k0, int64_t k1,
                        float* o, float* m, float* l, bool more_follows = false) {
  std::fill(o, o + a.queries * a.d, 0.0f);
  std::fill(m, m + a.queries, -INFINITY);
  std::fill(l, l + a.queries, 0.0f);
  a.o = o;
  a.m = m;
  a.l = l;
  const std::byte* keys = kv.keys(layer, h);
  const std::byte* values = kv.values(layer, h);
  const std::byte* scales = kv.scales(layer, h);
  for (int64_t c0 = k0; c0 < k1; c0 += kAttentionChunk) {
    a.n = std::min(kAttentionChunk, k1 - c0);
    a.nb = (a.n + kKvBlock - 1) / kKvBlock;
    a.first = c0;
    a.keys = keys + (c0 / kKvBlock) * kv.part_bytes;
    a.values = values + (c0 / kKvBlock) * kv.part_bytes;
    a.scales = scales + (c0 / kKvBlock) * kv.scale_bytes;
    a.next = c0 + kAttentionChunk < k1 || more_follows;
    fn(a);
  }
}

// out rows = o / l for the query vectors of head h, rows [row0, row0 + rows).
[[gnu::noinline]] inline void write_output(const Rows& out, int64_t h, int64_t group, int64_t d, int64_t row0,
                                           int64_t rows, const float* o, const float* l) {
  for (int64_t i = 0; i < rows; ++i) {
    float* dst = out.row(row0 + i) + h * group * d;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = i * group + g;
      const float inv = 1.0f / l[r];
      for (int64_t c = 0; c < d; ++c) dst[g * d + c] = o[r * d + c] * inv;
    }
  }
}

}  // namespace detail

// Appends rows k, v (n rows of kv_heads * head_dim) at entries [length, length + n) of `layer`,
// then computes causal attention for the n query rows q: row i sees entries [0, length + i].
// `scratch` was reserved for this pool's threads, the model's shape and a capacity >= length + n.
inline void attention(ThreadPool& pool, Isa isa, KvCache& cache, int64_t layer, int64_t length, const Rows& q,
                      const Rows& k, const Rows& v, int64_t num_heads, const Rows& out, AttentionScratch& scratch) {
  const int64_t kvh = cache.kv_heads, d = cache.head_dim, n = q.count;
  if (n <= 0) return;
  const int64_t group = num_heads / kvh;
  // Store the new entries (in parallel over heads when there are many).
  if (n * kvh * d >= (1 << 15) && kvh > 1) {
    pool.parallel_for(kvh, [&](int64_t h0, int64_t h1) { cache.store_heads(layer, length, k, v, h0, h1); });
  } else {
    cache.store(layer, length, k, v);
  }

  const detail::ChunkFn fn = detail::select_chunk_kernel(isa, cache.type, d);
  detail::ChunkArgs base;
  base.part_bytes = cache.part_bytes;
  base.scale_bytes = cache.scale_bytes;
  base.d = d;
  base.group = group;
  const int64_t R_all = n * group;
  const int64_t seg_count = (length + n + kAttentionSegment - 1) / kAttentionSegment;
  std::atomic<int64_t> next{0};

  if (R_all <= scratch.split_queries) {
    // Decode and short verification: one task per (head, run of consecutive segments), then merge
    // in order. A run's value steps prefetch the keys of its next segment, so only the first
    // chunk of a task starts cold; about 8 tasks per thread still balance a thread slowed by
    // another tenant. (One task per segment, 72 tasks at 4096 keys, took about 5% longer at
    // 2 threads; results are the same, since each segment keeps its own partial result.)
    const int64_t run = std::max<int64_t>(1, kvh * seg_count / (8 * std::max(1, pool.size())));
    const int64_t runs = (seg_count + run - 1) / run;
    const int64_t tasks = kvh * runs;
    pool.run([&](int t, int) {
      float* area = scratch.thread_area(t);
      float* qs = area;
      float* s = qs + R_all * d;
      float* alpha = s + R_all * kAttentionChunk;
      for (int64_t task; (task = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
        const int64_t seg0 = task / kvh * run, h = task % kvh;
        const int64_t seg1 = std::min(seg_count, seg0 + run);
        detail::gather_queries(q, h, group, d, 0, n, qs);
        detail::ChunkArgs a = base;
        a.queries = R_all;
        a.limit0 = length + 1;
        a.q = qs;
        a.s = s;
        a.alpha = alpha;
        for (int64_t seg = seg0; seg < seg1; ++seg) {
          float* part = scratch.partial(h * seg_count + seg);
          const int64_t k0 = seg * kAttentionSegment, k1 = std::min(k0 + kAttentionSegment, length + n);
          detail::run_segment(fn, a, cache, layer, h, k0, k1, part, part + R_all * d, part + R_all * d + R_all,
                              seg + 1 < seg1);
        }
      }
    });
    auto finish = [&](int64_t h, float* o, float* m, float* l) {
      for (int64_t seg = 0; seg < seg_count; ++seg) {
        const float* part = scratch.partial(h * seg_count + seg);
        detail::merge_partial(o, m, l, part, part + R_all * d, part + R_all * d + R_all, R_all, d);
      }
      detail::write_output(out, h, group, d, 0, n, o, l);
    };
    if (seg_count == 1) {
      for (int64_t h = 0; h < kvh; ++h) {
        float* part = scratch.partial(h);
        detail::write_output(out, h, group, d, 0, n, part, part + R_all * d + R_all);
      }
    } else {
      std::atomic<int64_t> next_head{0};
      pool.run([&](int t, int) {
        float* area = scratch.thread_area(t);
        float* o = area;
        float* m = o + R_all * d;
        float* l = m + R_all;
        for (int64_t h; (h = next_head.fetch_add(1, std::memory_order_relaxed)) < kvh;) {
          std::fill(m, m + R_all, -INFINITY);
          std::fill(l, l + R_all, 0.0f);
          finish(h, o, m, l);
        }
      });
    }
    return;
  }

  // Prefill: one task per (head, tile of rows), longest tiles first, walking their segments.
  const int64_t tile_rows = scratch.tile_queries / group;
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const int64_t tasks = kvh * tiles;
  pool.run([&](int t, int) {
    const int64_t R = scratch.tile_queries;
    float* area = scratch.thread_area(t);
    float* qs = area;
    float* s = qs + R * d;
    float* o = s + R * kAttentionChunk;
    float* acc = o + R * d;
    float* m = acc + R * d;
    float* l = m + R;
    float* acc_m = l + R;
    float* acc_l = acc_m + R;
    float* alpha = acc_l + R;
    for (int64_t task; (task = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
      const int64_t tile = tiles - 1 - task / kvh, h = task % kvh;
      const int64_t row0 = tile * tile_rows, rows = std::min(tile_rows, n - row0);
      const int64_t queries = rows * group;
      detail::gather_queries(q, h, group, d, row0, rows, qs);
      detail::ChunkArgs a = base;
      a.queries = queries;
      a.limit0 = length + row0 + 1;
      a.q = qs;
      a.s = s;
      a.alpha = alpha;
      const int64_t end = length + row0 + rows;  // keys the tile's last row sees
      std::fill(acc_m, acc_m + queries, -INFINITY);
      std::fill(acc_l, acc_l + queries, 0.0f);
      for (int64_t k0 = 0; k0 < end; k0 += kAttentionSegment) {
        detail::run_segment(fn, a, cache, layer, h, k0, std::min(k0 + kAttentionSegment, end), o, m, l);
        detail::merge_partial(acc, acc_m, acc_l, o, m, l, queries, d);
      }
      detail::write_output(out, h, group, d, row0, rows, acc, acc_l);
    }
  });
}

}  // namespace mimo::cpu
