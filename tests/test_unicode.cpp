// UTF-8 decoding with replacement, the character properties of the pre-tokenizer, and NFC.
#include <doctest/doctest.h>

#include <mimo/detail/unicode.hpp>

#include <string>
#include <string_view>
#include <vector>

using namespace mimo::detail;

namespace {

std::u32string decode_all(std::string_view bytes) {
  std::u32string out;
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  while (p < end) {
    const DecodedChar c = decode_utf8(p, end);
    REQUIRE(c.length >= 1);
    REQUIRE(p + c.length <= end);
    out.push_back(c.code_point);
    p += c.length;
  }
  return out;
}

std::string utf8(std::u32string_view cps) {
  std::string out;
  for (char32_t c : cps) append_utf8(out, c);
  return out;
}

std::string lossy(std::string_view bytes) {
  std::string out;
  append_utf8_lossy(out, bytes);
  return out;
}

}  // namespace

TEST_CASE("the tables are the versions the generator states") {
  CHECK(std::string_view(unicode_tables::unicode_version) == "16.0.0");
  CHECK(std::string_view(unicode_tables::normalization_unicode_version) == "9.0.0");
}

TEST_CASE("UTF-8: every scalar value round-trips") {
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    std::string s;
    append_utf8(s, cp);
    const DecodedChar c = decode_utf8(s.data(), s.data() + s.size());
    REQUIRE(c.valid);
    REQUIRE(c.code_point == cp);
    REQUIRE(c.length == s.size());
  }
}

