// The sampling stages: small functions over a Candidates set, each usable on its own so a custom
// loop can put its own logic between them. mimo::Sampler (sampler.hpp) chains them in this order:
//
//   apply_penalties -> apply_logit_bias -> keep_top_k -> apply_temperature -> keep_top_p
//     -> keep_min_p -> softmax -> draw          (greedy: ... apply_logit_bias -> keep_argmax)
//
// Every stage returns a Status: invalid parameters are errors, and so are NaN and +inf logits in
// every stage that looks at all the logits (softmax always does, so none reaches a draw); a stage
// that fails leaves the candidates unchanged. Nothing crashes. Stages on an empty candidate set do
// nothing; softmax reports it. Ties are broken by lower token id everywhere.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mimo/detail/sampler_math.hpp"
#include "mimo/detail/sampler_select.hpp"
#include "mimo/error.hpp"
#include "mimo/sampling/candidates.hpp"
#include "mimo/sampling/distribution.hpp"
#include "mimo/sampling/penalty_window.hpp"
#include "mimo/sampling/rng.hpp"

namespace mimo {

// An additive adjustment to one token's logit. A bias of -infinity bans the token.
struct TokenBias {
  int32_t token = 0;
  float bias = 0.0f;
};

// Penalties for tokens in the recent window, applied per distinct token t occurring c times:
//   logit(t) = (logit(t) > 0 ? logit(t) / repeat : logit(t) * repeat)    (CTRL-style, if repeat != 1)
//   logit(t) -= c * frequency + presence                               (OpenAI-style)
struct Penalties {
  float repeat = 1.0f;     // > 0; 1 is off, > 1 discourages repetition
  float presence = 0.0f;   // any finite value; 0 is off, > 0 discourages repetition
  float frequency = 0.0f;  // any finite value; 0 is off, > 0 discourages repetition
};

namespace sampling {

namespace detail_stages {
inline Error invalid(const std::string& what) { return Error(Errc::invalid_argument, "sampling: " + what); }

// What every thresholding stage starts with: the largest logit, after checking the logits (NaN,
// +inf and all -inf are errors).
inline Expected<float> checked_max(const Candidates& candidates) {
  if (Status valid = Candidates::check_logits(candidates.logits(), candidates.ids()); !valid) {
    return std::move(valid).error();
  }
  return detail::max_logit(candidates.logits());
}

// Keeps the candidates up to `boundary` in rank order: a logit above the boundary's, or equal to
// it with an id no larger (ids ascend with position).
inline void keep_up_to(Candidates& candidates, const detail::Boundary& boundary) {
  if (boundary.rank == 0) return;
  const size_t boundary_position = detail::position_of_rank(boundary.rank);
  const float boundary_logit = candidates.logits()[boundary_position];
  const int32_t boundary_id = candidates.ids()[boundary_position];
  // Floats order -0 and +0 as equal, as order_key does, so these are rank comparisons.
  detail::CandidatesAccess::keep_where(candidates, [boundary_logit](float logit) { return logit >= boundary_logit; });
  if (!boundary.ties_after) return;
  detail::CandidatesAccess::keep_if(candidates, [boundary_logit, boundary_id](int32_t id, float logit) {
    return !(logit == boundary_logit && id > boundary_id);
  });
}
}  // namespace detail_stages

// Adds each bias to its token's logit (entries for the same token add up). Tokens that are no
// longer candidates are skipped. Errors: a token outside [0, vocab_size), a NaN or +inf bias.
inline Status apply_logit_bias(Candidates& candidates, std::span<const TokenBias> biases) {
  for (const TokenBias& entry : biases) {
    if (entry.token < 0 || entry.token >= candidates.vocab_size()) {
      return detail_stages::invalid("logit bias for token " + std::to_string(entry.token) +
                                    ", outside the vocabulary of " + std::to_string(candidates.vocab_size()));
    }
    if (std::isnan(entry.bias) || entry.bias == std::numeric_limits<float>::infinity()) {
      return detail_stages::invalid("logit bias for token " + std::to_string(entry.token) + " is " +
                                    std::to_string(entry.bias) + "; use a finite value, or -inf to ban");
    }
  }
  std::span<float> logits = candidates.logits();
  for (const TokenBias& entry : biases) {
    const size_t position = candidates.find(entry.token);
    if (position < candidates.size()) logits[position] += entry.bias;
  }
  return ok();
}

// Validates Penalties; used by apply_penalties and by Sampler::create.
inline Status check_penalties(const Penalties& penalties) {
  if (!(penalties.repeat > 0.0f) || std::isinf(penalties.repeat)) {
    return detail_stages::invalid("repeat penalty must be finite and > 0, got " + std::to_string(penalties.repeat));
  }
  if (!std::isfinite(penalties.presence) || !std::isfinite(penalties.frequency)) {
    return detail_stages::invalid("presence and frequency penalties must be finite");
  }
  return ok();
}

// Penalises the candidates that occur in `window` (see Penalties). Costs O(window log window),
// whatever the vocabulary size. Window tokens that are not candidates are skipped.
inline Status apply_penalties(Candidates& candidates, const PenaltyWindow& window, const Penalties& penalties) {
  if (Status valid = check_penalties(penalties); !valid) return valid;
  if (window.empty()) return ok();
  if (penalties.repeat == 1.0f && penalties.presence == 0.0f && penalties.frequency == 0.0f) return ok();
  std::vector<int32_t>& tokens = detail::CandidatesAccess::scratch(candidates).window_tokens;
  tokens.clear();
  window.copy_to(tokens);
  std::sort(tokens.begin(), tokens.end());
  std::span<float> logits = candidates.logits();
  for (size_t run = 0; run < tokens.size();) {
    const int32_t token = tokens[run];
    size_t count = 0;
    while (run < tokens.size() && tokens[run] == token) ++run, ++count;
    const size_t position = candidates.find(token);
    if (position == candidates.size()) continue;
    float logit = logits[position];
    if (penalties.repeat != 1.0f) logit = logit > 0.0f ? logit / penalties.repeat : logit * penalties.repeat;
    logit -= static_cast<float>(count) * penalties.frequency + penalties.presence;
    logits[position] = logit;
  }
  return ok();
}

// Keeps only the best candidate: the largest logit, the lowest id among equals.
inline Status keep_argmax(Candidates& candidates) {
  if (candidates.empty()) return ok();
  const Expected<float> max = detail_stages::checked_max(candidates);
  if (!max) return max.error();
  const uint32_t position = static_cast<uint32_t>(detail::first_position_of(candidates.logits(), *max));
  detail::CandidatesAccess::keep_positions(candidates, std::span<const uint32_t>(&position, 1));
  return ok();
}

// Divides the logits by `temperature` (>= 0, finite), after subtracting the largest so that no
// small temperature can overflow them: the largest becomes 0, which leaves the distribution as it
// was. Temperature 0 is greedy (keep_argmax); temperature 1 changes nothing and is skipped.
inline Status apply_temperature(Candidates& candidates, float temperature) {
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    return detail_stages::invalid("temperature must be finite and >= 0, got " + std::to_string(temperature));
  }
  if (candidates.empty() || temperature == 1.0f) return ok();
  if (temperature == 0.0f) return keep_argmax(candidates);
  const Expected<float> max = detail_stages::checked_max(candidates);
  if (!max) return max.error();
  const float largest = *max;
  const std::span<float> logits = candidates.logits();
  const size_t full = logits.size() - logits.size() % detail::block;
  float* data = logits.data();
  for (size_t start = 0; start < full; start += detail::block) {  // constant trip count: vectorises at -O2
    for (size_t i = 0; i < detail::block; ++i) data[start + i] = (data[start + i] - largest) / temperature;
  }
  for (size_t i = full; i < logits.size(); ++i) data[i] = (data[i] - largest) / temperature;
  return ok();
}

// Keeps the k candidates with the largest logits (lower id first among equals). k >= 1; a k at
// least the number of candidates changes nothing. Partial selection, never a full sort: for
// k <= 4096 a heap fed by one vectorised pass that skips hopeless blocks, for larger k the
// histogram-and-radix select top-p uses, counting entries instead of weighing them.
inline Status keep_top_k(Candidates& candidates, int32_t k) {
  if (k < 1) return detail_stages::invalid("top_k must be at least 1, got " + std::to_string(k));
  if (static_cast<size_t>(k) >= candidates.size()) return ok();
  detail::SamplingScratch& scratch = detail::CandidatesAccess::scratch(candidates);
  // The heap wins while k is small beside the candidate count; a large k makes it churn.
  constexpr int32_t heap_limit = 4096;
  if (k <= heap_limit) {
    if (!detail::select_top_k(candidates.logits(), static_cast<size_t>(k), scratch.heap, scratch.positions)) {
      return Candidates::check_logits(candidates.logits(), candidates.ids());
    }
    detail::CandidatesAccess::keep_positions(candidates, scratch.positions);
    return ok();
  }
  if (detail::check_logits(candidates.logits()).any_invalid) {
    return Candidates::check_logits(candidates.logits(), candidates.ids());
  }
  const float max = detail::max_logit(candidates.logits());
  const detail::Boundary boundary =
      detail::find_prefix_boundary(candidates.logits(), {}, max, static_cast<double>(k), scratch.boundary);
  detail_stages::keep_up_to(candidates, boundary);
  return ok();
}

// Nucleus: keeps the shortest run of best candidates (logit descending, lower id first) whose
// probabilities, under softmax over the current candidates, sum to at least p, and always the
// best one. p in [0, 1]: 1 keeps everything (skipped: rounding could otherwise drop a
// near-zero tail), 0 keeps only the best.
inline Status keep_top_p(Candidates& candidates, float p) {
  if (!(p >= 0.0f && p <= 1.0f)) return detail_stages::invalid("top_p must be in [0, 1], got " + std::to_string(p));
  if (candidates.empty() || p == 1.0f) return ok();
  if (p == 0.0f) return keep_argmax(candidates);
  const Expected<float> max = detail_stages::checked_max(candidates);
  if (!max) return max.error();
  detail::SamplingScratch& scratch = detail::CandidatesAccess::scratch(candidates);
  scratch.weights.resize(candidates.size());
  const double total = detail::exp_shifted(candidates.logits(), *max, scratch.weights);
  const detail::Boundary boundary =
      detail::find_prefix_boundary(candidates.logits(), scratch.weights, *max, double{p} * total, scratch.boundary);
  detail_stages::keep_up_to(candidates, boundary);
  return ok();
}

// Keeps the candidates whose probability is at least p times the largest: logit - max >= ln(p).
// p in [0, 1]: 0 keeps everything (skipped), 1 keeps the candidates tied for the largest logit.
inline Status keep_min_p(Candidates& candidates, float p) {
  if (!(p >= 0.0f && p <= 1.0f)) return detail_stages::invalid("min_p must be in [0, 1], got " + std::to_string(p));
  if (candidates.empty() || p == 0.0f) return ok();
  const Expected<float> max = detail_stages::checked_max(candidates);
  if (!max) return max.error();
  const float threshold = std::log(p);
  const float largest = *max;
  detail::CandidatesAccess::keep_where(candidates,
                                       [threshold, largest](float logit) { return logit - largest >= threshold; });
  return ok();
}

// The final stage: softmax over the candidates, into `out` (its buffers are reused). Candidates
// whose probability is 0 (logit -inf, or underflowed) are left out. Errors: no candidates, a NaN
// or +inf logit, every logit -inf.
inline Status softmax(const Candidates& candidates, Distribution& out) {
  if (candidates.empty()) return detail_stages::invalid("no candidates left to sample from");
  const Expected<float> max = detail_stages::checked_max(candidates);
  if (!max) return max.error();
  detail::DistributionAccess::assign_softmax(out, candidates.ids(), candidates.logits(), *max);
  return ok();
}

inline Expected<Distribution> softmax(const Candidates& candidates) {
  Distribution out;
  if (Status status = softmax(candidates, out); !status) return std::move(status).error();
  return out;
}

// One draw from `distribution`: consumes exactly one rng.next_double(), then walks the
// cumulative probabilities in id order (Distribution::quantile). Error: an empty distribution.
inline Expected<int32_t> draw(const Distribution& distribution, Rng& rng) {
  if (distribution.empty()) return detail_stages::invalid("cannot draw from an empty distribution");
  return distribution.quantile(rng.next_double());
}

}  // namespace sampling
}  // namespace mimo
