// A probability distribution over token ids: the final output of a sampling chain, what a draw
// samples from, and what speculative decoding compares (target p against draft q).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mimo/detail/sampler_math.hpp"
#include "mimo/error.hpp"

namespace mimo {

namespace detail {
struct DistributionAccess;
}

// Sparse: the tokens with nonzero probability, ids ascending, with their probabilities (which sum
// to 1 up to float rounding). A token that is absent has probability 0 and is never drawn. Copies
// are ordinary value copies.
class Distribution {
 public:
  Distribution() = default;

  // Normalises nonnegative weights over strictly ascending token ids; zero weights are dropped.
  // Errors: mismatched lengths, ids not strictly ascending or negative, a weight that is negative,
  // NaN or infinite, or weights that sum to zero.
  static Expected<Distribution> from_weights(std::span<const int32_t> ids, std::span<const float> weights) {
    if (ids.size() != weights.size()) {
      return Error(Errc::invalid_argument, "distribution: " + std::to_string(ids.size()) + " ids but " +
                                               std::to_string(weights.size()) + " weights");
    }
    double sum = 0.0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || (i > 0 && ids[i] <= ids[i - 1])) {
        return Error(Errc::invalid_argument,
                     "distribution: token ids must be nonnegative and strictly ascending (entry " + std::to_string(i) +
                         " is " + std::to_string(ids[i]) + ")");
      }
      if (!(weights[i] >= 0.0f) || std::isinf(weights[i])) {
        return Error(Errc::invalid_argument, "distribution: the weight of token " + std::to_string(ids[i]) + " is " +
                                                 std::to_string(weights[i]));
      }
      sum += double{weights[i]};
    }
    if (!(sum > 0.0)) return Error(Errc::invalid_argument, "distribution: the weights sum to zero");
    Distribution distribution;
    distribution.probs_.assign(weights.begin(), weights.end());
    distribution.normalise(ids, sum);
    return distribution;
  }

  size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }
  std::span<const int32_t> ids() const { return ids_; }
  std::span<const float> probabilities() const { return probs_; }

  // The probability of `token`; 0 when it is absent. O(log n).
  float probability(int32_t token) const {
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), token);
    return (it != ids_.end() && *it == token) ? probs_[static_cast<size_t>(it - ids_.begin())] : 0.0f;
  }

  // The most probable token, lower id first on ties; -1 when empty.
  int32_t most_likely() const {
    if (ids_.empty()) return -1;
    const auto best = std::max_element(probs_.begin(), probs_.end());  // first of equals
    return ids_[static_cast<size_t>(best - probs_.begin())];
  }

  // The token at which the running sum of probabilities, in id order, first exceeds
  // `uniform * total`, for `uniform` in [0, 1): inverse-CDF sampling. A token of probability 0 is
  // never returned. -1 when empty. Whole blocks of 64 are stepped over by their sums (one
  // vectorised sum instead of 64 dependent additions), so a draw from the full vocabulary costs
  // microseconds.
  int32_t quantile(double uniform) const {
    if (ids_.empty()) return -1;
    const double target = uniform * total_;
    const size_t n = probs_.size();
    const size_t full = n - n % block;
    double running = 0.0;
    size_t i = 0;
    for (; i < full; i += block) {
      const double sum = block_sum(probs_.data() + i);
      if (running + sum > target) break;
      running += sum;
    }
    for (; i < n; ++i) {  // usually ends inside the block found above; rounding may carry it on
      running += double{probs_[i]};
      if (running > target) return ids_[i];
    }
    return ids_.back();  // uniform * total rounded up to total
  }

 private:
  friend struct detail::DistributionAccess;

  // softmax(logits) over `ids`, given the largest logit. Reuses this object's buffers.
  void assign_softmax(std::span<const int32_t> ids, std::span<const float> logits, float max) {
    probs_.resize(logits.size());
    ids_.resize(logits.size());
    const double sum = detail::exp_shifted(logits, max, probs_);
    normalise(ids, sum);
  }

  // probs_ holds weights parallel to `ids`: divides them by `sum` and drops the zeros.
  void normalise(std::span<const int32_t> ids, double sum) {
    const size_t n = ids.size();
    const size_t full = n - n % block;
    const double scale = 1.0 / sum;  // in double: a float 1/sum could be subnormal
    float* probs = probs_.data();
    uint32_t zeros = 0;
    const auto scale_one = [&](size_t i) {
      probs[i] = static_cast<float>(double{probs[i]} * scale);
      zeros |= probs[i] > 0.0f ? 0u : 1u;  // a zero weight, or one that underflowed
    };
    for (size_t start = 0; start < full; start += block) {
      for (size_t i = 0; i < block; ++i) scale_one(start + i);
    }
    for (size_t i = full; i < n; ++i) scale_one(i);
    ids_.assign(ids.begin(), ids.end());
    if (zeros != 0) {  // never drawn, so left out
      size_t kept = 0;
      for (size_t i = 0; i < n; ++i) {
        ids_[kept] = ids_[i];
        probs_[kept] = probs_[i];
        kept += probs_[i] > 0.0f ? 1 : 0;
      }
      ids_.resize(kept);
      probs_.resize(kept);
    }
    // Summed as quantile() walks, block sums then the remainder, so its walk ends in range.
    total_ = 0.0;
    const size_t kept_full = probs_.size() - probs_.size() % block;
    for (size_t start = 0; start < kept_full; start += block) total_ += block_sum(probs_.data() + start);
    for (size_t i = kept_full; i < probs_.size(); ++i) total_ += double{probs_[i]};
  }

  static constexpr size_t block = detail::block;

  // The sum of block probabilities from `p`, in a fixed order of float lanes.
  static double block_sum(const float* p) {
    constexpr size_t lanes = 8;
    float lane[lanes] = {};
    for (size_t i = 0; i < block; i += lanes) {
      for (size_t j = 0; j < lanes; ++j) lane[j] += p[i + j];
    }
    double sum = 0.0;
    for (float s : lane) sum += double{s};
    return sum;
  }

  std::vector<int32_t> ids_;
  std::vector<float> probs_;
  double total_ = 0.0;  // sum of probs_ as quantile() accumulates it
};

namespace detail {
// The softmax stage fills a Distribution without re-validating what it already checked.
struct DistributionAccess {
  static void assign_softmax(Distribution& d, std::span<const int32_t> ids, std::span<const float> logits, float max) {
    d.assign_softmax(ids, logits, max);
  }
  // Normalises weights (nonnegative, parallel to ascending ids) that sum to `sum` > 0.
  static void assign_weights(Distribution& d, std::span<const int32_t> ids, std::span<const float> weights,
                             double sum) {
    d.probs_.assign(weights.begin(), weights.end());
    d.normalise(ids, sum);
  }
};
}  // namespace detail

}  // namespace mimo
