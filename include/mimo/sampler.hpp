// Sampling: turning a logits vector into the next token.
//
// mimo::Sampler is a configurable chain of stages over the logits, with a seeded random generator
// and the penalty window of recently emitted tokens. The generator (xoshiro256**) gives the same
// numbers for a seed on every platform, and the exp the stages use avoids the C library, so the
// tokens drawn match across platforms too (unless a compiler fuses multiply-adds differently). The stages are also usable one by one (mimo/sampling/stages.hpp), so a custom
// loop can put its own rules between them. The chain, in order:
//
//   1. penalties    repetition / presence / frequency, over the last `penalty_window` accepted tokens
//   2. logit bias   added after the penalties, so a bias is applied exactly as given
//   3. top-k        temperature does not change the order, so it runs first, on the raw vocabulary,
//                   where it is cheapest: the later stages then see k candidates, not 151,680
//   4. temperature  divides the logits; 0 (or `greedy`) keeps only the argmax after step 2
//   5. top-p        nucleus over softmax of what top-k left, at the chosen temperature
//   6. min-p        keeps tokens with probability >= min_p * the largest
//   7. softmax      the final Distribution (sparse: ids and probabilities)
//   8. draw         one uniform from the generator, inverse CDF in id order
//
// Ties are broken by lower token id; -inf logits are never drawn; NaN or +inf logits, a wrong
// length and all -inf are errors, never a crash. Each sample() consumes exactly one draw from the
// generator whatever the options, so two samplers with the same seed stay in step.
//
// A plain loop:
//
//   auto sampler = mimo::Sampler::create({.temperature = 0.7f, .top_k = 40, .top_p = 0.95f,
//                                         .repeat_penalty = 1.1f, .seed = 42}, vocab_size);
//   if (!sampler) return sampler.error();
//   while (...) {
//     mimo::Expected<int32_t> token = sampler->sample(logits);   // does not record the token
//     if (!token) return token.error();
//     if (mimo::Status s = sampler->accept(*token); !s) return s; // penalties learn it here
//     ...
//   }
//
// A custom loop (bias -> own rule -> temperature -> top-p -> draw), one Candidates and one
// Distribution reused so nothing of vocabulary size is allocated per token:
//
//   mimo::Candidates candidates;
//   mimo::Distribution distribution;
//   mimo::Rng rng(42);
//   const mimo::TokenBias biases[] = {{.token = eos, .bias = -2.0f}};
//   while (...) {
//     mimo::Status s = candidates.assign(logits);
//     if (s) s = mimo::sampling::apply_logit_bias(candidates, biases);
//     if (s) candidates.keep_if([&](int32_t id, float) { return allowed_by_game_state(id); });
//     if (s) s = mimo::sampling::apply_temperature(candidates, 0.8f);
//     if (s) s = mimo::sampling::keep_top_p(candidates, 0.9f);
//     if (s) s = mimo::sampling::softmax(candidates, distribution);
//     if (!s) return s;
//     int32_t token = *mimo::sampling::draw(distribution, rng);  // cannot fail after softmax
//   }
//
// Speculative decoding (the MTP drafter) needs three things from the sampler:
//   - Roll back: snapshot() before sampling ahead, restore() to return. The snapshot holds the
//     generator and the penalty window, so replaying from it repeats the same draws exactly.
//   - The final distribution: distribution(logits) applies the same transforms as sample() and
//     sample(logits) == sample_from(distribution(logits)) for the same generator state.
//   - The rejection rule: verify_draft(p, q, d) accepts draft d with probability
//     min(1, p(d)/q(d)), else draws from normalise(max(0, p - q)); the result is distributed as p
//     (mimo/sampling/speculative.hpp). Per draft position i, with the main sampler `s`:
//         auto p = s.distribution(main_logits[i]);          // window holds the tokens before i
//         auto verdict = s.verify_draft(*p, q[i], draft[i]); // q[i]: what the drafter drew from
//         s.accept(verdict->token);
//         if (!verdict->accepted) break;                     // later drafts are discarded
//     If every draft stands, the bonus token is s.sample(main_logits[depth]).
//   The rejection rule is lossless in distribution, not token for token: it consumes one draw
//   per accepted draft and two per replacement, so a seed gives different (equally distributed)
//   text with and without drafting. The other rule issue 5 allows keeps the seed's text exactly,
//   as every emitted token then consumes one draw in both modes: per position i,
//   t = s.sample(main_logits[i]); s.accept(t); stop once t != draft[i]. With a greedy drafter the
//   two rules accept equally often.
//
// A Sampler is used by one thread at a time. It owns working buffers (reused between calls), so
// copying one is explicit: copy().
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mimo/backend/backend.hpp"  // max_top_count
#include "mimo/error.hpp"
#include "mimo/sampling/candidates.hpp"
#include "mimo/sampling/distribution.hpp"
#include "mimo/sampling/penalty_window.hpp"
#include "mimo/sampling/rng.hpp"
#include "mimo/sampling/speculative.hpp"
#include "mimo/sampling/stages.hpp"

