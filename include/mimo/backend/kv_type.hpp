// Element types of a KV cache, shared by the backends: the CPU backend stores all four, the CUDA
// backend f32, f16 and bf16. The values are the numbers of the saved-state formats (kv_format),
// so a state saved from one backend loads into the other's cache of the same type.
#pragma once

#include <cstdint>
#include <string_view>

namespace mimo {

enum class KvType : uint32_t {
  f32 = 1,   // exact
  f16 = 2,   // half the memory; ~3 significant decimal digits, magnitudes saturate at 65504
  bf16 = 3,  // half the memory; ~2 significant decimal digits, f32 range
  i8 = 4,    // a quarter of the memory (plus a scale per entry; CPU only)
};

constexpr std::string_view to_string(KvType t) {
  switch (t) {
    case KvType::f32: return "f32";
    case KvType::f16: return "f16";
    case KvType::bf16: return "bf16";
    case KvType::i8: return "i8";
  }
  return "?";
}

constexpr bool valid_kv_type(KvType t) {
  return t == KvType::f32 || t == KvType::f16 || t == KvType::bf16 || t == KvType::i8;
}

// Bytes of one stored element.
constexpr int64_t kv_element_bytes(KvType t) {
  switch (t) {
    case KvType::f32: return 4;
    case KvType::f16: case KvType::bf16: return 2;
    case KvType::i8: return 1;
  }
  return 4;
}

// Bytes of the saved state of `layers` layers holding `length` entries: per layer and KV head,
// the keys of the entries as elements of the type (i8: then their f32 scales), then the values.
inline uint64_t kv_state_bytes(KvType t, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t length) {
  const uint64_t per_entry = static_cast<uint64_t>(head_dim) * kv_element_bytes(t) + (t == KvType::i8 ? 4 : 0);
  return 2ull * static_cast<uint64_t>(layers) * kv_heads * static_cast<uint64_t>(length) * per_entry;
}

}  // namespace mimo
