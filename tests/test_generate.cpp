// The generation loop: stop tokens, stop strings matched across token boundaries without leaking
// into the stream, max tokens, callbacks, cancellation, full context, what the session holds
// afterwards, streaming text, statistics and the log sink. On a tiny model with MiMo's real
// vocabulary and tokenizer.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>

#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

using Session = mimo::Session<mimo::Cpu>;

struct World {
  test::TempDir dir;
  mimo::Model<mimo::Cpu> model = make_model();
  mimo::Tokenizer tokenizer = *mimo::Tokenizer::load(std::filesystem::path(MIMO_SOURCE_DIR) / "assets/tokenizer");
  std::vector<int32_t> prompt = *tokenizer.encode("Once upon a time, in a land far away,");

  mimo::Model<mimo::Cpu> make_model() {
    auto c = mimo::synth::preset_tiny();
    test::synthesize(dir.path(), c, 4);
    auto m = mimo::Model<mimo::Cpu>::load(dir.path());
    REQUIRE(m.has_value());
    return *m;
  }
  Session session(int64_t context = 256) {
    auto s = model.new_session({.context = context, .backend = {.threads = 1}});
    REQUIRE(s.has_value());
    return std::move(*s);
  }
  mimo::Sampler greedy() { return *mimo::Sampler::create({.greedy = true}, static_cast<int32_t>(model.config().vocab_size)); }

  // Greedy generation of n tokens without stops.
  mimo::Generation plain(int64_t n) {
    auto s = session();
    auto sampler = greedy();
    auto g = mimo::generate(s, prompt, sampler, {.max_tokens = n, .default_stop_tokens = false}, &tokenizer);
    REQUIRE(g.has_value());
    return std::move(*g);
  }
};

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t j = 1; j < n; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace

TEST_CASE("generate: stop strings across token boundaries never leak into the stream") {
  World w;
  const auto reference = w.plain(60);
  REQUIRE(reference.text.size() > 20);
  // A stop string that starts inside one token's text and ends inside a later one.
  std::string text_so_far;
  std::vector<size_t> ends;  // byte offset where each token's text ends
  for (int32_t t : reference.tokens) {
    text_so_far += *w.tokenizer.decode(std::span<const int32_t>(&t, 1));
    ends.push_back(text_so_far.size());
  }
  size_t a = 0, b = 0;
  for (size_t i = 5; i + 2 < ends.size(); ++i) {
    if (ends[i] - ends[i - 1] >= 2 && ends[i + 1] > ends[i]) {
      a = ends[i - 1] + 1;  // inside token i
      b = ends[i + 1];      // through token i+1
      break;
    }
  }
  REQUIRE(b > a);
  const std::string stop = reference.text.substr(a, b - a);
  const size_t expected_end = reference.text.find(stop);
  CAPTURE(stop);

  auto s = w.session();
  auto sampler = w.greedy();
  std::string streamed;
  bool all_valid = true;
  auto g = mimo::generate(s, w.prompt, sampler,
                          {.max_tokens = 60, .default_stop_tokens = false, .stop_strings = {"never appears \x01", stop},
                           .on_token = [&](const mimo::TokenEvent& e) {
                             all_valid = all_valid && valid_utf8(e.text);
                             streamed += e.text;
                             return true;
                           }},
                          &w.tokenizer);
  REQUIRE(g.has_value());
  CHECK(g->stop == mimo::StopReason::stop_string);
  CHECK(g->text == reference.text.substr(0, expected_end));
  CHECK(streamed == g->text);
  CHECK(all_valid);
  CHECK(streamed.find(stop) == std::string::npos);
  // The tokens up to the one that completed the stop string.
  CHECK(std::equal(g->tokens.begin(), g->tokens.end(), reference.tokens.begin()));
}

