// The CPU backend's KV cache: element types, the blocked layout attention streams, appends,
// copies, and the saved-state encoding.
//
// Layout. Each (layer, kv head) owns ceil(capacity / 16) blocks of 16 entries, stored as three
// arrays, one after another:
//   keys    [block][head_dim][16]  transposed: the 16 entries of one channel are adjacent, so the
//                                  scores of 16 keys accumulate in one 16-lane register with no
//                                  horizontal sums
//   values  [block][16][head_dim]  row-major: out += p_j * v_j is a row update
//   scales  [block][2][16] f32     (int8 only) the key scales, then the value scales
// so attention streams keys and values sequentially. Keys are stored after RoPE. Entries past a
// session's length (after a truncate, or never written) hold stale or uninitialised bits; every
// reader masks them by position.
//
// Element types (KvType):
//   f32   exact: the reference arithmetic.
//   f16   IEEE half, rounded to nearest even; magnitudes above 65504 saturate (never infinity).
//   bf16  bfloat16, rounded to nearest even (8 significant bits, the range of f32).
//   i8    symmetric int8 with one f32 scale per entry and head, separately for the key and the
//         value: scale = max|x| / 127, x ~ scale * round(x / scale). Per-entry scales keep appends
//         independent of each other (an entry is quantized once, when it is written).
//
// Saved state (kv_save/kv_load), per layer then kv head: the keys of entries [0, length) as
// [length][head_dim] elements of the type, for i8 followed by their [length] f32 scales; then the
// values the same way. It is independent of the block layout (f32 keeps the format the fp32
// cache always had), and kv_format() names the type so a state is only restored into a cache of
// the same type.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/kv_type.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/detail/byte_stream.hpp"
#include "mimo/dtype.hpp"
#include "mimo/error.hpp"

namespace mimo::cpu {

// The element types (KvType, kv_element_bytes, kv_state_bytes) are backend-independent
// (backend/kv_type.hpp); the CPU backend stores all four.
using mimo::KvType;
using mimo::kv_element_bytes;
using mimo::kv_state_bytes;
using mimo::to_string;
using mimo::valid_kv_type;

inline constexpr int64_t kKvBlock = 16;  // entries per block

namespace detail {

// f32 -> f16 bits, round to nearest even, saturating at +-65504 (NaN stays NaN).
inline uint16_t kv_f16(float x) {
  if (x > 65504.0f) x = 65504.0f;
  if (x < -65504.0f) x = -65504.0f;
  return f32_to_f16(x);
}

// Symmetric int8 of n values with one scale; returns the scale (0 for an all-zero or non-finite
// row, whose codes are then 0).
inline float kv_quantize_i8(const float* x, int64_t stride, int64_t n, int8_t* out, int64_t out_stride) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i * stride]));
  const bool usable = amax > 0.0f && std::isfinite(amax);
  const float scale = usable ? amax / 127.0f : (std::isfinite(amax) ? 0.0f : amax);
  const float inv = usable ? 127.0f / amax : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    float q = x[i * stride] * inv;
    q = std::nearbyint(std::min(127.0f, std::max(-127.0f, q)));
    if (!(q == q)) q = 0.0f;  // NaN input
    out[i * out_stride] = static_cast<int8_t>(q);
  }
  return scale;
}

}  // namespace detail

// Keys and values of a stack of decoder layers; see the header comment for the layout.
// Ownership: the cache owns its memory; copies are explicit (copy_from).
struct KvCache {
  KvType type = KvType::f32;
  int64_t layers = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  int64_t blocks = 0;       // per (layer, head): ceil(capacity / 16)
  int64_t part_bytes = 0;   // bytes of one block's keys (or values): 16 * head_dim elements
  int64_t scale_bytes = 0;  // bytes of one block's scales: 32 f32 for i8, else 0
  int64_t head_bytes = 0;   // bytes of one (layer, head): keys, values, scales; a multiple of 64
  mimo::detail::AlignedBuffer<std::byte> storage;

  Status allocate(KvType t, int64_t n_layers, int64_t n_kv_heads, int64_t d, int64_t cap) {
    if (!valid_kv_type(t)) {
      return Error(Errc::invalid_argument, "KV cache: unknown element type " + std::to_string(static_cast<uint32_t>(t)));
    }
    if (n_layers < 0 || n_kv_heads < 0 || d < 0 || cap < 0) {
      return Error(Errc::invalid_argument, "KV cache: negative dimension");
    }
    type = t;
    layers = n_layers;
    kv_heads = n_kv_heads;
    head_dim = d;
    capacity = cap;
    blocks = (cap + kKvBlock - 1) / kKvBlock;
    part_bytes = kKvBlock * d * kv_element_bytes(t);
    scale_bytes = t == KvType::i8 ? 2 * kKvBlock * 4 : 0;
    const uint64_t per_block = 2 * static_cast<uint64_t>(part_bytes) + static_cast<uint64_t>(scale_bytes);
    if (per_block != 0 && static_cast<uint64_t>(blocks) > (UINT64_MAX / 4) / per_block) {
      return Error(Errc::out_of_memory, "KV cache: size overflows");
    }
    head_bytes = static_cast<int64_t>((static_cast<uint64_t>(blocks) * per_block + 63) / 64 * 64);
    const uint64_t heads = static_cast<uint64_t>(n_layers) * static_cast<uint64_t>(n_kv_heads);
    if (head_bytes != 0 && heads > UINT64_MAX / 2 / static_cast<uint64_t>(head_bytes)) {
      return Error(Errc::out_of_memory, "KV cache: size overflows");
    }
    return storage.reserve(heads * static_cast<uint64_t>(head_bytes), "KV cache");
  }
  uint64_t bytes() const { return static_cast<uint64_t>(layers) * kv_heads * head_bytes; }

