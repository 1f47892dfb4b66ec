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
// U+FFFD first (as String::from_utf8_lossy does), so encode(s) == encode(lossy(s)) and
// decode(encode(s)) == NFC(lossy(s)). decode turns bytes that do not form UTF-8 (a character cut
// between ids, or ids in an unusual order) into U+FFFD the same way; ids outside the vocabulary
// are an error.
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

// A token listed in tokenizer.json's "added_tokens".
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;      // skipped by DecodeOptions::skip_special
  bool single_word = false;  // only matches with no word character (\w) directly before or after
  bool lstrip = false;       // takes in the white space before it
  bool rstrip = false;       // takes in the white space after it
  bool normalized = false;   // matched in the NFC-normalised text rather than the raw text
};

// Limits checked before anything is allocated for them.
struct TokenizerLimits {
  static constexpr uint64_t max_file_bytes = 256ull << 20;
  static constexpr size_t max_vocab = 1u << 22;  // tokens in model.vocab
  static constexpr size_t max_merges = 1u << 22;
  static constexpr size_t max_added_tokens = 1u << 16;
  static constexpr int64_t max_token_id = (1 << 24) - 1;
  static constexpr size_t max_token_bytes = 1u << 16;
  static constexpr size_t max_text_bytes = 1ull << 30;  // one encode call
};

namespace detail {

// Finds added tokens: the longest one at the leftmost position where any starts, like an
// Aho-Corasick automaton in leftmost-longest mode. There are few added tokens (26 for MiMo), so
// a first-byte filter and direct comparison are enough.
class AddedTokenMatcher {
 public:
  struct Match {
    size_t start;
    size_t end;
    uint32_t token;  // index into the tokenizer's added tokens
  };

  void add(std::string pattern, uint32_t token) { patterns_.push_back({std::move(pattern), token}); }

  // Call once after the last add().
  void finish() {
    // By first byte, then longest first; each first byte gets the range of its patterns.
    std::stable_sort(patterns_.begin(), patterns_.end(), [](const Pattern& a, const Pattern& b) {
      if (a.text[0] != b.text[0]) return static_cast<uint8_t>(a.text[0]) < static_cast<uint8_t>(b.text[0]);
      return a.text.size() > b.text.size();
    });
    by_first_byte_.fill(Range{0, 0});
    for (size_t i = 0; i < patterns_.size(); ++i) {
      Range& r = by_first_byte_[static_cast<uint8_t>(patterns_[i].text[0])];
      if (r.begin == r.end) r.begin = static_cast<uint32_t>(i);
      r.end = static_cast<uint32_t>(i + 1);
    }
  }
  bool empty() const { return patterns_.empty(); }

  std::optional<Match> find(std::string_view text, size_t from) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      const Range r = by_first_byte_[static_cast<uint8_t>(text[pos])];
      if (r.begin == r.end) continue;
      const std::string_view rest = text.substr(pos);
      for (uint32_t i = r.begin; i < r.end; ++i) {
        if (rest.starts_with(patterns_[i].text)) return Match{pos, pos + patterns_[i].text.size(), patterns_[i].token};
      }
    }
    return std::nullopt;
  }

 private:
  struct Pattern {
    std::string text;  // never empty
    uint32_t token;
  };
  struct Range {
    uint32_t begin, end;
  };
  std::vector<Pattern> patterns_;
  std::array<Range, 256> by_first_byte_{};
};

// Buffers one encode call reuses between pieces.
struct EncodeScratch {
  std::string normalized;
  std::vector<char32_t> code_points;
  std::string byte_level;
  BpeScratch bpe;
};

enum class TokenKind : uint8_t { none, vocab, added, added_special };

struct TokenizerData {
  std::string source;  // file name for messages
  Vocabulary vocab;    // model.vocab, byte-level text as in the file
  MergeTable merges;
  std::array<int32_t, 256> byte_ids{};  // id of each byte's byte-level character, -1 if missing
  // The merge of two bytes' symbols, by first byte * 256 + second; empty unless all 256 bytes
  // have a symbol (then a piece's symbols are its bytes).
  std::vector<Merge> byte_pairs;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool normalize_nfc = false;

