// A long-running host must not leak: 1,000 cycles of creating a session on the tiny model
// (MiMo's real vocabulary around a small network, as the embedded default model), generating with
// mimo::generate (MTP drafter, stop string, streaming) and with a hand-written sampling loop,
// branching and saving the session now and then, then destroying it. In the sanitizer build of CI, LeakSanitizer checks every allocation at exit;
// in every build the peak resident memory must stop growing after the first cycles.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>
#include <mimo/sampler.hpp>
#include <mimo/tokenizer.hpp>

#include "support.hpp"

namespace {

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

}  // namespace

TEST_CASE("lifecycle: 1,000 session create/generate/destroy cycles on the tiny model do not grow memory") {
  test::TempDir dir;
  const mimo::ModelConfig config = mimo::synth::preset_tiny();
  test::synthesize(dir.path(), config, 11);
  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  auto tokenizer = mimo::Tokenizer::load(std::string(MIMO_SOURCE_DIR) + "/assets/tokenizer");
  REQUIRE(tokenizer.has_value());
  auto prompt = tokenizer->encode("<|im_start|>user\nHello, ship's cat!<|im_end|>\n<|im_start|>assistant\n");
  REQUIRE(prompt.has_value());

  // The embedding has padding rows past the tokenizer's last id (151669 of 151680); a trained model
  // never picks them, random weights can, and the text stream refuses ids without text.
  std::vector<mimo::TokenBias> padding_ban;
  for (int32_t id = tokenizer->vocab_size(); id < config.vocab_size; ++id) {
    padding_ban.push_back({.token = id, .bias = -std::numeric_limits<float>::infinity()});
  }

  constexpr int kCycles = 1000;
  constexpr int kWarmup = 100;
  uint64_t rss_after_warmup = 0;
  int64_t generated = 0;
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    auto session = model->new_session({.context = 32, .batch = 16, .backend = {.threads = 1}});
    REQUIRE(session.has_value());
    auto sampler = mimo::Sampler::create({.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.1f,
                                          .logit_bias = padding_ban, .seed = static_cast<uint64_t>(cycle)},
                                         static_cast<int32_t>(config.vocab_size));
    REQUIRE(sampler.has_value());
    // The generation loop with the MTP drafter (the tiny model has one MTP layer), streaming
    // text through a callback and watching a stop string.
    std::string streamed;
    auto result = mimo::generate(*session, *prompt, *sampler,
                                 {.max_tokens = 3,
                                  .stop_strings = {"\n\n"},
                                  .on_token = [&](const mimo::TokenEvent& e) {
                                    streamed += e.text;
                                    return true;
                                  }},
                                 &*tokenizer);
    REQUIRE_MESSAGE(result.has_value(), (result ? "" : result.error().describe()));
    generated += static_cast<int64_t>(result->tokens.size());
    // And a hand-written loop: sample, accept, append, stream.
    mimo::StreamDecoder stream(*tokenizer);
    std::string text;
    for (int step = 0; step < 1 && session->logits().rows > 0 && session->size() < session->capacity(); ++step) {
      auto token = sampler->sample(session->logits().last());
      REQUIRE(token.has_value());
      REQUIRE(sampler->accept(*token).has_value());
      if (tokenizer->contains(*token)) REQUIRE(stream.feed(*token, text).has_value());
      REQUIRE(session->append({*token}).has_value());
      ++generated;
    }
    stream.flush(text);
    if (cycle % 50 == 0) {  // branch and save now and then: copies own their caches too
      auto branch = session->copy();
      REQUIRE(branch.has_value());
      std::vector<std::byte> state;
      REQUIRE(branch->save(state).has_value());
      REQUIRE(session->restore(state).has_value());
    }
    if (cycle + 1 == kWarmup) rss_after_warmup = peak_rss_bytes();
  }
  const uint64_t growth = peak_rss_bytes() - rss_after_warmup;
  MESSAGE(kCycles, " cycles, ", generated, " tokens generated; peak RSS grew by ", growth / 1024,
          " KiB over the last ", kCycles - kWarmup, " cycles");
  // One session of this model holds ~1 MiB (KV cache, logits row, activations): leaking even a
  // fraction of one per cycle would add hundreds of MiB.
  CHECK(growth < 16ull << 20);
}
