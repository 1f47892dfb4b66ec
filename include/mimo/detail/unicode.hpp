// UTF-8 decoding and encoding, the Unicode properties the tokenizer needs, and NFC normalisation.
//
// Tables come from tools/gen_unicode_tables.py (Unicode 15.0.0, see unicode_tables.hpp): generated
// rather than taken from ICU so the library keeps to the standard library and simdjson, and the
// Unicode version is pinned in one file.
//
// Invalid UTF-8 is handled the way the Unicode standard recommends ("maximal subpart" practice,
// also what Rust's String::from_utf8_lossy does): each maximal prefix of a valid sequence that
// cannot be completed, and each byte that cannot start one, becomes one U+FFFD.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/detail/unicode_tables.hpp"

namespace mimo::detail {

inline constexpr char32_t replacement_character = 0xFFFD;

struct DecodedChar {
  char32_t code_point;  // U+FFFD for an invalid sequence
  uint32_t length;      // bytes consumed, 1..4; never 0 when at least one byte is available
  bool valid;
};

// Decodes the character at p (p < end). Reads no byte at or past end.
inline DecodedChar decode_utf8(const char* p, const char* end) {
  const auto b0 = static_cast<uint8_t>(p[0]);
  if (b0 < 0x80) return {b0, 1, true};
  // Lead byte: number of continuation bytes and the allowed range of the first one (this range is
  // what excludes overlong forms, surrogates and code points above U+10FFFF).
  uint32_t continuation;
  uint8_t lo = 0x80, hi = 0xBF;
  char32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    continuation = 1;
    cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    continuation = 2;
    cp = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    continuation = 3;
    cp = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {replacement_character, 1, false};
  }
  uint32_t i = 1;
  for (; i <= continuation; ++i) {
    if (p + i >= end) return {replacement_character, i, false};
    const auto b = static_cast<uint8_t>(p[i]);
    if (b < lo || b > hi) return {replacement_character, i, false};
    lo = 0x80;
    hi = 0xBF;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  return {cp, i, true};
}

// Appends the UTF-8 form of a Unicode scalar value (cp must not be a surrogate or > U+10FFFF).
inline void append_utf8(std::string& out, char32_t cp) {
  char buf[4];
  size_t n;
  if (cp < 0x80) {
    buf[0] = static_cast<char>(cp);
    n = 1;
  } else if (cp < 0x800) {
    buf[0] = static_cast<char>(0xC0 | (cp >> 6));
    buf[1] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    buf[0] = static_cast<char>(0xE0 | (cp >> 12));
    buf[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    buf[0] = static_cast<char>(0xF0 | (cp >> 18));
    buf[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[3] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 4;
  }
  out.append(buf, n);
}

// Length of the longest prefix of `text` that is valid UTF-8.
inline size_t valid_utf8_prefix(std::string_view text) {
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    // Eight ASCII bytes at a time: most input is mostly ASCII.
    if (end - p >= 8) {
      uint64_t word;
      std::memcpy(&word, p, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        p += 8;
        continue;
      }
    }
    const DecodedChar c = decode_utf8(p, end);
    if (!c.valid) break;
    p += c.length;
  }
  return static_cast<size_t>(p - text.data());
}

inline bool is_valid_utf8(std::string_view text) { return valid_utf8_prefix(text) == text.size(); }

// Appends `text` with every invalid sequence replaced by U+FFFD (maximal subparts).
inline void append_utf8_lossy(std::string& out, std::string_view text) {
  while (!text.empty()) {
    const size_t good = valid_utf8_prefix(text);
    out.append(text.data(), good);
    text.remove_prefix(good);
    if (text.empty()) break;
    const DecodedChar c = decode_utf8(text.data(), text.data() + text.size());
    append_utf8(out, replacement_character);
    text.remove_prefix(c.length);
  }
}

// For streaming: appends the lossy decoding of the longest prefix of `bytes` that more bytes
// could not change, and returns its length. What is left is the start of a character that may
// still be completed (at most 3 bytes).
inline size_t append_utf8_lossy_complete(std::string& out, std::string_view bytes) {
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  while (p < end) {
    const size_t good = valid_utf8_prefix(std::string_view(p, static_cast<size_t>(end - p)));
    out.append(p, good);
    p += good;
    if (p == end) break;
    const DecodedChar c = decode_utf8(p, end);
    const auto lead = static_cast<uint8_t>(*p);
    if (p + c.length == end && lead >= 0xC2 && lead <= 0xF4) break;  // ran out of bytes: wait for more
    append_utf8(out, replacement_character);
    p += c.length;
  }
  return static_cast<size_t>(p - bytes.data());
}

// ---------------------------------------------------------------------------------------------
// Properties

inline const unicode_tables::CodePointRecord& code_point_record(char32_t cp) {
  if (cp >= 0x110000) cp = 0xFFFF;  // a noncharacter: no flags, class 0
  const uint32_t block_number = unicode_tables::block_index[cp / unicode_tables::block_size];
  return unicode_tables::records[unicode_tables::block_data[block_number * unicode_tables::block_size +
                                                            cp % unicode_tables::block_size]];
}

inline uint8_t code_point_flags(char32_t cp) { return code_point_record(cp).flags; }
inline bool is_letter(char32_t cp) { return code_point_flags(cp) & unicode_tables::letter; }
inline bool is_number(char32_t cp) { return code_point_flags(cp) & unicode_tables::number; }
inline bool is_white_space(char32_t cp) { return code_point_flags(cp) & unicode_tables::white_space; }
inline bool is_word_char(char32_t cp) { return code_point_flags(cp) & unicode_tables::word; }
inline uint8_t combining_class(char32_t cp) { return code_point_record(cp).combining_class; }

// ---------------------------------------------------------------------------------------------
// NFC (Unicode Standard Annex #15): canonical decomposition, canonical ordering, canonical
// composition.

namespace hangul {
inline constexpr char32_t s_base = 0xAC00, l_base = 0x1100, v_base = 0x1161, t_base = 0x11A7;
inline constexpr char32_t l_count = 19, v_count = 21, t_count = 28;
inline constexpr char32_t n_count = v_count * t_count, s_count = l_count * n_count;
}  // namespace hangul

// True when `text` (valid UTF-8) is certainly in NFC; false means "normalise to find out". This
// is the quick check of UAX #15 with Maybe treated as No.
inline bool is_nfc_quick(std::string_view text) {
  const char* p = text.data();
  const char* end = p + text.size();
  uint8_t last_class = 0;
  while (p < end) {
    const auto b = static_cast<uint8_t>(*p);
    if (b < 0x80) {  // ASCII: class 0 and NFC_QC=Yes; nothing to check
      ++p;
      last_class = 0;
      continue;
    }
    const DecodedChar c = decode_utf8(p, end);
    p += c.length;
    const auto& record = code_point_record(c.code_point);
    if (record.flags & (unicode_tables::nfc_no | unicode_tables::nfc_maybe)) return false;
    if (record.combining_class != 0 && last_class > record.combining_class) return false;
    last_class = record.combining_class;
  }
  return true;
}

// Appends the full canonical decomposition of cp.
inline void append_canonical_decomposition(std::vector<char32_t>& out, char32_t cp) {
  using namespace hangul;
  if (cp >= s_base && cp < s_base + s_count) {
    const char32_t index = cp - s_base;
    out.push_back(l_base + index / n_count);
    out.push_back(v_base + (index % n_count) / t_count);
    if (index % t_count != 0) out.push_back(t_base + index % t_count);
    return;
  }
  if (!(code_point_flags(cp) & unicode_tables::decomposes)) {
    out.push_back(cp);
    return;
  }
  const auto* first = std::begin(unicode_tables::decompositions);
  const auto* last = std::end(unicode_tables::decompositions);
  const auto* it = std::lower_bound(first, last, cp, [](const auto& d, char32_t v) { return d.code_point < v; });
  if (it == last || it->code_point != cp) {  // cannot happen with consistent tables
    out.push_back(cp);
    return;
  }
  for (uint32_t i = 0; i < it->length; ++i) out.push_back(unicode_tables::decomposition_data[it->offset + i]);
}

// The primary composite of (first, second), or 0 when there is none.
inline char32_t compose_pair(char32_t first, char32_t second) {
  using namespace hangul;
  if (first >= l_base && first < l_base + l_count && second >= v_base && second < v_base + v_count) {
    return s_base + ((first - l_base) * v_count + (second - v_base)) * t_count;
  }
  if (first >= s_base && first < s_base + s_count && (first - s_base) % t_count == 0 && second > t_base &&
      second < t_base + t_count) {
    return first + (second - t_base);
  }
  const uint64_t key = (static_cast<uint64_t>(first) << 21) | second;
  const auto* begin = std::begin(unicode_tables::compositions);
  const auto* end = std::end(unicode_tables::compositions);
  const auto* it = std::lower_bound(begin, end, key, [](const auto& c, uint64_t k) { return c.key < k; });
  return (it != end && it->key == key) ? it->composite : 0;
}

// Sorts each run of non-starters by combining class, keeping the order of equal classes.
inline void canonical_order(std::vector<char32_t>& cps) {
  size_t i = 0;
  while (i < cps.size()) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(j),
                       [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    }
    i = j;
  }
}

// Composes canonically decomposed, canonically ordered code points in place.
inline void canonical_compose(std::vector<char32_t>& cps) {
  size_t out = 0;
  size_t starter = SIZE_MAX;  // index in the output of the last starter
  int last_class = -1;        // class of the last character kept after that starter; -1: none
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const int cls = combining_class(c);
    if (starter != SIZE_MAX) {
      const bool blocked = last_class != -1 && (last_class == 0 || last_class >= cls);
      if (!blocked) {
        if (const char32_t composite = compose_pair(cps[starter], c)) {
          cps[starter] = composite;
          continue;
        }
      }
    }
    if (cls == 0) {
      starter = out;
      last_class = -1;
    } else {
      last_class = cls;
    }
    cps[out++] = c;
  }
  cps.resize(out);
}

// Appends NFC(text) to out. `text` must be valid UTF-8. `scratch` is reused between calls.
inline void append_nfc(std::string& out, std::string_view text, std::vector<char32_t>& scratch) {
  scratch.clear();
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    const DecodedChar c = decode_utf8(p, end);
    p += c.length;
    append_canonical_decomposition(scratch, c.code_point);
  }
  canonical_order(scratch);
  canonical_compose(scratch);
  for (char32_t cp : scratch) append_utf8(out, cp);
}

inline std::string to_nfc(std::string_view text) {
  std::string out;
  if (is_valid_utf8(text) && is_nfc_quick(text)) return std::string(text);
  std::string valid;
  append_utf8_lossy(valid, text);
  std::vector<char32_t> scratch;
  append_nfc(out, valid, scratch);
  return out;
}

}  // namespace mimo::detail
