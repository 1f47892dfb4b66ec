// mimo generate --model DIR --tokens IDS -n N --greedy --print-ids
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <mimo/mimo.hpp>

#include "args.hpp"
#include "commands.hpp"

int cmd_generate(int argc, char** argv) {
  using namespace mimo;
  auto args = cli::Args::parse(argc, argv, {"model", "tokens", "n", "threads", "context"}, {"greedy", "print-ids"});
  if (!args) return cli::fail("generate", args.error());
  if (!args->has("tokens")) return cli::fail("generate", Error(Errc::invalid_argument, "--tokens is required"));
  auto prompt = cli::Args::parse_ids("tokens", args->get("tokens"));
  if (!prompt) return cli::fail("generate", prompt.error());
  auto n = args->get_int("n", 32);
  if (!n) return cli::fail("generate", n.error());
  auto threads = args->get_int("threads", 0);
  if (!threads) return cli::fail("generate", threads.error());
  const std::string dir = args->get("model", cli::default_model_dir(argv[-1]).string());

  auto model = Model<Cpu>::load(dir);
  if (!model) return cli::fail("generate", model.error());
  const int64_t needed = static_cast<int64_t>(prompt->size()) + *n;
  auto context = args->get_int("context", std::min<int64_t>(needed, model->config().max_position_embeddings));
  if (!context) return cli::fail("generate", context.error());
  auto session = model->new_session({.context = *context, .backend = {.threads = static_cast<int>(*threads)}});
  if (!session) return cli::fail("generate", session.error());

  std::vector<int32_t> generated;
  auto logits = session->append(*prompt);
  for (int64_t i = 0; i < *n; ++i) {
    if (!logits) return cli::fail("generate", logits.error());
    const auto row = logits->last();
    const int32_t next = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    generated.push_back(next);
    if (i + 1 < *n) logits = session->append({next});
  }
  std::string line;
  for (size_t i = 0; i < generated.size(); ++i) line += (i ? "," : "") + std::to_string(generated[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}
