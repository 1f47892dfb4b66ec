// The working set of a sampling chain: the tokens still in play and their logits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "mimo/detail/sampler_math.hpp"
#include "mimo/detail/sampler_select.hpp"
#include "mimo/error.hpp"

namespace mimo {

namespace detail {
// Buffers the stages reuse from one token to the next, so that after the first call nothing of
// vocabulary size is allocated again.
struct SamplingScratch {
  std::vector<float> weights;          // e^(logit - max), parallel to the candidates
  std::vector<uint64_t> heap;          // top-k selection
  std::vector<uint32_t> positions;     // kept positions, ascending
  BoundaryScratch boundary;            // top-p (and large top-k) selection
  std::vector<int32_t> window_tokens;  // penalties: the window, sorted
};
struct CandidatesAccess;
}  // namespace detail

// Token ids and logits of the candidates, one entry per token still in play. assign() fills it
// with a whole logits vector (token id = index); each stage then edits logits or removes entries.
// Entries stay in ascending id order whatever the stages do (they compact in place), so a token is
// found by binary search, and ties are broken the same way everywhere: lower id first.
//
// A custom rule between stages edits logits() in place (set one to -infinity to ban a token) or
// calls keep_if(). Not thread-safe; reuse one Candidates per sampling loop so its buffers are
// reused.
class Candidates {
 public:
  // Takes every entry of `logits` as a candidate. Errors: an empty vector, more than INT32_MAX
  // entries, a NaN or +infinity logit (the model produced garbage), every logit -infinity.
  Status assign(std::span<const float> logits) {
    if (logits.empty()) return Error(Errc::invalid_argument, "sampling: the logits vector is empty");
    if (logits.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return Error(Errc::invalid_argument,
                   "sampling: " + std::to_string(logits.size()) + " logits is more than INT32_MAX");
    }
    if (Status valid = check_logits(logits); !valid) return valid;
    const int32_t n = static_cast<int32_t>(logits.size());  // a local: stores to ids cannot alias it
    vocab_size_ = n;
    logits_.assign(logits.begin(), logits.end());
    ids_.resize(logits.size());
    int32_t* ids = ids_.data();
    for (int32_t id = 0; id < n; ++id) ids[id] = id;
    return ok();
  }

  // Takes a part of a vocabulary of `vocab_size` tokens as the candidates: `ids` strictly
  // ascending in [0, vocab_size), `logits` parallel to them (e.g. the largest logits a backend
  // selected, Logits::top_ids). Errors: as assign(logits), and ids out of order or range.
  Status assign(std::span<const int32_t> ids, std::span<const float> logits, int32_t vocab_size) {
    if (ids.size() != logits.size()) {
      return Error(Errc::invalid_argument, "sampling: " + std::to_string(ids.size()) + " candidate ids for " +
                                               std::to_string(logits.size()) + " logits");
    }
    if (ids.empty()) return Error(Errc::invalid_argument, "sampling: no candidates");
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size || (i > 0 && ids[i] <= ids[i - 1])) {
        return Error(Errc::invalid_argument, "sampling: candidate id " + std::to_string(ids[i]) + " at " +
                                                 std::to_string(i) + " is out of order or outside the vocabulary of " +
                                                 std::to_string(vocab_size));
      }
    }
    if (Status valid = check_logits(logits, ids); !valid) return valid;
    vocab_size_ = vocab_size;
    ids_.assign(ids.begin(), ids.end());
    logits_.assign(logits.begin(), logits.end());
    return ok();
  }

  size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }
  // The length of the logits vector last assigned: token ids lie in [0, vocab_size()).
  int32_t vocab_size() const { return vocab_size_; }

  std::span<const int32_t> ids() const { return ids_; }
  std::span<float> logits() { return logits_; }
  std::span<const float> logits() const { return logits_; }

  // The position of `token`, or size() if it is not a candidate. O(1) while every token of the
  // vocabulary is present, O(log n) once a stage has removed some.
  size_t find(int32_t token) const {
    if (token < 0 || token >= vocab_size_) return size();
    if (ids_.size() == static_cast<size_t>(vocab_size_)) return static_cast<size_t>(token);
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), token);
    return (it != ids_.end() && *it == token) ? static_cast<size_t>(it - ids_.begin()) : size();
  }

  // Removes the candidates for which keep(id, logit) returns false; the order of the rest is kept.
  template <class Keep>
  void keep_if(Keep&& keep) {
    size_t kept = 0;
    for (size_t i = 0; i < ids_.size(); ++i) {
      if (keep(ids_[i], logits_[i])) {
        ids_[kept] = ids_[i];
        logits_[kept] = logits_[i];
        ++kept;
      }
    }
    ids_.resize(kept);
    logits_.resize(kept);
  }

  // NaN and +infinity are errors for every stage, and so is a vector in which every logit is
  // -infinity; the message names the first offending entry. `ids` names the tokens behind the
  // entries (empty: the index is the token id).
  static Status check_logits(std::span<const float> logits, std::span<const int32_t> ids = {}) {
    const detail::LogitCheck check = detail::check_logits(logits);
    if (check.any_invalid) {  // rare: find which
      for (size_t i = 0; i < logits.size(); ++i) {
        if (!detail::is_invalid_logit(logits[i])) continue;
        const int64_t token = ids.empty() ? static_cast<int64_t>(i) : int64_t{ids[i]};
        return Error(Errc::invalid_argument, "sampling: the logit of token " + std::to_string(token) + " is " +
                                                 (logits[i] == logits[i] ? "+inf" : "NaN"));
      }
    }
    if (check.all_negative_infinity) {
      return Error(Errc::invalid_argument, "sampling: every logit is -inf, so no token can be sampled");
    }
    return ok();
  }

 private:
  friend struct detail::CandidatesAccess;

  std::vector<int32_t> ids_;
  std::vector<float> logits_;
  int32_t vocab_size_ = 0;
  detail::SamplingScratch scratch_;
};

