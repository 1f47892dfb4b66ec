// mimo generate [--model DIR] (--prompt TEXT [--chat] [--system TEXT] | --tokens IDS) [-n N]
//               [--greedy | --temp T --top-k K --top-p P --min-p P --repeat-penalty R --seed S]
//               [--mtp-depth D] [--stop TEXT] [--ignore-eos] [--print-ids] [--no-stream] [--quiet]
//               [--threads N] [--context N] [--tokenizer PATH] [--backend cpu|cuda]
//
// Streams the text to stdout as it is produced (with a tokenizer), prints the generated ids on
// the last line with --print-ids, and statistics on stderr. Speculative decoding with the MTP
// layers is on when the checkpoint has them (--mtp-depth 0 turns it off; the output is the same).
#include <set>
#include <string>

#include "commands.hpp"
#include "generate_command.hpp"

int cmd_generate(int argc, char** argv) {
  using namespace mimo;
  std::set<std::string> options = cli::model_options();
  for (const auto& o : cli::sampling_options()) options.insert(o);
  for (const char* o : {"prompt", "tokens", "n", "system", "stop"}) options.insert(o);
  auto args = cli::Args::parse(argc, argv, options, {"greedy", "print-ids", "chat", "no-stream", "quiet", "ignore-eos"});
  if (!args) return cli::fail("generate", args.error());
  const std::string backend = args->get("backend", "cpu");
  if (backend == "cuda") return cli::run_generate_cuda(*args, cli::program_path(argv));
  if (backend != "cpu") return cli::fail("generate", Error(Errc::invalid_argument, "--backend must be cpu or cuda"));
  return cli::run_generate<Cpu>(*args, cli::program_path(argv));
}
