// The generation loop over a session: prefill, sampling, speculative decoding with the MTP
// drafter (on by default when the checkpoint has MTP layers), stop tokens and stop strings,
// streaming text, cancellation and statistics.
//
//   auto sampler = mimo::Sampler::create({.temperature = 0.6f, .top_p = 0.95f, .seed = 1}, vocab);
//   auto result = mimo::generate(session, prompt_ids, *sampler,
//                                {.max_tokens = 512,
//                                 .on_token = [&](const mimo::TokenEvent& e) {
//                                   queue.push(std::string(e.text));   // whole UTF-8 characters
//                                   return !player_left;               // false stops generation
//                                 },
//                                 .cancel = &cancel_flag},
//                                &tokenizer);
//
// With a tokenizer, text is streamed as whole UTF-8 characters and stop strings are matched
// across token boundaries: text that may be the start of a stop string is held back until it is
// clear, so a stop string never leaks into the stream. Without one, only ids are produced.
//
// When generate returns, the session holds the prompt and every generated token, the last one
// included (so the conversation can continue); with commit_last = false it holds all but the last
// (saving one forward pass), and a cancelled run stops where it was. The sampler is left as plain
// decoding leaves it (speculative passes may choose tokens past a stop; their draws are undone),
// so a generate() that continues from an empty prompt, with the same or another sampler, gives
// what one run would.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/mtp_drafter.hpp"
#include "mimo/sampler.hpp"
#include "mimo/session.hpp"
#include "mimo/speculative.hpp"
#include "mimo/tokenizer.hpp"

namespace mimo {

enum class StopReason {
  max_tokens,    // generated max_tokens tokens
  stop_token,    // chose a stop token (EOS, <|im_end|>, ...); it is not part of the output
  stop_string,   // the text reached a stop string; neither it nor what follows is output
  callback,      // on_token returned false
  cancelled,     // the cancellation flag was set
  context_full,  // the session's context is full
};

constexpr std::string_view to_string(StopReason r) {
  switch (r) {
    case StopReason::max_tokens: return "max_tokens";
    case StopReason::stop_token: return "stop_token";
    case StopReason::stop_string: return "stop_string";
    case StopReason::callback: return "callback";
    case StopReason::cancelled: return "cancelled";
    case StopReason::context_full: return "context_full";
  }
  return "?";
}

enum class LogLevel { debug, info, warning };
// Where a generation reports what it does; per call, never global.
using LogSink = std::function<void(LogLevel, std::string_view)>;

// One generated token and the text it releases (possibly empty: part of a UTF-8 character, or
// text held back while it might begin a stop string). A last event with token -1 may follow the
// last token, carrying text that was held back until the end.
struct TokenEvent {
  int32_t token;
  std::string_view text;
  int64_t index;  // among the generated tokens, from 0
};

template <class B>
struct GenerateOptions {
  int64_t max_tokens = 256;
  // Stop tokens: these, plus (when default_stop_tokens) the config's eos_token_id and the
  // tokenizer's <|endoftext|> and <|im_end|>.
  std::vector<int32_t> stop_tokens = {};
  bool default_stop_tokens = true;
  std::vector<std::string> stop_strings = {};  // needs a tokenizer
  // Speculative decoding: draft tokens per step with the MTP layers; -1: 1 when the checkpoint has
  // MTP layers (MiMo's setting), else 0; 0: off. The output is the same with and without.
  int mtp_depth = -1;
  float mtp_min_probability = 0.0f;  // adaptive depth, see MtpDrafterOptions
  Drafter<B>* drafter = nullptr;     // a custom drafter instead (e.g. ReplayDrafter); mtp_depth then caps its drafts
  bool penalize_prompt = true;       // the prompt enters the sampler's penalty window
  bool commit_last = true;           // see the top of this file
  // The backend chooses where the logits are, when the sampler allows it: the argmax of a greedy
  // sampler (Sampler::chooses_argmax), or the largest logits the sampler's choice depends on
  // (Sampler::candidates_needed); on a GPU only those come back. false copies every logit to the
  // host for every token (the same tokens, slower; for comparison).
  bool backend_selection = true;
  // Called for every generated token, in order; return false to stop.
  std::function<bool(const TokenEvent&)> on_token = {};
  // Checked between layers and steps, from any thread: a cancel during a long prompt takes effect
  // within one layer's work.
  const std::atomic<bool>* cancel = nullptr;
  LogSink log = {};
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;
  double time_to_first_token = 0.0;  // from the call to the first generated token
  double decode_seconds = 0.0;       // after the first token
  SpeculativeStats speculative;      // passes, drafted, accepted, emitted
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 && generated_tokens > 1 ? static_cast<double>(generated_tokens - 1) / decode_seconds : 0.0;
  }
};

