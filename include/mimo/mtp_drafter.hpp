// MtpDrafter: drafts tokens with MiMo's Multi-Token-Prediction layers for speculative decoding
// (mimo/speculative.hpp verifies them losslessly).
//
// With the session holding x_0 .. x_{S-1} and `pending` = x_S chosen but not yet fed:
//   step 0 at position S-1 combines the main model's post-norm hidden state h_{S-1} with the
//     embedding of x_S, and its logits propose d_1 for x_{S+1};
//   step j > 0 at position S-1 combines step j-1's output with the embedding of d_j, through
//     layer min(j, K-1), and proposes d_{j+1}; its rows at S-j .. S-2 combine the earlier drafts,
//     so it attends over the same positions it was trained with.
// Each step keeps its own KV cache (in the session), extended teacher-forced over every position
// whose tokens are known: step k's entry at position p combines token x_{p+1+k}, so its attention
// sees the context it was trained with. Step 0's row at S-1 is teacher-forced (x_S is certain);
// a deeper step's rows that combine drafts serve that proposal and are then dropped.
//
// Depth 1 is MiMo's published setting (acceptance about 0.88 at the first position and only about
// 0.18 at the second when the single MTP layer is reused), so it is the default. The adaptive
// rule stops drafting where the draft's probability under the MTP head falls below a threshold.
//
// Which positions each step's cache holds lives in the session, so truncating, copying or
// restoring it keeps drafting correct. The drafter itself carries a few recent MTP outputs from
// call to call: use one drafter per session (and one thread at a time).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/session.hpp"
#include "mimo/speculative.hpp"

namespace mimo {

struct MtpDrafterOptions {
  int depth = 1;                 // drafts proposed per step, 1 to 16
  float min_probability = 0.0f;  // adaptive depth: stop drafting once a draft's MTP probability is below this (0: off)
};

template <class B>
class MtpDrafter final : public Drafter<B> {
 public:
  static constexpr int max_depth = 16;
  static constexpr int64_t max_carry = 64;  // outputs kept per step for the next step's catch-up

  static Expected<MtpDrafter> create(const Model<B>& model, MtpDrafterOptions options = {}) {
    if (model.config().num_nextn_predict_layers < 1) {
      return Error(Errc::invalid_argument, "MTP drafter: the checkpoint has no MTP layers (num_nextn_predict_layers is 0)");
    }
    if (options.depth < 1 || options.depth > max_depth) {
      return Error(Errc::invalid_argument, "MTP drafter: depth " + std::to_string(options.depth) + " is not in [1, " +
                                               std::to_string(max_depth) + "]");
    }
    if (!(options.min_probability >= 0.0f && options.min_probability <= 1.0f)) {
      return Error(Errc::invalid_argument, "MTP drafter: min_probability must be in [0, 1]");
    }
    MtpDrafter d;
    d.options_ = options;
    d.steps_.resize(static_cast<size_t>(options.depth));
    return d;
  }

  int depth() const { return options_.depth; }

  // Extends every step's cache over the positions whose tokens are all in the session (p + 1 + k
  // < size()), from the hidden states the session kept. Call after appending a prompt chunk with
  // AppendOptions::hidden = OutputRows::all, so long prompts need no more than a chunk of them.
  Status catch_up(Session<B>& session, const std::atomic<bool>* cancel = nullptr) {
    auto r = run(session, std::nullopt, 0, cancel);
    if (!r) return std::move(r).error();
    return ok();
  }

  Expected<std::span<const int32_t>> propose(Session<B>& session, int32_t pending, int max_drafts,
                                             const std::atomic<bool>* cancel) override {
    return run(session, pending, std::min(max_drafts, options_.depth), cancel);
  }

 private:
  // Outputs of one step at teacher-forced positions, kept for the next step (backend memory).
  struct Carry {
    typename B::Buffer buf;
    Rows rows;
    std::vector<int64_t> positions;
  };
  struct StepScratch {
    Carry carry;        // this step's recent teacher-forced outputs
    Carry speculative;  // this step's rows that combined drafts, from the current call
    typename B::Buffer source_buf;          // the inputs of this step
    std::vector<int64_t> source_positions;  // position of each input row (speculative_tag() for
                                            // speculative rows, -2 for unusable ones)
  };

  MtpDrafter() = default;

