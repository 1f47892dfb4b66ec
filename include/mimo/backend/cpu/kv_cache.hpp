// The CPU backend's KV cache: storage, copies, and the saved-state encoding.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/detail/byte_stream.hpp"
#include "mimo/error.hpp"

namespace mimo::cpu {

// Element type of a KV cache.
enum class KvType : uint32_t {
  f32 = 1,  // exact: the reference's arithmetic
};

constexpr std::string_view to_string(KvType t) {
  switch (t) {
    case KvType::f32: return "f32";
  }
  return "?";
}

// Keys and values of a stack of decoder layers, laid out [layer][kv_head][entry][head_dim] so
// that attention streams each head's entries contiguously. Keys are stored after RoPE.
struct KvCache {
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
  Status copy_from(const KvCache& o, int64_t length) {
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


// Saved state: entries [0, length) of every layer and head, keys then values.
inline uint64_t kv_state_bytes(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t length) {
  return 2ull * static_cast<uint64_t>(layers) * kv_heads * length * head_dim * sizeof(float);
}

inline Status kv_save(const KvCache& kv, int64_t length, mimo::detail::ByteWriter& w) {
  const size_t bytes = static_cast<size_t>(length * kv.head_dim) * sizeof(float);
  for (int64_t l = 0; l < kv.layers; ++l) {
    for (int64_t h = 0; h < kv.kv_heads; ++h) {
      if (auto s = w.write(kv.key(l, h, 0), bytes); !s) return s;
      if (auto s = w.write(kv.value(l, h, 0), bytes); !s) return s;
    }
  }
  return ok();
}

inline Status kv_load(KvCache& kv, int64_t length, mimo::detail::ByteReader& r) {
  const size_t bytes = static_cast<size_t>(length * kv.head_dim) * sizeof(float);
  for (int64_t l = 0; l < kv.layers; ++l) {
    for (int64_t h = 0; h < kv.kv_heads; ++h) {
      if (auto s = r.read(kv.key(l, h, 0), bytes, "keys"); !s) return s;
      if (auto s = r.read(kv.value(l, h, 0), bytes, "values"); !s) return s;
    }
  }
  return ok();
}

}  // namespace mimo::cpu
