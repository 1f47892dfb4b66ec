// Speculative decoding: a drafter proposes tokens, the main model checks them all in one pass, and
// the tokens emitted are exactly those plain decoding would emit.
//
// The rule (lossless token for token, not only in distribution): the main model runs over
// [pending, d1, ..., dk]; at each row i in order the caller's `choose` picks the main model's
// token with the full sampler (sample, then accept, so penalties and the generator advance as in
// plain decoding); while the choice equals draft d(i+1) it is accepted and the next row is used,
// and the first choice that differs (or the choice after the last draft, the "bonus") ends the
// step. Every emitted token is therefore drawn from the main model's own distribution given the
// tokens before it, with the same generator draws as plain decoding: the same seed gives the same
// text with and without drafting. (The alternative, the rejection rule min(1, p/q), is lossless
// only in distribution and consumes extra draws; with a greedy draft both accept equally often.
// See mimo/sampler.hpp, Sampler::verify_draft.)
//
// Invariant around a step: the session holds every emitted token except the last, `pending`,
// which is the next token to feed. After the step, the session holds pending and the accepted
// drafts; the new pending is the last emitted token.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/session.hpp"

namespace mimo {

// A source of draft tokens. Implementations: MtpDrafter (MiMo's Multi-Token-Prediction layers),
// ReplayDrafter (a known continuation, for tests and benchmarks).
template <class B>
class Drafter {
 public:
  virtual ~Drafter() = default;
  // Up to `max_drafts` tokens proposed to follow `pending`, the token chosen after the session's
  // last position (not yet in the session). May propose fewer, or none. The span stays valid
  // until the next call.
  virtual Expected<std::span<const int32_t>> propose(Session<B>& session, int32_t pending, int max_drafts,
                                                     const std::atomic<bool>* cancel) = 0;
};

struct SpeculativeStats {
  int64_t passes = 0;    // main-model passes (verification, or plain decoding steps)
  int64_t drafted = 0;   // draft tokens proposed
  int64_t accepted = 0;  // of which the main model agreed with
  int64_t emitted = 0;   // tokens emitted by those passes
  double acceptance_rate() const { return drafted ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0; }
  double tokens_per_pass() const { return passes ? static_cast<double>(emitted) / static_cast<double>(passes) : 0.0; }
};

namespace detail {

// What a verification pass brings back per row: its logits, the backend's argmax, or the backend's
// selection of its top_count largest logits.
struct RowOutput {
  enum Kind { logits, argmax, top } kind = logits;
  int32_t top_count = 0;
};

// One verification pass (see verify_drafts): `choose(const Logits&, row)` picks the token of row
// `row` of the pass's outputs, of the kind `output` names.
template <class B, class Choose>
Expected<int> verify_pass(Session<B>& session, int32_t pending, std::span<const int32_t> drafts, RowOutput output,
                          Choose&& choose, std::vector<int32_t>& emitted, SpeculativeStats& stats,
                          const std::atomic<bool>* cancel) {
  const int64_t start = session.size();
  std::vector<int32_t> input;
  input.reserve(drafts.size() + 1);
  input.push_back(pending);
  input.insert(input.end(), drafts.begin(), drafts.end());
  const OutputRows rows = drafts.empty() ? OutputRows::last : OutputRows::all;
  const auto rows_if = [rows, output](RowOutput::Kind kind) { return output.kind == kind ? rows : OutputRows::none; };
  auto logits = session.append(input, {.logits = rows_if(RowOutput::logits),
                                       .hidden = rows,
                                       .cancel = cancel,
                                       .argmax = rows_if(RowOutput::argmax),
                                       .top = rows_if(RowOutput::top),
                                       .top_count = output.top_count});
  if (!logits) return std::move(logits).error();
  const int64_t count = output.kind == RowOutput::argmax ? static_cast<int64_t>(logits->argmax.size())
                        : output.kind == RowOutput::top  ? logits->top_rows()
                                                         : logits->rows;
  int accepted = 0;
  for (int64_t row = 0; row < count; ++row) {
    auto token = choose(*logits, row);
    if (!token) {
      (void)session.truncate(start);
      return std::move(token).error();
    }
    emitted.push_back(*token);
    if (row < static_cast<int64_t>(drafts.size()) && *token == drafts[row]) {
      ++accepted;
      continue;
    }
    break;
  }
  // Keep pending and the accepted drafts; the rejected drafts' keys and values are dropped.
  if (auto s = session.truncate(start + 1 + accepted); !s) return std::move(s).error();
  stats.passes += 1;
  stats.drafted += static_cast<int64_t>(drafts.size());
  stats.accepted += accepted;
  stats.emitted += accepted + 1;
  return accepted;
}

}  // namespace detail

// One verification pass. `choose(std::span<float> logits) -> Expected<int32_t>` picks the main
// model's token at a row (and records it with the sampler). Appends the emitted tokens (accepted
// drafts, then the new pending token) to `emitted` and returns how many drafts were accepted.
// With no drafts this is one plain decoding step.
template <class B, class Choose>
Expected<int> verify_drafts(Session<B>& session, int32_t pending, std::span<const int32_t> drafts, Choose&& choose,
                            std::vector<int32_t>& emitted, SpeculativeStats& stats,
                            const std::atomic<bool>* cancel = nullptr) {
  return detail::verify_pass(
      session, pending, drafts, {}, [&](const Logits& logits, int64_t row) { return choose(logits.row(row)); }, emitted,
      stats, cancel);
}

// The same pass with the backend's greedy choice of each row instead of its logits: nothing but
// the ids leaves the device. `choose(int32_t argmax) -> Expected<int32_t>` takes a row's argmax
// (Logits::argmax: -1 for logits a sampler refuses), e.g. through Sampler::take_argmax.
template <class B, class Choose>
Expected<int> verify_drafts_greedy(Session<B>& session, int32_t pending, std::span<const int32_t> drafts, Choose&& choose,
                                   std::vector<int32_t>& emitted, SpeculativeStats& stats,
                                   const std::atomic<bool>* cancel = nullptr) {
  return detail::verify_pass(
      session, pending, drafts, {.kind = detail::RowOutput::argmax},
      [&](const Logits& logits, int64_t row) { return choose(logits.argmax[row]); }, emitted, stats, cancel);
}

// The same pass with the backend's selection of each row's `top_count` largest logits instead of
// all of them (Sampler::candidates_needed): `choose(std::span<const int32_t> ids, std::span<const
// float> logits) -> Expected<int32_t>` takes a row's selection (Logits::top_ids_of, ids -1 for
// logits a sampler refuses), e.g. through Sampler::sample_top.
template <class B, class Choose>
Expected<int> verify_drafts_top(Session<B>& session, int32_t pending, std::span<const int32_t> drafts, int32_t top_count,
                                Choose&& choose, std::vector<int32_t>& emitted, SpeculativeStats& stats,
                                const std::atomic<bool>* cancel = nullptr) {
  return detail::verify_pass(
      session, pending, drafts, {.kind = detail::RowOutput::top, .top_count = top_count},
      [&](const Logits& logits, int64_t row) { return choose(logits.top_ids_of(row), logits.top_logits_of(row)); },
      emitted, stats, cancel);
}

// Proposes a known continuation (for tests and benchmarks: no trained MTP weights are available
// here, and random weights accept almost nothing). `continuation[i]` is the token expected at
// position `first_position + i`; each draft is replaced by a wrong token with probability
// 1 - accuracy (seeded), so acceptance can be forced to 100% or to a chosen rate.
template <class B>
class ReplayDrafter final : public Drafter<B> {
 public:
  ReplayDrafter(std::vector<int32_t> continuation, int64_t first_position, double accuracy, int32_t vocab_size,
                uint64_t seed = 1)
      : continuation_(std::move(continuation)),
        first_(first_position),
        accuracy_(accuracy),
        vocab_(vocab_size),
        state_(seed * 0x9e3779b97f4a7c15ull + 1) {}

  Expected<std::span<const int32_t>> propose(Session<B>& session, int32_t, int max_drafts,
                                             const std::atomic<bool>*) override {
    drafts_.clear();
    // pending sits at position size(); drafts follow it.
    for (int64_t i = 0; i < max_drafts; ++i) {
      const int64_t index = session.size() + 1 + i - first_;
      if (index < 0 || index >= static_cast<int64_t>(continuation_.size())) break;
      int32_t token = continuation_[static_cast<size_t>(index)];
      if (uniform() >= accuracy_) token = static_cast<int32_t>((token + 1 + next() % (vocab_ - 1)) % vocab_);
      drafts_.push_back(token);
    }
    return std::span<const int32_t>(drafts_);
  }

 private:
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

  std::vector<int32_t> continuation_;
  int64_t first_;
  double accuracy_;
  int32_t vocab_;
  uint64_t state_;
  std::vector<int32_t> drafts_;
};

}  // namespace mimo