TEST_CASE("generate: stop tokens, max tokens, and what the session holds afterwards") {
  World w;
  const auto reference = w.plain(30);
  const int32_t stop_token = reference.tokens[7];
  const auto first = static_cast<size_t>(std::find(reference.tokens.begin(), reference.tokens.end(), stop_token) -
                                         reference.tokens.begin());
  {
    auto s = w.session();
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler, {.max_tokens = 30, .stop_tokens = {stop_token}, .default_stop_tokens = false},
                            &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::stop_token);
    CHECK(g->stop_token == stop_token);
    CHECK(g->tokens == std::vector<int32_t>(reference.tokens.begin(), reference.tokens.begin() + first));
    // The session holds the prompt, the tokens and the stop token (the conversation continues).
    CHECK(s.size() == static_cast<int64_t>(w.prompt.size() + first + 1));
    CHECK(s.tokens().back() == stop_token);
  }
  {
    auto s = w.session();
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler, {.max_tokens = 10, .default_stop_tokens = false, .commit_last = false},
                            &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::max_tokens);
    CHECK(g->tokens.size() == 10);
    CHECK(s.size() == static_cast<int64_t>(w.prompt.size() + 9));  // all but the last
  }
}

TEST_CASE("generate: continuing with an empty prompt equals one longer generation") {
  World w;
  const auto reference = w.plain(24);
  auto s = w.session();
  auto sampler = w.greedy();
  auto a = mimo::generate(s, w.prompt, sampler, {.max_tokens = 10, .default_stop_tokens = false}, &w.tokenizer);
  REQUIRE(a.has_value());
  auto b = mimo::generate(s, {}, sampler, {.max_tokens = 14, .default_stop_tokens = false}, &w.tokenizer);
  REQUIRE(b.has_value());
  std::vector<int32_t> both = a->tokens;
  both.insert(both.end(), b->tokens.begin(), b->tokens.end());
  CHECK(both == reference.tokens);
  CHECK(a->text + b->text == reference.text);
  // An empty prompt on a fresh session has nothing to continue from.
  auto fresh = w.session();
  CHECK_FALSE(mimo::generate(fresh, {}, sampler, {}, &w.tokenizer).has_value());
}

