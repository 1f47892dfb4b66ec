// mimo tokenize --tokenizer PATH (--text TEXT | --jsonl FILE) [--no-special]
//
// Prints the ids of each input as a JSON array, one line per input. --jsonl reads the "text"
// field of each line of FILE. --no-special encodes added tokens written in the text as plain
// text (EncodeOptions::parse_special = false).
#include <simdjson.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <mimo/tokenizer.hpp>

#include "args.hpp"

namespace {

int fail(const std::string& message) {
  std::fprintf(stderr, "mimo tokenize: %s\n", message.c_str());
  return 1;
}

void print_ids(const std::vector<int32_t>& ids, std::string& line) {
  line.assign("[");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ',';
    line += std::to_string(ids[i]);
  }
  line += "]\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
}

}  // namespace

int cmd_tokenize(int argc, char** argv) {
  using namespace mimo;
  auto args = cli::Args::parse(argc, argv, {"tokenizer", "text", "jsonl"}, {"no-special", "help"});
  if (!args) return fail(args.error().message());
  if (args->flag("help") || !args->has("tokenizer") || args->has("text") == args->has("jsonl")) {
    std::fprintf(stderr,
                 "usage: mimo tokenize --tokenizer PATH (--text TEXT | --jsonl FILE) [--no-special]\n"
                 "  PATH: a tokenizer.json or a directory holding one\n"
                 "  prints the ids of each input as a JSON array, one line per input\n");
    return args->flag("help") ? 0 : 1;
  }
  auto tokenizer = Tokenizer::load(args->get("tokenizer"));
  if (!tokenizer) return fail(tokenizer.error().describe());
  const EncodeOptions options{.parse_special = !args->flag("no-special")};
  std::vector<int32_t> ids;
  std::string line;

  if (args->has("text")) {
    auto encoded = tokenizer->encode_append(args->get("text"), ids, options);
    if (!encoded) return fail(encoded.error().describe());
    print_ids(ids, line);
    return std::fflush(stdout) == 0 ? 0 : fail("cannot write the output");
  }

  const std::string path = args->get("jsonl");
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(path + ": cannot open");
  simdjson::dom::parser parser;
  std::string input;
  for (size_t number = 1; std::getline(in, input); ++number) {
    if (!input.empty() && input.back() == '\r') input.pop_back();
    if (input.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are not inputs
    const std::string where = path + ":" + std::to_string(number);
    simdjson::dom::element row;
    if (auto error = parser.parse(input).get(row)) return fail(where + ": invalid JSON: " + simdjson::error_message(error));
    std::string_view text;
    if (row["text"].get(text) != simdjson::SUCCESS) return fail(where + ": expected an object with a string \"text\"");
    ids.clear();
    auto encoded = tokenizer->encode_append(text, ids, options);
    if (!encoded) return fail(where + ": " + encoded.error().describe());
    print_ids(ids, line);
  }
  if (in.bad()) return fail(path + ": read error");
  return std::fflush(stdout) == 0 ? 0 : fail("cannot write the output");
}