namespace mimo {

struct SamplerOptions {
  float temperature = 1.0f;                // >= 0, finite; 0 is greedy
  int32_t top_k = 0;                       // >= 0; 0 is off; larger than the vocabulary is off
  float top_p = 1.0f;                      // [0, 1]; 1 is off, 0 keeps only the best token
  float min_p = 0.0f;                      // [0, 1]; 0 is off
  float repeat_penalty = 1.0f;             // > 0; 1 is off (see mimo::Penalties)
  float presence_penalty = 0.0f;           // finite; 0 is off
  float frequency_penalty = 0.0f;          // finite; 0 is off
  int32_t penalty_window = 64;             // [0, 2^20]: how many of the last accepted tokens are penalised
  std::vector<TokenBias> logit_bias = {};  // tokens in [0, vocab_size); finite, or -inf to ban
  uint64_t seed = 0;
  bool greedy = false;  // argmax after penalties and bias; the other stages are skipped
};

// The state a sampler carries from token to token: what speculative decoding rolls back.
struct SamplerSnapshot {
  Rng rng;
  PenaltyWindow window;
  friend bool operator==(const SamplerSnapshot&, const SamplerSnapshot&) = default;
};

class Sampler {
 public:
  static constexpr int32_t max_penalty_window = 1 << 20;

  // Validates the options against the vocabulary size; every error names the option and value.
  static Expected<Sampler> create(SamplerOptions options, int32_t vocab_size) {
    const auto invalid = [](const std::string& what) { return Error(Errc::invalid_argument, "sampler: " + what); };
    if (vocab_size < 1) return invalid("vocab_size must be at least 1, got " + std::to_string(vocab_size));
    if (!(options.temperature >= 0.0f) || std::isinf(options.temperature)) {
      return invalid("temperature must be finite and >= 0, got " + std::to_string(options.temperature));
    }
    if (options.top_k < 0) return invalid("top_k must be >= 0 (0 is off), got " + std::to_string(options.top_k));
    if (!(options.top_p >= 0.0f && options.top_p <= 1.0f)) {
      return invalid("top_p must be in [0, 1], got " + std::to_string(options.top_p));
    }
    if (!(options.min_p >= 0.0f && options.min_p <= 1.0f)) {
      return invalid("min_p must be in [0, 1], got " + std::to_string(options.min_p));
    }
    if (Status valid = sampling::check_penalties(penalties_of(options)); !valid) return std::move(valid).error();
    if (options.penalty_window < 0 || options.penalty_window > max_penalty_window) {
      return invalid("penalty_window must be in [0, " + std::to_string(max_penalty_window) + "], got " +
                     std::to_string(options.penalty_window));
    }
    for (const TokenBias& entry : options.logit_bias) {
      if (entry.token < 0 || entry.token >= vocab_size) {
        return invalid("logit_bias names token " + std::to_string(entry.token) + ", outside the vocabulary of " +
                       std::to_string(vocab_size));
      }
      if (std::isnan(entry.bias) || entry.bias == std::numeric_limits<float>::infinity()) {
        return invalid("logit_bias for token " + std::to_string(entry.token) + " is " + std::to_string(entry.bias) +
                       "; use a finite value, or -inf to ban");
      }
    }
    return Sampler(std::move(options), vocab_size);
  }

  Sampler(Sampler&&) noexcept = default;
  Sampler& operator=(Sampler&&) noexcept = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // An independent sampler with the same options and state (generator, window); it continues
  // exactly as this one would. Working buffers are not copied.
  Sampler copy() const {
    Sampler twin(options_, vocab_size_);
    twin.rng_ = rng_;
    twin.window_ = window_;
    return twin;
  }

  // Runs the chain on `logits` and draws a token. Does not record it: call accept() with the
  // token actually emitted. Errors: logits of the wrong length, NaN or +inf, all -inf.
  Expected<int32_t> sample(std::span<const float> logits) {
    if (Status status = distribution(logits, distribution_); !status) return std::move(status).error();
    return sample_from(distribution_);
  }

