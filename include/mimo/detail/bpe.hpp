// Byte-level BPE pieces: the GPT-2 byte alphabet, the vocabulary (token text -> id) and merge
// (pair of ids -> rank, merged id) hash tables, and the merge loop.
//
// Tables are open-addressing arrays over one text arena rather than maps of std::string, so
// loading 150k tokens and merges costs few allocations (see the load-time goal in tokenizer.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace mimo::detail {

// ---------------------------------------------------------------------------------------------
// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order (space -> U+0120 'Ġ', \n -> 'Ċ').

struct ByteLevelAlphabet {
  char32_t char_of_byte[256];
  int16_t byte_of_char[324];  // indexed by code point (all < 324); -1 where no byte maps there

  constexpr ByteLevelAlphabet() : char_of_byte(), byte_of_char() {
    for (auto& b : byte_of_char) b = -1;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char_of_byte[b] = printable ? static_cast<char32_t>(b) : next++;
      byte_of_char[char_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};
inline constexpr ByteLevelAlphabet byte_level{};

// The byte a byte-level character stands for, or -1.
inline int byte_of_byte_level_char(char32_t c) { return c < 324 ? byte_level.byte_of_char[c] : -1; }

// ---------------------------------------------------------------------------------------------
// Hashing

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xD6E8FEB86659FD93ull;
  x ^= x >> 32;
  return x;
}

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x9E3779B97F4A7C15ull;
  return mix64(h);
}

