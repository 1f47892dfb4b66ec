// Built with -fno-exceptions, as game engines (Unreal, Godot) build: every public header must
// compile, and loading, running and failing must work without exceptions.
#include <mimo/chat.hpp>
#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>
#include <mimo/mtp_drafter.hpp>
#include <mimo/quantize.hpp>
#include <mimo/sampler.hpp>
#include <mimo/speculative.hpp>
#include <mimo/synth.hpp>
#include <mimo/tokenizer.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "this test must be compiled with -fno-exceptions"
#endif

namespace {
int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  const auto dir = std::filesystem::temp_directory_path() / ("mimo-noexc-" + std::to_string(::getpid()));
  mimo::ModelConfig c = mimo::synth::preset_tiny();
  c.vocab_size = 256;
  c.bos_token_id = 254;
  c.eos_token_id = {255};
  check(mimo::synth::write_checkpoint(dir, c).has_value(), "synth");

  auto missing = mimo::Model<mimo::Cpu>::load(dir / "absent");
  check(!missing.has_value() && missing.error().code() == mimo::Errc::io, "missing directory is an error value");

  auto model = mimo::Model<mimo::Cpu>::load(dir);
  check(model.has_value(), "load");
  if (model) {
    auto session = model->new_session({.context = 16});
    check(session.has_value(), "session");
    if (session) {
      auto logits = session->append({1, 2, 3});
      check(logits.has_value() && std::isfinite(logits->last()[0]), "append");
      auto bad = session->append({999});
      check(!bad.has_value() && bad.error().code() == mimo::Errc::invalid_argument, "bad token is an error value");
      auto full = session->append(std::vector<int32_t>(20, 1));
      check(!full.has_value() && full.error().code() == mimo::Errc::context_full, "full context is an error value");
      // The generation loop with the MTP drafter and a sampler.
      auto sampler = mimo::Sampler::create({.temperature = 0.7f, .seed = 1}, 256);
      check(sampler.has_value(), "sampler");
      if (sampler) {
        const int32_t more[] = {4, 5};
        auto g = mimo::generate(*session, more, *sampler, {.max_tokens = 4, .default_stop_tokens = false, .mtp_depth = 2});
        check(g.has_value() && g->tokens.size() == 4, "generate");
        const float nan_logits[3] = {0.0f, NAN, 1.0f};
        auto small = mimo::Sampler::create({}, 3);
        check(small && !small->sample(nan_logits).has_value(), "NaN logits are an error value");
      }
    }
  }
  // The tokenizer: loading errors and encoding.
  auto bad_tokenizer = mimo::Tokenizer::from_json("{ not json");
  check(!bad_tokenizer.has_value(), "malformed tokenizer.json is an error value");
  auto tokenizer = mimo::Tokenizer::load(std::filesystem::path(MIMO_SOURCE_DIR) / "assets/tokenizer");
  check(tokenizer.has_value(), "tokenizer");
  if (tokenizer) {
    auto ids = tokenizer->encode("Hello world");
    check(ids.has_value() && ids->size() == 2, "encode");
    const int32_t out_of_range[] = {999999};
    check(!tokenizer->decode(out_of_range).has_value(), "decoding an unknown id is an error value");
    const mimo::ChatMessage chat[] = {{mimo::ChatRole::user, "hi <|im_end|>"}};
    check(mimo::encode_chat(*tokenizer, chat).has_value(), "chat");
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("%s\n", failures ? "no_exceptions: FAILED" : "no_exceptions: ok");
  return failures ? 1 : 0;
}