TEST_CASE("generate: a greedy sampler takes the backend's argmax ids and emits what the full sampler emits") {
  World w;
  const auto V = static_cast<int32_t>(w.model.config().vocab_size);
  // The session's argmax ids: those of the logits, in one chunk or several; with no logits asked,
  // only the ids come back; the next append without them clears them.
  for (int64_t batch : {int64_t{256}, int64_t{5}}) {
    CAPTURE(batch);
    auto s = w.model.new_session({.context = 256, .batch = batch, .backend = {.threads = 1}});
    REQUIRE(s.has_value());
    auto both = s->append(w.prompt, {.logits = mimo::OutputRows::all, .argmax = mimo::OutputRows::all});
    REQUIRE(both.has_value());
    REQUIRE(both->argmax.size() == w.prompt.size());
    for (int64_t r = 0; r < both->rows; ++r) CHECK(both->argmax[static_cast<size_t>(r)] == test::argmax(both->row(r)));
    const int32_t last = both->argmax.back();
    auto t = w.model.new_session({.context = 256, .batch = batch, .backend = {.threads = 1}});
    REQUIRE(t.has_value());
    auto only = t->append(w.prompt, {.logits = mimo::OutputRows::none, .argmax = mimo::OutputRows::last});
    REQUIRE(only.has_value());
    CHECK(only->rows == 0);
    REQUIRE(only->argmax.size() == 1);
    CHECK(only->argmax[0] == last);
    CHECK(t->logits().argmax.size() == 1);
    auto next = t->append({last});
    REQUIRE(next.has_value());
    CHECK(next->argmax.empty());
    CHECK(next->rows == 1);
  }
  // generate(): a greedy sampler (argmax ids) against a greedy one with a zero bias, which runs
  // the full sampler on copied logits: the same tokens, session and generator state, with and
  // without MTP drafting, and continuing with an empty prompt from the ids alone.
  for (int depth : {0, 2}) {
    CAPTURE(depth);
    auto by_id = w.greedy();
    auto by_logits = *mimo::Sampler::create({.logit_bias = {{0, 0.0f}}, .greedy = true}, V);
    REQUIRE(by_id.chooses_argmax());
    REQUIRE_FALSE(by_logits.chooses_argmax());
    auto a = w.session(), b = w.session();
    const mimo::GenerateOptions<mimo::Cpu> o{.max_tokens = 12, .default_stop_tokens = false, .mtp_depth = depth};
    auto ga = mimo::generate(a, w.prompt, by_id, o, &w.tokenizer);
    auto gb = mimo::generate(b, w.prompt, by_logits, o, &w.tokenizer);
    REQUIRE(ga.has_value());
    REQUIRE(gb.has_value());
    CHECK(ga->tokens == gb->tokens);
    CHECK(ga->text == gb->text);
    CHECK(std::vector<int32_t>(a.tokens().begin(), a.tokens().end()) == std::vector<int32_t>(b.tokens().begin(), b.tokens().end()));
    CHECK(by_id.snapshot() == by_logits.snapshot());
    auto more_a = mimo::generate(a, {}, by_id, o, &w.tokenizer);
    auto more_b = mimo::generate(b, {}, by_logits, o, &w.tokenizer);
    REQUIRE(more_a.has_value());
    REQUIRE(more_b.has_value());
    CHECK(more_a->tokens == more_b->tokens);
    CHECK(by_id.snapshot() == by_logits.snapshot());
  }
  // The prompt's logits stay on the host for whoever continues: a greedy generate of 0 tokens,
  // then a sampled one from an empty prompt.
  {
    auto s = w.session();
    auto greedy = w.greedy();
    REQUIRE(mimo::generate(s, w.prompt, greedy, {.max_tokens = 0}).has_value());
    CHECK(s.logits().rows == 1);
    auto warm = *mimo::Sampler::create({.temperature = 0.8f, .seed = 3}, V);
    auto g = mimo::generate(s, {}, warm, {.max_tokens = 3, .default_stop_tokens = false});
    REQUIRE(g.has_value());
    CHECK(g->tokens.size() == 3);
    auto t = w.session();
    REQUIRE(mimo::generate(t, w.prompt, greedy, {.max_tokens = 4, .default_stop_tokens = false, .mtp_depth = 0, .commit_last = false})
                .has_value());
    CHECK(t.logits().rows == 0);
    CHECK(mimo::generate(t, {}, greedy, {.max_tokens = 3, .default_stop_tokens = false}).has_value());  // the ids suffice
    // A sampler that needs logits after a pass that kept only ids: the last token runs again for
    // them, and the tokens are those of a session that kept the logits.
    auto u = w.session();
    REQUIRE(mimo::generate(t, {}, greedy, {.max_tokens = 4, .default_stop_tokens = false, .mtp_depth = 0, .commit_last = false})
                .has_value());
    REQUIRE(mimo::generate(u, std::vector<int32_t>(t.tokens().begin(), t.tokens().end()), greedy, {.max_tokens = 0}).has_value());
    CHECK(u.logits().rows == 1);
    CHECK(t.logits().rows == 0);
    auto warm_u = *mimo::Sampler::create({.temperature = 0.8f, .seed = 3}, V);
    auto warm_t = *mimo::Sampler::create({.temperature = 0.8f, .seed = 3}, V);
    auto h = mimo::generate(t, {}, warm_t, {.max_tokens = 3, .default_stop_tokens = false, .penalize_prompt = false});
    auto k = mimo::generate(u, {}, warm_u, {.max_tokens = 3, .default_stop_tokens = false, .penalize_prompt = false});
    REQUIRE(h.has_value());
    REQUIRE(k.has_value());
    CHECK(h->tokens == k->tokens);
  }
  // A sampler made for another vocabulary is refused as sample() refuses it, ids or not.
  {
    auto s = w.session();
    auto wrong = *mimo::Sampler::create({.greedy = true}, V + 10);
    CHECK_FALSE(mimo::generate(s, w.prompt, wrong, {.max_tokens = 2}).has_value());
  }
}