  std::vector<AddedToken> added;  // in file order
  AddedTokenMatcher raw_matcher;
  AddedTokenMatcher normalized_matcher;

  std::vector<TokenKind> kinds;                      // by id
  std::vector<std::pair<int32_t, uint32_t>> added_by_id;  // (id, index into `added`), sorted

  const AddedToken& added_token(int32_t id) const {
    const auto it = std::lower_bound(added_by_id.begin(), added_by_id.end(), std::pair<int32_t, uint32_t>(id, 0));
    return added[it->second];
  }
  // The text of an id as tokenizer.json writes it; the id must have a token.
  std::string_view text(int32_t id) const {
    return kinds[id] == TokenKind::vocab ? vocab.text(id) : std::string_view(added_token(id).content);
  }

  std::optional<int32_t> bos_id, eos_id, pad_id;
};

}  // namespace detail

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
    if (const detail::Merge* m = data_->merges.find(left, right)) return MergeRule{m->rank, m->merged};
    return std::nullopt;
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
                                   std::string source, std::string config_source);

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
  if (d.byte_pairs.empty()) detail::bpe_merge(d.merges, out, first, scratch.bpe);
  else detail::bpe_merge(d.merges, out, first, scratch.bpe, d.byte_pairs.data(), piece);
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

inline std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  for (const AddedToken& t : data_->added)
    if (t.content == token) return t.id;
  if (const int32_t id = data_->vocab.find(token); id >= 0) return id;
  return std::nullopt;
}

inline std::optional<std::string_view> Tokenizer::token_text(int32_t id) const {
  if (!contains(id)) return std::nullopt;
  return data_->text(id);
}

inline size_t Tokenizer::memory_bytes() const {
  const auto& d = *data_;
  return d.vocab.memory_bytes() + d.merges.memory_bytes() + d.kinds.capacity();
}

// ---------------------------------------------------------------------------------------------
// Loading

namespace detail {

inline std::string quote_text(std::string_view s) {
  constexpr size_t shown = 80;
  std::string out = "'";
  out.append(s.substr(0, shown));
  if (s.size() > shown) out += "...";
  out += "'";
  return out;
}

// A string field that must equal `expected` when present.
inline Status expect_string(const io::JsonObject& object, std::string_view key, std::string_view expected,
                            bool required = true) {
  if (!object.has(key)) {
    if (!required) return ok();
    return object.missing(key);
  }
  auto value = object.get_string(key);
  if (!value) return std::move(value).error();
  if (*value != expected) {
    return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': expected " +
                                        quote_text(expected) + ", found " + quote_text(*value));
  }
  return ok();
}

// A boolean field that must equal `expected` when present.
inline Status expect_bool(const io::JsonObject& object, std::string_view key, bool expected) {
  auto value = object.get_bool(key, expected);
  if (!value) return std::move(value).error();
  if (*value != expected) {
    return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': only " +
                                        (expected ? "true" : "false") + " is supported");
  }
  return ok();
}

// A field that must be null, absent, or the empty string.
inline Status expect_empty(const io::JsonObject& object, std::string_view key) {
  if (!object.has(key)) return ok();
  auto value = object.get_string(key);
  if (value && value->empty()) return ok();
  return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': only null or \"\" is supported");
}

inline Status check_normalizer(const io::JsonObject& root, bool& nfc) {
  nfc = false;
  if (!root.has("normalizer")) return ok();
  auto normalizer = root.get_object("normalizer");
  if (!normalizer) return std::move(normalizer).error();
  auto type = normalizer->get_string("type");
  if (!type) return std::move(type).error();
  if (*type == "NFC") {
    nfc = true;
    return ok();
  }
  if (*type == "Sequence") {
    auto list = normalizer->get_array("normalizers");
    if (!list) return std::move(list).error();
    size_t index = 0;
    for (simdjson::dom::element e : *list) {
      simdjson::dom::object o;
      std::string_view t;
      if (e.get(o) || o["type"].get(t) || t != "NFC") {
        return Error(Errc::unsupported, normalizer->where() + ".normalizers[" + std::to_string(index) +
                                            "]: only NFC normalizers are supported");
      }
      nfc = true;
      ++index;
    }
    return ok();
  }
  return Error(Errc::unsupported, normalizer->where() + ": key 'type': " + quote_text(*type) +
                                      " is not supported (only NFC, as MiMo's tokenizer uses)");
}

