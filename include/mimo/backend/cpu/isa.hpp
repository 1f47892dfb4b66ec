// Instruction sets the CPU kernels can use, detected at run time so one build runs well on any
// x86-64 machine: kernels carry per-function target attributes and the consumer needs no -march.
//
// An Isa is a level: each adds features to a base (AVX2 or AVX-512). Kernels ask for features
// (has_avx512, has_vnni, has_bf16), so lowering a context's level forces every fallback below it;
// tests run each level the machine supports. Other architectures use the scalar kernels for now;
// an ARM NEON level would be one more value with its own target attribute and kernels.
//
// Nor does the consumer need -O3: the kernels' loops over register tiles carry
// MIMO_UNROLL_TILE (below), because at -O2 (CMake's RelWithDebInfo) GCC left the tiles' accumulator
// arrays in memory, and prefill products and attention ran at half speed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define MIMO_X86 1
#include <cpuid.h>
#define MIMO_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MIMO_TARGET_AVX2_VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define MIMO_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define MIMO_TARGET_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define MIMO_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")))
#else
#define MIMO_X86 0
#endif

#if MIMO_X86
#include <immintrin.h>
#endif

// Before a loop over a register tile's rows or columns: unroll it fully. GCC needs telling below
// -O3; Clang unrolls such loops at -O2 by itself, and forcing it in the sanitizer build (-O1)
// doubled that build's compile time.
#if defined(__GNUC__) && !defined(__clang__)
#define MIMO_UNROLL_TILE _Pragma("GCC unroll 16")
#else
#define MIMO_UNROLL_TILE
#endif

namespace mimo::cpu {

enum class Isa {
  scalar,       // portable C++, always available (and what other architectures use for now)
  avx2,         // AVX2 + FMA + F16C
  avx2_vnni,    // + AVX-VNNI (256-bit int8 dot products: Alder Lake and later, Zen 5)
  avx512,       // AVX-512 F/BW/VL/DQ
  avx512_vnni,  // + AVX512_VNNI (Cascade Lake, Ice Lake)
  avx512_bf16,  // + AVX512_VNNI and AVX512_BF16 (bf16 dot products: Sapphire Rapids, Zen 4 and later)
};

inline constexpr Isa kAllIsas[] = {Isa::scalar, Isa::avx2, Isa::avx2_vnni, Isa::avx512, Isa::avx512_vnni, Isa::avx512_bf16};

constexpr std::string_view to_string(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx2_vnni: return "avx2_vnni";
    case Isa::avx512: return "avx512";
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::avx512_bf16: return "avx512_bf16";
  }
  return "?";
}

// Features of a level.
constexpr bool has_avx2(Isa isa) { return isa != Isa::scalar; }
constexpr bool has_avx512(Isa isa) { return isa >= Isa::avx512; }
constexpr bool has_vnni(Isa isa) { return isa == Isa::avx2_vnni || isa >= Isa::avx512_vnni; }
constexpr bool has_bf16(Isa isa) { return isa == Isa::avx512_bf16; }

// What this machine (and its OS, which must save the wider registers) supports.
struct CpuFeatures {
  bool avx2 = false;         // with FMA and F16C
  bool avx_vnni = false;
  bool avx512 = false;       // F, BW, VL, DQ
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
};

inline CpuFeatures detect_features() {
  CpuFeatures f;
#if MIMO_X86
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  // The newer features straight from CPUID (not every compiler's __builtin_cpu_supports knows
  // them); the OS support for the registers they use was checked above.
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (f.avx2 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx512_vnni = f.avx512 && (c >> 11 & 1u);
    if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) {
      f.avx_vnni = (a >> 4 & 1u) != 0;
      f.avx512_bf16 = f.avx512_vnni && (a >> 5 & 1u);
    }
  }
#endif
  return f;
}

// Whether this machine can run kernels of `isa` (tests force each available path).
inline bool isa_supported(Isa isa) {
  const CpuFeatures f = detect_features();
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return f.avx2;
    case Isa::avx2_vnni: return f.avx2 && f.avx_vnni;
    case Isa::avx512: return f.avx512;
    case Isa::avx512_vnni: return f.avx512_vnni;
    case Isa::avx512_bf16: return f.avx512_bf16;
  }
  return false;
}

// The best level this machine supports.
inline Isa detect_isa() {
  for (int i = static_cast<int>(Isa::avx512_bf16); i > 0; --i) {
    if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
  }
  return Isa::scalar;
}