// The top `count` ids of a row (logit descending, then lower id), ascending: the order a
// sampler ranks by, from a sort.
std::vector<int32_t> sorted_top(std::span<const float> row, int32_t count) {
  std::vector<int32_t> order(row.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[static_cast<size_t>(a)] > row[static_cast<size_t>(b)]; });
  order.resize(static_cast<size_t>(count));
  std::sort(order.begin(), order.end());
  return order;
}

TEST_CASE("generate: a sampler with top_k takes the backend's selection of the largest logits and emits what the full sampler emits") {
  World w;
  const auto V = static_cast<int32_t>(w.model.config().vocab_size);
  const auto vec = [](auto span) { return std::vector(span.begin(), span.end()); };
  // The session's selection: per row, the top_count largest of its logits, in one chunk or in
  // chunks of 5; with no logits asked only the selection comes back; copy() keeps it; the next
  // append without it clears it.
  for (int64_t batch : {int64_t{256}, int64_t{5}}) {
    CAPTURE(batch);
    auto s = w.model.new_session({.context = 256, .batch = batch, .backend = {.threads = 1}});
    REQUIRE(s.has_value());
    auto both = s->append(w.prompt, {.logits = mimo::OutputRows::all, .top = mimo::OutputRows::all, .top_count = 50});
    REQUIRE(both.has_value());
    REQUIRE(both->top_rows() == both->rows);
    for (int64_t r = 0; r < both->rows; ++r) {
      CAPTURE(r);
      const std::vector<int32_t> ids = vec(both->top_ids_of(r));
      CHECK(ids == sorted_top(both->row(r), 50));
      for (size_t j = 0; j < ids.size(); ++j) CHECK(both->top_logits_of(r)[j] == both->row(r)[static_cast<size_t>(ids[j])]);
    }
    const std::vector<int32_t> last_ids = vec(both->top_ids_of(both->rows - 1));
    auto t = w.model.new_session({.context = 256, .batch = batch, .backend = {.threads = 1}});
    REQUIRE(t.has_value());
    auto only = t->append(w.prompt, {.logits = mimo::OutputRows::none, .top = mimo::OutputRows::last, .top_count = 50});
    REQUIRE(only.has_value());
    CHECK(only->rows == 0);
    REQUIRE(only->top_rows() == 1);
    CHECK(vec(only->top_ids_of(0)) == last_ids);
    auto copied = t->copy();
    REQUIRE(copied.has_value());
    CHECK(vec(copied->logits().top_ids) == last_ids);
    auto next = t->append({last_ids[0]});
    REQUIRE(next.has_value());
    CHECK(next->top_rows() == 0);
    CHECK(next->top_ids.empty());
  }
  // A top_count outside [1, min(vocab, max_top_count)] is refused, and the session is unchanged.
  {
    auto s = w.session();
    for (int32_t count : {0, -1, mimo::max_top_count + 1}) {
      auto r = s.append(w.prompt, {.top = mimo::OutputRows::last, .top_count = count});
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().describe().find("top_count") != std::string::npos);
      CHECK(s.size() == 0);
    }
    CHECK(s.append(w.prompt, {.top = mimo::OutputRows::none, .top_count = 0}).has_value());  // no rows: no count needed
    // The backend op itself refuses such a count at the read, and selects again afterwards.
    std::vector<float> row = {3.0f, 1.0f, 2.0f, 5.0f, 4.0f};
    const mimo::Rows rows{row.data(), 1, 5, 5};
    std::vector<int32_t> ids(2);
    std::vector<float> values(2);
    for (int32_t count : {0, 6}) {
      mimo::Cpu::top_rows(s.context(), rows, count);
      const mimo::Status read = mimo::Cpu::read_top(s.context(), ids, values);
      REQUIRE_FALSE(read);
      CHECK(read.error().describe().find("count " + std::to_string(count)) != std::string::npos);
    }
    mimo::Cpu::top_rows(s.context(), rows, 2);
    REQUIRE(mimo::Cpu::read_top(s.context(), ids, values));
    CHECK(ids == std::vector<int32_t>{3, 4});
  }
  // generate() with the selection against generate() copying every logit: the same tokens,
  // session and generator state, with and without MTP drafting, with penalties, and continuing
  // from an empty prompt. commit_last = false leaves the last pass's outputs to show which path
  // ran: the selection alone, or logits.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<mimo::SamplerOptions> configurations = {
      {.temperature = 0.9f, .top_k = 20, .top_p = 0.9f, .seed = 5},
      {.temperature = 1.5f, .top_k = 8, .repeat_penalty = 1.3f, .presence_penalty = 0.5f, .penalty_window = 16, .seed = 6},
      {.repeat_penalty = 1.2f, .logit_bias = {{13, -inf}}, .greedy = true},
  };
  for (size_t config = 0; config < configurations.size(); ++config) {
    for (int depth : {0, 2}) {
      CAPTURE(config);
      CAPTURE(depth);
      auto by_top = *mimo::Sampler::create(configurations[config], V);
      auto by_logits = *mimo::Sampler::create(configurations[config], V);
      REQUIRE(by_top.candidates_needed() > 0);
      auto a = w.session(), b = w.session();
      mimo::GenerateOptions<mimo::Cpu> o{.max_tokens = 12, .default_stop_tokens = false, .mtp_depth = depth, .commit_last = false};
      auto ga = mimo::generate(a, w.prompt, by_top, o, &w.tokenizer);
      o.backend_selection = false;
      auto gb = mimo::generate(b, w.prompt, by_logits, o, &w.tokenizer);
      REQUIRE(ga.has_value());
      REQUIRE(gb.has_value());
      CHECK(ga->tokens == gb->tokens);
      CHECK(ga->text == gb->text);
      CHECK(vec(a.tokens()) == vec(b.tokens()));
      CHECK(by_top.snapshot() == by_logits.snapshot());
      CHECK(a.logits().rows == 0);
      CHECK(a.logits().top_rows() >= 1);
      CHECK(b.logits().rows >= 1);
      CHECK(b.logits().top_rows() == 0);
      o.commit_last = true;
      auto more_b = mimo::generate(b, {}, by_logits, o, &w.tokenizer);
      o.backend_selection = true;
      auto more_a = mimo::generate(a, {}, by_top, o, &w.tokenizer);  // from the selection alone
      REQUIRE(more_a.has_value());
      REQUIRE(more_b.has_value());
      CHECK(more_a->tokens == more_b->tokens);
      CHECK(by_top.snapshot() == by_logits.snapshot());
    }
  }
}

