// mimo chat: the body, over any backend.
#pragma once

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <mimo/chat.hpp>

#include "common.hpp"

namespace mimo::cli {

template <class B>
int run_chat(const Args& args, const char* program) {
  const std::string dir = model_dir(args, program);
  auto n = args.get_int("n", 4096);
  if (!n) return fail("chat", n.error());
  auto depth = args.get_int("mtp-depth", -1);
  if (!depth) return fail("chat", depth.error());
  auto sampling = sampler_options(args);
  if (!sampling) return fail("chat", sampling.error());
  auto backend = context_options<B>(args);
  if (!backend) return fail("chat", backend.error());
  auto load = load_options(args);
  if (!load) return fail("chat", load.error());
  auto model = Model<B>::load(dir, *load);
  if (!model) return fail("chat", model.error());
  auto tokenizer = load_tokenizer(args, dir);
  if (!tokenizer) return fail("chat", tokenizer.error());
  if (!*tokenizer) return fail("chat", Error(Errc::invalid_argument, dir + " has no tokenizer.json; use --tokenizer"));
  const Tokenizer& tok = **tokenizer;
  auto context = args.get_int("context", std::min<int64_t>(8192, model->config().max_position_embeddings));
  if (!context) return fail("chat", context.error());
  auto session = model->new_session({.context = *context, .backend = *backend});
  if (!session) return fail("chat", session.error());
  auto sampler = Sampler::create(*sampling, static_cast<int32_t>(model->config().vocab_size));
  if (!sampler) return fail("chat", sampler.error());

  const bool color = stdout_is_terminal();
  const char* dim = color ? "\033[2m" : "";
  const char* plain = color ? "\033[0m" : "";
  std::vector<ChatMessage> messages;
  if (args.has("system")) messages.push_back({ChatRole::system, args.get("system")});
  const size_t first_turn = messages.size();
  std::fprintf(stderr, "mimo chat: %s (type /reset to start over, /quit or end of input to leave)\n", dir.c_str());

  std::string line;
  while (true) {
    if (color) std::printf("> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line == "/quit") break;
    if (line == "/reset") {
      messages.resize(first_turn);
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({ChatRole::user, line});
    auto ids = encode_chat(tok, messages);
    if (!ids) return fail("chat", ids.error());
    // Reuse the cached part of the conversation: keep the longest common prefix (at least one
    // token is fed again, for the logits of the last position).
    const auto held = session->tokens();
    size_t keep = 0;
    while (keep < held.size() && keep < ids->size() && held[keep] == (*ids)[keep]) ++keep;
    keep = std::min(keep, ids->size() - 1);
    if (auto s = session->truncate(static_cast<int64_t>(keep)); !s) return fail("chat", s.error());
    const std::span<const int32_t> prompt = std::span<const int32_t>(*ids).subspan(keep);

    ThinkSplitter splitter;
    std::vector<ChatDelta> deltas;
    std::string reasoning, answer;
    ChatChannel shown = ChatChannel::answer;
    auto show = [&] {
      for (const auto& d : deltas) {
        if (d.channel != shown) {
          std::printf("%s", d.channel == ChatChannel::reasoning ? (color ? dim : "[reasoning]\n") : (color ? plain : "\n[answer]\n"));
          shown = d.channel;
        }
        (d.channel == ChatChannel::reasoning ? reasoning : answer) += d.text;
        std::fwrite(d.text.data(), 1, d.text.size(), stdout);
      }
      std::fflush(stdout);
      deltas.clear();
    };
    GenerateOptions<B> options{.max_tokens = *n, .mtp_depth = static_cast<int>(*depth)};
    options.on_token = [&](const TokenEvent& e) {
      splitter.feed(e.text, deltas);
      show();
      return true;
    };
    auto result = generate(*session, prompt, *sampler, options, &tok);
    if (!result) return fail("chat", result.error());
    splitter.finish(deltas);
    show();
    std::printf("%s\n", color ? plain : "");
    if (result->stop == StopReason::context_full) {
      std::fprintf(stderr, "mimo chat: the context (%lld tokens) is full; /reset to start over\n",
                   static_cast<long long>(session->capacity()));
    }
    if (args.flag("verbose")) print_stats(result->stats);
    messages.push_back({ChatRole::assistant, answer, reasoning.empty() ? std::nullopt : std::optional<std::string>(reasoning)});
  }
  return 0;
}

}  // namespace mimo::cli
