// Element-wise and attention ops of the CPU backend, over rows of fp32 activations.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/matvec.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/dtype.hpp"

namespace mimo::cpu {

// y = w * x / sqrt(mean(x^2) + eps), per row. y may alias x.
inline void rms_norm_rows(const Rows& x, const float* w, double eps, const Rows& y) {
  for (int64_t r = 0; r < x.count; ++r) {
    const float* xr = x.row(r);
    float* yr = y.row(r);
    double ss = 0.0;
    for (int64_t i = 0; i < x.width; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.width) + eps));
    for (int64_t i = 0; i < x.width; ++i) yr[i] = w[i] * (xr[i] * scale);
  }
}

// Rotates pairs (i, i + D/2) of every head of every row by position * theta^(-2i/D): the
// Hugging Face "rotate_half" (NEOX) form. Angles are computed in double precision.
inline void rope_rows(const Rows& x, int64_t heads, int64_t head_dim, std::span<const int64_t> positions,
                      double theta, std::vector<float>& cos_sin) {
  const int64_t half = head_dim / 2;
  cos_sin.resize(static_cast<size_t>(2 * half));
  for (int64_t r = 0; r < x.count; ++r) {
    const double pos = static_cast<double>(positions[r]);
    for (int64_t j = 0; j < half; ++j) {
      const double angle = pos * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
      cos_sin[j] = static_cast<float>(std::cos(angle));
      cos_sin[half + j] = static_cast<float>(std::sin(angle));
    }
    float* row = x.row(r);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = row + h * head_dim;
      for (int64_t j = 0; j < half; ++j) {
        const float c = cos_sin[j], s = cos_sin[half + j];
        const float a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
      }
    }
  }
}

// gate = silu(gate) * up, element-wise.
inline void silu_mul_rows(const Rows& gate, const Rows& up) {
  for (int64_t r = 0; r < gate.count; ++r) {
    float* g = gate.row(r);
    const float* u = up.row(r);
    for (int64_t i = 0; i < gate.width; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

}  // namespace mimo::cpu
