// The model's hyperparameters, read from a Hugging Face config.json. Field names are the
// config.json keys.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/io/json.hpp"

namespace mimo {

struct ModelConfig {
  int64_t vocab_size = 0;               // V: rows of embed_tokens and lm_head (151680 for MiMo-7B)
  int64_t hidden_size = 0;              // H: width of the residual stream (4096)
  int64_t intermediate_size = 0;        // F: width of the SwiGLU MLP (11008)
  int64_t num_hidden_layers = 0;        // decoder layers of the main model (36)
  int64_t num_attention_heads = 0;      // query heads (32)
  int64_t num_key_value_heads = 0;      // KV heads shared by groups of query heads (8)
  int64_t head_dim = 0;                 // D: width of one head (128); hidden_size / heads when absent
  int64_t num_nextn_predict_layers = 0; // MTP layers, model.mtp_layers.{k} (1 for MiMo-7B)
  int64_t max_position_embeddings = 0;  // the longest context the model was trained for (32768)
  double rope_theta = 10000.0;          // RoPE base (640000 for MiMo-7B)
  double rms_norm_eps = 1e-6;           // epsilon inside every RMSNorm
  bool attention_bias = true;           // q/k/v projections have biases (Qwen2 and MiMo: yes)
  bool tie_word_embeddings = false;     // lm_head shares embed_tokens (MiMo: no)
  std::vector<int64_t> eos_token_id;    // one or several end-of-sequence ids
  int64_t bos_token_id = -1;            // -1 when absent
  std::string model_type;               // "mimo", also accepted: "qwen2"

  int64_t q_dim() const { return num_attention_heads * head_dim; }   // width of q_proj's output
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }  // width of k_proj's and v_proj's output

  // config.json text in the Hugging Face MiMo layout.
  std::string to_json() const;

  // Parses config.json text. `where` names the file in errors.
  static Expected<ModelConfig> parse(const simdjson::padded_string& text, const std::string& where);
  static Expected<ModelConfig> load(const std::filesystem::path& path);
};

inline Expected<ModelConfig> ModelConfig::parse(const simdjson::padded_string& text, const std::string& where) {
  simdjson::dom::parser parser;
  auto root = io::parse_object(parser, text, where);
  if (!root) return std::move(root).error();
  const io::JsonObject& j = *root;
  ModelConfig c;

  // Upper bounds keep every product of dimensions far from overflow and reject absurd files early.
  constexpr int64_t kMaxDim = 1 << 20;
  constexpr int64_t kMaxVocab = 1 << 24;
  constexpr int64_t kMaxLayers = 4096;

  if (j.has("model_type")) {
    auto t = j.get_string("model_type");
    if (!t) return std::move(t).error();
    c.model_type = std::string(*t);
    if (c.model_type != "mimo" && c.model_type != "qwen2") {
      return j.bad("model_type", "'" + c.model_type + "' is not a MiMo or Qwen2 model");
    }
  }
  if (j.has("hidden_act")) {
    auto act = j.get_string("hidden_act");
    if (!act) return std::move(act).error();
    if (*act != "silu") return j.bad("hidden_act", "only 'silu' is supported, found '" + std::string(*act) + "'");
  }
  if (j.has("rope_scaling")) return j.bad("rope_scaling", "RoPE scaling is not supported");
  {
    auto sliding = j.get_bool("use_sliding_window", false);
    if (!sliding) return std::move(sliding).error();
    if (*sliding) return j.bad("use_sliding_window", "sliding-window attention is not supported");
  }

  struct IntField {
    const char* key;
    int64_t* out;
    int64_t lo, hi;
  };
  const IntField required[] = {
      {"vocab_size", &c.vocab_size, 1, kMaxVocab},
      {"hidden_size", &c.hidden_size, 1, kMaxDim},
      {"intermediate_size", &c.intermediate_size, 1, kMaxDim},
      {"num_hidden_layers", &c.num_hidden_layers, 1, kMaxLayers},
      {"num_attention_heads", &c.num_attention_heads, 1, kMaxDim},
  };
  for (const auto& f : required) {
    auto v = j.get_int_in(f.key, f.lo, f.hi);
    if (!v) return std::move(v).error();
    *f.out = *v;
  }
  auto kv = j.get_int_in("num_key_value_heads", c.num_attention_heads, 1, c.num_attention_heads);
  if (!kv) return std::move(kv).error();
  c.num_key_value_heads = *kv;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return j.bad("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                            std::to_string(c.num_attention_heads));
  }
  const int64_t default_head_dim = c.hidden_size / c.num_attention_heads;
  auto hd = j.get_int_in("head_dim", default_head_dim, 2, kMaxDim);
  if (!hd) return std::move(hd).error();
  c.head_dim = *hd;
  if (c.head_dim % 2 != 0) return j.bad("head_dim", "must be even for RoPE, found " + std::to_string(c.head_dim));
  if (c.q_dim() > kMaxDim * 16) return j.bad("head_dim", "num_attention_heads * head_dim is too large");

  auto mtp = j.get_int_in("num_nextn_predict_layers", 0, 0, 64);
  if (!mtp) return std::move(mtp).error();
  c.num_nextn_predict_layers = *mtp;
  auto max_pos = j.get_int_in("max_position_embeddings", 32768, 1, int64_t{1} << 30);
  if (!max_pos) return std::move(max_pos).error();
  c.max_position_embeddings = *max_pos;

  auto theta = j.get_number("rope_theta", 10000.0);
  if (!theta) return std::move(theta).error();
  if (!(*theta > 1.0 && *theta < 1e12)) return j.bad("rope_theta", "must be a number in (1, 1e12)");
  c.rope_theta = *theta;
  auto eps = j.get_number("rms_norm_eps", 1e-6);
  if (!eps) return std::move(eps).error();
  if (!(*eps > 0.0 && *eps < 1.0)) return j.bad("rms_norm_eps", "must be a number in (0, 1)");
  c.rms_norm_eps = *eps;

  auto bias = j.get_bool("attention_bias", true);
  if (!bias) return std::move(bias).error();
  c.attention_bias = *bias;
  auto tie = j.get_bool("tie_word_embeddings", false);
  if (!tie) return std::move(tie).error();
  c.tie_word_embeddings = *tie;

  auto bos = j.get_int_in("bos_token_id", -1, -1, c.vocab_size - 1);
  if (!bos) return std::move(bos).error();
  c.bos_token_id = *bos;
  if (j.has("eos_token_id")) {
    auto e = j.element("eos_token_id");
    if (!e) return std::move(e).error();
    simdjson::dom::array list;
    if (e->get(list) == simdjson::SUCCESS) {
      for (simdjson::dom::element item : list) {
        auto id = j.as_int(item, "eos_token_id");
        if (!id) return std::move(id).error();
        c.eos_token_id.push_back(*id);
      }
    } else {
      auto id = j.as_int(*e, "eos_token_id");
      if (!id) return std::move(id).error();
      c.eos_token_id.push_back(*id);
    }
    for (int64_t id : c.eos_token_id) {
      if (id < 0 || id >= c.vocab_size) return j.bad("eos_token_id", std::to_string(id) + " is not below vocab_size");
    }
  }
  return c;
}

