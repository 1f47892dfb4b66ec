// The seam between the model and the hardware. The model logic (mimo/transformer.hpp) is written
// once against this surface; each backend (backend/cpu/, backend/cuda/) provides it as a struct of
// types and static functions. Ops know nothing about MiMo: they are norms, products, RoPE and
// attention over rows of fp32 activations that live in the backend's memory.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>

#include "mimo/error.hpp"

namespace mimo {

// `count` rows of `width` fp32 values, `stride` floats apart, in the backend's memory (host
// memory for Cpu, device memory for Cuda).
struct Rows {
  float* data = nullptr;
  int64_t count = 0;
  int64_t width = 0;
  int64_t stride = 0;

  float* row(int64_t i) const { return data + i * stride; }
  Rows slice(int64_t first, int64_t n) const { return Rows{data + first * stride, n, width, stride}; }
};

// Which rows of a forward pass produce an output (logits, hidden states).
enum class OutputRows {
  none,  // no row (prefill whose logits nobody reads)
  last,  // only the last new row (plain decoding)
  all,   // every new row (verification of draft tokens, scoring)
};

// The dimensions the ops need, fixed per model.
struct AttentionShape {
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // key/value heads; query head h reads KV head h / (num_heads / num_kv_heads)
  int64_t head_dim = 0;
  double rope_theta = 0.0;
};

// What every backend provides. See backend/cpu/cpu.hpp for the reference implementation and the
// meaning of each operation.
template <class B>
concept Backend = requires {
  typename B::Linear;       // a weight matrix [out, in], ready for products
  typename B::Vector;       // a small fp32 vector: a norm weight or a bias (may be empty)
  typename B::Context;      // per-session execution state: threads or stream, scratch
  typename B::KvCache;      // keys and values of every layer of one decoder stack
  typename B::Buffer;       // owned activation storage
  { B::name() } -> std::convertible_to<const char*>;
};

}  // namespace mimo