// The pre-tokenizer must be Sequence[Split(Qwen2 pattern, Isolated), ByteLevel(no regex)].
inline Status check_pre_tokenizer(const io::JsonObject& root) {
  auto pre = root.get_object("pre_tokenizer");
  if (!pre) return std::move(pre).error();
  const std::string expected_text =
      "a Sequence of Split (the Qwen2 pattern, behavior Isolated) and ByteLevel (use_regex false)";
  if (auto s = expect_string(*pre, "type", "Sequence"); !s) return std::move(s).error().with_context("expected " + expected_text);
  auto list = pre->get_array("pretokenizers");
  if (!list) return std::move(list).error();
  if (list->size() != 2) {
    return Error(Errc::unsupported, pre->where() + ": key 'pretokenizers': expected " + expected_text + ", found " +
                                        std::to_string(list->size()) + " entries");
  }
  simdjson::dom::object split_raw, byte_level_raw;
  if (list->at(0).get(split_raw) || list->at(1).get(byte_level_raw)) {
    return Error(Errc::unsupported, pre->where() + ".pretokenizers: entries must be objects");
  }
  const io::JsonObject split(split_raw, pre->where() + ".pretokenizers[0]");
  const io::JsonObject byte_level_object(byte_level_raw, pre->where() + ".pretokenizers[1]");
  if (auto s = expect_string(split, "type", "Split"); !s) return s;
  auto pattern = split.get_object("pattern");
  if (!pattern) return std::move(pattern).error();
  if (auto s = expect_string(*pattern, "Regex", qwen2_split_pattern); !s) return s;
  if (auto s = expect_string(split, "behavior", "Isolated"); !s) return s;
  if (auto s = expect_bool(split, "invert", false); !s) return s;
  if (auto s = expect_string(byte_level_object, "type", "ByteLevel"); !s) return s;
  if (auto s = expect_bool(byte_level_object, "add_prefix_space", false); !s) return s;
  if (auto s = expect_bool(byte_level_object, "use_regex", false); !s) return s;
  return ok();
}

inline Status check_decoder_and_post_processor(const io::JsonObject& root) {
  auto decoder = root.get_object("decoder");
  if (!decoder) return std::move(decoder).error();
  if (auto s = expect_string(*decoder, "type", "ByteLevel"); !s) return s;
  if (root.has("post_processor")) {
    auto post = root.get_object("post_processor");
    if (!post) return std::move(post).error();
    // ByteLevel post-processing only adjusts offsets; anything that adds tokens is refused.
    if (auto s = expect_string(*post, "type", "ByteLevel"); !s) return s;
  }
  return ok();
}

// Reads "bos_token" etc. of tokenizer_config.json: a string or an object with "content".
inline Expected<std::optional<std::string_view>> config_token(const io::JsonObject& config, std::string_view key) {
  if (!config.has(key)) return std::optional<std::string_view>();
  auto e = config.element(key);
  if (!e) return std::move(e).error();
  std::string_view text;
  if (e->get(text) == simdjson::SUCCESS) return std::optional<std::string_view>(text);
  simdjson::dom::object o;
  if (e->get(o) == simdjson::SUCCESS && o["content"].get(text) == simdjson::SUCCESS)
    return std::optional<std::string_view>(text);
  return config.bad(key, "expected a string or an object with \"content\"");
}

}  // namespace detail