struct Generation {
  std::vector<int32_t> tokens;  // generated, without a stop token
  std::string text;             // their text (with a tokenizer), without a stop string
  StopReason stop = StopReason::max_tokens;
  int32_t stop_token = -1;      // the stop token chosen, when stop == stop_token
  GenerationStats stats;
};

namespace detail {

// Holds back streamed text that may be the start of a stop string; reports a completed one.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::span<const std::string> stops) : stops_(stops.begin(), stops.end()) {
    std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  }

  // Adds text; appends what is certain to `release`. Returns true when a stop string completed
  // (the text before it is released, the rest is dropped).
  bool feed(std::string_view text, std::string& release) {
    held_ += text;
    size_t first = std::string::npos;
    for (const auto& s : stops_) first = std::min(first, held_.find(s));
    if (first != std::string::npos) {
      release.append(held_, 0, first);
      held_.clear();
      return true;
    }
    size_t keep = 0;  // the longest end of held_ that begins some stop string
    for (const auto& s : stops_) {
      for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
        if (std::string_view(held_).substr(held_.size() - n) == std::string_view(s).substr(0, n)) {
          keep = n;
          break;
        }
      }
    }
    release.append(held_, 0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return false;
  }
  // The stream ended without a stop string: what was held back is text after all.
  void flush(std::string& release) {
    release += held_;
    held_.clear();
  }

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace detail

