// The tables of a loaded tokenizer (shared, immutable) and the public structs that describe it.
// Not API by itself: include mimo/tokenizer.hpp.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mimo/detail/bpe.hpp"

namespace mimo {

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
  static constexpr size_t max_merges = (1u << 22) - 1;
  static constexpr size_t max_added_tokens = 1u << 16;
  static constexpr int64_t max_token_id = (1 << 21) - 1;
  static constexpr size_t max_token_bytes = 1u << 16;
  static constexpr size_t max_text_bytes = 1ull << 30;  // one encode call
  // Everything but model.vocab and model.merges (added tokens, pre-tokenizer, ...), which is
  // parsed into a DOM costing about 13 times its size: a few KB in real files.
  static constexpr size_t max_other_json_bytes = 16u << 20;
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
  // The rank of the merge of two bytes' symbols, by first byte * 256 + second; empty unless all
  // 256 bytes have a symbol (then a piece's symbols are its bytes).
  std::vector<uint32_t> byte_pair_ranks;
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

  // The id of an added token's content or of a vocabulary text; added tokens first, as in HF.
  std::optional<int32_t> find_token(std::string_view token) const {
    for (const AddedToken& t : added)
      if (t.content == token) return t.id;
    if (const int32_t id = vocab.find(token); id >= 0) return id;
    return std::nullopt;
  }

  std::optional<int32_t> bos_id, eos_id, pad_id;
};

}  // namespace detail
}  // namespace mimo
