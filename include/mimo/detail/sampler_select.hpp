// Not API: partial selection over a candidate array in rank order (logit descending, position
// ascending; see rank_of). Nothing here sorts the whole array: over the 151,680-entry vocabulary
// a full sort would cost milliseconds per token.
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
  uint32_t invalid = 0;
  for (size_t i = 0; i < k; ++i) {
    heap.push_back(rank_of(data[i], i));
    invalid |= is_invalid_logit(data[i]);
  }
  const auto worse_first = std::greater<uint64_t>{};  // heap front = the worst entry kept
  std::make_heap(heap.begin(), heap.end(), worse_first);
  float threshold = data[position_of_rank(heap.front())];
  const auto offer = [&](size_t i) {
    // Later positions lose ties, so only a strictly larger value displaces the worst entry.
    if (!(data[i] > threshold)) return;
    std::pop_heap(heap.begin(), heap.end(), worse_first);
    heap.back() = rank_of(data[i], i);
    std::push_heap(heap.begin(), heap.end(), worse_first);
    threshold = data[position_of_rank(heap.front())];
  };
  // Up to the first block boundary after k one by one, then whole blocks, then the remainder.
  const size_t first_block = std::min(n, (k + block - 1) / block * block);
  const size_t full = first_block + (n - first_block) / block * block;
  for (size_t i = k; i < first_block; ++i) {
    invalid |= is_invalid_logit(data[i]);
    offer(i);
  }
  for (size_t start = first_block; start < full; start += block) {
    int any_better = 0;
    for (size_t i = 0; i < block; ++i) {
      any_better |= data[start + i] > threshold;
      invalid |= is_invalid_logit(data[start + i]);
    }
    if (!any_better) continue;
    for (size_t i = start; i < start + block; ++i) offer(i);
  }
  for (size_t i = full; i < n; ++i) {
    invalid |= is_invalid_logit(data[i]);
    offer(i);
  }
  if (invalid != 0) return false;
  positions.clear();
  for (uint64_t rank : heap) positions.push_back(static_cast<uint32_t>(position_of_rank(rank)));
  std::sort(positions.begin(), positions.end());
  return true;
}

// Buffers find_prefix_boundary reuses between calls.
struct BoundaryScratch {
  std::vector<double> mass;       // the first level's histogram, two interleaved copies
  std::vector<uint16_t> buckets;  // each entry's first-level bucket
  std::vector<uint32_t> subset;
  std::vector<uint32_t> next_subset;
};

// Where a prefix in rank order ends.
struct Boundary {
  uint64_t rank = 0;        // keep the entries whose rank is >= this; 0 keeps everything
  bool ties_after = false;  // entries after the boundary share its logit (cut by id)
};

// The first level's buckets: 1/32 logit wide by distance below the largest logit, the last one
// open-ended (it also takes -inf). Monotone: a larger logit never falls in a later bucket, so the
// buckets are in rank order.
struct DistanceBucket {
  static constexpr int32_t count = 1024;
  float max;
  int32_t operator()(float logit) const {
    const float scaled = (max - logit) * 32.0f;
    return scaled < static_cast<float>(count - 1) ? static_cast<int32_t>(scaled) : count - 1;
  }
};

// Within `subset` (ascending positions), the rank of the entry at which the running weight, in
// rank order, reaches `target`; the last entry's if it never does. An MSD radix select on the
// 32-bit order keys: each level histograms 8 bits, keeps only the bucket where the running weight
// crosses the target (the better buckets are wholly inside the prefix and need no ordering), and
// once 32 or fewer entries remain they are sorted and walked.
inline Boundary boundary_within(std::span<const float> logits, std::span<const float> weights, double target,
                                BoundaryScratch& scratch) {
  const float* data = logits.data();
  const auto weight_of = [&](size_t position) { return weights.empty() ? 1.0 : double{weights[position]}; };
  std::vector<uint32_t>& subset = scratch.subset;
  std::vector<uint32_t>& next = scratch.next_subset;
  constexpr size_t small_enough_to_sort = 32;
  for (int shift = 24; shift >= 0 && subset.size() > small_enough_to_sort; shift -= 8) {
    std::array<double, 256> mass{};
    std::array<uint32_t, 256> count{};
    for (uint32_t position : subset) {
      const uint32_t bucket = (order_key(data[position]) >> shift) & 0xFFu;
      mass[bucket] += weight_of(position);
      ++count[bucket];
    }
    int chosen = -1;
    double before = 0.0;
    for (int bucket = 255; bucket >= 0; --bucket) {
      if (count[bucket] == 0) continue;
      if (before + mass[bucket] >= target) {
        chosen = bucket;
        break;
      }
      before += mass[bucket];
    }
    if (chosen < 0) {  // rounding left the target unreached: the prefix runs to the worst entry
      for (int bucket = 0; bucket < 256 && chosen < 0; ++bucket) {
        if (count[bucket] != 0) chosen = bucket;
      }
      target = std::numeric_limits<double>::infinity();
    } else {
      target -= before;
    }
    next.clear();
    for (uint32_t position : subset) {
      if (((order_key(data[position]) >> shift) & 0xFFu) == static_cast<uint32_t>(chosen)) next.push_back(position);
    }
    subset.swap(next);
  }
  std::sort(subset.begin(), subset.end(),
            [&](uint32_t a, uint32_t b) { return rank_of(data[a], a) > rank_of(data[b], b); });
  // Entries equal to the boundary share all its key bits, so they are all in the subset.
  size_t last = subset.size() - 1;
  double running = 0.0;
  for (size_t i = 0; i < subset.size(); ++i) {
    running += weight_of(subset[i]);
    if (running >= target) {
      last = i;
      break;
    }
  }
  const uint32_t position = subset[last];
  return {.rank = rank_of(data[position], position),
          .ties_after = last + 1 < subset.size() && data[subset[last + 1]] == data[position]};
}

