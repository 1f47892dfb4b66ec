// mimo chat [--model DIR] [--system TEXT] [-n N] [sampling options as for generate] [--mtp-depth D]
//           [--threads N] [--context N] [--tokenizer PATH] [--backend cpu|cuda] [--verbose]
//
// An interactive conversation in the terminal: one user message per line, the model's reasoning
// (inside <think>) shown dimmed and apart from the answer. The KV cache carries over between
// turns; /reset starts over, /quit or end of input leaves.
#include <set>
#include <string>

#include "chat_command.hpp"
#include "commands.hpp"

int cmd_chat(int argc, char** argv) {
  using namespace mimo;
  std::set<std::string> options = cli::model_options();
  for (const auto& o : cli::sampling_options()) options.insert(o);
  for (const char* o : {"n", "system"}) options.insert(o);
  auto args = cli::Args::parse(argc, argv, options, {"greedy", "verbose"});
  if (!args) return cli::fail("chat", args.error());
  const std::string backend = args->get("backend", "cpu");
  if (backend == "cuda") return cli::run_chat_cuda(*args, cli::program_path(argv));
  if (backend != "cpu") return cli::fail("chat", Error(Errc::invalid_argument, "--backend must be cpu or cuda"));
  return cli::run_chat<Cpu>(*args, cli::program_path(argv));
}