  // Whether sample() always picks the argmax of the raw logits (the first on ties): greedy, with no
  // penalty in effect and no logit bias. Then the argmax may be computed where the logits are (on
  // a GPU, AppendOptions::argmax) and handed to take_argmax, so that no logits are copied.
  bool chooses_argmax() const {
    const bool greedy = options_.greedy || options_.temperature == 0.0f;
    const bool penalised = options_.penalty_window > 0 && (options_.repeat_penalty != 1.0f ||
                                                           options_.presence_penalty != 0.0f ||
                                                           options_.frequency_penalty != 0.0f);
    return greedy && !penalised && options_.logit_bias.empty();
  }

  // What sample() returns when chooses_argmax(), given the argmax of the logits it would have seen
  // (Logits::argmax); consumes the generator draw sample() would, so the state stays in step.
  // Does not record the token. Errors: not chooses_argmax(); -1 (logits with NaN or +inf, or only
  // -inf, which sample() refuses too); an id outside the vocabulary.
  Expected<int32_t> take_argmax(int32_t argmax) {
    if (!chooses_argmax()) {
      return Error(Errc::invalid_argument, "sampler: take_argmax needs a greedy sampler without penalties or logit bias");
    }
    if (argmax == -1) {
      return Error(Errc::invalid_argument, "sampling: the logits hold NaN or +inf, or every logit is -inf");
    }
    if (argmax < 0 || argmax >= vocab_size_) {
      return Error(Errc::invalid_argument, "sampler: argmax " + std::to_string(argmax) + " is outside the vocabulary of " +
                                               std::to_string(vocab_size_));
    }
    (void)rng_.next_double();  // sample()'s draw (sampling::draw)
    return argmax;
  }

  // How many of the largest logits sample()'s token depends on (logit descending, then lower id):
  // sample() over a vector in which only those are known (sample_top) gives the same token, so a
  // backend may select them where the logits are (AppendOptions::top) and copy nothing else.
  // top_k (1 when greedy), plus one per token a penalty or bias may touch: those only lower
  // logits, so each can push at most one other token into the top k. 0 when sample() needs every
  // logit: no top_k, a penalty or bias that can raise a logit, or more than max_top_count.
  int32_t candidates_needed() const {
    const bool greedy = options_.greedy || options_.temperature == 0.0f;
    int64_t needed = greedy ? 1 : options_.top_k;
    if (needed <= 0) return 0;
    const bool penalised = options_.penalty_window > 0 && (options_.repeat_penalty != 1.0f ||
                                                           options_.presence_penalty != 0.0f ||
                                                           options_.frequency_penalty != 0.0f);
    if (penalised) {
      if (options_.repeat_penalty < 1.0f || options_.presence_penalty < 0.0f || options_.frequency_penalty < 0.0f) return 0;
      needed += options_.penalty_window;
    }
    for (const TokenBias& entry : options_.logit_bias) {
      if (entry.bias > 0.0f) return 0;
      needed += 1;
    }
    return needed < vocab_size_ && needed <= max_top_count ? static_cast<int32_t>(needed) : 0;
  }

  // What sample() returns, given at least candidates_needed() of the largest logits of the vector
  // it would see, ids ascending (Logits::top_ids_of / top_logits_of); consumes the same draw. Does
  // not record the token. Errors: candidates_needed() is 0 or more than given; ids -1 (logits
  // with NaN or +inf, or only -inf, which sample() refuses too); ids out of order or range.
  Expected<int32_t> sample_top(std::span<const int32_t> ids, std::span<const float> logits) {
    const int32_t needed = candidates_needed();
    if (needed == 0) {
      return Error(Errc::invalid_argument, "sampler: these options need every logit (no top_k, a penalty or bias "
                                           "that can raise a logit, or more candidates than max_top_count)");
    }
    if (!ids.empty() && ids[0] == -1) {
      return Error(Errc::invalid_argument, "sampling: the logits hold NaN or +inf, or every logit is -inf");
    }
    if (ids.size() < static_cast<size_t>(needed)) {
      return Error(Errc::invalid_argument, "sampler: " + std::to_string(ids.size()) + " candidates given, " +
                                               std::to_string(needed) + " needed");
    }
    Status status = candidates_.assign(ids, logits, vocab_size_);
    if (status) status = apply_stages(candidates_);
    if (status) status = sampling::softmax(candidates_, distribution_);
    if (!status) return std::move(status).error();
    return sample_from(distribution_);
  }

  // One draw from a distribution (e.g. one built by distribution()) with this sampler's generator.
  Expected<int32_t> sample_from(const Distribution& distribution) { return sampling::draw(distribution, rng_); }

  // The distribution sample() would draw from, after every transform; no draw, no state change.
  // Non-const only because it works in this sampler's reusable buffers.
  Status distribution(std::span<const float> logits, Distribution& out) {
    if (Status status = apply(logits, candidates_); !status) return status;
    return sampling::softmax(candidates_, out);
  }
  Expected<Distribution> distribution(std::span<const float> logits) {
    Distribution out;
    if (Status status = distribution(logits, out); !status) return std::move(status).error();
    return out;
  }

