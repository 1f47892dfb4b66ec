// The Qwen2 pre-tokenizer: splits text into the pieces that BPE encodes one by one.
//
// Hugging Face runs this regular expression (leftmost-first alternation, Oniguruma semantics),
// keeping every match as a piece ("Isolated"):
//
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// We scan by hand instead of running a regex engine; next_qwen2_piece documents how each
// alternative, including its backtracking, reduces to a few loops. \s is White_Space, \p{L} and
// \p{N} are the general categories; every character belongs to some alternative, so the pieces
// cover the text without gaps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mimo/detail/unicode.hpp"

namespace mimo::detail {

inline constexpr std::string_view qwen2_split_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// What the pattern distinguishes about one character.
enum class CharClass : uint8_t { letter, number, newline, space, other };  // newline: \r or \n (also \s)

struct ClassifiedChar {
  CharClass cls;
  uint32_t length;  // bytes
  char32_t code_point;
};

namespace pretokenizer_detail {
constexpr CharClass ascii_class(uint8_t b) {
  if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')) return CharClass::letter;
  if (b >= '0' && b <= '9') return CharClass::number;
  if (b == '\r' || b == '\n') return CharClass::newline;
  if (b == ' ' || (b >= 0x09 && b <= 0x0D)) return CharClass::space;
  return CharClass::other;
}
struct AsciiClasses {
  CharClass value[128];
  constexpr AsciiClasses() : value() {
    for (int b = 0; b < 128; ++b) value[b] = ascii_class(static_cast<uint8_t>(b));
  }
};
inline constexpr AsciiClasses ascii_classes{};
}  // namespace pretokenizer_detail

// Classifies the character at text[pos] (valid UTF-8, pos < text.size()).
inline ClassifiedChar classify_char(std::string_view text, size_t pos) {
  const auto b = static_cast<uint8_t>(text[pos]);
  if (b < 0x80) return {pretokenizer_detail::ascii_classes.value[b], 1, b};
  const DecodedChar c = decode_utf8(text.data() + pos, text.data() + text.size());
  const uint8_t flags = code_point_flags(c.code_point);
  CharClass cls = CharClass::other;
  if (flags & unicode_tables::letter) cls = CharClass::letter;
  else if (flags & unicode_tables::number) cls = CharClass::number;
  else if (flags & unicode_tables::white_space) cls = CharClass::space;
  return {cls, c.length, c.code_point};
}

namespace pretokenizer_detail {
// End of the run of characters of class `cls` that starts at pos.
inline size_t skip_class(std::string_view text, size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const auto b = static_cast<uint8_t>(text[pos]);
    if (b < 0x80) {
      if (ascii_classes.value[b] != cls) break;
      ++pos;
      continue;
    }
    const ClassifiedChar c = classify_char(text, pos);
    if (c.cls != cls) break;
    pos += c.length;
  }
  return pos;
}

// End of the contraction 's 't 're 've 'm 'll 'd (any case) starting at pos, or pos if none.
// Case-insensitive matching folds U+017F LATIN SMALL LETTER LONG S to 's' as Oniguruma does;
// no other character folds to one of these letters.
inline size_t match_contraction(std::string_view text, size_t pos) {
  const size_t n = text.size();
  if (text[pos] != '\'' || pos + 1 >= n) return pos;
  const auto lower = [&](size_t i) -> char {
    const char c = text[i];
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  };
  const char c1 = lower(pos + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
  if (static_cast<uint8_t>(text[pos + 1]) == 0xC5 && pos + 2 < n && static_cast<uint8_t>(text[pos + 2]) == 0xBF)
    return pos + 3;  // U+017F
  if (pos + 2 < n) {
    const char c2 = lower(pos + 2);
    if ((c1 == 'r' || c1 == 'v') && c2 == 'e') return pos + 3;
    if (c1 == 'l' && c2 == 'l') return pos + 3;
  }
  return pos;
}
}  // namespace pretokenizer_detail

// The end of the piece that starts at pos (pos < text.size(), text valid UTF-8).
inline size_t next_qwen2_piece(std::string_view text, size_t pos) {
  using namespace pretokenizer_detail;
  const size_t n = text.size();

  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (const size_t end = match_contraction(text, pos); end != pos) return end;

  const ClassifiedChar first = classify_char(text, pos);
  const size_t after_first = pos + first.length;

  // [^\r\n\p{L}\p{N}]?\p{L}+ : greedy, and what follows the letters never forces a backtrack.
  if (first.cls == CharClass::letter) return skip_class(text, after_first, CharClass::letter);
  if (first.cls == CharClass::other || first.cls == CharClass::space) {
    if (after_first < n && classify_char(text, after_first).cls == CharClass::letter)
      return skip_class(text, after_first, CharClass::letter);
  }

  // \p{N}: one character at a time.
  if (first.cls == CharClass::number) return after_first;

  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t others_from = n;  // where the run of "other" characters starts, if this alternative applies
  if (first.cls == CharClass::other) others_from = pos;
  else if (first.code_point == ' ' && after_first < n && classify_char(text, after_first).cls == CharClass::other)
    others_from = after_first;
  if (others_from != n) {
    size_t end = skip_class(text, others_from, CharClass::other);
    while (end < n && (text[end] == '\r' || text[end] == '\n')) ++end;
    return end;
  }

  // Only white space is left. Let W be the run of white space from pos.
  size_t end = pos;
  size_t after_last_newline = pos;
  size_t last_char_start = pos;
  uint32_t count = 0;
  while (end < n) {
    const ClassifiedChar c = classify_char(text, end);
    if (c.cls != CharClass::space && c.cls != CharClass::newline) break;
    last_char_start = end;
    end += c.length;
    ++count;
    if (c.cls == CharClass::newline) after_last_newline = end;
  }
  // \s*[\r\n]+ : backtracking gives up white space until a newline ends the match, so the match
  // ends just after the last \r or \n in W.
  if (after_last_newline != pos) return after_last_newline;
  // \s+(?!\S) : all of W at the end of the text; otherwise W less its last character, which
  // then precedes the non-space (it needs at least two characters).
  if (end == n) return end;
  if (count >= 2) return last_char_start;
  // \s+
  return end;
}

}  // namespace mimo::detail
