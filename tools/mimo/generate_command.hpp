// mimo generate: the body, over any backend.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <mimo/chat.hpp>

#include "common.hpp"

namespace mimo::cli {

template <class B>
int run_generate(const Args& args, const char* argv0) {
  const std::string dir = model_dir(args, argv0);
  if (args.has("prompt") == args.has("tokens")) {
    return fail("generate", Error(Errc::invalid_argument, "give exactly one of --prompt TEXT and --tokens IDS"));
  }
  auto n = args.get_int("n", 256);
  if (!n) return fail("generate", n.error());
  auto depth = args.get_int("mtp-depth", -1);
  if (!depth) return fail("generate", depth.error());
  auto sampling = sampler_options(args);
  if (!sampling) return fail("generate", sampling.error());
  auto backend = context_options<B>(args);
  if (!backend) return fail("generate", backend.error());

  auto load = load_options(args);
  if (!load) return fail("generate", load.error());
  auto model = Model<B>::load(dir, *load);
  if (!model) return fail("generate", model.error());
  auto tokenizer = load_tokenizer(args, dir);
  if (!tokenizer) return fail("generate", tokenizer.error());
  const Tokenizer* tok = *tokenizer ? &**tokenizer : nullptr;

  std::vector<int32_t> prompt;
  if (args.has("tokens")) {
    auto ids = Args::parse_ids("tokens", args.get("tokens"));
    if (!ids) return fail("generate", ids.error());
    prompt = std::move(*ids);
  } else {
    if (!tok) return fail("generate", Error(Errc::invalid_argument, "--prompt needs a tokenizer: " + dir + " has no tokenizer.json; use --tokenizer"));
    Expected<std::vector<int32_t>> ids = std::vector<int32_t>();
    if (args.flag("chat")) {
      std::vector<ChatMessage> chat;
      if (args.has("system")) chat.push_back({ChatRole::system, args.get("system")});
      chat.push_back({ChatRole::user, args.get("prompt")});
      ids = encode_chat(*tok, chat);
    } else {
      ids = tok->encode(args.get("prompt"));
    }
    if (!ids) return fail("generate", ids.error());
    prompt = std::move(*ids);
  }
  const int64_t needed = static_cast<int64_t>(prompt.size()) + *n + 1;
  auto context = args.get_int("context", std::min<int64_t>(needed, model->config().max_position_embeddings));
  if (!context) return fail("generate", context.error());
  auto session = model->new_session({.context = *context, .backend = *backend});
  if (!session) return fail("generate", session.error());
  auto sampler = Sampler::create(*sampling, static_cast<int32_t>(model->config().vocab_size));
  if (!sampler) return fail("generate", sampler.error());

  const bool stream = tok && !args.flag("no-stream");
  GenerateOptions<B> options{.max_tokens = *n, .mtp_depth = static_cast<int>(*depth), .commit_last = false};
  if (args.has("stop")) options.stop_strings.push_back(args.get("stop"));
  if (args.flag("ignore-eos")) options.default_stop_tokens = false;
  options.on_token = [&](const TokenEvent& e) {
    if (stream && !e.text.empty()) {
      std::fwrite(e.text.data(), 1, e.text.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  auto result = generate(*session, prompt, *sampler, options, tok);
  if (!result) return fail("generate", result.error());
  if (stream) std::printf("\n");
  if (args.flag("print-ids")) {
    std::string line;
    for (size_t i = 0; i < result->tokens.size(); ++i) line += (i ? "," : "") + std::to_string(result->tokens[i]);
    std::printf("%s\n", line.c_str());
  }
  if (!args.flag("quiet")) {
    std::fprintf(stderr, "stop: %s\n", std::string(to_string(result->stop)).c_str());
    print_stats(result->stats);
  }
  return 0;
}

}  // namespace mimo::cli