TEST_CASE("generate: continuing from an empty prompt after a stop in the middle of a pass, after save and restore, "
          "or with another sampler, gives what plain decoding gives") {
  World w;
  const auto V = static_cast<int32_t>(w.model.config().vocab_size);
  const int64_t total = 16;
  // Each way of choosing: the backend's argmax, its selection of the largest logits, every logit.
  struct Way {
    const char* name;
    mimo::SamplerOptions sampler;
    bool selection;
  };
  const std::vector<Way> ways = {{"argmax", {.greedy = true}, true},
                                 {"top selection", {.temperature = 1.1f, .top_k = 30, .seed = 7}, true},
                                 {"logits", {.temperature = 1.1f, .top_k = 30, .seed = 7}, false}};
  // Plain decoding (no drafts) of `first_run` tokens with `way`, then `total - first_run` more
  // with `then` from an empty prompt: the tokens, and the second sampler's state.
  const auto plain = [&](const Way& way, const Way& then, int64_t first_run) {
    auto s = w.session();
    auto a_sampler = *mimo::Sampler::create(way.sampler, V);
    auto a = mimo::generate(s, w.prompt, a_sampler, {.max_tokens = first_run, .default_stop_tokens = false, .mtp_depth = 0,
                                                     .backend_selection = way.selection});
    REQUIRE(a.has_value());
    auto b_sampler = *mimo::Sampler::create(then.sampler, V);
    auto b = mimo::generate(s, {}, b_sampler, {.max_tokens = total - first_run, .default_stop_tokens = false, .mtp_depth = 0,
                                               .backend_selection = then.selection});
    REQUIRE(b.has_value());
    std::vector<int32_t> tokens = a->tokens;
    tokens.insert(tokens.end(), b->tokens.begin(), b->tokens.end());
    return std::pair{tokens, b_sampler.snapshot()};
  };
  for (size_t i = 0; i < ways.size(); ++i) {
    const Way& way = ways[i];
    CAPTURE(way.name);
    auto reference_sampler = *mimo::Sampler::create(way.sampler, V);
    auto r = w.session();
    auto reference = mimo::generate(r, w.prompt, reference_sampler,
                                    {.max_tokens = total, .default_stop_tokens = false, .mtp_depth = 0, .backend_selection = way.selection});
    REQUIRE(reference.has_value());
    // Drafts of the known continuation, 4 a pass; the callback stops the run in the middle of a
    // pass (the session then drops the rows after the last token it keeps, and the sampler the
    // choices after it).
    for (int64_t first_run : {5, 7, 9}) {
      for (bool through_save : {false, true}) {
        CAPTURE(first_run);
        CAPTURE(through_save);
        auto sampler = *mimo::Sampler::create(way.sampler, V);
        mimo::ReplayDrafter<mimo::Cpu> replay(reference->tokens, static_cast<int64_t>(w.prompt.size()), 1.0, V);
        auto s = w.session();
        const mimo::GenerateOptions<mimo::Cpu> first{
            .max_tokens = total, .default_stop_tokens = false, .mtp_depth = 4, .drafter = &replay,
            .backend_selection = way.selection,
            .on_token = [&](const mimo::TokenEvent& e) { return e.index + 1 < first_run; }};
        auto a = mimo::generate(s, w.prompt, sampler, first);
        REQUIRE(a.has_value());
        REQUIRE(a->stop == mimo::StopReason::callback);
        REQUIRE(static_cast<int64_t>(a->tokens.size()) == first_run);
        CHECK(a->stats.speculative.emitted + 1 == first_run);  // the first token comes from the prompt's pass
        auto t = w.session();
        if (through_save) {
          std::vector<std::byte> state;
          REQUIRE(s.save(state).has_value());
          REQUIRE(t.restore(state).has_value());
        }
        mimo::Session<mimo::Cpu>& continued = through_save ? t : s;
        // With the same sampler: one uninterrupted run.
        auto copy = continued.copy();
        REQUIRE(copy.has_value());
        auto b = mimo::generate(continued, {}, sampler,
                                {.max_tokens = total - first_run, .default_stop_tokens = false, .mtp_depth = 0,
                                 .penalize_prompt = false, .backend_selection = way.selection});
        REQUIRE_MESSAGE(b.has_value(), (b ? "" : b.error().describe()));
        std::vector<int32_t> tokens = a->tokens;
        tokens.insert(tokens.end(), b->tokens.begin(), b->tokens.end());
        CHECK(tokens == reference->tokens);
        CHECK(sampler.snapshot() == reference_sampler.snapshot());  // the same draws and window
        // With the next way's sampler (whose outputs the last pass may not have brought back).
        const Way& then = ways[(i + 1) % ways.size()];
        auto other = *mimo::Sampler::create(then.sampler, V);
        auto c = mimo::generate(*copy, {}, other, {.max_tokens = total - first_run, .default_stop_tokens = false, .mtp_depth = 0,
                                                   .backend_selection = then.selection});
        REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().describe()));
        std::vector<int32_t> switched = a->tokens;
        switched.insert(switched.end(), c->tokens.begin(), c->tokens.end());
        const auto [expected, expected_state] = plain(way, then, first_run);
        CHECK(switched == expected);
        CHECK(other.snapshot() == expected_state);
      }
    }
  }
}

