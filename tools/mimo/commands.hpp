// The subcommands of the mimo tool. Each takes the arguments after its name.
#pragma once

#include <filesystem>

int cmd_logits(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);

namespace mimo::cli {
// The embedded default model: beside an installed tool (../share/mimo/default-model) or in the
// build tree that made this binary.
std::filesystem::path default_model_dir(const char* argv0);
}  // namespace mimo::cli
