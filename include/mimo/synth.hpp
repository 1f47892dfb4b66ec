// Random-weight checkpoints in the exact Hugging Face MiMo layout (config.json, safetensors,
// optional shards with model.safetensors.index.json), for tests and benchmarks: no real weights
// are needed to measure speed or check the loader. Weights are streamed to disk, so the 7B shape
// never sits in memory, and each tensor's values depend only on the seed and its name (sharding
// does not change them).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/config.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/dtype.hpp"
#include "mimo/error.hpp"
#include "mimo/io/safetensors_writer.hpp"

namespace mimo::synth {

// The shapes of the presets.
inline ModelConfig preset_7b() {
  ModelConfig c;
  c.vocab_size = 151680;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_hidden_layers = 36;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.num_nextn_predict_layers = 1;
  c.max_position_embeddings = 32768;
  c.rope_theta = 640000.0;
  c.rms_norm_eps = 1e-5;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.bos_token_id = 151643;
  c.eos_token_id = {151643};
  c.model_type = "mimo";
  return c;
}

// The real vocabulary (so the real tokenizer works with it) around a very small network.
inline ModelConfig preset_tiny() {
  ModelConfig c = preset_7b();
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  return c;
}

struct Options {
  uint64_t seed = 0;
  int shards = 1;               // 1: model.safetensors; more: model-0000i-of-0000n.safetensors + index
  DType dtype = DType::bf16;    // BF16, F16 or F32
  std::filesystem::path tokenizer{};  // a tokenizer.json to copy beside the weights (optional)
  // Called with bytes written and total; return false to cancel.
  std::function<bool(uint64_t, uint64_t)> on_progress{};
};

enum class Init { linear, norm, bias, embedding };

struct SynthTensor {
  io::TensorSpec spec;
  Init init;
  int64_t fan_in;
};

// Every tensor of a checkpoint with config c, in the order they are written.
inline std::vector<SynthTensor> tensor_list(const ModelConfig& c, DType dtype) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
  std::vector<SynthTensor> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, Init init, int64_t fan_in) {
    out.push_back(SynthTensor{io::TensorSpec{std::move(name), dtype, std::move(shape)}, init, fan_in});
  };
  auto block = [&](const std::string& p) {
    add(p + "input_layernorm.weight", {H}, Init::norm, H);
    add(p + "self_attn.q_proj.weight", {Q, H}, Init::linear, H);
    add(p + "self_attn.k_proj.weight", {KV, H}, Init::linear, H);
    add(p + "self_attn.v_proj.weight", {KV, H}, Init::linear, H);
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {Q}, Init::bias, H);
      add(p + "self_attn.k_proj.bias", {KV}, Init::bias, H);
      add(p + "self_attn.v_proj.bias", {KV}, Init::bias, H);
    }
    add(p + "self_attn.o_proj.weight", {H, Q}, Init::linear, Q);
    add(p + "post_attention_layernorm.weight", {H}, Init::norm, H);
    add(p + "mlp.gate_proj.weight", {F, H}, Init::linear, H);
    add(p + "mlp.up_proj.weight", {F, H}, Init::linear, H);
    add(p + "mlp.down_proj.weight", {H, F}, Init::linear, F);
  };
  add("model.embed_tokens.weight", {V, H}, Init::embedding, H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) block("model.layers." + std::to_string(l) + ".");
  add("model.norm.weight", {H}, Init::norm, H);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string p = "model.mtp_layers." + std::to_string(k) + ".";
    add(p + "token_layernorm.weight", {H}, Init::norm, H);
    add(p + "hidden_layernorm.weight", {H}, Init::norm, H);
    add(p + "input_proj.weight", {H, 2 * H}, Init::linear, 2 * H);
    block(p);
    add(p + "final_layernorm.weight", {H}, Init::norm, H);
  }
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, H}, Init::linear, H);
  return out;
}

namespace detail {

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t name_hash(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : s) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  return h;
}

// Uniform values in [-1, 1), two per 64-bit draw.
struct UniformStream {
  uint64_t state;
  uint64_t bits = 0;
  bool have = false;
  float next() {
    if (!have) bits = splitmix64(state);
    const uint32_t u = static_cast<uint32_t>(have ? bits >> 40 : bits >> 8) & 0xffffffu;
    have = !have;
    return static_cast<float>(u) * (1.0f / 8388608.0f) - 1.0f;
  }
};

