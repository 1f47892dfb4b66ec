// Writes the main model of a bf16 mimo checkpoint (`mimo synth --preset 7b`, say) as a GGUF file
// that llama.cpp reads as a qwen2 model, with the same weights, so that its llama-bench and
// `mimo bench` can be compared on one machine (benchmarks/llama_cpp/compare.sh). The MTP layers
// are left out: llama.cpp's qwen2 has none.
//
//   export_gguf --model DIR --tokenizer tokenizer.json --out FILE.gguf
//
// GGUF (version 3): a header of key-value metadata and tensor descriptions, then the tensors,
// each at an offset that is a multiple of 32 bytes. A Hugging Face weight of shape [rows, cols]
// in row-major order is the GGUF tensor of dimensions {cols, rows} with the same bytes, so the
// matrices are copied as they are; norm weights and biases become f32, as llama.cpp expects.
#include <mimo/dtype.hpp>
#include <mimo/io/checkpoint.hpp>
#include <mimo/io/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr uint32_t kGgufF32 = 0, kGgufBf16 = 30;
constexpr uint32_t kTypeU32 = 4, kTypeI32 = 5, kTypeF32 = 6, kTypeString = 8, kTypeArray = 9;
constexpr uint64_t kAlignment = 32;

uint64_t padded(uint64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// The bytes of a GGUF header, built in memory (the 151,680 token strings make it a few MB).
struct Header {
  std::vector<char> bytes;
  uint64_t entries = 0;  // metadata entries written, counted by key()
  template <class T>
  void raw(T v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof v);
  }
  void string(std::string_view s) {
    raw<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void key(std::string_view k, uint32_t type) {
    ++entries;
    string(k);
    raw(type);
  }
  void u32(std::string_view k, uint32_t v) { key(k, kTypeU32); raw(v); }
  void f32(std::string_view k, float v) { key(k, kTypeF32); raw(v); }
  void str(std::string_view k, std::string_view v) { key(k, kTypeString); string(v); }
  void strings(std::string_view k, const std::vector<std::string>& v) {
    key(k, kTypeArray);
    raw(kTypeString);
    raw<uint64_t>(v.size());
    for (const auto& s : v) string(s);
  }
  void i32s(std::string_view k, const std::vector<int32_t>& v) {
    key(k, kTypeArray);
    raw(kTypeI32);
    raw<uint64_t>(v.size());
    for (int32_t x : v) raw(x);
  }
};

struct Vocabulary {
  std::vector<std::string> tokens, merges;
  std::vector<int32_t> types;  // llama.cpp's token types: 1 normal, 3 control, 5 unused
};

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "export_gguf: %s\n", message.c_str());
  std::exit(1);
}

// The byte-level BPE vocabulary and merges of tokenizer.json, padded with unused tokens to the
// model's vocabulary size.
Vocabulary read_vocabulary(const std::string& path, int64_t vocab_size) {
  auto text = mimo::io::read_padded(path, uint64_t{1} << 30);
  if (!text) fail(text.error().message());
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(*text).get(root)) fail(path + ": not JSON");
  Vocabulary v;
  v.tokens.resize(static_cast<size_t>(vocab_size));
  v.types.assign(static_cast<size_t>(vocab_size), 5);
  simdjson::dom::object vocab;
  if (root["model"]["vocab"].get(vocab)) fail(path + ": no model.vocab");
  for (auto [token, id_value] : vocab) {
    int64_t id = 0;
    if (id_value.get(id) || id < 0 || id >= vocab_size) fail(path + ": bad id of '" + std::string(token) + "'");
    v.tokens[static_cast<size_t>(id)] = std::string(token);
    v.types[static_cast<size_t>(id)] = 1;
  }
  simdjson::dom::array added;
  if (!root["added_tokens"].get(added)) {
    for (auto entry : added) {
      int64_t id = 0;
      std::string_view content;
      if (entry["id"].get(id) || entry["content"].get(content) || id < 0 || id >= vocab_size) fail(path + ": bad added token");
      v.tokens[static_cast<size_t>(id)] = std::string(content);
      v.types[static_cast<size_t>(id)] = 3;
    }
  }
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.types[i] == 5) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  }
  simdjson::dom::array merges;
  if (root["model"]["merges"].get(merges)) fail(path + ": no model.merges");
  for (auto merge : merges) {
    std::string_view s;
    if (!merge.get(s)) {  // "a b" in older files, ["a", "b"] in newer ones
      v.merges.emplace_back(s);
      continue;
    }
    simdjson::dom::array pair;
    std::string_view a, b;
    if (merge.get(pair) || pair.size() != 2 || pair.at(0).get(a) || pair.at(1).get(b)) fail(path + ": bad merge");
    v.merges.push_back(std::string(a) + " " + std::string(b));
  }
  return v;
}

