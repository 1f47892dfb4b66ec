// mimo::Tokenizer: MiMo's byte-level BPE tokenizer (the Qwen2 vocabulary), loaded from a Hugging
// Face tokenizer.json and matching the `tokenizers` library id for id.
//
//   auto tokenizer = mimo::Tokenizer::load("assets/tokenizer");        // or .../tokenizer.json
//   if (!tokenizer) { log(tokenizer.error().describe()); return; }
//   auto ids = tokenizer->encode("Hello world");                       // [9707, 1879]
//   auto text = tokenizer->decode(*ids);                               // "Hello world"
//   auto untrusted = tokenizer->encode(player_text, {.parse_special = false});
//
// encode(text) equals Hugging Face's `encode(text, add_special_tokens=False)`:
//   1. added tokens (`<|im_end|>`, `<think>`, ...) are found in the raw text, longest match at the
//      leftmost position, honouring each token's lstrip / rstrip / single_word / normalized flags;
//   2. the text between them is normalised to NFC;
//   3. split into pieces by the Qwen2 pattern (detail/pretokenizer.hpp);
//   4. each piece's UTF-8 bytes become byte-level symbols that BPE merges by rank.
// The file's pre-tokenizer, normalizer and decoder must be the ones MiMo uses; anything else is
// refused at load with Errc::unsupported rather than tokenized differently. post_processor,
// truncation and padding are not applied: encode never adds, truncates or pads.
//
// Invalid UTF-8 given to encode is not an error: each maximal invalid subpart is replaced by
// U+FFFD first (as Rust's String::from_utf8_lossy does), so encode(s) == encode(lossy(s)) and
// decode(encode(s)) == NFC(lossy(s)) (NFC applied between added tokens, as step 2 says). decode
// turns bytes that do not form UTF-8 (a character cut between ids, or ids in an unusual order)
// into U+FFFD the same way, as Hugging Face does; ids outside the vocabulary are an error.
//
// Speed (benchmarks/bench_tokenizer.cpp, on the project's 2-core machine): loading the 11 MB
// tokenizer.json takes about 75 ms of CPU time (80-130 ms wall clock); encoding on one thread runs
// at 13 MB/s (CJK) to 40 MB/s (English, code), 23 MB/s over the mixed corpus.
//
// Thread safety and ownership: a Tokenizer is immutable after load and every method is const and
// safe to call from many threads. Copies share the same tables (a reference count), so passing a
// Tokenizer by value is cheap.
#pragma once

#include <simdjson.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/detail/bpe.hpp"
#include "mimo/detail/pretokenizer.hpp"
#include "mimo/detail/tokenizer_data.hpp"  // also declares mimo::AddedToken and mimo::TokenizerLimits
#include "mimo/detail/tokenizer_json.hpp"
#include "mimo/detail/unicode.hpp"
#include "mimo/error.hpp"
#include "mimo/io/json.hpp"

namespace mimo {

struct EncodeOptions {
  // true: added tokens written in the text (`<|im_end|>`, `<think>`) become their ids, as in
  // Hugging Face. false: the text is plain text throughout; use it for anything a user typed, so
  // nobody can end a turn or open a system message by typing the marker. (Hugging Face's
  // split_special_tokens only covers tokens marked special; this covers every added token.)
  bool parse_special = true;
};

struct DecodeOptions {
  bool skip_special = false;  // drop tokens marked "special" (not `<think>`, which is not special)
};

class Tokenizer {
 public:
  // Loads `tokenizer.json` from a file path or a directory, and `tokenizer_config.json` from the
  // same directory when it exists (for the bos/eos/pad tokens).
  static Expected<Tokenizer> load(const std::filesystem::path& file_or_dir);

  // From JSON text. `config_json` may be empty. `source` names the input in error messages.
  static Expected<Tokenizer> from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                                       std::string_view source = "tokenizer.json");

  Expected<std::vector<int32_t>> encode(std::string_view text, EncodeOptions options = {}) const {
    std::vector<int32_t> ids;
    if (auto status = encode_append(text, ids, options); !status) return std::move(status).error();
    return ids;
  }
  // Appends the ids of `text` to `out`. Fails only for text over TokenizerLimits::max_text_bytes.
  Status encode_append(std::string_view text, std::vector<int32_t>& out, EncodeOptions options = {}) const;