  // Runs each step: teacher-forced catch-up rows, then (when drafting) the rows that propose.
  // Without drafts (catch_up) every step is extended; while drafting, steps past the point where
  // drafting stops lag behind and catch up from their carried inputs later.
  Expected<std::span<const int32_t>> run(Session<B>& session, std::optional<int32_t> pending, int drafts,
                                         const std::atomic<bool>* cancel) {
    drafts_.clear();
    const int64_t S = session.size();
    const auto tokens = session.tokens();
    // Token at index i of the known sequence: the session's tokens, then pending.
    auto token_at = [&](int64_t i) -> int32_t { return i < S ? tokens[static_cast<size_t>(i)] : *pending; };
    const int64_t known = S + (pending ? 1 : 0);
    const int steps = drafts > 0 ? drafts : options_.depth;
    for (int k = 0; k < steps; ++k) {
      StepScratch& st = steps_[static_cast<size_t>(k)];
      // The rows this step can consume, with their positions: step 0 reads the session's kept
      // hidden states; step k > 0 reads step k-1's carry plus its draft output.
      Rows source;
      std::vector<int64_t>& src_pos = st.source_positions;
      src_pos.clear();
      if (k == 0) {
        auto built = build_main_source(session);
        if (!built) return std::move(built).error();
        source = *built;
      } else {
        auto built = build_source(session, k);
        if (!built) return std::move(built).error();
        source = *built;
      }
      // Teacher-forced rows: positions after the cache's last entry whose token x_{p+1+k} is known.
      const auto cached = session.mtp_positions(k);
      const int64_t after = cached.empty() ? -1 : cached.back();
      rows_.clear();
      toks_.clear();
      pos_.clear();
      for (size_t i = 0; i < src_pos.size(); ++i) {
        const int64_t p = src_pos[i];
        if (p > after && p + 1 + k < known) {
          rows_.push_back(static_cast<int32_t>(i));
          toks_.push_back(token_at(p + 1 + k));
          pos_.push_back(p);
        }
      }
      const size_t teacher_rows = rows_.size();
      // Step 0 proposes from its teacher-forced row at S-1 (which combines pending). A deeper step
      // k adds speculative rows at positions S-k .. S-1, whose tokens x_{S+1} .. x_{S+k} are the
      // drafts d_1 .. d_k: the context it was trained with, with drafts where tokens are unknown.
      int64_t speculative = 0;
      if (drafts > 0 && k > 0) {
        for (int64_t q = S - k; q < S; ++q) {
          const int64_t tag = q == S - k ? q : speculative_tag(q);
          const auto it = std::find(src_pos.begin(), src_pos.end(), tag);
          if (it == src_pos.end() || q < 0) break;
          rows_.push_back(static_cast<int32_t>(it - src_pos.begin()));
          toks_.push_back(drafts_[static_cast<size_t>(q + k - S)]);
          pos_.push_back(q);
          ++speculative;
        }
        if (speculative < k) {
          rows_.resize(teacher_rows);
          toks_.resize(teacher_rows);
          pos_.resize(teacher_rows);
          speculative = 0;
        }
      }
      const bool proposes = drafts > 0 && (k == 0 ? !pos_.empty() && pos_.back() == S - 1 : speculative == k);
      if (!rows_.empty()) {
        if (auto s = forward(session, k, source, proposes, teacher_rows, cancel); !s) return std::move(s).error();
      }
      if (speculative > 0) {
        // Keep their outputs for the next step, then drop them from the cache: they combined guesses.
        if (auto s = keep_speculative(session, k, speculative); !s) return std::move(s).error();
        if (auto s = session.mtp_truncate(k, session.mtp_size(k) - speculative); !s) return std::move(s).error();
      }
      if (drafts > 0 && !proposes) break;  // an input is missing (e.g. no hidden state at S-1)
      if (proposes) {
        const auto logits = session.mtp_logits().last();
        const auto best = std::max_element(logits.begin(), logits.end());
        if (options_.min_probability > 0.0f && !drafts_.empty() &&
            probability_of_max(logits, *best) < options_.min_probability) {
          break;  // adaptive depth: this draft is not worth a verification row
        }
        drafts_.push_back(static_cast<int32_t>(best - logits.begin()));
      }
    }
    if (auto s = keep_main_carry(session); !s) return std::move(s).error();
    return std::span<const int32_t>(drafts_);
  }