  // Runs the stages before softmax, leaving the surviving candidates (and their transformed
  // logits) in `candidates`: to inspect them, or to continue with custom stages.
  Status apply(std::span<const float> logits, Candidates& candidates) const {
    if (logits.size() != static_cast<size_t>(vocab_size_)) {
      return Error(Errc::invalid_argument, "sampler: expected " + std::to_string(vocab_size_) + " logits, got " +
                                               std::to_string(logits.size()));
    }
    if (Status status = candidates.assign(logits); !status) return status;
    return apply_stages(candidates);
  }

 private:
  // The chain after assign: penalties, bias, then greedy or top-k, temperature, top-p, min-p.
  Status apply_stages(Candidates& candidates) const {
    Status status = sampling::apply_penalties(candidates, window_, penalties_of(options_));
    if (status) status = sampling::apply_logit_bias(candidates, options_.logit_bias);
    if (!status) return status;
    if (options_.greedy || options_.temperature == 0.0f) return sampling::keep_argmax(candidates);
    if (options_.top_k > 0) status = sampling::keep_top_k(candidates, options_.top_k);
    if (status) status = sampling::apply_temperature(candidates, options_.temperature);
    if (status) status = sampling::keep_top_p(candidates, options_.top_p);
    if (status) status = sampling::keep_min_p(candidates, options_.min_p);
    return status;
  }

 public:
  // Speculative verification with this sampler's generator (see the header comment and
  // mimo/sampling/speculative.hpp). Does not accept the token.
  Expected<DraftVerdict> verify_draft(const Distribution& target, const Distribution& draft, int32_t draft_token) {
    return sampling::speculative_accept(target, draft, draft_token, rng_, speculative_scratch_);
  }

  // Records an emitted token in the penalty window. Also feed the prompt's tokens here if the
  // penalties should cover the prompt. Error: a token outside [0, vocab_size).
  Status accept(int32_t token) {
    if (token < 0 || token >= vocab_size_) {
      return Error(Errc::invalid_argument, "sampler: accepted token " + std::to_string(token) +
                                               " is outside the vocabulary of " + std::to_string(vocab_size_));
    }
    window_.push(token);
    return ok();
  }

  // The generator and penalty window: restore() makes this sampler continue exactly as it did
  // from the moment of the snapshot. Cheap: penalty_window ints and four words.
  SamplerSnapshot snapshot() const { return {.rng = rng_, .window = window_}; }

  // Error (and no change) if the snapshot's window does not fit these options and vocabulary.
  Status restore(const SamplerSnapshot& snapshot) {
    if (snapshot.window.capacity() != static_cast<size_t>(options_.penalty_window)) {
      return Error(Errc::invalid_argument, "sampler: snapshot window holds " +
                                               std::to_string(snapshot.window.capacity()) + " tokens, this sampler " +
                                               std::to_string(options_.penalty_window));
    }
    for (size_t i = 0; i < snapshot.window.size(); ++i) {
      if (snapshot.window[i] < 0 || snapshot.window[i] >= vocab_size_) {
        return Error(Errc::invalid_argument, "sampler: snapshot window holds token " +
                                                 std::to_string(snapshot.window[i]) + ", outside the vocabulary");
      }
    }
    rng_ = snapshot.rng;
    window_ = snapshot.window;
    return ok();
  }

  // Back to the state create() gave: an empty window, the generator reseeded with options().seed.
  void reset() {
    rng_ = Rng(options_.seed);
    window_.clear();
  }

  const SamplerOptions& options() const { return options_; }
  int32_t vocab_size() const { return vocab_size_; }
  const PenaltyWindow& window() const { return window_; }
  const Rng& rng() const { return rng_; }

 private:
  Sampler(SamplerOptions options, int32_t vocab_size)
      : options_(std::move(options)),
        vocab_size_(vocab_size),
        rng_(options_.seed),
        window_(static_cast<size_t>(options_.penalty_window)) {}

  static Penalties penalties_of(const SamplerOptions& options) {
    return {
        .repeat = options.repeat_penalty, .presence = options.presence_penalty, .frequency = options.frequency_penalty};
  }

  SamplerOptions options_;
  int32_t vocab_size_;
  Rng rng_;
  PenaltyWindow window_;
  // Working buffers, reused from call to call; not part of the state.
  Candidates candidates_;
  Distribution distribution_;
  sampling::SpeculativeScratch speculative_scratch_;
};

}  // namespace mimo