TEST_CASE("generate: callback stop, cancellation, full context") {
  World w;
  {
    auto s = w.session();
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler,
                            {.max_tokens = 50, .default_stop_tokens = false,
                             .on_token = [](const mimo::TokenEvent& e) { return e.index < 2; }},
                            &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::callback);
    CHECK(g->tokens.size() == 3);
  }
  {
    std::atomic<bool> cancel{false};
    auto s = w.session();
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler,
                            {.max_tokens = 50, .default_stop_tokens = false,
                             .on_token = [&](const mimo::TokenEvent& e) {
                               if (e.index == 4) cancel = true;  // e.g. from the game thread
                               return true;
                             },
                             .cancel = &cancel},
                            &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::cancelled);
    CHECK(g->tokens.size() >= 5);
    CHECK(g->tokens.size() <= 7);  // at most one more step (a verification) after the cancel
  }
  {
    std::atomic<bool> cancel{true};  // cancelled before the prompt is processed
    auto s = w.session();
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler, {.cancel = &cancel}, &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::cancelled);
    CHECK(g->tokens.empty());
    CHECK(s.size() == 0);
  }
  {
    auto s = w.session(static_cast<int64_t>(w.prompt.size()) + 5);
    auto sampler = w.greedy();
    auto g = mimo::generate(s, w.prompt, sampler, {.max_tokens = 50, .default_stop_tokens = false}, &w.tokenizer);
    REQUIRE(g.has_value());
    CHECK(g->stop == mimo::StopReason::context_full);
    CHECK(g->tokens.size() == 6);  // 5 fed back, the 6th chosen from the last logits
    CHECK(s.size() == s.capacity());
  }
}

