// Tokenizer::encode on arbitrary bytes with MiMo's real tokenizer. The first byte picks the
// options; the rest is the text. Checked: ids are tokens of the vocabulary; text encoded as plain
// text (parse_special = false) never yields an added token (no one can type <|im_end|>) and
// round-trips: decode(encode(s)) == NFC(lossy(s)); streaming decode equals decode.
#include <cstdint>
#include <string>
#include <string_view>
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
  const bool parse_special = data[0] & 1;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  auto ids = tok.encode(text, {.parse_special = parse_special});
  FUZZ_CHECK(ids.has_value());
  for (int32_t id : *ids) FUZZ_CHECK(tok.contains(id));
  auto decoded = tok.decode(*ids);
  FUZZ_CHECK(decoded.has_value());
  FUZZ_CHECK(mimo::detail::is_valid_utf8(*decoded));

  if (!parse_special) {
    for (int32_t id : *ids) FUZZ_CHECK(!tok.is_added(id));
    std::string lossy;
    mimo::detail::append_utf8_lossy(lossy, text);
    FUZZ_CHECK(*decoded == mimo::detail::to_nfc(lossy));
  }

  // Streaming, one id at a time, gives the same text.
  mimo::StreamDecoder stream(tok);
  std::string streamed;
  for (int32_t id : *ids) FUZZ_CHECK(stream.feed(id, streamed).has_value());
  stream.flush(streamed);
  FUZZ_CHECK(streamed == *decoded);

  // encode_append appends after what is there.
  std::vector<int32_t> appended = {7};
  FUZZ_CHECK(tok.encode_append(text, appended, {.parse_special = parse_special}).has_value());
  FUZZ_CHECK(appended.size() == ids->size() + 1 && std::equal(ids->begin(), ids->end(), appended.begin() + 1));
  return 0;
}
