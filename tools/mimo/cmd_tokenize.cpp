// Placeholder until the tokenizer lands.
#include <cstdio>
int cmd_tokenize(int, char**) {
  std::fprintf(stderr, "mimo tokenize: not built yet\n");
  return 1;
}