// Whether the CPU is AMD's (or Hygon's): where the kernels' measured choices differ between
// vendors (weight_matrix.hpp, gemm.hpp), those measured on AMD.
inline bool is_amd_cpu() {
#if MIMO_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  // The vendor string "AuthenticAMD" / "HygonGenuine": b holds its first four letters.
  if (__get_cpuid(0, &a, &b, &c, &d)) return b == 0x68747541u /* Auth */ || b == 0x6f677948u /* Hygo */;
#endif
  return false;
}

#if MIMO_X86
namespace detail {

// The first `valid` of 16 lanes (all of them from 16 on, none from 0 down).
inline __mmask16 lanes_mask(int valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>(valid <= 0 ? 0u : (1u << valid) - 1u);
}

// The sum of a vector's lanes in a fixed order: halves, then quarters, pairs and the last two,
// a chain of four adds where lane after lane took sixteen (the kernels call this once per output
// row, and the chain showed in rows of 4096 columns). The masked extracts: GCC 12 warns that the
// plain ones (and the cast) read an "undefined" vector.
MIMO_TARGET_AVX512 inline float hsum512(__m512 v) {
  const __m256 lower = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(v), 0));
  const __m256 upper = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(v), 1));
  const __m256 h = _mm256_add_ps(lower, upper);
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

// The sum of 8 lanes, lane after lane (the AVX2 kernels' fixed order; once per output row).
MIMO_TARGET_AVX2 inline float hsum256(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

// The largest lane (the scalar comparisons of std::max, in lane order).
MIMO_TARGET_AVX2 inline float hmax256(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float x = lanes[0];
  for (int i = 1; i < 8; ++i) x = std::max(x, lanes[i]);
  return x;
}
MIMO_TARGET_AVX512 inline float hmax512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float x = lanes[0];
  for (int i = 1; i < 16; ++i) x = std::max(x, lanes[i]);
  return x;
}

// The 16 words of column t of 16 rows (a 16 x 16 transpose of 32-bit words).
MIMO_TARGET_AVX512 inline void transpose16(const __m512i (&r)[16], __m512i (&out)[16]) {
  __m512i t[16], u[16];
MIMO_UNROLL_TILE
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_epi32(0xffff, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_epi32(0xffff, r[2 * i], r[2 * i + 1]);
  }
MIMO_UNROLL_TILE
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_maskz_unpacklo_epi64(0xff, t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_maskz_unpackhi_epi64(0xff, t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_maskz_unpacklo_epi64(0xff, t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_maskz_unpackhi_epi64(0xff, t[4 * i + 1], t[4 * i + 3]);
  }
  // u[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3.
MIMO_UNROLL_TILE
  for (int c = 0; c < 4; ++c) {
    const __m512i x0 = _mm512_maskz_shuffle_i32x4(0xffff, u[c], u[4 + c], 0x44), x1 = _mm512_maskz_shuffle_i32x4(0xffff, u[c], u[4 + c], 0xee);
    const __m512i x2 = _mm512_maskz_shuffle_i32x4(0xffff, u[8 + c], u[12 + c], 0x44),
                  x3 = _mm512_maskz_shuffle_i32x4(0xffff, u[8 + c], u[12 + c], 0xee);
    out[c] = _mm512_maskz_shuffle_i32x4(0xffff, x0, x2, 0x88);
    out[4 + c] = _mm512_maskz_shuffle_i32x4(0xffff, x0, x2, 0xdd);
    out[8 + c] = _mm512_maskz_shuffle_i32x4(0xffff, x1, x3, 0x88);
    out[12 + c] = _mm512_maskz_shuffle_i32x4(0xffff, x1, x3, 0xdd);
  }
}

// C[MR x 16 J] += acc, the first `valid` columns (masked loads only for a partial tile): the
// store of every GEMM micro-kernel.
template <int MR, int J>
MIMO_TARGET_AVX512 inline void add_tile(float* c, int64_t ldc, int valid, const __m512 (&acc)[MR][J]) {
MIMO_UNROLL_TILE
  for (int i = 0; i < MR; ++i) {
MIMO_UNROLL_TILE
    for (int j = 0; j < J; ++j) {
      float* cp = c + i * ldc + 16 * j;
      if (valid >= 16 * J) {
        _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), acc[i][j]));
      } else {
        const __mmask16 m = lanes_mask(valid - 16 * j);
        _mm512_mask_storeu_ps(cp, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, cp), acc[i][j]));
      }
    }
  }
}

}  // namespace detail
#endif

}  // namespace mimo::cpu