  Expected<std::string> decode(std::span<const int32_t> ids, DecodeOptions options = {}) const {
    std::string text;
    if (auto status = decode_append(ids, text, options); !status) return std::move(status).error();
    return text;
  }
  // Appends the text of `ids` to `out`; on error (an id with no token) `out` is unchanged.
  Status decode_append(std::span<const int32_t> ids, std::string& out, DecodeOptions options = {}) const;

  // The id of an added token's content or of a vocabulary entry, written as in tokenizer.json
  // ("<|im_end|>", "Ġhello"); added tokens take precedence, as in Hugging Face.
  std::optional<int32_t> token_id(std::string_view token) const;
  // The text of an id as tokenizer.json writes it (added token content, or "Ġhello").
  std::optional<std::string_view> token_text(int32_t id) const;
  // Appends the bytes decode produces for an id alone (maybe part of a UTF-8 character); false
  // when the id has no token.
  bool append_token_bytes(int32_t id, std::string& out) const {
    if (!contains(id)) return false;
    detail::append_token_bytes(out, data_->text(id));
    return true;
  }

  bool contains(int32_t id) const { return id >= 0 && id < vocab_size() && kind(id) != detail::TokenKind::none; }
  bool is_added(int32_t id) const { return contains(id) && kind(id) != detail::TokenKind::vocab; }
  bool is_special(int32_t id) const { return contains(id) && kind(id) == detail::TokenKind::added_special; }
  // One past the largest id (151669 for MiMo; the model's embedding has padding rows beyond it).
  int32_t vocab_size() const { return static_cast<int32_t>(data_->kinds.size()); }
  size_t merge_count() const { return data_->merges.size(); }

  // The merge of two adjacent tokens, if there is one: its rank (lower ranks merge first) and
  // the token it makes.
  struct MergeRule {
    uint32_t rank;
    int32_t merged;
  };
  std::optional<MergeRule> merge_rule(int32_t left, int32_t right) const {
    const uint32_t rank = data_->merges.rank(left, right);
    if (rank == detail::no_rank) return std::nullopt;
    return MergeRule{rank, data_->merges.merged(rank)};
  }
  std::span<const AddedToken> added_tokens() const { return data_->added; }

  // From tokenizer_config.json when it was found and names them.
  std::optional<int32_t> bos_id() const { return data_->bos_id; }
  std::optional<int32_t> eos_id() const { return data_->eos_id; }
  std::optional<int32_t> pad_id() const { return data_->pad_id; }

  // Approximate heap bytes held by the shared tables.
  size_t memory_bytes() const;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerData> data) : data_(std::move(data)) {}

  static Expected<Tokenizer> build(const simdjson::padded_string& json, const simdjson::padded_string* config,
                                   const std::string& source, const std::string& config_source) {
    auto data = detail::read_tokenizer(json, config, source, config_source);
    if (!data) return std::move(data).error();
    return Tokenizer(std::move(data).value());
  }

  detail::TokenKind kind(int32_t id) const { return data_->kinds[id]; }

  void encode_valid(std::string_view text, std::vector<int32_t>& out, bool parse_special,
                    detail::EncodeScratch& scratch) const;
  void encode_normalized(std::string_view text, std::vector<int32_t>& out, bool parse_special,
                         detail::EncodeScratch& scratch) const;
  void encode_pieces(std::string_view text, std::vector<int32_t>& out, detail::EncodeScratch& scratch) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, detail::EncodeScratch& scratch) const;

  // Splits text on the added tokens of `matcher`: calls on_text(string_view) for the text between
  // them and on_token(id) for each token, in order, as Hugging Face's AddedVocabulary does.
  template <class OnText, class OnToken>
  void split_on_added(std::string_view text, const detail::AddedTokenMatcher& matcher, OnText&& on_text,
                      OnToken&& on_token) const;

  std::shared_ptr<const detail::TokenizerData> data_;
};

// Turns a stream of ids into text, emitting only whole UTF-8 characters: a character split over
// several tokens (many CJK characters and emoji are) comes out once its last byte arrives. The
// concatenated output equals decode() of all the ids. One per generation stream; not shared
// between threads.
class StreamDecoder {
 public:
  explicit StreamDecoder(Tokenizer tokenizer, DecodeOptions options = {})
      : tokenizer_(std::move(tokenizer)), options_(options) {}

