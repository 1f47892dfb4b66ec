// The subcommands of the mimo tool. Each takes the arguments after its name.
#pragma once

#include <filesystem>

// Subcommands receive argv + 2 from main: argv[-2] is still the program's path.
int cmd_logits(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_quantize(int argc, char** argv);

namespace mimo::cli {

class Args;

// The embedded default model: beside an installed tool (../share/mimo/default-model) or in the
// build tree that made this binary.
std::filesystem::path default_model_dir(const char* program);

inline const char* program_path(char** subcommand_argv) { return subcommand_argv[-2]; }

// The CUDA builds of the commands (tools/mimo/backend_cuda.cu when built with MIMO_CUDA; an
// error otherwise).
int run_generate_cuda(const Args& args, const char* program);
int run_chat_cuda(const Args& args, const char* program);

}  // namespace mimo::cli