// Generates after `prompt` (appended first; may be empty to continue from the session's last
// logits). Errors (a bad token, a NaN in the logits, a failure of the backend) are returned; the
// ordinary ends of generation are StopReasons.
template <class B>
Expected<Generation> generate(Session<B>& session, std::span<const int32_t> prompt, Sampler& sampler,
                              const GenerateOptions<B>& options = {}, const Tokenizer* tokenizer = nullptr) {
  using clock = std::chrono::steady_clock;
  const auto start_time = clock::now();
  const ModelConfig& config = session.model().config();
  auto log = [&](LogLevel level, const std::string& message) {
    if (options.log) options.log(level, message);
  };
  auto cancelled = [&] { return options.cancel && options.cancel->load(std::memory_order_relaxed); };

  if (options.max_tokens < 0) return Error(Errc::invalid_argument, "generate: max_tokens is negative");
  if (!options.stop_strings.empty() && !tokenizer) {
    return Error(Errc::invalid_argument, "generate: stop strings need a tokenizer");
  }
  std::vector<int32_t> stop_tokens = options.stop_tokens;
  if (options.default_stop_tokens) {
    for (int64_t id : config.eos_token_id) stop_tokens.push_back(static_cast<int32_t>(id));
    if (tokenizer) {
      for (const char* name : {"<|endoftext|>", "<|im_end|>"}) {
        if (auto id = tokenizer->token_id(name)) stop_tokens.push_back(*id);
      }
    }
  }
  auto is_stop_token = [&](int32_t t) { return std::find(stop_tokens.begin(), stop_tokens.end(), t) != stop_tokens.end(); };

  // The drafter: a custom one, the MTP layers, or none.
  const int depth = options.mtp_depth >= 0 ? options.mtp_depth : (config.num_nextn_predict_layers > 0 ? 1 : 0);
  std::optional<MtpDrafter<B>> mtp;
  Drafter<B>* drafter = options.drafter;
  if (!drafter && depth > 0) {
    if (config.num_nextn_predict_layers == 0) {
      log(LogLevel::warning, "generate: the checkpoint has no MTP layers; speculative decoding is off");
    } else {
      auto created = MtpDrafter<B>::create(session.model(), {.depth = depth, .min_probability = options.mtp_min_probability});
      if (!created) return std::move(created).error();
      mtp.emplace(std::move(*created));
      drafter = &*mtp;
    }
  }
  const int max_drafts = drafter ? std::max(depth, options.drafter ? 1 : 0) : 0;

  // A greedy sampler takes each token from the argmax the backend computes where the logits are:
  // on a GPU only the ids come back (the same tokens, errors and generator draws as sample()).
  // Otherwise a sampler whose choice depends on its top_k (plus penalised tokens) takes it from
  // the backend's selection of the largest logits (the same tokens and draws as sample()).
  const bool selection = options.backend_selection && sampler.vocab_size() == config.vocab_size;
  const bool greedy_ids = selection && sampler.chooses_argmax();
  const int32_t top_count = selection && !greedy_ids ? sampler.candidates_needed() : 0;

  Generation result;
  result.stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  // Prefill. With the MTP drafter, in chunks whose hidden states extend its caches.
  if (!prompt.empty()) {
    const int64_t chunk = mtp ? session.batch() : static_cast<int64_t>(prompt.size());
    for (size_t first = 0; first < prompt.size(); first += static_cast<size_t>(chunk)) {
      const size_t n = std::min(prompt.size() - first, static_cast<size_t>(chunk));
      const bool last = first + n == prompt.size();
      auto logits = session.append(prompt.subspan(first, n),
                                   {.logits = last ? OutputRows::last : OutputRows::none,  // kept for the session's user
                                    .hidden = mtp ? OutputRows::all : OutputRows::last,
                                    .cancel = options.cancel,
                                    .argmax = last && greedy_ids ? OutputRows::last : OutputRows::none});
      if (!logits) {
        if (logits.error().code() == Errc::cancelled) {
          result.stop = StopReason::cancelled;
          return result;
        }
        return std::move(logits).error();
      }
      if (mtp) {
        if (auto s = mtp->catch_up(session, options.cancel); !s) return std::move(s).error();
      }
    }
  } else if (session.logits().rows == 0 && !(greedy_ids && !session.logits().argmax.empty()) &&
             !(top_count > 0 && session.logits().top_rows() > 0 && session.logits().top_count >= top_count)) {
    // The last pass left only what another sampler needed (an argmax, too few candidates): run
    // the last token again for its logits.
    if (session.size() == 0) {
      return Error(Errc::invalid_argument, "generate: an empty prompt continues from the session's last logits, but it has none");
    }
    const int32_t last = session.tokens().back();
    if (auto s = session.truncate(session.size() - 1); !s) return std::move(s).error();
    auto again = session.append({last}, {.cancel = options.cancel});
    if (!again) {
      if (again.error().code() == Errc::cancelled) {
        result.stop = StopReason::cancelled;
        return result;
      }
      return std::move(again).error();
    }
  }
  if (options.penalize_prompt) {  // after the prefill, which has validated the ids
    for (int32_t t : prompt) {
      if (auto s = sampler.accept(t); !s) return std::move(s).error();
    }
  }
  result.stats.prefill_seconds = detail::seconds_since(start_time);
  log(LogLevel::debug, "prefill: " + std::to_string(prompt.size()) + " tokens in " +
                           std::to_string(result.stats.prefill_seconds) + " s");

  // Choosing a token: the full sampler (or its choice from the backend's argmax or selection of the
  // largest logits), then the penalty window learns it.
  // A pass may choose tokens after the one generation stops at (max_tokens, a stop string): the
  // sampler's state after each choice of a pass with drafts is kept, so that it ends as plain
  // decoding would have left it (same draws and penalty window for whoever continues).
  std::vector<SamplerSnapshot> after_choice;
  bool keep_snapshots = false;
  auto record = [&](Expected<int32_t> t) -> Expected<int32_t> {
    if (!t) return t;
    if (auto s = sampler.accept(*t); !s) return std::move(s).error();
    if (keep_snapshots) after_choice.push_back(sampler.snapshot());
    return t;
  };
  auto choose = [&](std::span<const float> logits) { return record(sampler.sample(logits)); };
  auto choose_id = [&](int32_t argmax) { return record(sampler.take_argmax(argmax)); };
  auto choose_top = [&](std::span<const int32_t> ids, std::span<const float> logits) {
    return record(sampler.sample_top(ids, logits));
  };

  std::optional<StreamDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, DecodeOptions{.skip_special = true});
  detail::StopStringMatcher stops(options.stop_strings);
  std::string piece, release;
  bool stopped = false;
  int64_t last_position = -1;  // position of the last token to keep in the session

  // Emits one chosen token at `position`; sets the stop reason when generation ends here.
  auto emit = [&](int32_t token, int64_t position) -> Status {
    if (is_stop_token(token)) {
      result.stop = StopReason::stop_token;
      result.stop_token = token;
      last_position = position;  // the stop token belongs to the conversation
      stopped = true;
      return ok();
    }
    result.tokens.push_back(token);
    last_position = position;
    release.clear();
    bool hit = false;
    if (decoder) {
      piece.clear();
      if (auto s = decoder->feed(token, piece); !s) return s;
      hit = stops.feed(piece, release);
      result.text += release;
    }
    if (options.on_token &&
        !options.on_token(TokenEvent{token, release, static_cast<int64_t>(result.tokens.size()) - 1})) {
      result.stop = StopReason::callback;
      stopped = true;
    }
    if (hit) {
      result.stop = StopReason::stop_string;
      stopped = true;
    } else if (!stopped && static_cast<int64_t>(result.tokens.size()) >= options.max_tokens) {
      result.stop = StopReason::max_tokens;
      stopped = true;
    }
    return ok();
  };

  if (options.max_tokens == 0) {
    result.stop = StopReason::max_tokens;
    return result;
  }
  const Logits after_prompt = session.logits();
  auto first = greedy_ids && !after_prompt.argmax.empty() ? choose_id(after_prompt.argmax.back())
               : after_prompt.rows == 0 && top_count > 0
                   ? choose_top(after_prompt.top_ids_of(after_prompt.top_rows() - 1),
                                after_prompt.top_logits_of(after_prompt.top_rows() - 1))
                   : choose(after_prompt.last());
  if (!first) return std::move(first).error();
  int32_t pending = *first;
  if (auto s = emit(pending, session.size()); !s) return std::move(s).error();
  result.stats.time_to_first_token = detail::seconds_since(start_time);
  const auto decode_start = clock::now();

  std::vector<int32_t> emitted;
  while (!stopped) {
    if (cancelled()) {
      result.stop = StopReason::cancelled;
      break;
    }
    const int64_t room = session.capacity() - session.size();  // pending needs one entry
    if (room < 1) {
      result.stop = StopReason::context_full;
      break;
    }
    std::span<const int32_t> drafts;
    if (drafter) {
      // No more drafts than tokens left to emit: a pass emits up to one more than it drafted.
      const int64_t left = options.max_tokens - static_cast<int64_t>(result.tokens.size()) - 1;
      const int most = static_cast<int>(std::min<int64_t>({max_drafts, room - 1, left}));
      if (most > 0) {
        auto proposed = drafter->propose(session, pending, most, options.cancel);
        if (!proposed) {
          if (proposed.error().code() == Errc::cancelled) {
            result.stop = StopReason::cancelled;
            break;
          }
          return std::move(proposed).error();
        }
        drafts = proposed->first(std::min<size_t>(proposed->size(), static_cast<size_t>(most)));
      }
    }
    const int64_t base = session.size();  // pending's position
    emitted.clear();
    after_choice.clear();
    keep_snapshots = !drafts.empty();
    SpeculativeStats& stats = result.stats.speculative;
    auto accepted = greedy_ids      ? verify_drafts_greedy(session, pending, drafts, choose_id, emitted, stats, options.cancel)
                    : top_count > 0 ? verify_drafts_top(session, pending, drafts, top_count, choose_top, emitted, stats, options.cancel)
                                    : verify_drafts(session, pending, drafts, choose, emitted, stats, options.cancel);
    if (!accepted) {
      if (accepted.error().code() == Errc::cancelled) {
        result.stop = StopReason::cancelled;
        break;
      }
      return std::move(accepted).error();
    }
    size_t emitted_now = 0;
    for (; emitted_now < emitted.size() && !stopped; ++emitted_now) {
      if (auto s = emit(emitted[emitted_now], base + 1 + static_cast<int64_t>(emitted_now)); !s) return std::move(s).error();
    }
    if (emitted_now < emitted.size() && emitted_now <= after_choice.size()) {
      if (auto s = sampler.restore(after_choice[emitted_now - 1]); !s) return std::move(s).error();
    }
    stats.emitted -= static_cast<int64_t>(emitted.size() - emitted_now);  // chosen after the stop
    pending = emitted.back();
  }

  // Text still held back (an unfinished character, or the start of a stop string that did not
  // complete) is text after all, except after a stop string or a cancel.
  if (decoder && result.stop != StopReason::stop_string && result.stop != StopReason::cancelled) {
    piece.clear();
    decoder->flush(piece);
    release.clear();
    if (!stops.feed(piece, release)) stops.flush(release);
    result.text += release;
    if (!release.empty() && options.on_token) {
      (void)options.on_token(TokenEvent{-1, release, static_cast<int64_t>(result.tokens.size())});
    }
  }
  result.stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  result.stats.decode_seconds = detail::seconds_since(decode_start);

  // Leave the session holding the tokens up to the last kept one (see the top of this file).
  if (result.stop != StopReason::cancelled && last_position >= 0) {
    const int64_t keep = options.commit_last ? last_position + 1 : last_position;
    if (session.size() > keep) {
      if (auto s = session.truncate(keep); !s) return std::move(s).error();
    } else if (session.size() < keep && keep <= session.capacity()) {
      const int32_t last = result.stop == StopReason::stop_token ? result.stop_token : result.tokens.back();
      auto logits = session.append({last}, {.cancel = options.cancel, .argmax = greedy_ids ? OutputRows::last : OutputRows::none});
      if (!logits && logits.error().code() != Errc::cancelled) return std::move(logits).error();
    }
  }
  log(LogLevel::debug, "generated " + std::to_string(result.tokens.size()) + " tokens, stop: " +
                           std::string(to_string(result.stop)));
  return result;
}

}  // namespace mimo
