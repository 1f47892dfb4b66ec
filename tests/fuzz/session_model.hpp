// A tiny random-weight model for the session fuzz target and its seed writer: synthesized into
// a temporary directory once per process, loaded, and removed at exit.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <mimo/mimo.hpp>
#include <mimo/synth.hpp>

namespace fuzz {

inline mimo::ModelConfig tiny_session_config() {
  mimo::ModelConfig c = mimo::synth::preset_tiny();
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.num_nextn_predict_layers = 1;
  c.max_position_embeddings = 64;
  c.bos_token_id = 62;
  c.eos_token_id = {63};
  return c;
}

class TinyModel {
 public:
  TinyModel() {
    dir_ = std::filesystem::temp_directory_path() / ("mimo-fuzz-session-" + std::to_string(::getpid()));
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    if (auto s = mimo::synth::write_checkpoint(dir_, tiny_session_config(), {.seed = 7}); !s) die(s.error());
    auto m = mimo::Model<mimo::Cpu>::load(dir_);
    if (!m) die(m.error());
    model_ = std::make_unique<mimo::Model<mimo::Cpu>>(std::move(*m));
    auto pool = mimo::cpu::ThreadPool::create(1);
    if (!pool) die(pool.error());
    pool_ = std::move(*pool);
  }
  ~TinyModel() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  TinyModel(const TinyModel&) = delete;
  TinyModel& operator=(const TinyModel&) = delete;

  static constexpr int64_t context = 16;
  const mimo::Model<mimo::Cpu>& model() const { return *model_; }

  // A session of `context` tokens on the shared one-thread pool.
  mimo::Session<mimo::Cpu> session() const {
    mimo::Cpu::ContextOptions backend;
    backend.pool = pool_;
    auto s = model_->new_session({.context = context, .batch = 8, .backend = backend});
    if (!s) die(s.error());
    return std::move(*s);
  }

  [[noreturn]] static void die(const mimo::Error& e) {
    std::fprintf(stderr, "fuzz setup: %s\n", e.describe().c_str());
    std::abort();
  }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<mimo::Model<mimo::Cpu>> model_;
  std::shared_ptr<mimo::cpu::ThreadPool> pool_;
};

}  // namespace fuzz
