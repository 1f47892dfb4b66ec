// Quantized weight formats of mimo checkpoints (written by `mimo quantize`, or made while loading
// with LoadOptions::quantize), and the reference quantizer and dequantizer.
//
// A quantized [rows, cols] weight W is stored as safetensors tensors beside each other:
//
//   q8  <name>          I8  [rows, cols]        codes c in [-127, 127]
//       <name>_scale    F16 [rows, cols / g]    W[r][k] = scale[r][k / g] * c[r][k]
//   q4  <name>          U8  [rows, cols / 2]    codes c in [0, 15], two per byte (see below)
//       <name>_scale    F16 [rows, cols / g]
//       <name>_min      F16 [rows, cols / g]    optional: W[r][k] = scale * c + min
//                                               without it (symmetric): W[r][k] = scale * (c - 8)
//
// g, the group size, is a power of two from 32 to 4096 that divides cols; it follows from the
// shapes. q4 packs
// each run of 32 columns k0..k0+31 (k0 a multiple of 32) into 16 bytes: byte k0/2 + j holds
// column k0 + j in its low nibble and column k0 + 16 + j in its high nibble, so that two masks
// and a shift give the 32 codes in order.
//
// The checkpoint says what it holds in config.json ("quantization_config": {"quant_method":
// "mimo", "type": "q4", "group_size": 32, ...}) and in each file's __metadata__ ("mimo_quant");
// the loader itself goes by the tensors: a weight whose dtype is I8 or U8 and that has a _scale
// beside it is quantized. Embeddings, norms and biases stay in their float dtype.
//
// Dequantized values are fp32: scale * code exactly for q8 and symmetric q4 (scale * (c - 8)),
// and rounded once by a fused multiply-add with a minimum, so that every kernel that widens
// codes to fp32 sees the same values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "mimo/dtype.hpp"

namespace mimo {

enum class QuantType : uint8_t {
  none,  // float weights (BF16, F16, F32), used as stored
  q8,    // 8-bit codes, a scale per group
  q4,    // 4-bit codes, a scale (and optionally a minimum) per group
};

constexpr std::string_view to_string(QuantType t) {
  switch (t) {
    case QuantType::none: return "none";
    case QuantType::q8: return "q8";
    case QuantType::q4: return "q4";
  }
  return "?";
}

// Columns of a code block: group sizes are multiples of it.
inline constexpr int64_t kQuantBlock = 32;

inline std::string quant_scale_name(std::string_view weight) { return std::string(weight) + "_scale"; }
inline std::string quant_min_name(std::string_view weight) { return std::string(weight) + "_min"; }

// Bytes of codes of one row of `cols` weights.
constexpr int64_t quant_row_bytes(QuantType t, int64_t cols) { return t == QuantType::q4 ? cols / 2 : cols; }

// Bytes of the bf16 scales of a [rows, cols] weight in groups of `group` columns (the minimums,
// when present, take as many).
constexpr uint64_t quant_scale_bytes(int64_t rows, int64_t cols, int64_t group) {
  return static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols / group) * 2;
}

// Bytes of a [rows, cols] weight quantized to t: codes, scales and (q4 with minimums) minimums.
constexpr uint64_t quant_tensor_bytes(QuantType t, int64_t rows, int64_t cols, int64_t group, bool with_min) {
  return static_cast<uint64_t>(rows) * static_cast<uint64_t>(quant_row_bytes(t, cols)) +
         quant_scale_bytes(rows, cols, group) * (t == QuantType::q4 && with_min ? 2 : 1);
}

// Whether a [rows, cols] weight can be quantized with groups of `group` columns: a power of two
// from 32 to 4096 that divides cols.
constexpr bool quantizable(int64_t cols, int64_t group) {
  return group >= kQuantBlock && group <= 4096 && (group & (group - 1)) == 0 && cols > 0 && cols % group == 0;
}

namespace detail_quant {

inline uint16_t read_u16(const void* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, static_cast<const unsigned char*>(p) + 2 * i, 2);
  return h;
}
inline void write_u16(void* p, int64_t i, uint16_t h) { std::memcpy(static_cast<unsigned char*>(p) + 2 * i, &h, 2); }

// A code: v * inv clamped to [lo, hi], rounded to nearest (ties away from zero).
inline int quantize_value(float v, float inv, int lo, int hi) {
  const float c = std::clamp(v * inv, static_cast<float>(lo), static_cast<float>(hi));
  return static_cast<int>(c + (c >= 0.0f ? 0.5f : -0.5f));
}

}  // namespace detail_quant

