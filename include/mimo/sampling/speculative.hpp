// Speculative rejection sampling: verifies a draft token drawn from a draft distribution q against
// the target distribution p so that the emitted token is distributed exactly as p (Leviathan et
// al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023).
//
//   accept the draft d with probability min(1, p(d) / q(d));
//   otherwise emit a token drawn from normalise(max(0, p - q)).
//
// Then P(emit t) = min(p(t), q(t)) + (1 - sum_s min(p(s), q(s))) * max(0, p(t) - q(t)) / Z, and
// Z = sum_s max(0, p(s) - q(s)) = 1 - sum_s min(p(s), q(s)), so P(emit t) = p(t).
//
// p and q must come from the same transforms (penalties, bias, temperature, top-k/p, min-p) as
// plain sampling would apply: build p with the main sampler's distribution() at the position being
// verified (its penalty window holding the tokens accepted before it), and q with the sampler the
// draft was drawn from. A greedy drafter is the special case q = a point mass on d: the draft is
// accepted with probability p(d), else the token is drawn from p with d removed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/sampling/distribution.hpp"
#include "mimo/sampling/rng.hpp"

namespace mimo {

// The outcome of verifying one draft token.
struct DraftVerdict {
  int32_t token = -1;     // the token to emit: the draft when accepted, else its replacement
  bool accepted = false;  // false: the draft and every later draft are discarded
};

namespace sampling {

// Buffers speculative_accept reuses (a Sampler keeps one).
struct SpeculativeScratch {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Distribution residual;
};

// Verifies `draft_token`, drawn from `draft` (q), against `target` (p). Consumes one
// rng.next_double() when the draft is accepted, two when it is replaced. Errors: `draft_token`
// has probability 0 under `draft` (it cannot have been drawn from it), an empty target.
inline Expected<DraftVerdict> speculative_accept(const Distribution& target, const Distribution& draft,
                                                 int32_t draft_token, Rng& rng, SpeculativeScratch& scratch) {
  if (target.empty()) return Error(Errc::invalid_argument, "speculative: the target distribution is empty");
  const float q = draft.probability(draft_token);
  if (!(q > 0.0f)) {
    return Error(Errc::invalid_argument, "speculative: draft token " + std::to_string(draft_token) +
                                             " has probability 0 under the draft distribution");
  }
  const float p = target.probability(draft_token);
  // u < p / q, written without the division; always true when p >= q.
  if (rng.next_double() * double{q} < double{p}) return DraftVerdict{.token = draft_token, .accepted = true};

  // Residual max(0, p - q), merging the two id-sorted supports.
  scratch.ids.clear();
  scratch.weights.clear();
  const std::span<const int32_t> p_ids = target.ids();
  const std::span<const float> p_probs = target.probabilities();
  const std::span<const int32_t> q_ids = draft.ids();
  const std::span<const float> q_probs = draft.probabilities();
  double sum = 0.0;
  size_t j = 0;
  for (size_t i = 0; i < p_ids.size(); ++i) {
    while (j < q_ids.size() && q_ids[j] < p_ids[i]) ++j;  // tokens only q has: residual 0
    const float q_here = (j < q_ids.size() && q_ids[j] == p_ids[i]) ? q_probs[j] : 0.0f;
    const float excess = p_probs[i] - q_here;
    if (!(excess > 0.0f)) continue;
    scratch.ids.push_back(p_ids[i]);
    scratch.weights.push_back(excess);
    sum += double{excess};
  }
  // p(d) < q(d) implies some excess elsewhere; only rounding can leave none. Then p itself is the
  // best remaining answer.
  const Distribution* replacement = &target;
  if (sum > 0.0) {
    detail::DistributionAccess::assign_weights(scratch.residual, scratch.ids, scratch.weights, sum);
    replacement = &scratch.residual;
  }
  return DraftVerdict{.token = replacement->quantile(rng.next_double()), .accepted = false};
}

inline Expected<DraftVerdict> speculative_accept(const Distribution& target, const Distribution& draft,
                                                 int32_t draft_token, Rng& rng) {
  SpeculativeScratch scratch;
  return speculative_accept(target, draft, draft_token, rng, scratch);
}

}  // namespace sampling
}  // namespace mimo