// A hint to fetch memory that will be read soon.
inline void prefetch_read(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

inline size_t table_capacity_for(size_t count) {
  // A power of two for masking, with a load factor of at most 3/4 (the tables are built once, so
  // smaller tables that stay in cache matter more than short probe sequences).
  return std::bit_ceil(std::max<size_t>(16, count + count / 3 + 1));
}

// ---------------------------------------------------------------------------------------------
// Token texts by id in one arena, and the reverse lookup.

class Vocabulary {
 public:
  // Empties the vocabulary and sizes the lookup table for about `count` tokens.
  void reset(size_t count) {
    text_.clear();
    text_.reserve(count * 8);         // Qwen2 averages under 7 bytes a token
    ranges_.assign(count, Range{0, absent});  // ids are usually 0 .. count - 1
    slots_.assign(table_capacity_for(count), 0);
    mask_ = slots_.size() - 1;
    size_ = 0;
  }

  enum class AddResult { added, id_taken, text_taken };

  // Adds a token (id >= 0). Ids may come in any order; the id table grows to the largest.
  AddResult add(std::string_view token, int32_t id) { return add(token, id, hash_bytes(token)); }
  AddResult add(std::string_view token, int32_t id, uint64_t h) {
    if (static_cast<size_t>(id) >= ranges_.size()) {
      ranges_.resize(std::max<size_t>(static_cast<size_t>(id) + 1, ranges_.size() + ranges_.size() / 2),
                     Range{0, absent});
    }
    if (ranges_[id].length != absent) return AddResult::id_taken;
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    size_t slot = h & mask_;
    while (slots_[slot] != 0) {
      if (tag_of(slots_[slot]) == static_cast<uint32_t>(h >> 32) && text(id_of(slots_[slot])) == token)
        return AddResult::text_taken;
      slot = (slot + 1) & mask_;
    }
    ranges_[id] = Range{static_cast<uint32_t>(text_.size()), static_cast<uint32_t>(token.size())};
    text_.append(token);
    slots_[slot] = pack(static_cast<uint32_t>(h >> 32), id);
    ++size_;
    return AddResult::added;
  }

  // Trims the id table to the largest id after the last add().
  void finish() {
    while (!ranges_.empty() && ranges_.back().length == absent) ranges_.pop_back();
    ranges_.shrink_to_fit();
  }

  // The id of a token text, or -1.
  int32_t find(std::string_view token) const { return find(token, hash_bytes(token)); }
  // With its hash_bytes() already computed.
  int32_t find(std::string_view token, uint64_t h) const {
    if (slots_.empty()) return -1;
    size_t slot = h & mask_;
    while (slots_[slot] != 0) {
      if (tag_of(slots_[slot]) == static_cast<uint32_t>(h >> 32) && text(id_of(slots_[slot])) == token)
        return id_of(slots_[slot]);
      slot = (slot + 1) & mask_;
    }
    return -1;
  }

  // Loading looks up many tokens; fetching their slots ahead overlaps the cache misses.
  void prefetch(uint64_t h) const {
    if (!slots_.empty()) prefetch_read(&slots_[h & mask_]);
  }

  bool contains_id(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < ranges_.size() && ranges_[id].length != absent;
  }
  // Text of a token id; contains_id(id) must hold.
  std::string_view text(int32_t id) const { return {text_.data() + ranges_[id].offset, ranges_[id].length}; }
  size_t size() const { return size_; }
  size_t id_limit() const { return ranges_.size(); }  // one past the largest id
  size_t text_bytes() const { return text_.size(); }
  size_t memory_bytes() const {
    return text_.capacity() + ranges_.capacity() * sizeof(Range) + slots_.capacity() * sizeof(uint64_t);
  }

 private:
  static constexpr uint32_t absent = UINT32_MAX;
  struct Range {
    uint32_t offset;
    uint32_t length;
  };
  // Slot: hash tag in the high half, id + 1 in the low half, 0 when empty.
  static uint64_t pack(uint32_t tag, int32_t id) {
    return (static_cast<uint64_t>(tag) << 32) | (static_cast<uint32_t>(id) + 1u);
  }
  static uint32_t tag_of(uint64_t slot) { return static_cast<uint32_t>(slot >> 32); }
  static int32_t id_of(uint64_t slot) { return static_cast<int32_t>(static_cast<uint32_t>(slot) - 1u); }

  void grow() {
    std::vector<uint64_t> old(std::max<size_t>(16, slots_.size() * 2), 0);
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    for (uint64_t s : old) {
      if (s == 0) continue;
      size_t slot = hash_bytes(text(id_of(s))) & mask_;
      while (slots_[slot] != 0) slot = (slot + 1) & mask_;
      slots_[slot] = s;
    }
  }

  std::string text_;
  std::vector<Range> ranges_;  // by id
  std::vector<uint64_t> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Appends the bytes that a token's text stands for: each byte-level character becomes its byte;
// text with any other character is kept as it is (Hugging Face's ByteLevel decoder does both).
inline void append_token_bytes(std::string& out, std::string_view text) {
  const size_t start = out.size();
  for (size_t i = 0; i < text.size();) {
    const auto b0 = static_cast<uint8_t>(text[i]);
    int byte = -1;
    if (b0 >= 0x21 && b0 <= 0x7E) {
      byte = b0;
      i += 1;
    } else if ((b0 == 0xC2 || b0 == 0xC3 || b0 == 0xC4 || b0 == 0xC5) && i + 1 < text.size()) {
      const auto b1 = static_cast<uint8_t>(text[i + 1]);
      if ((b1 & 0xC0) == 0x80) {
        byte = byte_of_byte_level_char(static_cast<char32_t>(((b0 & 0x1Fu) << 6) | (b1 & 0x3Fu)));
        i += 2;
      }
    }
    if (byte < 0) {
      out.resize(start);
      out.append(text);
      return;
    }
    out.push_back(static_cast<char>(byte));
  }
}

// ---------------------------------------------------------------------------------------------
// Merges: (left id, right id) -> rank, and rank -> merged id. A lower rank merges first.
//
// A slot packs both ids (21 bits each) and the rank (22 bits) into 64 bits, so the table of
// 151k merges is 2 MB and BPE's lookups stay in cache more often than with 16-byte slots.

inline constexpr uint32_t no_rank = UINT32_MAX;

class MergeTable {
 public:
  static constexpr int id_bits = 21;
  static constexpr int rank_bits = 22;
  static constexpr int64_t max_id = (int64_t{1} << id_bits) - 1;
  static constexpr size_t max_merges = (size_t{1} << rank_bits) - 1;  // so no slot is all ones

  void reset(size_t count) {
    slots_.assign(table_capacity_for(count), empty);
    mask_ = slots_.size() - 1;
    size_ = 0;
    merged_.clear();
    merged_.reserve(count);
  }

  // Adds the merge of the next rank (ranks count up from 0; at most max_merges; ids at most
  // max_id). A pair listed again takes the new rank, as in Hugging Face.
  void push_back(int32_t left, int32_t right, int32_t merged) {
    const auto rank = static_cast<uint32_t>(merged_.size());
    merged_.push_back(merged);
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    const uint64_t k = key(left, right);
    size_t slot = mix64(k) & mask_;
    while (slots_[slot] != empty && (slots_[slot] & key_mask) != k) slot = (slot + 1) & mask_;
    if (slots_[slot] == empty) ++size_;
    slots_[slot] = k | (static_cast<uint64_t>(rank) << (2 * id_bits));
  }

  void prefetch(int32_t left, int32_t right) const { prefetch_read(&slots_[mix64(key(left, right)) & mask_]); }

  // The rank of the merge of two adjacent tokens, or no_rank.
  uint32_t rank(int32_t left, int32_t right) const {
    if (static_cast<uint32_t>(left) > max_id || static_cast<uint32_t>(right) > max_id) return no_rank;
    const uint64_t k = key(left, right);
    size_t slot = mix64(k) & mask_;
    while (true) {
      const uint64_t s = slots_[slot];
      if ((s & key_mask) == k && s != empty) return static_cast<uint32_t>(s >> (2 * id_bits));
      if (s == empty) return no_rank;
      slot = (slot + 1) & mask_;
    }
  }
  // The token a merge of `rank` makes.
  int32_t merged(uint32_t rank) const { return merged_[rank]; }

  size_t size() const { return size_; }  // distinct pairs
  size_t memory_bytes() const { return slots_.capacity() * sizeof(uint64_t) + merged_.capacity() * sizeof(int32_t); }

 private:
  static constexpr uint64_t empty = UINT64_MAX;
  static constexpr uint64_t key_mask = (uint64_t{1} << (2 * id_bits)) - 1;
  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(left) << id_bits) | static_cast<uint64_t>(right);
  }
  void grow() {
    std::vector<uint64_t> old(slots_.size() * 2, empty);
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    for (uint64_t s : old) {
      if (s == empty) continue;
      size_t slot = mix64(s & key_mask) & mask_;
      while (slots_[slot] != empty) slot = (slot + 1) & mask_;
      slots_[slot] = s;
    }
  }

  std::vector<uint64_t> slots_{empty};
  std::vector<int32_t> merged_;  // by rank
  size_t mask_ = 0;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The merge loop. Repeatedly merges the adjacent pair of lowest rank, the leftmost one among
// equals, until no adjacent pair has a merge. That is what Hugging Face's priority queue over
// (rank, position) computes; stale queue entries there are exactly the pairs that no longer exist.

struct BpeScratch {
  std::vector<uint32_t> ranks;  // ranks[i]: of the pair of symbols i and i + 1
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> symbols;
  struct Candidate {
    uint32_t rank;
    int32_t pos;
  };
  std::vector<Candidate> heap;
};

namespace bpe_detail {

// O(n^2), fastest for the short words that are nearly all pieces: each merge costs two lookups
// (the merged symbol's new neighbours) and a scan of the ranks.
inline void merge_short(const MergeTable& merges, std::vector<int32_t>& ids, size_t first, BpeScratch& scratch) {
  int32_t* w = ids.data() + first;
  size_t n = ids.size() - first;
  uint32_t* ranks = scratch.ranks.data();
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (ranks[i] < ranks[best]) best = i;
    if (ranks[best] == no_rank) break;
    w[best] = merges.merged(ranks[best]);
    for (size_t i = best + 1; i + 1 < n; ++i) w[i] = w[i + 1];
    for (size_t i = best + 1; i + 2 < n; ++i) ranks[i] = ranks[i + 1];  // n - 1 pairs
    --n;
    if (best > 0) ranks[best - 1] = merges.rank(w[best - 1], w[best]);
    if (best + 1 < n) ranks[best] = merges.rank(w[best], w[best + 1]);
  }
  ids.resize(first + n);
}

// O(n log n) with a heap and a linked list, for long words.
inline void merge_long(const MergeTable& merges, std::vector<int32_t>& ids, size_t first, BpeScratch& scratch) {
  const size_t n = ids.size() - first;
  auto& sym = scratch.symbols;
  auto& heap = scratch.heap;
  sym.resize(n);
  heap.clear();
  // Min-heap on (rank, pos).
  const auto later = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  const auto push = [&](int32_t pos) {
    const int32_t next = sym[pos].next;
    if (next < 0) return;
    if (const uint32_t rank = merges.rank(sym[pos].id, sym[next].id); rank != no_rank) {
      heap.push_back({rank, pos});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {ids[first + i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
    if (i + 1 < n && scratch.ranks[i] != no_rank) heap.push_back({scratch.ranks[i], static_cast<int32_t>(i)});
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    auto& left = sym[top.pos];
    if (left.id < 0 || left.next < 0) continue;  // merged away, or now the last symbol
    auto& right = sym[left.next];
    // Stale if the pair at pos changed: a live rank belongs to exactly one pair.
    if (merges.rank(left.id, right.id) != top.rank) continue;
    left.id = merges.merged(top.rank);
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  size_t out = first;
  for (int32_t i = 0; i >= 0; i = sym[i].next) ids[out++] = sym[i].id;
  ids.resize(out);
}
}  // namespace bpe_detail

// Merges the symbols ids[first..] in place. With `byte_pair_ranks` (the rank of the merge of
// every two bytes' symbols, indexed by first byte * 256 + second) and the piece's bytes, one
// symbol per byte, the first round of lookups is a table read.
inline void bpe_merge(const MergeTable& merges, std::vector<int32_t>& ids, size_t first, BpeScratch& scratch,
                      const uint32_t* byte_pair_ranks = nullptr, std::string_view bytes = {}) {
  const size_t n = ids.size() - first;
  if (n < 2) return;
  auto& ranks = scratch.ranks;
  ranks.resize(n - 1);
  if (byte_pair_ranks != nullptr && bytes.size() == n) {
    for (size_t i = 0; i + 1 < n; ++i)
      ranks[i] = byte_pair_ranks[static_cast<uint8_t>(bytes[i]) * 256u + static_cast<uint8_t>(bytes[i + 1])];
  } else {
    for (size_t i = 0; i + 1 < n; ++i) ranks[i] = merges.rank(ids[first + i], ids[first + i + 1]);
  }
  if (n <= 64) bpe_detail::merge_short(merges, ids, first, scratch);
  else bpe_detail::merge_long(merges, ids, first, scratch);
}

}  // namespace mimo::detail
