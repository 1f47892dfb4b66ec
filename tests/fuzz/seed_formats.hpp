// Small files of each format, built in memory: the fuzz seeds and the hostile-file tests start
// from these.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <mimo/detail/bpe.hpp>
#include <mimo/detail/pretokenizer.hpp>
#include <mimo/detail/tokenizer_json.hpp>
#include <mimo/detail/unicode.hpp>

namespace seeds {

// A safetensors file: the 8-byte little-endian length of `header`, the header, then `data_bytes`
// bytes of data (a repeating pattern).
inline std::string safetensors_file(std::string_view header, uint64_t data_bytes, uint64_t declared_length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((declared_length >> (8 * i)) & 0xFF);
  out += header;
  for (uint64_t i = 0; i < data_bytes; ++i) out += static_cast<char>(i * 7 + 1);
  return out;
}
inline std::string safetensors_file(std::string_view header, uint64_t data_bytes) {
  return safetensors_file(header, data_bytes, header.size());
}

// The byte-level symbol of one byte, as tokenizer.json writes it ("Ġ" for a space).
inline std::string byte_symbol(uint8_t b) {
  std::string s;
  mimo::detail::append_utf8(s, mimo::detail::byte_level.char_of_byte[b]);
  return s;
}

// A complete tokenizer.json of MiMo's kind, small: the 256 byte symbols (ids 0-255), a few merges
// (ids 256-260), and five added tokens (ids 261-265). `string_merges`: merges written "a b" as
// older files do, instead of ["a", "b"]. `extra_merge` is appended to the merges as JSON text.
inline std::string small_tokenizer_json(bool string_merges, std::string_view extra_merge = {}) {
  using mimo::detail::append_json_string;
  std::string j = R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[)";
  const char* added[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
  for (int i = 0; i < 5; ++i) {
    if (i) j += ',';
    j += R"({"id":)" + std::to_string(261 + i) + R"(,"content":)";
    append_json_string(j, added[i]);
    j += R"(,"single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":)";
    j += i < 3 ? "true}" : "false}";
  }
  j += R"(],"normalizer":{"type":"NFC"},"pre_tokenizer":{"type":"Sequence","pretokenizers":[)";
  j += R"({"type":"Split","pattern":{"Regex":)";
  append_json_string(j, mimo::detail::qwen2_split_pattern);
  j += R"(},"behavior":"Isolated","invert":false},)";
  j += R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]},)";
  j += R"("post_processor":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false},)";
  j += R"("decoder":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false},)";
  j += R"("model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":"",)";
  j += R"("end_of_word_suffix":"","fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{)";
  for (int b = 0; b < 256; ++b) {
    if (b) j += ',';
    append_json_string(j, byte_symbol(static_cast<uint8_t>(b)));
    j += ':' + std::to_string(b);
  }
  const std::string space = byte_symbol(' ');
  const std::pair<std::string, std::string> merges[] = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {space, "w"}, {"o", "r"}};
  int id = 256;
  for (const auto& [left, right] : merges) {
    j += ',';
    append_json_string(j, left + right);
    j += ':' + std::to_string(id++);
  }
  j += R"(},"merges":[)";
  bool first = true;
  for (const auto& [left, right] : merges) {
    if (!first) j += ',';
    first = false;
    if (string_merges) {
      append_json_string(j, left + " " + right);
    } else {
      j += '[';
      append_json_string(j, left);
      j += ',';
      append_json_string(j, right);
      j += ']';
    }
  }
  if (!extra_merge.empty()) {
    j += ',';
    j += extra_merge;
  }
  j += "]}}";
  return j;
}

}  // namespace seeds
