// The tensors of a MiMo checkpoint, by layer, each checked against the config (present, float
// dtype, exact shape, bytes inside its file) before anything uses it. Views into the mapping:
// nothing is copied here. Products (not the embeddings, norms or biases) may be quantized
// (mimo/quant.hpp; Checkpoint::require_linear).
#pragma once

#include <string>
#include <vector>

#include "mimo/config.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"

namespace mimo {

// One pre-norm decoder block: attention then SwiGLU MLP, each with a residual connection.
struct DecoderBlockTensors {
  TensorView input_layernorm;           // (H)
  TensorView q_proj, q_bias;            // (nH*D, H), (nH*D); biases absent when !attention_bias
  TensorView k_proj, k_bias;            // (nKV*D, H), (nKV*D)
  TensorView v_proj, v_bias;            // (nKV*D, H), (nKV*D)
  TensorView o_proj;                    // (H, nH*D)
  TensorView post_attention_layernorm;  // (H)
  TensorView gate_proj, up_proj;        // (F, H)
  TensorView down_proj;                 // (H, F)
};

// One Multi-Token-Prediction layer: combines a hidden state with the embedding of the next token
// and runs a decoder block on the result; predicts the token after next through the shared lm_head.
struct MtpLayerTensors {
  TensorView token_layernorm;   // (H) applied to the embedding of the next token
  TensorView hidden_layernorm;  // (H) applied to the incoming hidden state
  TensorView input_proj;        // (H, 2H) on concat[hidden, embedding]
  DecoderBlockTensors block;
  TensorView final_layernorm;   // (H)
};

struct ModelTensors {
  TensorView embed_tokens;  // (V, H)
  std::vector<DecoderBlockTensors> layers;
  TensorView norm;     // (H)
  TensorView lm_head;  // (V, H); embed_tokens when tie_word_embeddings
  std::vector<MtpLayerTensors> mtp_layers;
  // The MTP steps' logits through a quantized copy of lm_head (LoadOptions::draft_head), a view of
  // its leading rows (LoadOptions::draft_vocab), a copy of those; or empty: through lm_head itself.
  TensorView draft_head;

