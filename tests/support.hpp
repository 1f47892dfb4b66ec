// Helpers shared by the tests: temporary directories, fixture files, and an independent naive
// reference of the MiMo forward pass in double precision (plain loops, no library math).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include <mimo/io/checkpoint.hpp>
#include <mimo/mimo.hpp>
#include <mimo/synth.hpp>

#if defined(MIMO_TEST_EXTERN_CPU)
// Instantiated once, in tests/cpu_instantiation.cpp.
extern template class mimo::Model<mimo::Cpu>;
extern template class mimo::Session<mimo::Cpu>;
#endif

namespace test {

inline std::filesystem::path fixtures() { return MIMO_FIXTURES_DIR; }
inline std::filesystem::path tiny_fixture() { return fixtures() / "tiny-mimo"; }

// A directory removed when the object dies.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("mimo-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

inline std::vector<float> read_f32(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open ", p.string());
  in.seekg(0, std::ios::end);
  const auto n = static_cast<size_t>(in.tellg());
  in.seekg(0);
  std::vector<float> v(n / 4);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return v;
}

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

inline void write_bytes(const std::filesystem::path& p, const std::vector<unsigned char>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

inline std::vector<unsigned char> read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {});
}

// A small random-weight checkpoint for tests.
inline mimo::ModelConfig small_config(int64_t vocab = 512, int64_t hidden = 64, int64_t layers = 2, int64_t heads = 4,
                                      int64_t kv_heads = 2, int64_t head_dim = 16, int64_t ffn = 96, int64_t mtp = 1) {
  mimo::ModelConfig c = mimo::synth::preset_tiny();
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.intermediate_size = ffn;
  c.num_nextn_predict_layers = mtp;
  c.bos_token_id = vocab - 2;
  c.eos_token_id = {vocab - 1};
  return c;
}

inline void synthesize(const std::filesystem::path& dir, const mimo::ModelConfig& c, uint64_t seed = 1,
                       int shards = 1, mimo::DType dtype = mimo::DType::bf16) {
  mimo::synth::Options options;
  options.seed = seed;
  options.shards = shards;
  options.dtype = dtype;
  auto st = mimo::synth::write_checkpoint(dir, c, options);
  REQUIRE_MESSAGE(st.has_value(), (st ? "" : st.error().describe()));
}

inline std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// ----- the naive reference, in double precision -----

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows

class Reference {
 public:
  explicit Reference(const mimo::Checkpoint& ck) : ck_(ck), c_(ck.config()) {}