  // Source rows for step 0: hidden states carried from earlier appends that step 0 could not
  // use yet (the last row of a prompt chunk waits for the next token), then the session's kept
  // hidden rows. A carried row is trusted only where the session vouches for the tokens it was
  // computed from: at most one past step 0's last entry (which checked that token), and with the
  // same token at its own position.
  Expected<Rows> build_main_source(Session<B>& session) {
    const int64_t hidden = session.model().config().hidden_size;
    const int64_t S = session.size();
    const auto tokens = session.tokens();
    const auto cached = session.mtp_positions(0);
    const int64_t last_entry = cached.empty() ? -1 : cached.back();
    const Rows kept = session.hidden();
    const int64_t kept_from = session.hidden_position();
    std::vector<int64_t>& src_pos = steps_[0].source_positions;
    src_pos.clear();
    std::vector<int64_t> carried;  // indices into main_carry_
    for (size_t i = 0; i < main_carry_.positions.size(); ++i) {
      const int64_t p = main_carry_.positions[i];
      const bool vouched = p <= last_entry + 1 && p < S && tokens[static_cast<size_t>(p)] == main_carry_tokens_[i];
      const bool superseded = p >= kept_from && p < kept_from + kept.count;
      if (vouched && !superseded) carried.push_back(static_cast<int64_t>(i));
    }
    const int64_t n = static_cast<int64_t>(carried.size()) + kept.count;
    auto rows = B::rows(main_source_buf_, std::max<int64_t>(n, 1), hidden, "MTP inputs");
    if (!rows) return std::move(rows).error();
    rows->count = n;
    int64_t w = 0;
    for (int64_t i : carried) {
      B::copy_rows(session.context(), main_carry_.rows.slice(i, 1), rows->slice(w++, 1));
      src_pos.push_back(main_carry_.positions[static_cast<size_t>(i)]);
    }
    if (kept.count) B::copy_rows(session.context(), kept, rows->slice(w, kept.count));
    for (int64_t i = 0; i < kept.count; ++i) {
      const int64_t p = kept_from + i;
      src_pos.push_back(p < S ? p : -2);  // rows past the session (after a truncate) are stale
    }
    main_source_ = *rows;
    return *rows;
  }

  // Keeps the step-0 source rows that step 0 has not consumed yet, for the next call.
  Status keep_main_carry(Session<B>& session) {
    const int64_t hidden = session.model().config().hidden_size;
    const auto cached = session.mtp_positions(0);
    const int64_t last_entry = cached.empty() ? -1 : cached.back();
    const auto& src_pos = steps_[0].source_positions;
    std::vector<int64_t> keep;
    for (size_t i = 0; i < src_pos.size(); ++i) {
      if (src_pos[i] > last_entry) keep.push_back(static_cast<int64_t>(i));
    }
    if (keep.size() > static_cast<size_t>(max_carry)) keep.erase(keep.begin(), keep.end() - max_carry);
    auto rows = B::rows(main_carry_.buf, std::max<int64_t>(1, static_cast<int64_t>(keep.size())), hidden, "MTP carry");
    if (!rows) return std::move(rows).error();
    rows->count = static_cast<int64_t>(keep.size());
    main_carry_.positions.clear();
    main_carry_tokens_.clear();
    const auto tokens = session.tokens();
    for (size_t j = 0; j < keep.size(); ++j) {
      const int64_t p = src_pos[static_cast<size_t>(keep[j])];
      B::copy_rows(session.context(), main_source_.slice(keep[j], 1), rows->slice(static_cast<int64_t>(j), 1));
      main_carry_.positions.push_back(p);
      main_carry_tokens_.push_back(tokens[static_cast<size_t>(p)]);
    }
    main_carry_.rows = *rows;
    return ok();
  }

  // Runs step k over rows_/toks_/pos_ in pieces of at most the session's batch, keeping the
  // outputs of the first `teacher_rows` rows (teacher-forced) as this step's carry. Logits of
  // the last row only, when it proposes.
  Status forward(Session<B>& session, int k, const Rows& source, bool proposes, size_t teacher_rows,
                 const std::atomic<bool>* cancel) {
    const int64_t batch = std::max<int64_t>(1, session.batch());
    const int64_t n = static_cast<int64_t>(rows_.size());
    for (int64_t first = 0; first < n; first += batch) {
      const int64_t m = std::min(batch, n - first);
      const bool last_piece = first + m == n;
      auto r = session.mtp_forward({.step = k,
                                    .source = source,
                                    .source_rows = std::span<const int32_t>(rows_).subspan(first, m),
                                    .tokens = std::span<const int32_t>(toks_).subspan(first, m),
                                    .positions = std::span<const int64_t>(pos_).subspan(first, m),
                                    .logits = proposes && last_piece ? OutputRows::last : OutputRows::none},
                                   cancel);
      if (!r) return std::move(r).error();
      // Each piece's outputs are overwritten by the next: carry them now.
      const int64_t teacher_in_piece = std::clamp<int64_t>(static_cast<int64_t>(teacher_rows) - first, 0, m);
      if (auto s = append_carry(session, k, session.mtp_output(k), first, teacher_in_piece); !s) return s;
    }
    return ok();
  }

