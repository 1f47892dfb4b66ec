// A custom sampling loop: load, tokenize, then per token apply your own rule between the
// library's sampling stages, and detokenize as the text streams.
//   custom_sampling <checkpoint dir with tokenizer.json> ["prompt"] [n]
//
// The rule here bans every token whose text contains a digit (a game that must not spoil a
// puzzle's answer), then samples with temperature 0.8 and top-p 0.9.
#include <mimo/mimo.hpp>
#include <mimo/sampler.hpp>
#include <mimo/tokenizer.hpp>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: custom_sampling <checkpoint dir> [prompt] [n]\n");
    return 2;
  }
  const std::string prompt_text = argc > 2 ? argv[2] : "The treasure is hidden under";
  const int n = argc > 3 ? std::atoi(argv[3]) : 24;
  auto fail = [](const mimo::Error& e) {
    std::fprintf(stderr, "%s\n", e.describe().c_str());
    return 1;
  };

  auto model = mimo::Model<mimo::Cpu>::load(argv[1]);
  if (!model) return fail(model.error());
  auto tokenizer = mimo::Tokenizer::load(argv[1]);
  if (!tokenizer) return fail(tokenizer.error());
  auto session = model->new_session({.context = 512});
  if (!session) return fail(session.error());
  auto prompt = tokenizer->encode(prompt_text);
  if (!prompt) return fail(prompt.error());

  // Which tokens the rule bans, decided once from their text.
  std::vector<bool> banned(static_cast<size_t>(model->config().vocab_size), false);
  for (int32_t id = 0; id < tokenizer->vocab_size(); ++id) {
    std::string text;
    if (!tokenizer->append_token_bytes(id, text)) continue;
    for (char c : text) banned[id] = banned[id] || std::isdigit(static_cast<unsigned char>(c));
  }

  mimo::Candidates candidates;
  mimo::Distribution distribution;
  mimo::Rng rng(2024);
  mimo::StreamDecoder decoder(*tokenizer);
  std::string text;
  std::printf("%s", prompt_text.c_str());
  auto logits = session->append(*prompt);
  for (int i = 0; i < n && logits; ++i) {
    mimo::Status s = candidates.assign(logits->last());
    if (s) candidates.keep_if([&](int32_t id, float) { return !banned[id]; });  // your rule
    if (s) s = mimo::sampling::apply_temperature(candidates, 0.8f);
    if (s) s = mimo::sampling::keep_top_p(candidates, 0.9f);
    if (s) s = mimo::sampling::softmax(candidates, distribution);
    if (!s) return fail(s.error());
    const int32_t next = *mimo::sampling::draw(distribution, rng);
    text.clear();
    if (auto d = decoder.feed(next, text); !d) return fail(d.error());
    std::printf("%s", text.c_str());
    std::fflush(stdout);
    logits = session->append({next});
  }
  if (!logits) return fail(logits.error());
  text.clear();
  decoder.flush(text);
  std::printf("%s\n", text.c_str());
  return 0;
}
