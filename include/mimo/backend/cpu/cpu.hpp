// The CPU backend: weights used in place from the memory-mapped checkpoint (BF16, F16 or F32),
// fp32 activations, a KV cache of f32, f16, bf16 or int8 elements (kv_cache.hpp) in host memory, a
// thread pool sized by the caller, kernels chosen at run time for the instruction sets of the machine.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/backend/cpu/attention.hpp"
#include "mimo/backend/cpu/isa.hpp"
#include "mimo/backend/cpu/kv_cache.hpp"
#include "mimo/backend/cpu/linear.hpp"
#include "mimo/backend/cpu/matvec.hpp"
#include "mimo/backend/cpu/ops.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/detail/byte_stream.hpp"
#include "mimo/io/checkpoint.hpp"

namespace mimo {

struct Cpu {
  static const char* name() { return "cpu"; }

  // Options of a session's execution context.
  struct ContextOptions {
    int threads = 0;                         // threads of a pool the session creates (0: hardware threads)
    std::shared_ptr<cpu::ThreadPool> pool{}; // or a pool shared with other sessions (threads is then ignored)
    cpu::Isa isa = cpu::detect_isa();        // kernels to use; lower it to force a fallback
    bool exact = false;                      // fp32 products with float weights, and in prefill with
                                             // quantized ones (default: activations rounded to bf16 for
                                             // bf16 dot products with BF16 weights, quantized to int8
                                             // for VNNI ones with quantized weights, where the CPU has
                                             // them; decoding quantized weights always takes int8
                                             // activations; matvec.hpp, gemm.hpp, gemm_int8.hpp)
    cpu::KvType kv_cache = cpu::KvType::f16;  // element type of the KV caches (kv_cache.hpp; f32 is exact)
    // The prefetch hint for weights that decoding streams once per step (weight_matrix.hpp): the
    // default is what this CPU's vendor measured faster.
    cpu::WeightPrefetch weight_prefetch = cpu::default_weight_prefetch();
    // Unless exact: whether prefill's products use bf16 dot products (true) or fp32 (false); the
    // default is what this CPU's vendor measured faster (gemm.hpp). Decoding is not affected.
    bool bf16_prefill = cpu::default_bf16_prefill();
    // Unless exact: whether prefill's products over quantized weights quantize the activations to
    // int8, as decoding does, for integer dot products where the CPU has AVX512_VNNI (true), or
    // widen the weights' codes (false: bf16 or fp32, as bf16_prefill says). gemm_int8.hpp.
    bool int8_prefill = true;
  };

  using Linear = cpu::WeightMatrix;
  struct Vector {
    std::vector<float> values;  // empty: absent (no bias)
    const float* data() const { return values.empty() ? nullptr : values.data(); }
  };
  using KvCache = cpu::KvCache;
  using Buffer = mimo::detail::AlignedBuffer<float>;

  struct Context {
    std::shared_ptr<cpu::ThreadPool> pool;
    cpu::Isa isa = cpu::Isa::scalar;
    bool exact = false;
    cpu::LinearScratch products;
    cpu::AttentionScratch attention;  // per-thread attention memory and split-K partials
    cpu::RopeTable rope_table;
    cpu::KvType kv_type = cpu::KvType::f32;
    std::vector<int32_t> argmax;  // of the last argmax_rows
    std::vector<int32_t> top_ids;  // of the last top_rows, `count` per row
    std::vector<float> top_values;
    cpu::TopScratch top_scratch;
    std::string top_error;  // why the last top_rows selected nothing (read_top reports it)
  };

  struct LinearOp {
    const Linear* weight;
    const Vector* bias;  // may be null or empty
    Rows out;
    bool accumulate = false;
  };

  // --- preparing weights (once per model) ---

  // A view of the stored weight (float, or quantized codes and scales): nothing is copied.
  static Expected<Linear> make_linear(const TensorView& t) {
    if (!t || t.shape().size() != 2) return Error(Errc::invalid_argument, "make_linear: expected a 2-d tensor");
    cpu::WeightMatrix w{t.data, t.dtype(), t.rows(), t.cols()};
    if (t.quantized()) {
      w.quant = t.quant;
      w.group = t.group;
      w.scales = t.scales;
      w.mins = t.mins;
    } else if (!is_float_weight_dtype(t.dtype())) {
      return Error(Errc::invalid_argument, "make_linear: tensor '" + t.name() + "' has dtype " +
                                               std::string(to_string(t.dtype())));
    }
    return w;
  }
  static Expected<Vector> make_vector(const TensorView& t) {
    Vector v;
    if (!t) return v;
    v.values.resize(static_cast<size_t>(t.numel()));
    for (uint64_t i = 0; i < t.numel(); ++i) v.values[i] = load_float(t.data, t.dtype(), i);
    return v;
  }

  // --- per-session state ---