  static Expected<ModelTensors> bind(const Checkpoint& ck);
};

// Each of a decoder block's tensors that is present, in order.
template <class Fn>
void for_each_block_weight(const DecoderBlockTensors& b, Fn&& fn) {
  for (const TensorView* t : {&b.input_layernorm, &b.q_proj, &b.q_bias, &b.k_proj, &b.k_bias, &b.v_proj, &b.v_bias,
                              &b.o_proj, &b.post_attention_layernorm, &b.gate_proj, &b.up_proj, &b.down_proj}) {
    if (*t) fn(*t);
  }
}

// Each bound weight once (lm_head only when it is not the tied embedding), then draft_head
// unless it is a view of lm_head's rows.
template <class Fn>
void for_each_weight(const ModelTensors& m, Fn&& fn) {
  if (m.embed_tokens) fn(m.embed_tokens);
  for (const auto& b : m.layers) for_each_block_weight(b, fn);
  if (m.norm) fn(m.norm);
  if (m.lm_head && m.lm_head.info != m.embed_tokens.info) fn(m.lm_head);
  for (const auto& l : m.mtp_layers) {
    for (const TensorView* t : {&l.token_layernorm, &l.hidden_layernorm, &l.input_proj, &l.final_layernorm}) {
      if (*t) fn(*t);
    }
    for_each_block_weight(l.block, fn);
  }
  if (m.draft_head && m.draft_head.data != m.lm_head.data) fn(m.draft_head);
}

// A view of the first `rows` rows of a 2-d weight, float or quantized (codes, scales and
// minimums are all row-major), described by `info`, which must outlive the view.
inline TensorView leading_rows(const TensorView& t, int64_t rows, io::TensorInfo& info) {
  info = *t.info;
  info.name = t.name() + " (first " + std::to_string(rows) + " rows)";
  info.end = info.begin + t.nbytes() / static_cast<uint64_t>(t.dim(0)) * static_cast<uint64_t>(rows);
  info.shape[0] = rows;
  TensorView v = t;
  v.info = &info;
  return v;
}

// LoadOptions::draft_vocab for a model with this config: 0 (the whole vocabulary) up to its size.
inline Status check_draft_vocab(const ModelConfig& c, int64_t draft_vocab) {
  if (draft_vocab < 0 || draft_vocab > c.vocab_size) {
    return Error(Errc::invalid_argument, "draft_vocab " + std::to_string(draft_vocab) + " is not in [0, " +
                                             std::to_string(c.vocab_size) + "] (vocab_size; 0 means all of it)");
  }
  return ok();
}

// Bytes of all the bound weights (codes and scales where quantized): what the model keeps
// resident once loaded (the mapped pages of weights quantized while loading are handed back).
inline uint64_t resident_weight_bytes(const ModelTensors& m) {
  uint64_t bytes = 0;
  for_each_weight(m, [&](const TensorView& t) { bytes += t.stored_bytes(); });
  return bytes;
}

// Bytes of weights one decoding step of the main model reads: every product (codes and scales
// when quantized), norms and biases, and one row of the embeddings.
inline uint64_t decode_weight_bytes(const ModelTensors& m) {
  uint64_t bytes = 0;
  auto add = [&](const TensorView& t) { bytes += t.stored_bytes(); };
  for (const auto& b : m.layers) for_each_block_weight(b, add);
  if (m.norm) add(m.norm);
  if (m.lm_head) add(m.lm_head);
  if (m.embed_tokens) bytes += m.embed_tokens.nbytes() / static_cast<uint64_t>(m.embed_tokens.dim(0));
  return bytes;
}

namespace detail {

inline Status bind_block(const Checkpoint& ck, const std::string& prefix, DecoderBlockTensors& b) {
  const ModelConfig& c = ck.config();
  const int64_t H = c.hidden_size, F = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  struct Item {
    TensorView* out;
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<Item> items = {
      {&b.input_layernorm, prefix + "input_layernorm.weight", {H}},
      {&b.q_proj, prefix + "self_attn.q_proj.weight", {Q, H}},
      {&b.k_proj, prefix + "self_attn.k_proj.weight", {KV, H}},
      {&b.v_proj, prefix + "self_attn.v_proj.weight", {KV, H}},
      {&b.o_proj, prefix + "self_attn.o_proj.weight", {H, Q}},
      {&b.post_attention_layernorm, prefix + "post_attention_layernorm.weight", {H}},
      {&b.gate_proj, prefix + "mlp.gate_proj.weight", {F, H}},
      {&b.up_proj, prefix + "mlp.up_proj.weight", {F, H}},
      {&b.down_proj, prefix + "mlp.down_proj.weight", {H, F}},
  };
  if (c.attention_bias) {
    items.push_back({&b.q_bias, prefix + "self_attn.q_proj.bias", {Q}});
    items.push_back({&b.k_bias, prefix + "self_attn.k_proj.bias", {KV}});
    items.push_back({&b.v_bias, prefix + "self_attn.v_proj.bias", {KV}});
  }
  for (auto& item : items) {
    // Products (2-d) may be quantized; norms and biases are float.
    auto t = item.shape.size() == 2 ? ck.require_linear(item.name, item.shape) : ck.require(item.name, item.shape);
    if (!t) return std::move(t).error();
    *item.out = *t;
  }
  return ok();
}

}  // namespace detail

inline Expected<ModelTensors> ModelTensors::bind(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  const int64_t H = c.hidden_size, V = c.vocab_size;
  ModelTensors m;
  auto embed = ck.require("model.embed_tokens.weight", {V, H});
  if (!embed) return std::move(embed).error();
  m.embed_tokens = *embed;
  auto norm = ck.require("model.norm.weight", {H});
  if (!norm) return std::move(norm).error();
  m.norm = *norm;
  if (c.tie_word_embeddings) {
    m.lm_head = m.embed_tokens;
  } else {
    auto head = ck.require_linear("lm_head.weight", {V, H});
    if (!head) return std::move(head).error();
    m.lm_head = *head;
  }
  m.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (auto s = detail::bind_block(ck, "model.layers." + std::to_string(i) + ".", m.layers[i]); !s) {
      return std::move(s).error();
    }
  }
  m.mtp_layers.resize(static_cast<size_t>(c.num_nextn_predict_layers));
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string prefix = "model.mtp_layers." + std::to_string(k) + ".";
    MtpLayerTensors& L = m.mtp_layers[k];
    if (auto s = detail::bind_block(ck, prefix, L.block); !s) return std::move(s).error();
    struct Item {
      TensorView* out;
      const char* name;
      std::vector<int64_t> shape;
    };
    const Item items[] = {
        {&L.token_layernorm, "token_layernorm.weight", {H}},
        {&L.hidden_layernorm, "hidden_layernorm.weight", {H}},
        {&L.input_proj, "input_proj.weight", {H, 2 * H}},
        {&L.final_layernorm, "final_layernorm.weight", {H}},
    };
    for (const auto& item : items) {
      auto t = item.shape.size() == 2 ? ck.require_linear(prefix + item.name, item.shape)
                                      : ck.require(prefix + item.name, item.shape);
      if (!t) return std::move(t).error();
      *item.out = *t;
    }
  }
  return m;
}

}  // namespace mimo
