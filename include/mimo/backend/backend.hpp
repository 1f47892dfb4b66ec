// The seam between the model and the hardware. The model logic (mimo/transformer.hpp) and the
// session (mimo/session.hpp) are written once against this surface; each backend (backend/cpu/,
// backend/cuda/) provides it as a struct of types and static functions. Ops know nothing about
// MiMo: they are norms, products, RoPE and attention over rows of fp32 activations that live in
// the backend's memory.
//
// The surface (backend/cpu/cpu.hpp is the reference implementation):
//
//   types
//     ContextOptions        options of a session's execution context (threads; device, stream)
//     Context               per-session execution state: thread pool or stream, handles, scratch
//     Linear                a weight matrix [out, in] ready for products (a view into the mapped
//                           file on the CPU; device memory on a GPU)
//     Vector                a small fp32 vector (norm weight, bias); may be empty (no bias)
//     KvCache               keys (after RoPE) and values of `layers` decoder layers, `capacity`
//                           entries each
//     Buffer                owned activation storage in backend memory
//     LinearOp              {const Linear* weight; const Vector* bias; Rows out; bool accumulate}
//   preparing a model (once)
//     make_linear(TensorView) -> Expected<Linear>, make_vector(TensorView) -> Expected<Vector>
//   per session
//     make_context(ContextOptions, AttentionShape, capacity, max_cols) -> Expected<Context>
//     shared_context_options(const Context&) -> ContextOptions   (a copy shares threads/stream)
//     make_kv_cache(KvCache&, layers, AttentionShape, capacity) -> Status
//     copy_kv_cache(KvCache& dst, const KvCache& src, length) -> Status
//     rows(Buffer&, count, width, what) -> Expected<Rows>        (grows the buffer when needed)
//   forward(ctx, body) -> Status               runs body(ctx), which enqueues the ops of one forward
//                                               pass and nothing else (no to_host, no buffer growth,
//                                               no side effects: a GPU backend may run it up to three
//                                               times to capture and replay it as a graph)
//   ops (enqueued in order on the context; a GPU backend reports asynchronous failures at to_host)
//     embed(ctx, table, tokens (host), out)           out[i] = table[tokens[i]]
//     rms_norm(ctx, x, weight, eps, out)              out = weight * x / sqrt(mean(x^2) + eps); out may alias x
//     linear(ctx, x, span<LinearOp>)                  op.out (+)= x W^T + bias, one dispatch for all ops
//     rope(ctx, x, heads, shape, positions (host))    rotate-half RoPE of every head of row i at positions[i]
//     silu_mul(ctx, gate, up)                         gate = silu(gate) * up
//     attention(ctx, kv, layer, length, q, k, v, shape, out)
//                                                     store k, v at entries [length, length+n) of layer, then
//                                                     causal attention: query row i sees entries [0, length+i]
//     gather_rows(ctx, src, rows (host), dst)         dst[i] = src[rows[i]]
//     copy_rows(ctx, src, dst)
//     argmax_rows(ctx, x)                             per row, the index of its largest value (the first on
//                                                     ties), or -1 for a row with NaN or +inf, or only -inf
//     to_host(ctx, src, float* dst) -> Status         copies rows to host memory; a synchronisation point
//     read_argmax(ctx, span<int32_t> out) -> Status   the first out.size() ids of the last argmax_rows; a
//                                                     synchronisation point (greedy selection without
//                                                     copying the logits)
//     top_rows(ctx, x, count)                         per row, its `count` largest values (value descending,
//                                                     -0 == +0, then lower index), in ascending index order;
//                                                     ids -1 for a row with NaN or +inf, or only -inf;
//                                                     1 <= count <= min(width, max_top_count)
//     read_top(ctx, span<int32_t> ids, span<float> values) -> Status
//                                                     the first ids.size() / count rows of the last top_rows; a
//                                                     synchronisation point (a sampler's candidates without
//                                                     copying the logits)
//   fused ops (optional: where a backend lacks one, the model runs the plain ops it stands for;
//   a backend that fuses may leave the scratch rows named below unwritten)
//     rms_norm_linear(ctx, x, weight, eps, normed, span<LinearOp>)
//                                                     rms_norm into normed (scratch), then linear over it
//     rms_norm_swiglu(ctx, x, weight, eps, normed, gate_proj, up_proj, gate, up)
//                                                     rms_norm into normed (scratch), the gate and up products
//                                                     into gate and up (scratch), then silu_mul(gate, up)
//     rope_attention(ctx, kv, layer, length, q, k, v, shape, positions, out)
//                                                     rope of q (num_heads) and of k (num_kv_heads), then attention
//   saved state (session save/restore)
//     kv_format(kv) -> u32, kv_bytes(kv, length), kv_bytes_layers(kv, layers, length)
//     kv_save(kv, length, ByteWriter&), kv_load(kv, length, ByteReader&) -> Status
//     rows_save(rows, ByteWriter&), rows_load(rows, ByteReader&) -> Status
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

// The most entries top_rows selects per row (a sampler's top-k plus its penalty window).
inline constexpr int32_t max_top_count = 4096;

// The dimensions the ops need, fixed per model.
struct AttentionShape {
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // key/value heads; query head h reads KV head h / (num_heads / num_kv_heads)
  int64_t head_dim = 0;
  double rope_theta = 0.0;
};

// The types every backend provides (the functions are checked where they are used).
template <class B>
concept Backend = requires {
  typename B::ContextOptions;
  typename B::Context;
  typename B::Linear;
  typename B::Vector;
  typename B::KvCache;
  typename B::Buffer;
  typename B::LinearOp;
  { B::name() } -> std::convertible_to<const char*>;
};

}  // namespace mimo