  static Expected<Context> make_context(const ContextOptions& o, const AttentionShape& shape, int64_t capacity,
                                        int64_t max_cols) {
    Context c;
    if (o.pool) {
      c.pool = o.pool;
    } else {
      auto pool = cpu::ThreadPool::create(o.threads);
      if (!pool) return std::move(pool).error();
      c.pool = std::move(*pool);
    }
    c.isa = cpu::isa_supported(o.isa) ? o.isa : cpu::detect_isa();
    c.exact = o.exact;
    c.kv_type = o.kv_cache;
    c.products.prefetch = o.weight_prefetch;
    c.products.bf16_prefill = o.bf16_prefill;
    c.products.int8_prefill = o.int8_prefill;
    if (auto s = c.products.reserve(c.pool->size(), max_cols); !s) return std::move(s).error();
    if (!cpu::valid_kv_type(o.kv_cache)) {
      return Error(Errc::invalid_argument,
                   "KV cache type " + std::to_string(static_cast<uint32_t>(o.kv_cache)) + " is not one of f32, f16, bf16, i8");
    }
    if (auto s = c.attention.reserve(c.pool->size(), shape, capacity); !s) return std::move(s).error();
    return c;
  }

  // Options for another context that shares this one's threads (a copied session).
  static ContextOptions shared_context_options(const Context& c) {
    return ContextOptions{.threads = 0, .pool = c.pool, .isa = c.isa, .exact = c.exact, .kv_cache = c.kv_type,
                          .weight_prefetch = c.products.prefetch, .bf16_prefill = c.products.bf16_prefill, .int8_prefill = c.products.int8_prefill};
  }

  // A cache of the context's type (ContextOptions::kv_cache), or of an explicit type.
  static Status make_kv_cache(Context& c, KvCache& kv, int64_t layers, const AttentionShape& s, int64_t capacity) {
    return kv.allocate(c.kv_type, layers, s.num_kv_heads, s.head_dim, capacity);
  }
  static Status make_kv_cache(KvCache& kv, int64_t layers, const AttentionShape& s, int64_t capacity,
                              cpu::KvType type = cpu::KvType::f32) {
    return kv.allocate(type, layers, s.num_kv_heads, s.head_dim, capacity);
  }
  // Bytes of a cache of `capacity` entries in `layers` layers (Model::estimate).
  static uint64_t kv_cache_bytes(const ContextOptions& o, int64_t layers, int64_t kv_heads, int64_t head_dim,
                                 int64_t capacity) {
    return cpu::kv_state_bytes(o.kv_cache, layers, kv_heads, head_dim, capacity);
  }
  static Status copy_kv_cache(KvCache& dst, const KvCache& src, int64_t length) { return dst.copy_from(src, length); }

  // --- saved state: KV entries [0, length) of every layer and head, keys then values ---

  static uint32_t kv_format(const KvCache& kv) { return static_cast<uint32_t>(kv.type); }
  static uint64_t kv_bytes_layers(const KvCache& kv, int64_t layers, int64_t length) {
    return cpu::kv_state_bytes(kv.type, layers, kv.kv_heads, kv.head_dim, length);
  }
  static uint64_t kv_bytes(const KvCache& kv, int64_t length) { return kv_bytes_layers(kv, kv.layers, length); }
  static Status kv_save(const KvCache& kv, int64_t length, mimo::detail::ByteWriter& w) { return cpu::kv_save(kv, length, w); }
  static Status kv_load(KvCache& kv, int64_t length, mimo::detail::ByteReader& r) { return cpu::kv_load(kv, length, r); }
  static Status rows_save(const Rows& rows, mimo::detail::ByteWriter& w) {
    for (int64_t i = 0; i < rows.count; ++i) {
      if (auto s = w.write(rows.row(i), static_cast<size_t>(rows.width) * sizeof(float)); !s) return s;
    }
    return ok();
  }
  static Status rows_load(const Rows& rows, mimo::detail::ByteReader& r) {
    for (int64_t i = 0; i < rows.count; ++i) {
      if (auto s = r.read(rows.row(i), static_cast<size_t>(rows.width) * sizeof(float), "rows"); !s) return s;
    }
    return ok();
  }

  // Rows of `width` floats; contents undefined.
  static Expected<Rows> rows(Buffer& b, int64_t count, int64_t width, const char* what) {
    if (auto s = b.reserve(static_cast<uint64_t>(count) * width, what); !s) return std::move(s).error();
    return Rows{b.data(), count, width, width};
  }

  // --- ops ---