  // Appends the first m rows of `out` (rows first.. of this call, at pos_[first..]) to step k's
  // carry, keeping the newest max_carry.
  Status append_carry(Session<B>& session, int k, const Rows& out, int64_t first, int64_t m) {
    if (m <= 0) return ok();
    Carry& carry = steps_[static_cast<size_t>(k)].carry;
    const int64_t hidden = session.model().config().hidden_size;
    const int64_t old = static_cast<int64_t>(carry.positions.size());
    const int64_t total = old + m;
    const int64_t drop = std::max<int64_t>(0, total - max_carry);
    auto merged = B::rows(scratch_buf_, total - drop, hidden, "MTP carry");
    if (!merged) return std::move(merged).error();
    std::vector<int64_t> positions;
    positions.reserve(static_cast<size_t>(total - drop));
    for (int64_t i = drop; i < total; ++i) {
      const Rows src = i < old ? carry.rows.slice(i, 1) : out.slice(i - old, 1);
      B::copy_rows(session.context(), src, merged->slice(i - drop, 1));
      positions.push_back(i < old ? carry.positions[static_cast<size_t>(i)] : pos_[static_cast<size_t>(first + i - old)]);
    }
    auto rows = B::rows(carry.buf, total - drop, hidden, "MTP carry");
    if (!rows) return std::move(rows).error();
    B::copy_rows(session.context(), *merged, *rows);
    carry.rows = *rows;
    carry.positions = std::move(positions);
    return ok();
  }

  // Positions of speculative rows are tagged apart from teacher-forced ones in a source list.
  static int64_t speculative_tag(int64_t position) { return -3 - position; }

  // Keeps the outputs of step k's last `n` rows (its speculative rows) for step k+1.
  Status keep_speculative(Session<B>& session, int k, int64_t n) {
    Carry& spec = steps_[static_cast<size_t>(k)].speculative;
    const Rows out = session.mtp_output(k);
    auto rows = B::rows(spec.buf, n, session.model().config().hidden_size, "MTP speculative rows");
    if (!rows) return std::move(rows).error();
    B::copy_rows(session.context(), out.slice(out.count - n, n), *rows);
    spec.rows = *rows;
    spec.positions.assign(pos_.end() - n, pos_.end());
    return ok();
  }

  // Source rows for step k: step k-1's carry (teacher-forced outputs), then, while drafting, its
  // speculative rows of this call.
  Expected<Rows> build_source(Session<B>& session, int k) {
    const int64_t hidden = session.model().config().hidden_size;
    StepScratch& st = steps_[static_cast<size_t>(k)];
    const Carry& below = steps_[static_cast<size_t>(k - 1)].carry;
    const Carry& spec = steps_[static_cast<size_t>(k - 1)].speculative;
    const bool drafting = static_cast<int>(drafts_.size()) >= k;
    const int64_t carried = static_cast<int64_t>(below.positions.size());
    const int64_t speculative = drafting && k > 1 ? static_cast<int64_t>(spec.positions.size()) : 0;
    const int64_t n = carried + speculative;
    auto rows = B::rows(st.source_buf, std::max<int64_t>(n, 1), hidden, "MTP step inputs");
    if (!rows) return std::move(rows).error();
    rows->count = n;
    if (carried) B::copy_rows(session.context(), below.rows, rows->slice(0, carried));
    if (speculative) B::copy_rows(session.context(), spec.rows, rows->slice(carried, speculative));
    // A carried output is valid while the entry it was computed with is still in the step's cache
    // (the session drops entries whose tokens were truncated or replaced).
    const auto live = session.mtp_positions(k - 1);
    st.source_positions.clear();
    for (int64_t p : below.positions) {
      st.source_positions.push_back(std::binary_search(live.begin(), live.end(), p) ? p : -2);
    }
    for (int64_t i = 0; i < speculative; ++i) {
      st.source_positions.push_back(speculative_tag(spec.positions[static_cast<size_t>(i)]));
    }
    return *rows;
  }

  static float probability_of_max(std::span<const float> logits, float max) {
    double sum = 0.0;
    for (float l : logits) sum += std::exp(static_cast<double>(l - max));
    return static_cast<float>(1.0 / sum);
  }

  MtpDrafterOptions options_;
  Carry main_carry_;                     // unconsumed main hidden states
  std::vector<int32_t> main_carry_tokens_;  // the token at each carried row's position
  typename B::Buffer main_source_buf_;
  Rows main_source_;
  std::vector<StepScratch> steps_;
  std::vector<int32_t> drafts_;
  std::vector<int32_t> rows_;
  std::vector<int32_t> toks_;
  std::vector<int64_t> pos_;
  typename B::Buffer scratch_buf_;
};

}  // namespace mimo