// The end of the shortest prefix, in rank order, whose total weight reaches `target` (> 0):
// keeping every entry whose rank is >= the boundary's keeps exactly that prefix. `weights`
// parallel to `logits`, or empty for a weight of 1 each (then the prefix is the top `target`
// entries); `max` the largest logit. The prefix is everything if rounding leaves the total short
// of `target`.
//
// One pass histograms the weight by distance below the max (DistanceBucket, two interleaved
// copies so consecutive adds rarely wait on each other), a walk finds the bucket where the
// running weight crosses the target, and only that bucket's entries (a few hundred for typical
// logits) go on to the exact selection.
inline Boundary find_prefix_boundary(std::span<const float> logits, std::span<const float> weights, float max,
                                     double target, BoundaryScratch& scratch) {
  const DistanceBucket bucket_of{max};
  constexpr size_t count = DistanceBucket::count;
  scratch.mass.assign(2 * count, 0.0);
  double* even = scratch.mass.data();
  double* odd = even + count;
  const float* data = logits.data();
  const size_t n = logits.size();
  const size_t full = n - n % block;
  scratch.buckets.resize(n);
  uint16_t* buckets = scratch.buckets.data();
  const auto histogram = [&](auto weight_of) {
    for (size_t start = 0; start < full; start += block) {
      // Buckets first (vectorised), kept for the gather below; then the scatter, which cannot be.
      for (size_t i = 0; i < block; ++i) buckets[start + i] = static_cast<uint16_t>(bucket_of(data[start + i]));
      for (size_t i = start; i < start + block; i += 2) {
        even[buckets[i]] += weight_of(i);
        odd[buckets[i + 1]] += weight_of(i + 1);
      }
    }
    for (size_t i = full; i < n; ++i) {
      buckets[i] = static_cast<uint16_t>(bucket_of(data[i]));
      even[buckets[i]] += weight_of(i);
    }
  };
  if (weights.empty()) {
    histogram([](size_t) { return 1.0; });
  } else {
    histogram([w = weights.data()](size_t i) { return double{w[i]}; });
  }

  int32_t chosen = -1;
  double before = 0.0;  // weight of the better buckets, all inside the prefix
  for (size_t bucket = 0; bucket < count; ++bucket) {
    const double mass = even[bucket] + odd[bucket];
    if (mass > 0.0 && before + mass >= target) {
      chosen = static_cast<int32_t>(bucket);
      break;
    }
    before += mass;
  }
  if (chosen < 0) return {};

  std::vector<uint32_t>& subset = scratch.subset;
  subset.clear();
  const uint16_t wanted = static_cast<uint16_t>(chosen);
  for (size_t start = 0; start < full; start += block) {
    int any = 0;
    for (size_t i = 0; i < block; ++i) any |= buckets[start + i] == wanted;
    if (!any) continue;
    for (size_t i = start; i < start + block; ++i) {
      if (buckets[i] == wanted) subset.push_back(static_cast<uint32_t>(i));
    }
  }
  for (size_t i = full; i < n; ++i) {
    if (buckets[i] == wanted) subset.push_back(static_cast<uint32_t>(i));
  }
  return boundary_within(logits, weights, target - before, scratch);
}

}  // namespace mimo::detail