  // out[i] = table[tokens[i]] (widened to fp32). Tokens were validated by the caller.
  static void embed(Context&, const Linear& table, std::span<const int32_t> tokens, const Rows& out) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      cpu::widen_rows(cpu::Isa::scalar, table, tokens[i], tokens[i] + 1, out.row(static_cast<int64_t>(i)));
    }
  }

  static void rms_norm(Context& c, const Rows& x, const Vector& w, double eps, const Rows& out) {
    cpu::rms_norm_rows(c.isa, c.pool.get(), x, w.data(), eps, out);
  }

  static void linear(Context& c, const Rows& x, std::span<const LinearOp> ops) {
    cpu::LinearJob jobs[4];
    for (size_t i = 0; i < ops.size(); ++i) {
      jobs[i] = cpu::LinearJob{ops[i].weight, ops[i].bias ? ops[i].bias->data() : nullptr, ops[i].out, ops[i].accumulate};
    }
    cpu::linear(*c.pool, c.isa, c.exact, x, std::span<const cpu::LinearJob>(jobs, ops.size()), c.products);
  }
  static void linear(Context& c, const Rows& x, std::initializer_list<LinearOp> ops) {
    linear(c, x, std::span<const LinearOp>(ops.begin(), ops.size()));
  }

  static void rope(Context& c, const Rows& x, int64_t heads, const AttentionShape& s, std::span<const int64_t> positions) {
    cpu::rope_rows(x, heads, s.head_dim, positions, s.rope_theta, c.rope_table);
  }

  static void silu_mul(Context& c, const Rows& gate, const Rows& up) { cpu::silu_mul_rows(c.isa, c.pool.get(), gate, up); }

  static void attention(Context& c, KvCache& kv, int64_t layer, int64_t length, const Rows& q, const Rows& k,
                        const Rows& v, const AttentionShape& s, const Rows& out) {
    cpu::attention(*c.pool, c.isa, kv, layer, length, q, k, v, s.num_heads, out, c.attention);
  }

  // dst[i] = src[rows[i]].
  static void gather_rows(Context&, const Rows& src, std::span<const int32_t> rows, const Rows& dst) {
    for (size_t i = 0; i < rows.size(); ++i) {
      std::memcpy(dst.row(static_cast<int64_t>(i)), src.row(rows[i]), static_cast<size_t>(src.width) * sizeof(float));
    }
  }

  // dst = src, row by row.
  static void copy_rows(Context&, const Rows& src, const Rows& dst) {
    for (int64_t i = 0; i < src.count; ++i) {
      std::memcpy(dst.row(i), src.row(i), static_cast<size_t>(src.width) * sizeof(float));
    }
  }

  // Runs the ops of one forward pass (a GPU backend may capture and replay them as a graph).
  template <class Body>
  static Status forward(Context& c, Body&& body) {
    return body(c);
  }

  // For each row of x, the index of its largest value (the first on ties), or -1 for a row with
  // NaN or +inf, or only -inf; read back with read_argmax.
  static void argmax_rows(Context& c, const Rows& x) {
    c.argmax.resize(static_cast<size_t>(std::max<int64_t>(x.count, 0)));
    for (int64_t i = 0; i < x.count; ++i) c.argmax[static_cast<size_t>(i)] = cpu::argmax_or_invalid(x.row(i), x.width);
  }
  static Status read_argmax(Context& c, std::span<int32_t> out) {
    if (out.size() > c.argmax.size()) {
      return Error(Errc::invalid_argument, "read_argmax: " + std::to_string(out.size()) + " ids asked, " +
                                               std::to_string(c.argmax.size()) + " computed");
    }
    std::copy(c.argmax.begin(), c.argmax.begin() + static_cast<std::ptrdiff_t>(out.size()), out.begin());
    return ok();
  }

  // Per row, its `count` largest values in ascending index order (ids -1 for a row a sampler
  // refuses); read back with read_top.
  static void top_rows(Context& c, const Rows& x, int32_t count) {
    c.top_error.clear();
    if (count < 1 || count > std::min<int64_t>(x.width, max_top_count)) {
      c.top_error = "top: count " + std::to_string(count) + " is not in [1, min(" + std::to_string(x.width) +
                    ", max_top_count)]";
      c.top_ids.clear();
      c.top_values.clear();
      return;
    }
    const size_t size = static_cast<size_t>(std::max<int64_t>(x.count, 0)) * static_cast<size_t>(count);
    c.top_ids.resize(size);
    c.top_values.resize(size);
    for (int64_t i = 0; i < x.count; ++i) {
      const size_t at = static_cast<size_t>(i) * static_cast<size_t>(count);
      (void)cpu::top_or_invalid(x.row(i), x.width, count, c.top_ids.data() + at, c.top_values.data() + at, c.top_scratch);
    }
  }
  static Status read_top(Context& c, std::span<int32_t> ids, std::span<float> values) {
    if (!c.top_error.empty()) return Error(Errc::invalid_argument, c.top_error);
    if (ids.size() != values.size() || ids.size() > c.top_ids.size()) {
      return Error(Errc::invalid_argument, "read_top: " + std::to_string(ids.size()) + " ids and " +
                                               std::to_string(values.size()) + " values asked, " +
                                               std::to_string(c.top_ids.size()) + " computed");
    }
    std::copy_n(c.top_ids.begin(), ids.size(), ids.begin());
    std::copy_n(c.top_values.begin(), values.size(), values.begin());
    return ok();
  }

  // Copies rows to host memory (the same memory here: a copy only when the places differ).
  static Status to_host(Context&, const Rows& src, float* dst) {
    for (int64_t i = 0; i < src.count; ++i) {
      if (src.row(i) != dst + i * src.width) {
        std::memcpy(dst + i * src.width, src.row(i), static_cast<size_t>(src.width) * sizeof(float));
      }
    }
    return ok();
  }
};

static_assert(Backend<Cpu>);

}  // namespace mimo