TEST_CASE("generate: statistics, speculative decoding on by default, and the log sink") {
  World w;
  auto s = w.session();
  auto sampler = w.greedy();
  std::vector<std::string> lines;
  auto g = mimo::generate(s, w.prompt, sampler,
                          {.max_tokens = 20, .default_stop_tokens = false,
                           .log = [&](mimo::LogLevel, std::string_view line) { lines.emplace_back(line); }},
                          &w.tokenizer);
  REQUIRE(g.has_value());
  CHECK(g->stats.prompt_tokens == static_cast<int64_t>(w.prompt.size()));
  CHECK(g->stats.generated_tokens == 20);
  CHECK(g->stats.time_to_first_token > 0.0);
  CHECK(g->stats.prefill_tokens_per_second() > 0.0);
  CHECK(g->stats.decode_tokens_per_second() > 0.0);
  // The tiny preset has one MTP layer: drafting is on unless asked otherwise.
  CHECK(g->stats.speculative.drafted > 0);
  CHECK(g->stats.speculative.passes > 0);
  CHECK(g->stats.speculative.emitted >= 19);
  CHECK(lines.size() >= 2);
  // And the same tokens without it.
  auto s2 = w.session();
  auto sampler2 = w.greedy();
  auto g2 = mimo::generate(s2, w.prompt, sampler2, {.max_tokens = 20, .default_stop_tokens = false, .mtp_depth = 0}, &w.tokenizer);
  REQUIRE(g2.has_value());
  CHECK(g2->tokens == g->tokens);
  CHECK(g2->stats.speculative.drafted == 0);
  // Bad options are errors.
  CHECK_FALSE(mimo::generate(s2, w.prompt, sampler2, {.max_tokens = -1}, &w.tokenizer).has_value());
  CHECK_FALSE(mimo::generate(s2, w.prompt, sampler2, {.stop_strings = {"x"}}, nullptr).has_value());
}

TEST_CASE("generate: default stop tokens come from the config and the tokenizer") {
  World w;
  auto s = w.session();
  auto im_end = w.tokenizer.token_id("<|im_end|>");
  REQUIRE(im_end.has_value());
  // A logit bias makes <|im_end|> the certain next token.
  auto sampler = *mimo::Sampler::create({.logit_bias = {{.token = *im_end, .bias = 1e6f}}, .greedy = true},
                                        static_cast<int32_t>(w.model.config().vocab_size));
  auto g = mimo::generate(s, w.prompt, sampler, {.max_tokens = 10}, &w.tokenizer);
  REQUIRE(g.has_value());
  CHECK(g->stop == mimo::StopReason::stop_token);
  CHECK(g->stop_token == *im_end);
  CHECK(g->tokens.empty());
  CHECK(g->text.empty());
}