namespace detail {
// What the stages need beyond the public surface: the scratch buffers and in-place compaction.
struct CandidatesAccess {
  static SamplingScratch& scratch(Candidates& c) { return c.scratch_; }

  // Keeps the entries at `positions` (ascending).
  static void keep_positions(Candidates& c, std::span<const uint32_t> positions) {
    for (size_t out = 0; out < positions.size(); ++out) {
      c.ids_[out] = c.ids_[positions[out]];
      c.logits_[out] = c.logits_[positions[out]];
    }
    c.ids_.resize(positions.size());
    c.logits_.resize(positions.size());
  }

  // Keeps the entries whose logit passes `passes(logit)`, a cheap test: it is evaluated for a
  // whole block of 64 into a mask (vectorised), blocks where nothing passes (most of them, for a
  // selective threshold) are dropped at once, and the copy of the others is branch-free, as a
  // kept entry's place is unpredictable.
  template <class Passes>
  static void keep_where(Candidates& c, Passes passes) {
    const size_t n = c.ids_.size();
    const size_t full = n - n % block_size;
    float* logits = c.logits_.data();
    int32_t* ids = c.ids_.data();
    size_t kept = 0;
    for (size_t start = 0; start < full; start += block_size) {
      int32_t mask[block_size];
      int32_t any = 0;
      for (size_t i = 0; i < block_size; ++i) {
        mask[i] = passes(logits[start + i]) ? 1 : 0;
        any |= mask[i];
      }
      if (!any) continue;
      for (size_t i = 0; i < block_size; ++i) {
        ids[kept] = ids[start + i];
        logits[kept] = logits[start + i];
        kept += static_cast<size_t>(mask[i]);
      }
    }
    for (size_t i = full; i < n; ++i) {
      const bool keep = passes(logits[i]);
      ids[kept] = ids[i];
      logits[kept] = logits[i];
      kept += keep ? 1 : 0;
    }
    c.ids_.resize(kept);
    c.logits_.resize(kept);
  }

  // Keeps the entries for which keep(id, logit) holds; for a second, finer cut after keep_where.
  template <class Keep>
  static void keep_if(Candidates& c, Keep keep) {
    size_t kept = 0;
    for (size_t i = 0; i < c.ids_.size(); ++i) {
      const bool keep_this = keep(c.ids_[i], c.logits_[i]);
      c.ids_[kept] = c.ids_[i];
      c.logits_[kept] = c.logits_[i];
      kept += keep_this ? 1 : 0;
    }
    c.ids_.resize(kept);
    c.logits_.resize(kept);
  }

 private:
  static constexpr size_t block_size = detail::block;
};
}  // namespace detail

}  // namespace mimo
