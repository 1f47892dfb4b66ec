// The MiMo forward pass, written once over the backend surface (backend/backend.hpp): the main
// decoder stack and the Multi-Token-Prediction layers. Semantics follow the Hugging Face
// MiMoForCausalLM (Qwen2 decoder) exactly; see tests/ for the independent references.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/config.hpp"
#include "mimo/error.hpp"
#include "mimo/weights.hpp"

namespace mimo {

template <class B>
struct BlockWeights {
  typename B::Vector input_layernorm, post_attention_layernorm;
  typename B::Linear q_proj, k_proj, v_proj, o_proj;
  typename B::Vector q_bias, k_bias, v_bias;  // empty without attention_bias
  typename B::Linear gate_proj, up_proj, down_proj;
};

template <class B>
struct MtpWeights {
  typename B::Vector token_layernorm, hidden_layernorm, final_layernorm;
  typename B::Linear input_proj;  // (H, 2H)
  BlockWeights<B> block;
};

// The model's weights as the backend uses them.
template <class B>
struct Weights {
  typename B::Linear embed_tokens;  // (V, H), gathered by row
  std::vector<BlockWeights<B>> layers;
  typename B::Vector norm;
  typename B::Linear lm_head;  // (V, H)
  std::vector<MtpWeights<B>> mtp_layers;
  std::optional<typename B::Linear> draft_head;  // a cheaper copy of lm_head for the MTP steps, if any

  const typename B::Linear& mtp_head() const { return draft_head ? *draft_head : lm_head; }
};

namespace detail {

template <class B>
Status prepare_block(const DecoderBlockTensors& t, BlockWeights<B>& w) {
  struct L {
    const TensorView& src;
    typename B::Linear& dst;
  };
  for (L l : {L{t.q_proj, w.q_proj}, L{t.k_proj, w.k_proj}, L{t.v_proj, w.v_proj}, L{t.o_proj, w.o_proj},
              L{t.gate_proj, w.gate_proj}, L{t.up_proj, w.up_proj}, L{t.down_proj, w.down_proj}}) {
    auto m = B::make_linear(l.src);
    if (!m) return std::move(m).error();
    l.dst = std::move(*m);
  }
  struct V {
    const TensorView& src;
    typename B::Vector& dst;
  };
  for (V v : {V{t.input_layernorm, w.input_layernorm}, V{t.post_attention_layernorm, w.post_attention_layernorm},
              V{t.q_bias, w.q_bias}, V{t.k_bias, w.k_bias}, V{t.v_bias, w.v_bias}}) {
    auto m = B::make_vector(v.src);
    if (!m) return std::move(m).error();
    v.dst = std::move(*m);
  }
  return ok();
}

}  // namespace detail

// Builds the backend's weights from validated tensors. `progress(done, total)` is called after
// each layer; returning false cancels.
template <class B, class Progress>
Expected<Weights<B>> prepare_weights(const ModelTensors& t, Progress&& progress) {
  Weights<B> w;
  const size_t total = t.layers.size() + t.mtp_layers.size() + 1;
  size_t done = 0;
  auto step = [&]() -> Status {
    if (!progress(++done, total)) return Error(Errc::cancelled, "model load cancelled");
    return ok();
  };
  auto embed = B::make_linear(t.embed_tokens);
  if (!embed) return std::move(embed).error();
  w.embed_tokens = std::move(*embed);
  auto head = B::make_linear(t.lm_head);
  if (!head) return std::move(head).error();
  w.lm_head = std::move(*head);
  if (t.draft_head) {
    auto draft = B::make_linear(t.draft_head);
    if (!draft) return std::move(draft).error();
    w.draft_head = std::move(*draft);
  }
  auto norm = B::make_vector(t.norm);
  if (!norm) return std::move(norm).error();
  w.norm = std::move(*norm);
  if (auto s = step(); !s) return std::move(s).error();

  w.layers.resize(t.layers.size());
  for (size_t i = 0; i < t.layers.size(); ++i) {
    if (auto s = detail::prepare_block<B>(t.layers[i], w.layers[i]); !s) return std::move(s).error();
    if (auto s = step(); !s) return std::move(s).error();
  }
  w.mtp_layers.resize(t.mtp_layers.size());
  for (size_t k = 0; k < t.mtp_layers.size(); ++k) {
    const MtpLayerTensors& src = t.mtp_layers[k];
    MtpWeights<B>& dst = w.mtp_layers[k];
    if (auto s = detail::prepare_block<B>(src.block, dst.block); !s) return std::move(s).error();
    auto proj = B::make_linear(src.input_proj);
    if (!proj) return std::move(proj).error();
    dst.input_proj = std::move(*proj);
    for (auto [from, to] : {std::pair{&src.token_layernorm, &dst.token_layernorm},
                            std::pair{&src.hidden_layernorm, &dst.hidden_layernorm},
                            std::pair{&src.final_layernorm, &dst.final_layernorm}}) {
      auto v = B::make_vector(*from);
      if (!v) return std::move(v).error();
      *to = std::move(*v);
    }
    if (auto s = step(); !s) return std::move(s).error();
  }
  return w;
}

// Scratch rows for one forward chunk of up to `rows` tokens.
template <class B>
struct Activations {
  typename B::Buffer x_buf, xn_buf, q_buf, k_buf, v_buf, attn_buf, gate_buf, up_buf, cat_buf;
  Rows x, xn, q, k, v, attn, gate, up, cat;