  // Appends to `out` the text that id completes (maybe none). An id with no token is an error
  // and changes nothing.
  Status feed(int32_t id, std::string& out) { return feed(std::span<const int32_t>(&id, 1), out); }
  Status feed(std::span<const int32_t> ids, std::string& out) {
    for (int32_t id : ids) {
      if (!tokenizer_.contains(id)) {
        return Error(Errc::invalid_argument, "token id " + std::to_string(id) + " is not in the vocabulary (size " +
                                                 std::to_string(tokenizer_.vocab_size()) + ")");
      }
    }
    for (int32_t id : ids) {
      if (options_.skip_special && tokenizer_.is_special(id)) continue;
      tokenizer_.append_token_bytes(id, pending_);
    }
    const size_t used = detail::append_utf8_lossy_complete(out, pending_);
    pending_.erase(0, used);
    return ok();
  }
  // Appends what is still held back (an unfinished character becomes U+FFFD) and starts afresh.
  void flush(std::string& out) {
    detail::append_utf8_lossy(out, pending_);
    pending_.clear();
  }
  // Drops what is held back.
  void reset() { pending_.clear(); }
  // Bytes of an unfinished character held back (0 to 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  Tokenizer tokenizer_;
  DecodeOptions options_;
  std::string pending_;
};

// ---------------------------------------------------------------------------------------------
// Implementation

inline Status Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out, EncodeOptions options) const {
  if (text.size() > TokenizerLimits::max_text_bytes) {
    return Error(Errc::invalid_argument, "encode: text of " + std::to_string(text.size()) +
                                             " bytes is longer than the limit of " +
                                             std::to_string(TokenizerLimits::max_text_bytes));
  }
  detail::EncodeScratch scratch;
  if (detail::is_valid_utf8(text)) {
    encode_valid(text, out, options.parse_special, scratch);
  } else {
    std::string valid;
    detail::append_utf8_lossy(valid, text);
    encode_valid(valid, out, options.parse_special, scratch);
  }
  return ok();
}

template <class OnText, class OnToken>
void Tokenizer::split_on_added(std::string_view text, const detail::AddedTokenMatcher& matcher, OnText&& on_text,
                               OnToken&& on_token) const {
  using detail::decode_utf8;
  const auto char_before = [&](size_t pos) {  // the character ending at pos > 0
    size_t start = pos - 1;
    while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    return decode_utf8(text.data() + start, text.data() + pos);
  };
  size_t done = 0;  // text before this has been handed out
  size_t from = 0;  // where to look for the next match
  while (auto match = matcher.find(text, from)) {
    from = match->end;
    const AddedToken& token = data_->added[match->token];
    size_t start = match->start;
    size_t stop = match->end;
    if (token.single_word) {
      const bool word_before = start > 0 && detail::is_word_char(char_before(start).code_point);
      const bool word_after =
          stop < text.size() && detail::is_word_char(decode_utf8(text.data() + stop, text.data() + text.size()).code_point);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      while (start > done && detail::is_white_space(char_before(start).code_point))
        start -= char_before(start).length;
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        const auto c = decode_utf8(text.data() + stop, text.data() + text.size());
        if (!detail::is_white_space(c.code_point)) break;
        stop += c.length;
      }
      from = stop;  // the white space taken in cannot start another match
    }
    if (done < start) on_text(text.substr(done, start - done));
    on_token(token.id);
    done = stop;
  }
  if (done < text.size()) on_text(text.substr(done));
}

inline void Tokenizer::encode_valid(std::string_view text, std::vector<int32_t>& out, bool parse_special,
                                    detail::EncodeScratch& scratch) const {
  if (!parse_special || data_->raw_matcher.empty()) {
    encode_normalized(text, out, parse_special, scratch);
    return;
  }
  split_on_added(
      text, data_->raw_matcher, [&](std::string_view segment) { encode_normalized(segment, out, parse_special, scratch); },
      [&](int32_t id) { out.push_back(id); });
}

// Normalises one segment between raw-matched added tokens, then finds the normalized ones.
inline void Tokenizer::encode_normalized(std::string_view text, std::vector<int32_t>& out, bool parse_special,
                                         detail::EncodeScratch& scratch) const {
  std::string_view normalized = text;
  if (data_->normalize_nfc && !detail::is_nfc_quick(text)) {
    scratch.normalized.clear();
    detail::append_nfc(scratch.normalized, text, scratch.code_points);
    normalized = scratch.normalized;
  }
  if (!parse_special || data_->normalized_matcher.empty()) {
    encode_pieces(normalized, out, scratch);
    return;
  }
  split_on_added(
      normalized, data_->normalized_matcher, [&](std::string_view segment) { encode_pieces(segment, out, scratch); },
      [&](int32_t id) { out.push_back(id); });
}

