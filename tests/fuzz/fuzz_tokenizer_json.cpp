// Tokenizer::from_json on arbitrary text: tokenizer.json, optionally followed by two NUL bytes and
// a tokenizer_config.json. A file that loads must give a tokenizer that encodes and decodes any
// text without crashing, with ids inside its vocabulary.
#include <cstdint>
#include <string>
#include <string_view>

#include <mimo/tokenizer.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find(std::string_view("\0\0", 2));
  const std::string_view json = input.substr(0, split);
  const std::string_view config = split == std::string_view::npos ? std::string_view() : input.substr(split + 2);

  auto tok = mimo::Tokenizer::from_json(json, config);
  if (!tok) {
    FUZZ_CHECK(!tok.error().message().empty());
    return 0;
  }
  const std::string_view samples[] = {
      "Hello world", "  leading spaces\n\n\ttabs", "<|im_end|><think>x</think>", "Ünïcödé 中文 😀 123456",
      std::string_view("\xff\xfe invalid \xc3"), input.substr(0, 64)};
  for (std::string_view text : samples) {
    for (bool special : {true, false}) {
      auto ids = tok->encode(text, {.parse_special = special});
      FUZZ_CHECK(ids.has_value());
      for (int32_t id : *ids) FUZZ_CHECK(tok->contains(id));
      auto decoded = tok->decode(*ids);
      FUZZ_CHECK(decoded.has_value());
      FUZZ_CHECK(mimo::detail::is_valid_utf8(*decoded));
    }
  }
  // Every id decodes alone or is refused.
  const int32_t limit = std::min<int32_t>(tok->vocab_size() + 2, 4096);
  for (int32_t id = -1; id < limit; ++id) {
    auto text = tok->decode(std::span<const int32_t>(&id, 1));
    FUZZ_CHECK(text.has_value() == tok->contains(id));
  }
  for (const auto& added : tok->added_tokens()) FUZZ_CHECK(tok->contains(added.id));
  return 0;
}