  Status allocate(int64_t rows, const ModelConfig& c) {
    struct Item {
      typename B::Buffer& buf;
      Rows& out;
      int64_t width;
      const char* what;
    };
    for (Item i : {Item{x_buf, x, c.hidden_size, "hidden rows"}, Item{xn_buf, xn, c.hidden_size, "normed rows"},
                   Item{q_buf, q, c.q_dim(), "query rows"}, Item{k_buf, k, c.kv_dim(), "key rows"},
                   Item{v_buf, v, c.kv_dim(), "value rows"}, Item{attn_buf, attn, c.q_dim(), "attention rows"},
                   Item{gate_buf, gate, c.intermediate_size, "MLP gate rows"},
                   Item{up_buf, up, c.intermediate_size, "MLP up rows"},
                   Item{cat_buf, cat, 2 * c.hidden_size, "MTP input rows"}}) {
      auto r = B::rows(i.buf, rows, i.width, i.what);
      if (!r) return std::move(r).error();
      i.out = *r;
    }
    return ok();
  }

  // The same buffers viewed as n rows.
  Activations& with_rows(int64_t n) {
    for (Rows* r : {&x, &xn, &q, &k, &v, &attn, &gate, &up, &cat}) r->count = n;
    return *this;
  }
};

inline AttentionShape attention_shape(const ModelConfig& c) {
  return AttentionShape{c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rope_theta};
}

namespace detail {

// The fused ops of the backend surface (backend.hpp), where the backend has them, else their
// plain ops.
template <class B>
concept HasRmsNormLinear = requires(typename B::Context& ctx, const Rows& x, const typename B::Vector& w,
                                    std::span<const typename B::LinearOp> ops) {
  B::rms_norm_linear(ctx, x, w, 1e-6, x, ops);
};
template <class B>
concept HasRmsNormSwiglu = requires(typename B::Context& ctx, const Rows& x, const typename B::Vector& w,
                                    const typename B::Linear& proj) {
  B::rms_norm_swiglu(ctx, x, w, 1e-6, x, proj, proj, x, x);
};
template <class B>
concept HasRopeAttention = requires(typename B::Context& ctx, typename B::KvCache& kv, const Rows& x,
                                    const AttentionShape& shape, std::span<const int64_t> positions) {
  B::rope_attention(ctx, kv, int64_t{0}, int64_t{0}, x, x, x, shape, positions, x);
};

// normed = rms_norm(x); op.out (+)= normed W^T + bias for every op.
template <class B>
void rms_norm_linear(typename B::Context& ctx, const Rows& x, const typename B::Vector& weight, double eps,
                     const Rows& normed, std::initializer_list<typename B::LinearOp> ops) {
  const std::span<const typename B::LinearOp> all(ops.begin(), ops.size());
  if constexpr (HasRmsNormLinear<B>) {
    B::rms_norm_linear(ctx, x, weight, eps, normed, all);
  } else {
    B::rms_norm(ctx, x, weight, eps, normed);
    B::linear(ctx, normed, all);
  }
}

// normed = rms_norm(x); gate = silu(normed Wg^T) * (normed Wu^T).
template <class B>
void rms_norm_swiglu(typename B::Context& ctx, const Rows& x, const typename B::Vector& weight, double eps,
                     const Rows& normed, const typename B::Linear& gate_proj, const typename B::Linear& up_proj,
                     const Rows& gate, const Rows& up) {
  if constexpr (HasRmsNormSwiglu<B>) {
    B::rms_norm_swiglu(ctx, x, weight, eps, normed, gate_proj, up_proj, gate, up);
  } else {
    B::rms_norm(ctx, x, weight, eps, normed);
    B::linear(ctx, normed, {{&gate_proj, nullptr, gate}, {&up_proj, nullptr, up}});
    B::silu_mul(ctx, gate, up);
  }
}

// RoPE of q and k at `positions`, then attention (which stores k and v first).
template <class B>
void rope_attention(typename B::Context& ctx, typename B::KvCache& kv, int64_t layer, int64_t length, const Rows& q,
                    const Rows& k, const Rows& v, const AttentionShape& shape, std::span<const int64_t> positions,
                    const Rows& out) {
  if constexpr (HasRopeAttention<B>) {
    B::rope_attention(ctx, kv, layer, length, q, k, v, shape, positions, out);
  } else {
    B::rope(ctx, q, shape.num_heads, shape, positions);
    B::rope(ctx, k, shape.num_kv_heads, shape, positions);
    B::attention(ctx, kv, layer, length, q, k, v, shape, out);
  }
}

}  // namespace detail

// One pre-norm decoder block over the rows in a.x (updated in place). New keys and values go to
// entries [length, length + n) of `layer` in `kv`; row i attends to entries [0, length + i].
template <class B>
void decoder_block(typename B::Context& ctx, const ModelConfig& c, const BlockWeights<B>& w, typename B::KvCache& kv,
                   int64_t layer, int64_t length, std::span<const int64_t> positions, Activations<B>& a) {
  detail::rms_norm_linear<B>(ctx, a.x, w.input_layernorm, c.rms_norm_eps, a.xn,
                             {{&w.q_proj, &w.q_bias, a.q}, {&w.k_proj, &w.k_bias, a.k}, {&w.v_proj, &w.v_bias, a.v}});
  detail::rope_attention<B>(ctx, kv, layer, length, a.q, a.k, a.v, attention_shape(c), positions, a.attn);
  B::linear(ctx, a.attn, {{&w.o_proj, nullptr, a.x, true}});
  detail::rms_norm_swiglu<B>(ctx, a.x, w.post_attention_layernorm, c.rms_norm_eps, a.xn, w.gate_proj, w.up_proj, a.gate,
                             a.up);
  B::linear(ctx, a.gate, {{&w.down_proj, nullptr, a.x, true}});
}

// The main decoder stack over a.x (embedded tokens at `positions`), then model.norm into `hidden`.
// Checks `cancel` between layers, so a cancel takes effect within one layer's work.
template <class B>
Status main_stack(typename B::Context& ctx, const ModelConfig& c, const Weights<B>& w, typename B::KvCache& kv,
                  int64_t length, std::span<const int64_t> positions, Activations<B>& a, const Rows& hidden,
                  const std::atomic<bool>* cancel) {
  for (size_t l = 0; l < w.layers.size(); ++l) {
    if (cancel && cancel->load(std::memory_order_relaxed)) return Error(Errc::cancelled, "forward pass cancelled");
    decoder_block<B>(ctx, c, w.layers[l], kv, static_cast<int64_t>(l), length, positions, a);
  }
  B::rms_norm(ctx, a.x, w.norm, c.rms_norm_eps, hidden);
  return ok();
}

// One MTP step over n rows: z = input_proj([hidden_layernorm(prev), token_layernorm(embed(token))]),
// a decoder block with the layer's own cache, then final_layernorm into `out`.
template <class B>
void mtp_layer(typename B::Context& ctx, const ModelConfig& c, const Weights<B>& w, const MtpWeights<B>& m,
               typename B::KvCache& kv, int64_t length, const Rows& prev, std::span<const int32_t> tokens,
               std::span<const int64_t> positions, Activations<B>& a, const Rows& out) {
  const int64_t H = c.hidden_size;
  const Rows cat_hidden{a.cat.data, a.cat.count, H, a.cat.stride};
  const Rows cat_token{a.cat.data + H, a.cat.count, H, a.cat.stride};
  B::rms_norm(ctx, prev, m.hidden_layernorm, c.rms_norm_eps, cat_hidden);
  B::embed(ctx, w.embed_tokens, tokens, a.x);
  B::rms_norm(ctx, a.x, m.token_layernorm, c.rms_norm_eps, cat_token);
  B::linear(ctx, a.cat, {{&m.input_proj, nullptr, a.x}});
  decoder_block<B>(ctx, c, m.block, kv, 0, length, positions, a);
  B::rms_norm(ctx, a.x, m.final_layernorm, c.rms_norm_eps, out);
}

}  // namespace mimo