inline Expected<Tokenizer> Tokenizer::build(const simdjson::padded_string& json, const simdjson::padded_string* config,
                                            std::string source, std::string config_source) {
  using detail::quote_text;
  simdjson::dom::parser parser;
  auto root_or = io::parse_object(parser, json, source);
  if (!root_or) return std::move(root_or).error();
  const io::JsonObject& root = *root_or;

  auto data = std::make_shared<detail::TokenizerData>();
  data->source = source;

  if (auto s = detail::check_normalizer(root, data->normalize_nfc); !s) return std::move(s).error();
  if (auto s = detail::check_pre_tokenizer(root); !s) return std::move(s).error();
  if (auto s = detail::check_decoder_and_post_processor(root); !s) return std::move(s).error();

  // --- model
  auto model = root.get_object("model");
  if (!model) return std::move(model).error();
  if (auto s = detail::expect_string(*model, "type", "BPE", false); !s) return std::move(s).error();
  if (model->has("dropout")) {
    auto dropout = model->get_number("dropout");
    if (!dropout) return std::move(dropout).error();
    if (*dropout != 0.0) return Error(Errc::unsupported, model->where() + ": key 'dropout': BPE dropout is not supported");
  }
  if (auto s = detail::expect_empty(*model, "continuing_subword_prefix"); !s) return std::move(s).error();
  if (auto s = detail::expect_empty(*model, "end_of_word_suffix"); !s) return std::move(s).error();
  if (auto s = detail::expect_bool(*model, "byte_fallback", false); !s) return std::move(s).error();
  auto fuse_unk = model->get_bool("fuse_unk", false);
  if (!fuse_unk) return std::move(fuse_unk).error();
  data->fuse_unk = *fuse_unk;
  auto ignore_merges = model->get_bool("ignore_merges", false);
  if (!ignore_merges) return std::move(ignore_merges).error();
  data->ignore_merges = *ignore_merges;

  // Vocabulary: a first pass for sizes, so that everything is allocated once.
  auto vocab_element = model->get_object("vocab");
  if (!vocab_element) return std::move(vocab_element).error();
  const simdjson::dom::object vocab_object = vocab_element->raw();
  const std::string vocab_where = model->where() + ".vocab";
  size_t vocab_count = 0;
  int64_t max_id = -1;
  for (auto field : vocab_object) {
    if (++vocab_count > TokenizerLimits::max_vocab) {
      return Error(Errc::out_of_memory, vocab_where + ": more than " + std::to_string(TokenizerLimits::max_vocab) +
                                            " tokens");
    }
    const std::string_view token = field.key;
    if (token.size() > TokenizerLimits::max_token_bytes) {
      return Error(Errc::out_of_memory, vocab_where + ": token " + quote_text(token) + " is longer than " +
                                            std::to_string(TokenizerLimits::max_token_bytes) + " bytes");
    }
    int64_t id;
    if (field.value.get(id) != simdjson::SUCCESS || id < 0 || id > TokenizerLimits::max_token_id) {
      return Error(Errc::invalid_checkpoint, vocab_where + ": token " + quote_text(token) +
                                                 ": expected an id in [0, " +
                                                 std::to_string(TokenizerLimits::max_token_id) + "]");
    }
    max_id = std::max(max_id, id);
  }

  // Added tokens: parsed now, because their ids extend the id range.
  if (root.has("added_tokens")) {
    auto list = root.get_array("added_tokens");
    if (!list) return std::move(list).error();
    if (list->size() > TokenizerLimits::max_added_tokens) {
      return Error(Errc::out_of_memory, source + ": added_tokens: more than " +
                                            std::to_string(TokenizerLimits::max_added_tokens) + " entries");
    }
    size_t index = 0;
    for (simdjson::dom::element e : *list) {
      const std::string where = source + ".added_tokens[" + std::to_string(index++) + "]";
      simdjson::dom::object raw;
      if (e.get(raw)) return Error(Errc::invalid_checkpoint, where + ": expected an object");
      const io::JsonObject entry(raw, where);
      AddedToken token;
      auto id = entry.get_int_in("id", 0, TokenizerLimits::max_token_id);
      if (!id) return std::move(id).error();
      auto content = entry.get_string("content");
      if (!content) return std::move(content).error();
      if (content->empty() || content->size() > TokenizerLimits::max_token_bytes) {
        return entry.bad("content", "must have 1 to " + std::to_string(TokenizerLimits::max_token_bytes) + " bytes");
      }
      token.id = static_cast<int32_t>(*id);
      token.content = std::string(*content);
      bool* flags[] = {&token.special, &token.single_word, &token.lstrip, &token.rstrip, &token.normalized};
      const char* names[] = {"special", "single_word", "lstrip", "rstrip", "normalized"};
      for (size_t f = 0; f < 5; ++f) {
        auto value = entry.get_bool(names[f], false);
        if (!value) return std::move(value).error();
        *flags[f] = *value;
      }
      max_id = std::max<int64_t>(max_id, token.id);
      data->added.push_back(std::move(token));
    }
  }

  {  // no two added tokens with the same content or id
    std::vector<const AddedToken*> sorted;
    for (const AddedToken& t : data->added) sorted.push_back(&t);
    const auto repeated = [&](auto less, auto same) -> const AddedToken* {
      std::sort(sorted.begin(), sorted.end(), less);
      for (size_t i = 1; i < sorted.size(); ++i)
        if (same(*sorted[i - 1], *sorted[i])) return sorted[i];
      return nullptr;
    };
    const AddedToken* twice = repeated([](auto* a, auto* b) { return a->content < b->content; },
                                       [](auto& a, auto& b) { return a.content == b.content; });
    if (!twice) {
      twice = repeated([](auto* a, auto* b) { return a->id < b->id; }, [](auto& a, auto& b) { return a.id == b.id; });
    }
    if (twice) {
      return Error(Errc::invalid_checkpoint, source + ": added_tokens: token " + quote_text(twice->content) + " (id " +
                                                 std::to_string(twice->id) + ") repeats the content or id of another");
    }
  }

  const size_t id_limit = static_cast<size_t>(max_id + 1);
  data->vocab.reset(id_limit, vocab_count);
  for (auto field : vocab_object) {
    int64_t id = 0;
    if (field.value.get(id) != simdjson::SUCCESS) continue;  // cannot happen: checked above
    if (!data->vocab.set_length(static_cast<int32_t>(id), field.key.size())) {
      return Error(Errc::invalid_checkpoint, vocab_where + ": id " + std::to_string(id) + " is given to two tokens (" +
                                                 quote_text(field.key) + " is the second)");
    }
  }
  for (auto field : vocab_object) {
    int64_t id = 0;
    if (field.value.get(id) != simdjson::SUCCESS) continue;
    if (data->vocab.add(field.key, static_cast<int32_t>(id)) >= 0) {
      return Error(Errc::invalid_checkpoint, vocab_where + ": token " + quote_text(field.key) + " appears twice");
    }
  }

  if (model->has("unk_token")) {
    auto unk = model->get_string("unk_token");
    if (!unk) return std::move(unk).error();
    data->unk_id = data->vocab.find(*unk);
    if (data->unk_id < 0) return model->bad("unk_token", quote_text(*unk) + " is not in the vocabulary");
  }

  // The byte-level symbol of each byte.
  bool all_bytes = true;
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    detail::append_utf8(symbol, detail::byte_level.char_of_byte[b]);
    data->byte_ids[b] = data->vocab.find(symbol);
    all_bytes = all_bytes && data->byte_ids[b] >= 0;
  }
  if (all_bytes) data->byte_pairs.assign(256 * 256, detail::bpe_detail::no_merge);
  // The byte a token stands for when its text is one byte-level character, else -1.
  const auto single_byte = [](std::string_view text) -> int {
    if (text.empty() || text.size() > 2) return -1;
    const auto c = detail::decode_utf8(text.data(), text.data() + text.size());
    return c.valid && c.length == text.size() ? detail::byte_of_byte_level_char(c.code_point) : -1;
  };

  // Merges: ["a", "b"] pairs, or "a b" strings as older files write them.
  auto merges = model->get_array("merges");
  if (!merges) return std::move(merges).error();
  if (merges->size() > TokenizerLimits::max_merges) {
    return Error(Errc::out_of_memory, model->where() + ".merges: more than " +
                                          std::to_string(TokenizerLimits::max_merges) + " merges");
  }
  data->merges.reset(merges->size());
  {
    std::string joined;
    uint32_t rank = 0;
    int32_t merged_id_offset = 0;
    size_t index = 0;
    for (simdjson::dom::element e : *merges) {
      const size_t this_index = index++;
      std::string_view left, right;
      std::string_view line;
      simdjson::dom::array pair;
      if (e.get(line) == simdjson::SUCCESS) {
        if (line.starts_with("#version")) continue;  // header line of merges.txt, skipped as HF does
        const size_t space = line.find(' ');
        if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos) {
          return Error(Errc::invalid_checkpoint, model->where() + ".merges[" + std::to_string(this_index) +
                                                     "]: expected \"left right\", found " + quote_text(line));
        }
        left = line.substr(0, space);
        right = line.substr(space + 1);
      } else if (e.get(pair) == simdjson::SUCCESS && pair.size() == 2 && pair.at(0).get(left) == simdjson::SUCCESS &&
                 pair.at(1).get(right) == simdjson::SUCCESS) {
      } else {
        return Error(Errc::invalid_checkpoint, model->where() + ".merges[" + std::to_string(this_index) +
                                                   "]: expected two strings");
      }
      const int32_t left_id = data->vocab.find(left);
      const int32_t right_id = data->vocab.find(right);
      joined.assign(left).append(right);
      // Vocabularies trained by BPE list each merge's result in merge order (Qwen2: id 256 + rank),
      // so try the id that continues the pattern before hashing.
      int32_t merged_id = static_cast<int32_t>(rank) + merged_id_offset;
      if (!data->vocab.contains_id(merged_id) || data->vocab.text(merged_id) != joined) {
        merged_id = data->vocab.find(joined);
        merged_id_offset = merged_id - static_cast<int32_t>(rank);
      }
      if (left_id < 0 || right_id < 0 || merged_id < 0) {
        const std::string_view missing = left_id < 0 ? left : right_id < 0 ? right : std::string_view(joined);
        return Error(Errc::invalid_checkpoint, model->where() + ".merges[" + std::to_string(this_index) + "]: merge " +
                                                   quote_text(left) + " + " + quote_text(right) + ": token " + quote_text(missing) +
                                                   " is not in the vocabulary");
      }
      data->merges.put(left_id, right_id, detail::Merge{rank, merged_id});
      if (!data->byte_pairs.empty() && left.size() <= 2 && right.size() <= 2) {
        const int left_byte = single_byte(left), right_byte = single_byte(right);
        if (left_byte >= 0 && right_byte >= 0)
          data->byte_pairs[static_cast<size_t>(left_byte) * 256 + static_cast<size_t>(right_byte)] = {rank, merged_id};
      }
      ++rank;
    }
  }


  // Kinds of ids. An added token with the id of a vocabulary entry hides it, as in Hugging Face.
  data->kinds.assign(id_limit, detail::TokenKind::none);
  for (size_t i = 0; i < id_limit; ++i) {
    if (data->vocab.contains_id(static_cast<int32_t>(i))) data->kinds[i] = detail::TokenKind::vocab;
  }
  for (size_t i = 0; i < data->added.size(); ++i) {
    const AddedToken& t = data->added[i];
    data->kinds[t.id] = t.special ? detail::TokenKind::added_special : detail::TokenKind::added;
    data->added_by_id.emplace_back(t.id, static_cast<uint32_t>(i));
  }
  std::sort(data->added_by_id.begin(), data->added_by_id.end());

  // Added-token matchers: raw text, or NFC text for tokens marked normalized.
  for (size_t i = 0; i < data->added.size(); ++i) {
    const AddedToken& t = data->added[i];
    if (t.normalized && data->normalize_nfc) data->normalized_matcher.add(detail::to_nfc(t.content), static_cast<uint32_t>(i));
    else if (t.normalized) data->normalized_matcher.add(t.content, static_cast<uint32_t>(i));
    else data->raw_matcher.add(t.content, static_cast<uint32_t>(i));
  }
  data->raw_matcher.finish();
  data->normalized_matcher.finish();

  // tokenizer_config.json: the ids of the named bos/eos/pad tokens.
  if (config != nullptr) {
    simdjson::dom::parser config_parser;
    auto config_root = io::parse_object(config_parser, *config, config_source);
    if (!config_root) return std::move(config_root).error();
    const Tokenizer probe(data);
    const std::pair<const char*, std::optional<int32_t>*> named[] = {
        {"bos_token", &data->bos_id}, {"eos_token", &data->eos_id}, {"pad_token", &data->pad_id}};
    for (const auto& [key, slot] : named) {
      auto text = detail::config_token(*config_root, key);
      if (!text) return std::move(text).error();
      if (!*text) continue;
      const auto id = probe.token_id(**text);
      if (!id) return config_root->bad(key, quote_text(**text) + " is not a token of " + source);
      *slot = *id;
    }
  }
  return Tokenizer(std::move(data));
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