inline Status write_tensor(io::SafetensorsWriter& w, const SynthTensor& t, uint64_t seed, uint64_t& done,
                           uint64_t total, const std::function<bool(uint64_t, uint64_t)>& progress) {
  UniformStream rng{seed ^ name_hash(t.spec.name)};
  rng.state = splitmix64(rng.state);
  // Uniform with the standard deviation each kind of tensor needs to keep activations O(1).
  const float sqrt3 = 1.7320508f;
  float scale = 0.0f, offset = 0.0f;
  switch (t.init) {
    case Init::linear: scale = sqrt3 / std::sqrt(static_cast<float>(t.fan_in)); break;
    case Init::embedding: scale = sqrt3 * 0.5f; break;
    case Init::norm: scale = 0.2f, offset = 1.0f; break;
    case Init::bias: scale = sqrt3 * 0.1f; break;
  }
  const uint64_t count = t.spec.nbytes() / dtype_size(t.spec.dtype);
  constexpr uint64_t kChunk = 1 << 20;
  mimo::detail::AlignedBuffer<unsigned char> buf;
  if (auto s = buf.reserve(kChunk * 4, "synth write buffer"); !s) return s;
  for (uint64_t first = 0; first < count; first += kChunk) {
    const uint64_t n = std::min(kChunk, count - first);
    for (uint64_t i = 0; i < n; ++i) {
      const float v = offset + scale * rng.next();
      if (t.spec.dtype == DType::f32) {
        std::memcpy(buf.data() + 4 * i, &v, 4);
      } else {
        const uint16_t h = t.spec.dtype == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(buf.data() + 2 * i, &h, 2);
      }
    }
    const uint64_t bytes = n * dtype_size(t.spec.dtype);
    if (auto s = w.write(buf.data(), static_cast<size_t>(bytes)); !s) return s;
    done += bytes;
    if (progress && !progress(done, total)) return Error(Errc::cancelled, "synth cancelled");
  }
  return ok();
}

inline Status write_text(const std::filesystem::path& path, const std::string& text) {
  std::FILE* f = std::fopen(path.string().c_str(), "wb");
  if (!f) return Error(Errc::io, path.string() + ": cannot create");
  const bool good = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !good) return Error(Errc::io, path.string() + ": write failed");
  return ok();
}

}  // namespace detail

// Writes a random-weight checkpoint for config c into directory `out` (created if missing).
inline Status write_checkpoint(const std::filesystem::path& out, const ModelConfig& c, const Options& o = {}) {
  if (!is_float_weight_dtype(o.dtype)) return Error(Errc::invalid_argument, "synth: dtype must be BF16, F16 or F32");
  if (o.shards < 1 || o.shards > 999) return Error(Errc::invalid_argument, "synth: shards must be in [1, 999]");
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return Error(Errc::io, out.string() + ": cannot create directory: " + ec.message());
  if (auto s = detail::write_text(out / "config.json", c.to_json()); !s) return s;

  const auto tensors = tensor_list(c, o.dtype);
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.spec.nbytes();

  // Consecutive groups of roughly total/shards bytes.
  std::vector<std::vector<const SynthTensor*>> groups(static_cast<size_t>(o.shards));
  {
    uint64_t acc = 0;
    for (const auto& t : tensors) {
      size_t g = static_cast<size_t>(acc * static_cast<uint64_t>(o.shards) / std::max<uint64_t>(total, 1));
      g = std::min(g, groups.size() - 1);
      groups[g].push_back(&t);
      acc += t.spec.nbytes();
    }
  }
  auto shard_name = [&](size_t i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05d.safetensors", i + 1, o.shards);
    return std::string(buf);
  };
  uint64_t done = 0;
  std::string weight_map;
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string name = o.shards == 1 ? "model.safetensors" : shard_name(g);
    std::vector<io::TensorSpec> specs;
    for (const auto* t : groups[g]) {
      specs.push_back(t->spec);
      weight_map += std::string(weight_map.empty() ? "" : ",\n") + "    \"" + t->spec.name + "\": \"" + name + "\"";
    }
    auto w = io::SafetensorsWriter::create(out / name, specs);
    if (!w) return std::move(w).error();
    for (const auto* t : groups[g]) {
      if (auto s = detail::write_tensor(*w, *t, o.seed, done, total, o.on_progress); !s) return s;
    }
    if (auto s = w->finish(); !s) return s;
  }
  if (o.shards > 1) {
    const std::string index = "{\n  \"metadata\": {\"total_size\": " + std::to_string(total) +
                              "},\n  \"weight_map\": {\n" + weight_map + "\n  }\n}\n";
    if (auto s = detail::write_text(out / "model.safetensors.index.json", index); !s) return s;
  }
  if (!o.tokenizer.empty()) {
    std::filesystem::copy_file(o.tokenizer, out / "tokenizer.json", std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return Error(Errc::io, o.tokenizer.string() + ": cannot copy: " + ec.message());
    const auto config = o.tokenizer.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(config, ec)) {
      std::filesystem::copy_file(config, out / "tokenizer_config.json", std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) return Error(Errc::io, config.string() + ": cannot copy: " + ec.message());
    }
  }
  return ok();
}

}  // namespace mimo::synth
