// The sampler on arbitrary options and logits (NaN, infinities, huge and tiny values, ties):
// options are validated, sample() gives a token in the vocabulary or an error, never a crash;
// a drawn token has nonzero probability in distribution(); -inf logits are never drawn; a copy
// and a snapshot continue identically; speculative verification stays in the vocabulary; where
// the options allow it, sample_top over the largest logits (a few more than needed, at random)
// gives sample()'s token and state.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <limits>
#include <vector>

#include <mimo/sampler.hpp>

#include "fuzz_support.hpp"

namespace {

float interesting_float(fuzz::ByteSource& in) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  switch (in.byte() % 12) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return inf;
    case 2: return -inf;
    case 3: return std::numeric_limits<float>::max();
    case 4: return -std::numeric_limits<float>::max();
    case 5: return std::numeric_limits<float>::denorm_min();
    case 6: return 0.0f;
    case 7: return -0.0f;
    case 8: return 1.0f;
    case 9: return in.float_in(-30.0f, 30.0f);
    case 10: return static_cast<float>(in.in_range(-4, 4));  // ties
    default: return in.any_float();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::ByteSource in(data, size);
  const auto vocab = static_cast<int32_t>(in.in_range(-1, 300));
  const uint8_t flags = in.byte();
  mimo::SamplerOptions o;
  o.temperature = flags & 1 ? interesting_float(in) : in.float_in(0.0f, 4.0f);
  o.top_k = static_cast<int32_t>(in.in_range(-1, 400));
  o.top_p = flags & 2 ? interesting_float(in) : in.float_in(0.0f, 1.0f);
  o.min_p = flags & 4 ? interesting_float(in) : in.float_in(0.0f, 1.0f);
  o.repeat_penalty = flags & 8 ? interesting_float(in) : in.float_in(0.5f, 2.0f);
  o.presence_penalty = flags & 16 ? interesting_float(in) : 0.0f;
  o.frequency_penalty = flags & 32 ? interesting_float(in) : 0.0f;
  o.greedy = flags & 64;
  o.penalty_window = static_cast<int32_t>(in.in_range(-1, 70));
  const auto biases = in.in_range(0, 4);
  for (int64_t i = 0; i < biases; ++i) {
    o.logit_bias.push_back({.token = static_cast<int32_t>(in.in_range(-2, 302)), .bias = interesting_float(in)});
  }
  o.seed = in.u64();

  auto sampler = mimo::Sampler::create(o, vocab);
  if (!sampler) return 0;
  FUZZ_CHECK(vocab >= 1);

  std::vector<float> logits(static_cast<size_t>(vocab));
  const auto steps = in.in_range(1, 6);
  for (int64_t step = 0; step < steps; ++step) {
    for (float& l : logits) l = in.remaining() > 0 ? interesting_float(in) : 0.0f;
    bool nan_or_pos_inf = false, all_neg_inf = true;
    for (float l : logits) {
      nan_or_pos_inf = nan_or_pos_inf || std::isnan(l) || l == std::numeric_limits<float>::infinity();
      all_neg_inf = all_neg_inf && l == -std::numeric_limits<float>::infinity();
    }

    mimo::Sampler twin = sampler->copy();
    mimo::Sampler by_top = sampler->copy();
    const int32_t extra = static_cast<int32_t>(in.in_range(0, 3));
    const mimo::SamplerSnapshot snapshot = sampler->snapshot();
    auto dist = sampler->distribution(logits);
    auto token = sampler->sample(logits);
    FUZZ_CHECK(token.has_value() == dist.has_value());
    if (const int32_t needed = by_top.candidates_needed(); needed > 0) {
      // The backend's selection, by a sort: logit descending (-0 == +0), then lower id; ascending ids.
      const int32_t count = std::min(vocab, needed + extra);
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
        return mimo::detail::order_key(logits[static_cast<size_t>(a)]) > mimo::detail::order_key(logits[static_cast<size_t>(b)]);
      });
      ids.resize(static_cast<size_t>(count));
      std::sort(ids.begin(), ids.end());
      std::vector<float> values;
      for (int32_t id : ids) values.push_back(logits[static_cast<size_t>(id)]);
      if (nan_or_pos_inf || all_neg_inf) std::fill(ids.begin(), ids.end(), -1);
      auto top_token = by_top.sample_top(ids, values);
      FUZZ_CHECK(top_token.has_value() == token.has_value());
      if (token) FUZZ_CHECK(*top_token == *token && by_top.snapshot() == sampler->snapshot());
    }
    if (nan_or_pos_inf || all_neg_inf) FUZZ_CHECK(!token.has_value());
    if (!token) continue;
    FUZZ_CHECK(*token >= 0 && *token < vocab);
    FUZZ_CHECK(logits[static_cast<size_t>(*token)] != -std::numeric_limits<float>::infinity());
    double total = 0.0;
    bool drawn_has_mass = false;
    for (size_t i = 0; i < dist->size(); ++i) {
      const float p = dist->probabilities()[i];
      FUZZ_CHECK(p >= 0.0f && p <= 1.0f);
      FUZZ_CHECK(dist->ids()[i] >= 0 && dist->ids()[i] < vocab);
      total += p;
      drawn_has_mass = drawn_has_mass || (dist->ids()[i] == *token && p > 0.0f);
    }
    FUZZ_CHECK(drawn_has_mass);
    FUZZ_CHECK(std::abs(total - 1.0) < 1e-3);

    // The copy and a restored snapshot draw the same token.
    auto twin_token = twin.sample(logits);
    FUZZ_CHECK(twin_token.has_value() && *twin_token == *token);
    mimo::Sampler replay = sampler->copy();
    FUZZ_CHECK(replay.restore(snapshot).has_value());
    auto replay_token = replay.sample(logits);
    FUZZ_CHECK(replay_token.has_value() && *replay_token == *token);

    // Speculative verification of a draft drawn from the same distribution.
    auto verdict = sampler->verify_draft(*dist, *dist, *token);
    if (verdict) FUZZ_CHECK(verdict->token >= 0 && verdict->token < vocab);

    FUZZ_CHECK(sampler->accept(*token).has_value());
  }
  FUZZ_CHECK(!sampler->accept(vocab).has_value());
  FUZZ_CHECK(!sampler->accept(-1).has_value());
  return 0;
}