  // The key blocks of (layer, head); block b is b * part_bytes further. Then its value blocks and
  // (i8) scale blocks.
  std::byte* keys(int64_t layer, int64_t h) { return storage.data() + (layer * kv_heads + h) * head_bytes; }
  const std::byte* keys(int64_t layer, int64_t h) const { return storage.data() + (layer * kv_heads + h) * head_bytes; }
  std::byte* values(int64_t layer, int64_t h) { return keys(layer, h) + blocks * part_bytes; }
  const std::byte* values(int64_t layer, int64_t h) const { return keys(layer, h) + blocks * part_bytes; }
  std::byte* scales(int64_t layer, int64_t h) { return keys(layer, h) + 2 * blocks * part_bytes; }
  const std::byte* scales(int64_t layer, int64_t h) const { return keys(layer, h) + 2 * blocks * part_bytes; }

  // Byte offsets of entry e's key element c, value element c, and key (value) scale, from
  // keys(), values() and scales().
  int64_t key_at(int64_t e, int64_t c) const {
    return (e / kKvBlock) * part_bytes + (c * kKvBlock + e % kKvBlock) * kv_element_bytes(type);
  }
  int64_t value_at(int64_t e, int64_t c) const {
    return (e / kKvBlock) * part_bytes + ((e % kKvBlock) * head_dim + c) * kv_element_bytes(type);
  }
  int64_t scale_at(int64_t e, bool value) const {
    return (e / kKvBlock) * scale_bytes + ((value ? kKvBlock : 0) + e % kKvBlock) * 4;
  }

  // Writes rows k, v (n rows; head h's vector at column h * head_dim) at entries
  // [first, first + n) of `layer`, converting to the cache's type.
  void store(int64_t layer, int64_t first, const Rows& k, const Rows& v) { store_heads(layer, first, k, v, 0, kv_heads); }
  void store_heads(int64_t layer, int64_t first, const Rows& k, const Rows& v, int64_t h0, int64_t h1) {
    const int64_t d = head_dim;
    for (int64_t h = h0; h < h1; ++h) {
      std::byte* kbase = keys(layer, h);
      std::byte* vbase = values(layer, h);
      for (int64_t i = 0; i < k.count; ++i) {
        const int64_t e = first + i;
        const float* kr = k.row(i) + h * d;
        const float* vr = v.row(i) + h * d;
        std::byte* kp = kbase + key_at(e, 0);    // channel c at kp + c * 16 * es
        std::byte* vp = vbase + value_at(e, 0);  // channel c at vp + c * es
        switch (type) {
          case KvType::f32:
            for (int64_t c = 0; c < d; ++c) std::memcpy(kp + c * kKvBlock * 4, kr + c, 4);
            std::memcpy(vp, vr, static_cast<size_t>(d) * 4);
            break;
          case KvType::bf16:
          case KvType::f16: {
            const bool half = type == KvType::f16;
            for (int64_t c = 0; c < d; ++c) {
              const uint16_t x = half ? detail::kv_f16(kr[c]) : f32_to_bf16(kr[c]);
              std::memcpy(kp + c * kKvBlock * 2, &x, 2);
            }
            for (int64_t c = 0; c < d; ++c) {
              const uint16_t x = half ? detail::kv_f16(vr[c]) : f32_to_bf16(vr[c]);
              std::memcpy(vp + c * 2, &x, 2);
            }
            break;
          }
          case KvType::i8: {
            const float ks = detail::kv_quantize_i8(kr, 1, d, reinterpret_cast<int8_t*>(kp), kKvBlock);
            const float vs = detail::kv_quantize_i8(vr, 1, d, reinterpret_cast<int8_t*>(vp), 1);
            std::memcpy(scales(layer, h) + scale_at(e, false), &ks, 4);
            std::memcpy(scales(layer, h) + scale_at(e, true), &vs, 4);
            break;
          }
        }
      }
    }
  }

  // Entry e of (layer, head) widened to f32 (tests, debugging): key or value, d floats.
  void read(int64_t layer, int64_t h, int64_t e, bool value, float* out) const {
    float scale = 1.0f;
    if (type == KvType::i8) std::memcpy(&scale, scales(layer, h) + scale_at(e, value), 4);
    for (int64_t c = 0; c < head_dim; ++c) {
      const std::byte* p = value ? values(layer, h) + value_at(e, c) : keys(layer, h) + key_at(e, c);
      switch (type) {
        case KvType::f32: std::memcpy(out + c, p, 4); break;
        case KvType::f16: out[c] = load_float(p, DType::f16, 0); break;
        case KvType::bf16: out[c] = load_float(p, DType::bf16, 0); break;
        case KvType::i8: out[c] = scale * static_cast<float>(static_cast<int8_t>(*p)); break;
      }
    }
  }