// q8: codes and f16 scales of one row (cols % group == 0). scale = max|w| / 127.
inline void quantize_row_q8(const float* w, int64_t cols, int64_t group, int8_t* codes, void* scales) {
  for (int64_t g = 0; g < cols / group; ++g) {
    const float* v = w + g * group;
    float amax = 0.0f;
    for (int64_t i = 0; i < group; ++i) amax = std::max(amax, std::abs(v[i]));
    const uint16_t s16 = f32_to_f16(amax / 127.0f);
    const float s = f16_to_f32(s16);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int64_t i = 0; i < group; ++i) codes[g * group + i] = static_cast<int8_t>(detail_quant::quantize_value(v[i], inv, -127, 127));
    detail_quant::write_u16(scales, g, s16);
  }
}

// q4: codes (packed as the format says) and f16 scales, and f16 minimums when `mins` is not null,
// of one row. Symmetric: the value of largest magnitude maps to code 0 (scale = -that/8), so the
// 16 levels reach it exactly on one side. With minimums: levels span [min, max] of the group.
// Either way a few candidate scales are tried and the one with the least squared error is kept.
inline void quantize_row_q4(const float* w, int64_t cols, int64_t group, uint8_t* codes, void* scales, void* mins) {
  int c[kQuantBlock];
  for (int64_t g = 0; g < cols / group; ++g) {
    const float* v = w + g * group;
    float lo = v[0], hi = v[0], big = v[0];
    for (int64_t i = 0; i < group; ++i) {
      lo = std::min(lo, v[i]);
      hi = std::max(hi, v[i]);
      if (std::abs(v[i]) > std::abs(big)) big = v[i];
    }
    float best_err = INFINITY;
    uint16_t best_s = 0, best_m = 0;
    // Candidates: the plain range, then slightly narrower ones (clipping the extreme values a
    // little can lower the error of all the others).
    for (int step = 0; step < 6; ++step) {
      const float shrink = 1.0f - 0.02f * static_cast<float>(step);
      uint16_t s16, m16 = 0;
      if (mins) {
        const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo) * shrink;
        s16 = f32_to_f16(2.0f * half / 15.0f);
        m16 = f32_to_f16(mid - half);
      } else {
        s16 = f32_to_f16(-big * shrink / 8.0f);
      }
      const float s = f16_to_f32(s16);
      const float m = mins ? f16_to_f32(m16) : -8.0f * s;
      const float inv = s != 0.0f ? 1.0f / s : 0.0f;
      float err = 0.0f;
      for (int64_t i = 0; i < group; ++i) {
        const int q = detail_quant::quantize_value(v[i] - m, inv, 0, 15);
        const float d = std::fma(s, static_cast<float>(q), m) - v[i];
        err += d * d;
      }
      if (err < best_err) {
        best_err = err;
        best_s = s16;
        best_m = m16;
      }
    }
    const float s = f16_to_f32(best_s);
    const float m = mins ? f16_to_f32(best_m) : -8.0f * s;
    const float inv = s != 0.0f ? 1.0f / s : 0.0f;
    for (int64_t base = 0; base < group; base += kQuantBlock) {
      for (int64_t i = 0; i < kQuantBlock; ++i) c[i] = detail_quant::quantize_value(v[base + i] - m, inv, 0, 15);
      uint8_t* out = codes + (g * group + base) / 2;
      for (int64_t j = 0; j < 16; ++j) out[j] = static_cast<uint8_t>(c[j] | c[j + 16] << 4);
    }
    detail_quant::write_u16(scales, g, best_s);
    if (mins) detail_quant::write_u16(mins, g, best_m);
  }
}

// Code k of a q4 row.
inline int q4_code(const uint8_t* codes, int64_t k) {
  const int64_t base = k / kQuantBlock * kQuantBlock, j = k - base;
  const uint8_t b = codes[base / 2 + (j & 15)];
  return j < 16 ? (b & 15) : (b >> 4);
}

// The exact fp32 values of one quantized row (q8 or q4; `mins` null for symmetric q4).
inline void dequantize_row(QuantType t, const void* codes, const void* scales, const void* mins, int64_t cols,
                           int64_t group, float* out) {
  for (int64_t k = 0; k < cols; ++k) {
    const float s = f16_to_f32(detail_quant::read_u16(scales, k / group));
    if (t == QuantType::q8) {
      out[k] = s * static_cast<float>(static_cast<const int8_t*>(codes)[k]);
    } else {
      const float m = mins ? f16_to_f32(detail_quant::read_u16(mins, k / group)) : -8.0f * s;
      out[k] = std::fma(s, static_cast<float>(q4_code(static_cast<const uint8_t*>(codes), k)), m);
    }
  }
}

}  // namespace mimo
