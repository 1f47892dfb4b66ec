// mimo: run MiMo-7B checkpoints from the command line.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>

#include "commands.hpp"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"generate", cmd_generate, "generate text or tokens from a prompt"},
    {"chat", cmd_chat, "an interactive conversation, reasoning and answer shown apart"},
    {"logits", cmd_logits, "write the logits of a token sequence (main model or an MTP step)"},
    {"tokenize", cmd_tokenize, "print the token ids of text"},
    {"synth", cmd_synth, "write a random-weight checkpoint of a preset shape"},
    {"bench", cmd_bench, "measure prefill and decode speed against the memory bandwidth"},
    {"quantize", cmd_quantize, "write a checkpoint with int8 or int4 weights (mimo/quant.hpp)"},
};

void usage() {
  std::fprintf(stderr, "usage: mimo <command> [options]\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.summary);
}

}  // namespace

namespace mimo::cli {

std::filesystem::path default_model_dir(const char* program) {
  std::error_code ec;
  const auto exe = std::filesystem::canonical(std::filesystem::path("/proc/self/exe"), ec);
  const auto base = ec ? std::filesystem::absolute(program, ec).parent_path() : exe.parent_path();
  const auto installed = base / ".." / "share" / "mimo" / "default-model";
  if (std::filesystem::exists(installed / "config.json", ec)) return installed;
#ifdef MIMO_BUILD_DEFAULT_MODEL_DIR
  return MIMO_BUILD_DEFAULT_MODEL_DIR;
#else
  return installed;
#endif
}

}  // namespace mimo::cli

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::string_view(argv[1]) == c.name) return c.run(argc - 2, argv + 2);
  }
  std::fprintf(stderr, "mimo: unknown command '%s'\n", argv[1]);
  usage();
  return 2;
}