inline std::string ModelConfig::to_json() const {
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return std::string(buf);
  };
  std::string eos;
  if (eos_token_id.size() == 1) {
    eos = std::to_string(eos_token_id[0]);
  } else {
    eos = "[";
    for (size_t i = 0; i < eos_token_id.size(); ++i) eos += (i ? ", " : "") + std::to_string(eos_token_id[i]);
    eos += "]";
  }
  std::string j = "{\n";
  j += "  \"architectures\": [\"MiMoForCausalLM\"],\n";
  j += "  \"model_type\": \"" + (model_type.empty() ? std::string("mimo") : model_type) + "\",\n";
  j += "  \"attention_bias\": " + std::string(attention_bias ? "true" : "false") + ",\n";
  j += "  \"attention_dropout\": 0.0,\n";
  if (bos_token_id >= 0) j += "  \"bos_token_id\": " + std::to_string(bos_token_id) + ",\n";
  if (!eos_token_id.empty()) j += "  \"eos_token_id\": " + eos + ",\n";
  j += "  \"head_dim\": " + std::to_string(head_dim) + ",\n";
  j += "  \"hidden_act\": \"silu\",\n";
  j += "  \"hidden_size\": " + std::to_string(hidden_size) + ",\n";
  j += "  \"intermediate_size\": " + std::to_string(intermediate_size) + ",\n";
  j += "  \"max_position_embeddings\": " + std::to_string(max_position_embeddings) + ",\n";
  j += "  \"num_attention_heads\": " + std::to_string(num_attention_heads) + ",\n";
  j += "  \"num_hidden_layers\": " + std::to_string(num_hidden_layers) + ",\n";
  j += "  \"num_key_value_heads\": " + std::to_string(num_key_value_heads) + ",\n";
  j += "  \"num_nextn_predict_layers\": " + std::to_string(num_nextn_predict_layers) + ",\n";
  j += "  \"rms_norm_eps\": " + num(rms_norm_eps) + ",\n";
  j += "  \"rope_theta\": " + num(rope_theta) + ",\n";
  j += "  \"tie_word_embeddings\": " + std::string(tie_word_embeddings ? "true" : "false") + ",\n";
  j += "  \"torch_dtype\": \"bfloat16\",\n";
  j += "  \"use_sliding_window\": false,\n";
  j += "  \"vocab_size\": " + std::to_string(vocab_size) + "\n";
  j += "}\n";
  return j;
}

inline Expected<ModelConfig> ModelConfig::load(const std::filesystem::path& path) {
  auto text = io::read_padded(path, 16u << 20);
  if (!text) return std::move(text).error();
  return parse(*text, path.string());
}

}  // namespace mimo