struct Tensor {
  std::string gguf_name;
  mimo::TensorView view;
  bool as_f32;  // norms and biases
  uint64_t bytes() const { return view.numel() * (as_f32 ? 4 : 2); }
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, tokenizer_path, out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") model_dir = argv[i + 1];
    else if (flag == "--tokenizer") tokenizer_path = argv[i + 1];
    else if (flag == "--out") out_path = argv[i + 1];
    else fail("unknown option " + flag);
  }
  if (model_dir.empty() || tokenizer_path.empty() || out_path.empty()) {
    fail("usage: export_gguf --model DIR --tokenizer tokenizer.json --out FILE.gguf");
  }
  auto checkpoint = mimo::Checkpoint::open(model_dir);
  if (!checkpoint) fail(checkpoint.error().message());
  const mimo::ModelConfig& c = checkpoint->config();

  std::vector<Tensor> tensors;
  auto add = [&](const std::string& hf, const std::string& gguf, bool as_f32) {
    mimo::TensorView view = checkpoint->find(hf);
    if (!view) fail(model_dir + ": no tensor " + hf);
    if (view.quantized() || view.dtype() != mimo::DType::bf16) fail(hf + ": export needs bf16 weights");
    tensors.push_back({gguf, view, as_f32});
  };
  add("model.embed_tokens.weight", "token_embd.weight", false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".", g = "blk." + std::to_string(l) + ".";
    add(hf + "input_layernorm.weight", g + "attn_norm.weight", true);
    for (const char* p : {"q", "k", "v"}) {
      add(hf + "self_attn." + p + "_proj.weight", g + "attn_" + p + ".weight", false);
      add(hf + "self_attn." + p + "_proj.bias", g + "attn_" + p + ".bias", true);
    }
    add(hf + "self_attn.o_proj.weight", g + "attn_output.weight", false);
    add(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight", true);
    add(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight", false);
    add(hf + "mlp.up_proj.weight", g + "ffn_up.weight", false);
    add(hf + "mlp.down_proj.weight", g + "ffn_down.weight", false);
  }
  add("model.norm.weight", "output_norm.weight", true);
  add("lm_head.weight", "output.weight", false);

  const Vocabulary vocab = read_vocabulary(tokenizer_path, c.vocab_size);
  Header h;
  h.bytes.insert(h.bytes.end(), {'G', 'G', 'U', 'F'});
  h.raw<uint32_t>(3);
  h.raw<uint64_t>(tensors.size());
  const size_t entries_at = h.bytes.size();
  h.raw<uint64_t>(0);  // the count of metadata entries, filled in below
  h.str("general.architecture", "qwen2");
  h.str("general.name", "mimo main model (export_gguf)");
  h.u32("general.file_type", 32);  // mostly bf16
  h.u32("qwen2.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  h.u32("qwen2.embedding_length", static_cast<uint32_t>(c.hidden_size));
  h.u32("qwen2.block_count", static_cast<uint32_t>(c.num_hidden_layers));
  h.u32("qwen2.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  h.u32("qwen2.attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  h.u32("qwen2.attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  h.f32("qwen2.rope.freq_base", static_cast<float>(c.rope_theta));
  h.f32("qwen2.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  h.str("tokenizer.ggml.model", "gpt2");
  h.str("tokenizer.ggml.pre", "qwen2");
  h.strings("tokenizer.ggml.tokens", vocab.tokens);
  h.i32s("tokenizer.ggml.token_type", vocab.types);
  h.strings("tokenizer.ggml.merges", vocab.merges);
  const int64_t eos = c.eos_token_id.empty() ? 0 : c.eos_token_id.front();
  h.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(c.bos_token_id >= 0 ? c.bos_token_id : eos));
  h.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(eos));
  std::memcpy(h.bytes.data() + entries_at, &h.entries, sizeof h.entries);

  uint64_t offset = 0;
  for (Tensor& t : tensors) {
    h.string(t.gguf_name);
    const auto& shape = t.view.shape();
    h.raw<uint32_t>(static_cast<uint32_t>(shape.size()));
    for (size_t d = shape.size(); d-- > 0;) h.raw<uint64_t>(static_cast<uint64_t>(shape[d]));  // innermost first
    h.raw(t.as_f32 ? kGgufF32 : kGgufBf16);
    h.raw(offset);
    offset += padded(t.bytes());
  }
  h.bytes.resize(padded(h.bytes.size()), 0);

  std::FILE* out = std::fopen(out_path.c_str(), "wb");
  if (!out) fail(out_path + ": cannot create");
  bool ok = std::fwrite(h.bytes.data(), 1, h.bytes.size(), out) == h.bytes.size();
  const char zeros[kAlignment] = {};
  std::vector<float> widened;
  for (const Tensor& t : tensors) {
    if (t.as_f32) {
      widened.resize(t.view.numel());
      for (uint64_t i = 0; i < widened.size(); ++i) widened[i] = mimo::load_float(t.view.data, mimo::DType::bf16, i);
      ok = ok && std::fwrite(widened.data(), 4, widened.size(), out) == widened.size();
    } else {
      ok = ok && std::fwrite(t.view.data, 1, t.bytes(), out) == t.bytes();
    }
    const uint64_t pad = padded(t.bytes()) - t.bytes();
    ok = ok && std::fwrite(zeros, 1, pad, out) == pad;
  }
  ok = std::fclose(out) == 0 && ok;
  if (!ok) fail(out_path + ": write failed");
  std::printf("wrote %s: %zu tensors, %.2f GB\n", out_path.c_str(), tensors.size(),
              static_cast<double>(h.bytes.size() + offset) / 1e9);
  return 0;
}