TEST_CASE("UTF-8: invalid input becomes U+FFFD per maximal subpart") {
  // The example of the Unicode Standard, chapter 3, "U+FFFD Substitution of Maximal Subparts".
  CHECK(decode_all("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64") ==
        U"a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
  CHECK(decode_all("\xC0\xAF") == U"\uFFFD\uFFFD");              // overlong: C0 never starts a sequence
  CHECK(decode_all("\xE0\x80\xAF") == U"\uFFFD\uFFFD\uFFFD");    // overlong 3-byte form
  CHECK(decode_all("\xED\xA0\x80") == U"\uFFFD\uFFFD\uFFFD");    // a surrogate
  CHECK(decode_all("\xF4\x90\x80\x80") == U"\uFFFD\uFFFD\uFFFD\uFFFD");  // above U+10FFFF
  CHECK(decode_all("\xF0\x90\x80") == U"\uFFFD");                // truncated at the end: one U+FFFD
  CHECK(decode_all("\xFF") == U"\uFFFD");
  CHECK(decode_all("\xF0\x90\x80\x80") == U"\U00010000");
  CHECK(!is_valid_utf8("ab\xC2"));
  CHECK(is_valid_utf8("ab\xC2\xA0"));
  CHECK(valid_utf8_prefix("abcdefghij\x80") == 10);
  CHECK(lossy("a\xE2\x82z") == "a\uFFFDz");
}

TEST_CASE("UTF-8: streaming keeps back only a sequence that may still complete") {
  std::string out;
  CHECK(append_utf8_lossy_complete(out, "ab\xE4\xB8") == 2);  // E4 B8 may become U+4E2D
  CHECK(out == "ab");
  out.clear();
  CHECK(append_utf8_lossy_complete(out, "\xE4\xB8\xAD") == 3);
  CHECK(out == "\u4E2D");
  out.clear();
  CHECK(append_utf8_lossy_complete(out, "\xE0\x80") == 2);  // E0 80 can never complete
  CHECK(out == "\uFFFD\uFFFD");
  out.clear();
  CHECK(append_utf8_lossy_complete(out, "x\x80") == 2);  // a lone continuation byte
  CHECK(out == "x\uFFFD");
}

TEST_CASE("properties: letters, numbers, white space") {
  for (char32_t c : {U'A', U'z', U'\u00E9', U'\u017F', U'\u4E16', U'\uD55C', U'\u02B0', U'\u01C5', U'\U00010D50'})
    CHECK(is_letter(c));
  for (char32_t c : {U'0', U'9', U'\u0663', U'\u00B2', U'\u216B', U'\u2460'}) {
    CHECK(is_number(c));
    CHECK(!is_letter(c));
  }
  for (char32_t c : {U'_', U'\'', U'-', U'\u0301', U'\U0001F916', U'\u200D'}) {
    CHECK(!is_letter(c));
    CHECK(!is_number(c));
  }
  // White_Space is exactly these 25 code points (stable since Unicode 6.3).
  std::vector<char32_t> white;
  for (char32_t c = 0; c < 0x110000; ++c)
    if (is_white_space(c)) white.push_back(c);
  const std::vector<char32_t> expected = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,   0x1680,
                                          0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008,
                                          0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
  CHECK(white == expected);
  CHECK(is_word_char(U'_'));
  CHECK(is_word_char(U'\u0301'));
  CHECK(!is_word_char(U'-'));
}

TEST_CASE("NFC: composition, exclusions, singletons, Hangul, canonical order") {
  CHECK(to_nfc("e\u0301") == "\u00E9");
  CHECK(to_nfc("\u00E9") == "\u00E9");
  CHECK(to_nfc("A\u030A") == "\u00C5");
  CHECK(to_nfc("\u212B") == "\u00C5");        // ANGSTROM SIGN: a singleton decomposition
  CHECK(to_nfc("\u2126") == "\u03A9");        // OHM SIGN
  CHECK(to_nfc("\u0958") == "\u0915\u093C");  // DEVANAGARI QA is excluded from composition
  CHECK(to_nfc("\u0915\u093C") == "\u0915\u093C");
  CHECK(to_nfc("\u0344") == "\u0308\u0301");  // a non-starter decomposition
  // Hangul: jamo compose algorithmically, L+V then LV+T.
  CHECK(to_nfc("\u1100\u1161") == "\uAC00");
  CHECK(to_nfc("\u1100\u1161\u11A8") == "\uAC01");
  CHECK(to_nfc("\uAC00\u11A8") == "\uAC01");
  CHECK(to_nfc("\uAC01") == "\uAC01");
  // Marks are ordered by combining class (acute 230 after dot below 220), then composed.
  CHECK(to_nfc("a\u0301\u0323") == "\u1EA1\u0301");
  CHECK(to_nfc("a\u0323\u0302") == "\u1EAD");
  // A mark of the same class in between blocks the composition of the second.
  CHECK(to_nfc("a\u0305\u0301") == "a\u0305\u0301");
  // Two non-starters of equal class keep their order.
  CHECK(to_nfc("x\u0301\u0300") == "x\u0301\u0300");
  // U+1E9B U+0323 (NormalizationTest.txt part 0): long s with dot above, dot below.
  CHECK(to_nfc("\u1E9B\u0323") == "\u1E9B\u0323");
  CHECK(to_nfc("\u017F\u0323\u0307") == "\u1E9B\u0323");
  // Normalisation knows the characters of Unicode 9.0 only, as Hugging Face does: U+0EBA (a mark
  // with class 9 since Unicode 12) is left where it is.
  CHECK(to_nfc("x\u0301\u0EBA") == "x\u0301\u0EBA");
  CHECK(to_nfc("x\u0301\u0F71") == "x\u0F71\u0301");  // U+0F71 (class 129, Unicode 2.0) moves
  // Invalid input is replaced first.
  CHECK(to_nfc("e\xFF\u0301") == "e\uFFFD\u0301");
}

TEST_CASE("NFC quick check") {
  CHECK(is_nfc_quick("plain ASCII"));
  CHECK(is_nfc_quick("\u4E16\u754C \uD55C\uAD6D\uC5B4"));
  CHECK(!is_nfc_quick("e\u0301"));      // U+0301 is NFC_QC=Maybe
  CHECK(!is_nfc_quick("\u212B"));       // NFC_QC=No
  CHECK(!is_nfc_quick("a\u0301\u0323"));  // classes out of order
  CHECK(is_nfc_quick("a\u0316\u0305"));  // classes 220 then 230, neither composes
}

TEST_CASE("NFC is idempotent and keeps canonical equivalents together") {
  const std::vector<std::u32string> samples = {
      U"\u00C5\u0327", U"A\u0327\u030A", U"\u1E0B\u0323", U"d\u0323\u0307", U"\u0071\u0307\u0323",
      U"\u1100\uAC00\u11A8", U"\u0F73\u0F72", U"\u2000\u0301", U"\U0001D15E\U0001D165",
  };
  for (const auto& s : samples) {
    const std::string once = to_nfc(utf8(s));
    CHECK(to_nfc(once) == once);
  }
  CHECK(to_nfc(utf8(U"\u00C5\u0327")) == to_nfc(utf8(U"A\u0327\u030A")));
  CHECK(to_nfc(utf8(U"\u1E0B\u0323")) == to_nfc(utf8(U"d\u0323\u0307")));
}