  // Main-model logits at every position, and the post-norm hidden states.
  void forward(const std::vector<int32_t>& tokens, Mat& logits, Mat& hidden) const {
    const size_t T = tokens.size();
    Mat x(T);
    for (size_t t = 0; t < T; ++t) x[t] = row("model.embed_tokens.weight", tokens[t]);
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      std::vector<int64_t> pos(T);
      for (size_t t = 0; t < T; ++t) pos[t] = static_cast<int64_t>(t);
      block("model.layers." + std::to_string(l) + ".", x, pos);
    }
    hidden.assign(T, {});
    logits.assign(T, {});
    for (size_t t = 0; t < T; ++t) {
      hidden[t] = rms_norm(x[t], "model.norm.weight");
      logits[t] = lm_head(hidden[t]);
    }
  }

  // MTP step k over rows t = 0..n-1 at positions 0..n-1: prev[t] is the incoming hidden state,
  // tokens[t] the token whose embedding is combined. Returns the step's outputs and logits.
  void mtp(int64_t step, const Mat& prev, const std::vector<int32_t>& tokens, Mat& out, Mat& logits) const {
    const int64_t layer = std::min<int64_t>(step, c_.num_nextn_predict_layers - 1);
    const std::string p = "model.mtp_layers." + std::to_string(layer) + ".";
    const size_t n = tokens.size();
    const int64_t H = c_.hidden_size;
    Mat z(n);
    std::vector<int64_t> pos(n);
    for (size_t t = 0; t < n; ++t) {
      const Vec g = rms_norm(prev[t], p + "hidden_layernorm.weight");
      const Vec e = rms_norm(row("model.embed_tokens.weight", tokens[t]), p + "token_layernorm.weight");
      Vec cat(g);
      cat.insert(cat.end(), e.begin(), e.end());
      z[t] = matvec(p + "input_proj.weight", cat);
      REQUIRE(static_cast<int64_t>(z[t].size()) == H);
      pos[t] = static_cast<int64_t>(t);
    }
    block(p, z, pos);
    out.assign(n, {});
    logits.assign(n, {});
    for (size_t t = 0; t < n; ++t) {
      out[t] = rms_norm(z[t], p + "final_layernorm.weight");
      logits[t] = lm_head(out[t]);
    }
  }

 private:
  Vec tensor(const std::string& name) const {
    mimo::TensorView t = ck_.find(name);
    REQUIRE_MESSAGE(static_cast<bool>(t), "reference: missing ", name);
    Vec v(t.numel());
    for (uint64_t i = 0; i < t.numel(); ++i) v[i] = mimo::load_float(t.data, t.dtype(), i);
    return v;
  }
  Vec row(const std::string& name, int64_t r) const {
    mimo::TensorView t = ck_.find(name);
    const int64_t cols = t.dim(1);
    Vec v(static_cast<size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) v[i] = mimo::load_float(t.data, t.dtype(), static_cast<uint64_t>(r * cols + i));
    return v;
  }
  Vec matvec(const std::string& name, const Vec& x) const {
    mimo::TensorView t = ck_.find(name);
    REQUIRE_MESSAGE(static_cast<bool>(t), "reference: missing ", name);
    const int64_t rows = t.dim(0), cols = t.dim(1);
    REQUIRE(static_cast<int64_t>(x.size()) == cols);
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0.0;
      for (int64_t k = 0; k < cols; ++k) acc += mimo::load_float(t.data, t.dtype(), static_cast<uint64_t>(r * cols + k)) * x[k];
      y[r] = acc;
    }
    return y;
  }
  Vec rms_norm(const Vec& x, const std::string& weight) const {
    const Vec w = tensor(weight);
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + c_.rms_norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * inv;
    return y;
  }
  Vec lm_head(const Vec& h) const {
    return matvec(c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", h);
  }
  void rope(Vec& v, int64_t heads, int64_t pos) const {
    const int64_t D = c_.head_dim, half = D / 2;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < half; ++j) {
        const double inv_freq = std::pow(c_.rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(D));
        const double a = static_cast<double>(pos) * inv_freq;
        const double x1 = v[h * D + j], x2 = v[h * D + j + half];
        v[h * D + j] = x1 * std::cos(a) - x2 * std::sin(a);
        v[h * D + j + half] = x2 * std::cos(a) + x1 * std::sin(a);
      }
    }
  }
  void add_bias(Vec& v, const std::string& name) const {
    if (!c_.attention_bias) return;
    const Vec b = tensor(name);
    for (size_t i = 0; i < v.size(); ++i) v[i] += b[i];
  }
  // A decoder block over all rows (causal attention over the rows themselves).
  void block(const std::string& p, Mat& x, const std::vector<int64_t>& pos) const {
    const size_t T = x.size();
    const int64_t nH = c_.num_attention_heads, nKV = c_.num_key_value_heads, D = c_.head_dim;
    Mat q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const Vec n = rms_norm(x[t], p + "input_layernorm.weight");
      q[t] = matvec(p + "self_attn.q_proj.weight", n);
      add_bias(q[t], p + "self_attn.q_proj.bias");
      k[t] = matvec(p + "self_attn.k_proj.weight", n);
      add_bias(k[t], p + "self_attn.k_proj.bias");
      v[t] = matvec(p + "self_attn.v_proj.weight", n);
      add_bias(v[t], p + "self_attn.v_proj.bias");
      rope(q[t], nH, pos[t]);
      rope(k[t], nKV, pos[t]);
    }
    for (size_t t = 0; t < T; ++t) {
      Vec attn(static_cast<size_t>(nH * D), 0.0);
      for (int64_t h = 0; h < nH; ++h) {
        const int64_t g = h / (nH / nKV);
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[t][h * D + d] * k[j][g * D + d];
          s[j] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j]);
        }
        double sum = 0.0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (size_t j = 0; j <= t; ++j) {
          for (int64_t d = 0; d < D; ++d) attn[h * D + d] += s[j] / sum * v[j][g * D + d];
        }
      }
      const Vec o = matvec(p + "self_attn.o_proj.weight", attn);
      for (size_t i = 0; i < o.size(); ++i) x[t][i] += o[i];
      const Vec n = rms_norm(x[t], p + "post_attention_layernorm.weight");
      const Vec gate = matvec(p + "mlp.gate_proj.weight", n);
      const Vec up = matvec(p + "mlp.up_proj.weight", n);
      Vec act(gate.size());
      for (size_t i = 0; i < gate.size(); ++i) act[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const Vec down = matvec(p + "mlp.down_proj.weight", act);
      for (size_t i = 0; i < down.size(); ++i) x[t][i] += down[i];
    }
  }

  const mimo::Checkpoint& ck_;
  const mimo::ModelConfig& c_;
};

// max |a - b| over a float span and a double row.
inline double max_abs_diff(std::span<const float> a, const Vec& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}
inline double max_abs(const Vec& b) {
  double m = 0.0;
  for (double v : b) m = std::max(m, std::abs(v));
  return m;
}

inline int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace test
