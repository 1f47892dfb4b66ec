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
#include "mimo/detail/aligned_buffer.hpp"
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

// Keys and values of a stack of decoder layers, fp32, laid out [layer][kv_head][entry][head_dim]
// so that attention streams each head's entries contiguously. Keys are stored after RoPE.
struct KvStorage {
  int64_t layers = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  mimo::detail::AlignedBuffer<float> keys, values;

  Status allocate(int64_t n_layers, int64_t n_kv_heads, int64_t d, int64_t cap) {
    layers = n_layers;
    kv_heads = n_kv_heads;
    head_dim = d;
    capacity = cap;
    const uint64_t n = static_cast<uint64_t>(n_layers) * n_kv_heads * cap * d;
    if (auto s = keys.reserve(n, "KV cache keys"); !s) return s;
    return values.reserve(n, "KV cache values");
  }
  uint64_t bytes() const { return 2 * static_cast<uint64_t>(layers) * kv_heads * capacity * head_dim * sizeof(float); }

  float* key(int64_t layer, int64_t head, int64_t entry) {
    return keys.data() + ((layer * kv_heads + head) * capacity + entry) * head_dim;
  }
  float* value(int64_t layer, int64_t head, int64_t entry) {
    return values.data() + ((layer * kv_heads + head) * capacity + entry) * head_dim;
  }
  const float* key(int64_t layer, int64_t head, int64_t entry) const {
    return keys.data() + ((layer * kv_heads + head) * capacity + entry) * head_dim;
  }
  const float* value(int64_t layer, int64_t head, int64_t entry) const {
    return values.data() + ((layer * kv_heads + head) * capacity + entry) * head_dim;
  }

  // Copies the first `length` entries of every head from another cache of the same shape.
  Status copy_from(const KvStorage& o, int64_t length) {
    if (auto s = allocate(o.layers, o.kv_heads, o.head_dim, o.capacity); !s) return s;
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        std::memcpy(key(l, h, 0), o.key(l, h, 0), static_cast<size_t>(length * head_dim) * sizeof(float));
        std::memcpy(value(l, h, 0), o.value(l, h, 0), static_cast<size_t>(length * head_dim) * sizeof(float));
      }
    }
    return ok();
  }
};

// Appends rows k, v (n rows of kv_heads * head_dim) at entries [length, length + n) of `layer`,
// then computes causal attention for the n query rows q: row i sees entries [0, length + i].
// `scratch` holds thread_count * group * capacity floats.
inline void attention(ThreadPool& pool, KvStorage& cache, int64_t layer, int64_t length, const Rows& q, const Rows& k,
                      const Rows& v, int64_t num_heads, const Rows& out, float* scratch) {
  const int64_t kvh = cache.kv_heads, d = cache.head_dim, n = q.count;
  const int64_t group = num_heads / kvh;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < kvh; ++h) {
      std::memcpy(cache.key(layer, h, length + i), k.row(i) + h * d, static_cast<size_t>(d) * sizeof(float));
      std::memcpy(cache.value(layer, h, length + i), v.row(i) + h * d, static_cast<size_t>(d) * sizeof(float));
    }
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t tasks = kvh * n;
  pool.run([&](int t, int nt) {
    float* scores = scratch + static_cast<int64_t>(t) * group * cache.capacity;
    for (int64_t task = tasks * t / nt; task < tasks * (t + 1) / nt; ++task) {
      const int64_t h = task % kvh, i = task / kvh;
      const int64_t entries = length + i + 1;
      const float* keys = cache.key(layer, h, 0);
      const float* values = cache.value(layer, h, 0);
      for (int64_t g = 0; g < group; ++g) {
        const float* qh = q.row(i) + (h * group + g) * d;
        float* s = scores + g * cache.capacity;
        float mx = -INFINITY;
        for (int64_t j = 0; j < entries; ++j) {
          const float* kj = keys + j * d;
          float dot = 0.0f;
          for (int64_t c = 0; c < d; ++c) dot += qh[c] * kj[c];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < entries; ++j) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        const float inv = 1.0f / sum;
        float* o = out.row(i) + (h * group + g) * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = 0; j < entries; ++j) {
          const float p = s[j] * inv;
          const float* vj = values + j * d;
          for (int64_t c = 0; c < d; ++c) o[c] += p * vj[c];
        }
      }
    }
  });
}

}  // namespace mimo::cpu
