// Chat formatting on arbitrary conversations with MiMo's real tokenizer: format_chat, encode_chat
// and the streaming <think> splitter. With contents encoded as plain text (the default), a
// message cannot add or remove a turn: the ids hold exactly the markers the template wrote.
// The splitter, fed the same text in arbitrary pieces, gives the same channels and text.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <mimo/chat.hpp>

#include "fuzz_support.hpp"
#include "vendored_tokenizer.hpp"

namespace {

std::vector<mimo::ChatDelta> split(std::string_view text, const std::vector<size_t>& cuts,
                                   mimo::ThinkSplitterOptions options) {
  mimo::ThinkSplitter splitter(options);
  std::vector<mimo::ChatDelta> out;
  size_t pos = 0;
  for (size_t cut : cuts) {
    const size_t end = std::min(text.size(), pos + cut);
    splitter.feed(text.substr(pos, end - pos), out);
    pos = end;
  }
  splitter.feed(text.substr(pos), out);
  splitter.finish(out);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)fuzz::vendored_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::ByteSource in(data, size);
  const mimo::Tokenizer& tok = fuzz::vendored_tokenizer();
  mimo::ChatOptions options;
  const uint8_t flags = in.byte();
  options.add_generation_prompt = flags & 1;
  options.enable_thinking = flags & 2;
  options.parse_special_in_content = flags & 4;
  const mimo::ThinkSplitterOptions split_options{.start_in_reasoning = (flags & 8) != 0, .trim_newlines = (flags & 16) != 0};
  const size_t count = static_cast<size_t>(in.in_range(0, 8));
  std::vector<mimo::ChatMessage> messages;
  for (size_t i = 0; i < count && in.remaining() > 0; ++i) {
    mimo::ChatMessage m;
    const uint8_t kind = in.byte();
    m.role = static_cast<mimo::ChatRole>(kind % 4);
    m.content = in.text(512);
    if (kind & 4) m.reasoning_content = in.text(256);
    messages.push_back(std::move(m));
  }

  const std::string text = mimo::format_chat(messages, options);
  auto ids = mimo::encode_chat(tok, messages, options);
  FUZZ_CHECK(ids.has_value());
  for (int32_t id : *ids) FUZZ_CHECK(tok.contains(id));
  auto decoded = tok.decode(*ids);
  FUZZ_CHECK(decoded.has_value());

  if (!options.parse_special_in_content) {
    // Every added token in the ids is a template marker.
    size_t markers = 0;
    for (const auto& part : mimo::detail::render_chat(messages, options)) markers += part.marker ? 1 : 0;
    const size_t added = static_cast<size_t>(std::count_if(ids->begin(), ids->end(), [&](int32_t id) { return tok.is_added(id); }));
    FUZZ_CHECK(added == markers);
  }

  // The splitter over the rendered text, whole and in arbitrary pieces.
  std::vector<size_t> cuts;
  while (in.remaining() > 0 && cuts.size() < 64) cuts.push_back(in.byte() % 17);
  const auto whole = split(text, {}, split_options);
  const auto pieces = split(text, cuts, split_options);
  FUZZ_CHECK(whole == pieces);
  if (!split_options.trim_newlines) {
    size_t kept = 0;
    for (const auto& d : whole) kept += d.text.size();
    FUZZ_CHECK(kept <= text.size());
  }
  return 0;
}