  // Makes this a cache of o's type and shape holding o's first `length` entries of every layer
  // and head (only the blocks that hold them are copied).
  Status copy_from(const KvCache& o, int64_t length) {
    if (auto s = allocate(o.type, o.layers, o.kv_heads, o.head_dim, o.capacity); !s) return s;
    const int64_t used = std::min(blocks, (length + kKvBlock - 1) / kKvBlock);
    if (used == 0) return ok();
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        std::memcpy(keys(l, h), o.keys(l, h), static_cast<size_t>(used * part_bytes));
        std::memcpy(values(l, h), o.values(l, h), static_cast<size_t>(used * part_bytes));
        if (scale_bytes) std::memcpy(scales(l, h), o.scales(l, h), static_cast<size_t>(used * scale_bytes));
      }
    }
    return ok();
  }
};

namespace detail {

// Moves the keys or values of entries [0, length) of one (layer, head) between the blocks and
// the saved encoding, an entry (or a piece of one) at a time through a small staging buffer:
// saving from a const cache, loading into a mutable one.
template <class Kv, class Io>
Status kv_transfer(Kv& kv, int64_t layer, int64_t h, int64_t length, bool value, Io&& io) {
  constexpr bool saving = std::is_const_v<Kv>;
  const int64_t d = kv.head_dim, es = kv_element_bytes(kv.type);
  constexpr int64_t kStage = 2048;
  alignas(64) std::byte stage[kStage];
  auto* part = value ? kv.values(layer, h) : kv.keys(layer, h);
  auto* scales = kv.scales(layer, h);
  const int64_t per_piece = kStage / es;
  for (int64_t e = 0; e < length; ++e) {
    for (int64_t c0 = 0; c0 < d; c0 += per_piece) {
      const int64_t n = std::min(per_piece, d - c0);
      if (value) {
        auto* p = part + kv.value_at(e, c0);
        if constexpr (saving) std::memcpy(stage, p, static_cast<size_t>(n * es));
        if (auto s = io(stage, static_cast<size_t>(n * es)); !s) return s;
        if constexpr (!saving) std::memcpy(p, stage, static_cast<size_t>(n * es));
      } else {
        auto* p = part + kv.key_at(e, c0);
        const int64_t stride = kKvBlock * es;
        if constexpr (saving) {
          for (int64_t c = 0; c < n; ++c) std::memcpy(stage + c * es, p + c * stride, static_cast<size_t>(es));
        }
        if (auto s = io(stage, static_cast<size_t>(n * es)); !s) return s;
        if constexpr (!saving) {
          for (int64_t c = 0; c < n; ++c) std::memcpy(p + c * stride, stage + c * es, static_cast<size_t>(es));
        }
      }
    }
  }
  if (kv.type == KvType::i8) {
    const int64_t per = kStage / 4;
    for (int64_t first = 0; first < length; first += per) {
      const int64_t n = std::min(per, length - first);
      if constexpr (saving) {
        for (int64_t i = 0; i < n; ++i) std::memcpy(stage + i * 4, scales + kv.scale_at(first + i, value), 4);
      }
      if (auto s = io(stage, static_cast<size_t>(n * 4)); !s) return s;
      if constexpr (!saving) {
        for (int64_t i = 0; i < n; ++i) std::memcpy(scales + kv.scale_at(first + i, value), stage + i * 4, 4);
      }
    }
  }
  return ok();
}

}  // namespace detail

// Saved state: entries [0, length) of every layer and head, keys then values (header comment).
inline Status kv_save(const KvCache& kv, int64_t length, mimo::detail::ByteWriter& w) {
  for (int64_t l = 0; l < kv.layers; ++l) {
    for (int64_t h = 0; h < kv.kv_heads; ++h) {
      for (bool value : {false, true}) {
        auto s = detail::kv_transfer(kv, l, h, length, value,
                                     [&](std::byte* p, size_t n) { return w.write(p, n); });
        if (!s) return s;
      }
    }
  }
  return ok();
}

inline Status kv_load(KvCache& kv, int64_t length, mimo::detail::ByteReader& r) {
  if (length > kv.capacity) return Error(Errc::corrupt_state, "KV cache: saved length exceeds the capacity");
  for (int64_t l = 0; l < kv.layers; ++l) {
    for (int64_t h = 0; h < kv.kv_heads; ++h) {
      for (bool value : {false, true}) {
        auto s = detail::kv_transfer(kv, l, h, length, value,
                                     [&](std::byte* p, size_t n) { return r.read(p, n, value ? "values" : "keys"); });
        if (!s) return s;
      }
    }
  }
  return ok();
}

}  // namespace mimo::cpu
