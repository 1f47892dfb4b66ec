// Not API: partial selection over a candidate array in rank order (logit descending, position
// ascending; see rank_of). Neither routine sorts the whole array: over the 151,680-entry
// vocabulary a full sort would cost milliseconds per token.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <vector>

#include "mimo/detail/sampler_math.hpp"

namespace mimo::detail {

// Positions of the k best entries, ascending, for 0 < k < logits.size(). A min-heap holds the
// best k seen so far; blocks of 64 in which no value beats the heap's worst are skipped after one
// vectorised comparison pass, which is nearly all of them once the heap has filled. Returns false,
// leaving `positions` unspecified, if a NaN or +inf was seen.
inline bool select_top_k(std::span<const float> logits, size_t k, std::vector<uint64_t>& heap,
                         std::vector<uint32_t>& positions) {
  const float* data = logits.data();
  const size_t n = logits.size();
  heap.clear();
  constexpr float infinity = std::numeric_limits<float>::infinity();
  bool invalid = false;
  for (size_t i = 0; i < k; ++i) {
    heap.push_back(rank_of(data[i], i));
    invalid |= (data[i] != data[i]) | (data[i] == infinity);
  }
  const auto worse_first = std::greater<uint64_t>{};  // heap front = the worst entry kept
  std::make_heap(heap.begin(), heap.end(), worse_first);
  float threshold = data[position_of_rank(heap.front())];
  constexpr size_t block = 64;
  for (size_t start = k; start < n; start += block) {
    const size_t end = std::min(n, start + block);
    bool any_better = false;
    for (size_t i = start; i < end; ++i) {
      any_better |= data[i] > threshold;
      invalid |= (data[i] != data[i]) | (data[i] == infinity);
    }
    if (!any_better) continue;
    for (size_t i = start; i < end; ++i) {
      // Later positions lose ties, so only a strictly larger value displaces the worst entry.
      if (!(data[i] > threshold)) continue;
      std::pop_heap(heap.begin(), heap.end(), worse_first);
      heap.back() = rank_of(data[i], i);
      std::push_heap(heap.begin(), heap.end(), worse_first);
      threshold = data[position_of_rank(heap.front())];
    }
  }
  if (invalid) return false;
  positions.clear();
  for (uint64_t rank : heap) positions.push_back(static_cast<uint32_t>(position_of_rank(rank)));
  std::sort(positions.begin(), positions.end());
  return true;
}

// Buffers find_prefix_boundary reuses between calls.
struct BoundaryScratch {
  std::vector<uint32_t> subset;
  std::vector<uint32_t> next_subset;
};

// The rank of the last entry of the shortest prefix, in rank order, whose total weight reaches
// `target` (> 0): keeping every entry whose rank is >= the result keeps exactly that prefix.
// `weights` parallel to `logits`, or empty for a weight of 1 each (then the prefix is the top
// `target` entries). If rounding leaves the total short of `target`, the prefix is everything.
//
// An MSD radix select on the 32-bit order keys: each level histograms 8 bits of the entries still
// in play, finds the bucket where the running weight crosses the target and keeps only that
// bucket. Entries in better buckets are all in the prefix and need no ordering; after at most
// four levels (fewer once 32 or fewer remain) the remainder is sorted and walked.
inline uint64_t find_prefix_boundary(std::span<const float> logits, std::span<const float> weights,
                                     double target, BoundaryScratch& scratch) {
  const float* data = logits.data();
  const auto weight_of = [&](size_t position) {
    return weights.empty() ? 1.0 : double{weights[position]};
  };
  std::vector<uint32_t>& subset = scratch.subset;
  std::vector<uint32_t>& next = scratch.next_subset;
  bool whole_array = true;  // level 0 visits every position without listing them
  const auto for_each_in_play = [&](auto&& visit) {
    if (whole_array) {
      for (size_t i = 0; i < logits.size(); ++i) visit(i);
    } else {
      for (uint32_t position : subset) visit(position);
    }
  };
  constexpr size_t small_enough_to_sort = 32;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const size_t in_play = whole_array ? logits.size() : subset.size();
    if (in_play <= small_enough_to_sort) break;
    std::array<double, 256> mass{};
    std::array<uint32_t, 256> count{};
    for_each_in_play([&](size_t position) {
      const uint32_t bucket = (order_key(data[position]) >> shift) & 0xFFu;
      mass[bucket] += weight_of(position);
      ++count[bucket];
    });
    int chosen = -1;
    double before = 0.0;  // weight of the better buckets, all inside the prefix
    for (int bucket = 255; bucket >= 0; --bucket) {
      if (count[bucket] == 0) continue;
      if (before + mass[bucket] >= target) {
        chosen = bucket;
        break;
      }
      before += mass[bucket];
    }
    if (chosen < 0) {  // target not reached: the prefix runs to the worst entry
      for (int bucket = 0; bucket < 256 && chosen < 0; ++bucket) {
        if (count[bucket] != 0) chosen = bucket;
      }
      target = std::numeric_limits<double>::infinity();
    } else {
      target -= before;
    }
    next.clear();
    for_each_in_play([&](size_t position) {
      if (((order_key(data[position]) >> shift) & 0xFFu) == static_cast<uint32_t>(chosen)) {
        next.push_back(static_cast<uint32_t>(position));
      }
    });
    subset.swap(next);
    whole_array = false;
  }
  if (whole_array) {
    subset.resize(logits.size());
    for (size_t i = 0; i < subset.size(); ++i) subset[i] = static_cast<uint32_t>(i);
  }
  std::sort(subset.begin(), subset.end(), [&](uint32_t a, uint32_t b) {
    return rank_of(data[a], a) > rank_of(data[b], b);
  });
  double running = 0.0;
  for (uint32_t position : subset) {
    running += weight_of(position);
    if (running >= target) return rank_of(data[position], position);
  }
  return rank_of(data[subset.back()], subset.back());
}

}  // namespace mimo::detail
