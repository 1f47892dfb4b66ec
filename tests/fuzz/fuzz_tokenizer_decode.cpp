// Tokenizer::decode and StreamDecoder on arbitrary ids, with MiMo's real tokenizer. Every 4 bytes
// are one id; most are folded into a range just around the vocabulary so that decoding gets far,
// the rest are used raw (negative or huge). Ids outside the vocabulary must give an error that
// leaves the output unchanged; otherwise the text is valid UTF-8 and equals the streamed text.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <mimo/tokenizer.hpp>

#include "fuzz_support.hpp"
#include "vendored_tokenizer.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)fuzz::vendored_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const mimo::Tokenizer& tok = fuzz::vendored_tokenizer();
  const bool skip_special = data[0] & 1;
  std::vector<int32_t> ids;
  for (size_t i = 1; i + 4 <= size; i += 4) {
    uint32_t raw;
    std::memcpy(&raw, data + i, 4);
    const bool keep_raw = (raw >> 28) == 0xF;
    ids.push_back(keep_raw ? static_cast<int32_t>(raw) : static_cast<int32_t>(raw % (static_cast<uint32_t>(tok.vocab_size()) + 16)));
  }
  bool all_valid = true;
  for (int32_t id : ids) all_valid = all_valid && tok.contains(id);

  std::string out = "prefix";
  auto status = tok.decode_append(ids, out, {.skip_special = skip_special});
  FUZZ_CHECK(status.has_value() == all_valid);
  if (!all_valid) {
    FUZZ_CHECK(out == "prefix");
    mimo::StreamDecoder stream(tok);
    std::string streamed;
    FUZZ_CHECK(!stream.feed(ids, streamed).has_value());
    FUZZ_CHECK(streamed.empty() && stream.pending_bytes() == 0);
    return 0;
  }
  const std::string text = out.substr(6);
  FUZZ_CHECK(mimo::detail::is_valid_utf8(text));

  mimo::StreamDecoder stream(tok, {.skip_special = skip_special});
  std::string streamed;
  for (int32_t id : ids) {
    FUZZ_CHECK(stream.feed(id, streamed).has_value());
    FUZZ_CHECK(stream.pending_bytes() <= 3);
    FUZZ_CHECK(mimo::detail::is_valid_utf8(streamed));
  }
  stream.flush(streamed);
  FUZZ_CHECK(streamed == text);

  for (int32_t id : ids) {
    auto t = tok.token_text(id);
    FUZZ_CHECK(t.has_value());
    FUZZ_CHECK(tok.token_id(*t) == id);
  }
  return 0;
}
