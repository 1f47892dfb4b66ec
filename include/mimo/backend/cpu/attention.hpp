// Causal attention of the CPU backend over its KV cache, with grouped-query heads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/kv_cache.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"

namespace mimo::cpu {

// Appends rows k, v (n rows of kv_heads * head_dim) at entries [length, length + n) of `layer`,
// then computes causal attention for the n query rows q: row i sees entries [0, length + i].
// `scratch` holds thread_count * group * capacity floats.
inline void attention(ThreadPool& pool, KvCache& cache, int64_t layer, int64_t length, const Rows& q, const Rows& k,
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