inline void Tokenizer::encode_pieces(std::string_view text, std::vector<int32_t>& out,
                                     detail::EncodeScratch& scratch) const {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = detail::next_qwen2_piece(text, pos);
    encode_piece(text.substr(pos, end - pos), out, scratch);
    pos = end;
  }
}

inline void Tokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out,
                                    detail::EncodeScratch& scratch) const {
  const detail::TokenizerData& d = *data_;
  if (d.ignore_merges) {  // a piece that is a whole token is taken as it is
    scratch.byte_level.clear();
    for (char c : piece) detail::append_utf8(scratch.byte_level, detail::byte_level.char_of_byte[static_cast<uint8_t>(c)]);
    if (const int32_t id = d.vocab.find(scratch.byte_level); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const size_t first = out.size();
  bool last_was_unk = false;
  for (char c : piece) {
    const int32_t id = d.byte_ids[static_cast<uint8_t>(c)];
    if (id >= 0) {
      out.push_back(id);
      last_was_unk = false;
    } else if (d.unk_id >= 0 && !(d.fuse_unk && last_was_unk)) {
      out.push_back(d.unk_id);
      last_was_unk = true;
    }  // without an unknown token, Hugging Face drops bytes missing from the vocabulary
  }
  if (d.byte_pair_ranks.empty()) detail::bpe_merge(d.merges, out, first, scratch.bpe);
  else detail::bpe_merge(d.merges, out, first, scratch.bpe, d.byte_pair_ranks.data(), piece);
}

inline Status Tokenizer::decode_append(std::span<const int32_t> ids, std::string& out, DecodeOptions options) const {
  for (int32_t id : ids) {
    if (!contains(id)) {
      return Error(Errc::invalid_argument, "decode: token id " + std::to_string(id) +
                                               " is not in the vocabulary (size " + std::to_string(vocab_size()) + ")");
    }
  }
  const detail::TokenizerData& d = *data_;
  const size_t start = out.size();
  for (int32_t id : ids) {
    if (options.skip_special && kind(id) == detail::TokenKind::added_special) continue;
    detail::append_token_bytes(out, d.text(id));
  }
  const std::string_view appended = std::string_view(out).substr(start);
  if (!detail::is_valid_utf8(appended)) {
    const std::string raw(appended);
    out.resize(start);
    detail::append_utf8_lossy(out, raw);
  }
  return ok();
}

inline std::optional<int32_t> Tokenizer::token_id(std::string_view token) const { return data_->find_token(token); }

inline std::optional<std::string_view> Tokenizer::token_text(int32_t id) const {
  if (!contains(id)) return std::nullopt;
  return data_->text(id);
}

inline size_t Tokenizer::memory_bytes() const {
  const auto& d = *data_;
  return d.vocab.memory_bytes() + d.merges.memory_bytes() + d.byte_pair_ranks.capacity() * sizeof(uint32_t) +
         d.kinds.capacity();
}

inline Expected<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json,
                                                std::string_view source) {
  if (tokenizer_json.size() > TokenizerLimits::max_file_bytes || config_json.size() > TokenizerLimits::max_file_bytes) {
    return Error(Errc::out_of_memory, std::string(source) + ": JSON larger than " +
                                          std::to_string(TokenizerLimits::max_file_bytes) + " bytes");
  }
  const simdjson::padded_string json(tokenizer_json);
  if (config_json.empty()) return build(json, nullptr, std::string(source), {});
  const simdjson::padded_string config(config_json);
  return build(json, &config, std::string(source), "tokenizer_config.json");
}

inline Expected<Tokenizer> Tokenizer::load(const std::filesystem::path& file_or_dir) {
  std::error_code ec;
  const bool is_dir = std::filesystem::is_directory(file_or_dir, ec);
  const std::filesystem::path file = is_dir ? file_or_dir / "tokenizer.json" : file_or_dir;
  auto json = io::read_padded(file, TokenizerLimits::max_file_bytes);
  if (!json) return std::move(json).error();
  const std::filesystem::path config_path = file.parent_path() / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config_path, ec)) {
    auto config = io::read_padded(config_path, TokenizerLimits::max_file_bytes);
    if (!config) return std::move(config).error();
    return build(*json, &*config, file.string(), config_path.string());
  }
  return build(*json, nullptr, file.string(), {});
}

}  // namespace mimo
