// Speculative decoding is lossless: with the MTP drafter (depths 1-4) or a replay drafter forced
// right or wrong, generation emits exactly the tokens plain decoding emits (greedy, and sampling
// with the same seed); the distribution of sampled tokens matches the model's (chi-square); and
// the drafter's MTP logits equal the fixture's.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

using Model = mimo::Model<mimo::Cpu>;
using Session = mimo::Session<mimo::Cpu>;

Model load(const std::filesystem::path& dir) {
  auto m = Model::load(dir);
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  return *m;
}

// One thread: these models are tiny, and thread hand-offs would cost more than they save.
std::shared_ptr<mimo::cpu::ThreadPool> single_thread() {
  static const auto pool = *mimo::cpu::ThreadPool::create(1);
  return pool;
}

Session session_of(const Model& m, int64_t context = 512, int64_t batch = 64, bool exact = false) {
  auto s = m.new_session({.context = context,
                          .batch = batch,
                          .backend = {.pool = single_thread(), .exact = exact, .kv_cache = mimo::cpu::KvType::f32}});
  REQUIRE(s.has_value());
  return std::move(*s);
}

std::vector<int32_t> run(const Model& m, const std::vector<int32_t>& prompt, int64_t n, mimo::SamplerOptions sampling,
                         int depth, mimo::Drafter<mimo::Cpu>* drafter = nullptr,
                         mimo::SpeculativeStats* stats = nullptr) {
  auto s = session_of(m);
  auto sampler = mimo::Sampler::create(sampling, static_cast<int32_t>(m.config().vocab_size));
  REQUIRE(sampler.has_value());
  auto g = mimo::generate(s, prompt, *sampler,
                          {.max_tokens = n, .default_stop_tokens = false, .mtp_depth = depth, .drafter = drafter});
  REQUIRE_MESSAGE(g.has_value(), (g ? "" : g.error().describe()));
  CHECK(g->stop == mimo::StopReason::max_tokens);
  CHECK(static_cast<int64_t>(g->tokens.size()) == n);
  // The session holds the prompt and every generated token.
  CHECK(s.size() == static_cast<int64_t>(prompt.size()) + n);
  if (stats) *stats = g->stats.speculative;
  return g->tokens;
}

std::vector<int32_t> fixture_prompt() {
  simdjson::dom::parser parser;
  simdjson::padded_string text(test::read_text(test::tiny_fixture() / "prompt.json"));
  simdjson::dom::element root = parser.parse(text).value_unsafe();
  simdjson::dom::array ids = root["token_ids"].get_array().value_unsafe();
  std::vector<int32_t> out;
  for (simdjson::dom::element e : ids) out.push_back(static_cast<int32_t>(e.get_int64().value_unsafe()));
  return out;
}

}  // namespace

TEST_CASE("speculative: greedy with the MTP drafter equals plain greedy, depths 1-4, 200 tokens") {
  struct Shape {
    const char* name;
    mimo::ModelConfig config;
  };
  std::vector<Shape> shapes = {{"one MTP layer", test::small_config(300, 64, 2, 4, 2, 16, 96, 1)},
                               {"two MTP layers", test::small_config(256, 64, 2, 4, 1, 16, 80, 2)}};
  test::TempDir dir;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string name = shapes[i].name;
    CAPTURE(name);
    const auto path = dir / std::to_string(i);
    test::synthesize(path, shapes[i].config, 21 + i);
    const Model m = load(path);
    const auto prompt = test::random_tokens(30, shapes[i].config.vocab_size, 9);
    const auto plain = run(m, prompt, 200, {.greedy = true}, 0);
    for (int depth = 1; depth <= 4; ++depth) {
      CAPTURE(depth);
      mimo::SpeculativeStats stats;
      CHECK(run(m, prompt, 200, {.greedy = true}, depth, nullptr, &stats) == plain);
      CHECK(stats.drafted > 0);
      MESSAGE("depth ", depth, ": drafted ", stats.drafted, ", accepted ", stats.accepted);
    }
  }
  // The fixture, whose random weights accept almost nothing: still exactly the same tokens.
  const Model fixture = load(test::tiny_fixture());
  const auto prompt = fixture_prompt();
  const auto plain = run(fixture, prompt, 200, {.greedy = true}, 0);
  for (int depth = 1; depth <= 4; ++depth) CHECK(run(fixture, prompt, 200, {.greedy = true}, depth) == plain);
}

TEST_CASE("speculative: sampling with the same seed emits the same tokens with and without drafting") {
  const auto config = test::small_config(300, 64, 2, 4, 2, 16, 96, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 5);
  const Model m = load(dir.path());
  const auto prompt = test::random_tokens(12, config.vocab_size, 2);
  const mimo::SamplerOptions sampling{.temperature = 0.9f, .top_k = 50, .top_p = 0.9f, .repeat_penalty = 1.1f, .seed = 77};
  const auto plain = run(m, prompt, 120, sampling, 0);
  for (int depth = 1; depth <= 3; ++depth) CHECK(run(m, prompt, 120, sampling, depth) == plain);
  // A replay drafter that knows the answer (everything accepted) and one that is always wrong.
  for (double accuracy : {1.0, 0.5, 0.0}) {
    CAPTURE(accuracy);
    mimo::ReplayDrafter<mimo::Cpu> replay(plain, static_cast<int64_t>(prompt.size()), accuracy,
                                          static_cast<int32_t>(config.vocab_size));
    mimo::SpeculativeStats stats;
    auto s = session_of(m);
    auto sampler = mimo::Sampler::create(sampling, static_cast<int32_t>(config.vocab_size));
    auto g = mimo::generate(s, prompt, *sampler,
                            {.max_tokens = 120, .default_stop_tokens = false, .mtp_depth = 3, .drafter = &replay});
    REQUIRE(g.has_value());
    CHECK(g->tokens == plain);
    stats = g->stats.speculative;
    if (accuracy == 1.0) {
      CHECK(stats.acceptance_rate() == 1.0);
      CHECK(stats.tokens_per_pass() > 3.5);  // 3 drafts + 1 per pass, but the end is shorter
    }
    if (accuracy == 0.0) CHECK(stats.accepted == 0);
  }
}

TEST_CASE("speculative: the distribution of the first two sampled tokens is the model's (chi-square)") {
  // A tiny vocabulary so the joint distribution of two tokens can be enumerated exactly.
  auto config = test::small_config(12, 32, 1, 2, 1, 16, 48, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 8);
  const Model m = load(dir.path());
  const int32_t V = static_cast<int32_t>(config.vocab_size);
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  const float temperature = 1.5f;  // a flat distribution: every cell has mass

  // Exact joint p(t1, t2) from the model's logits and the sampler's own distribution.
  std::vector<double> exact(static_cast<size_t>(V * V), 0.0);
  {
    auto sampler = mimo::Sampler::create({.temperature = temperature}, V);
    auto s = session_of(m);
    auto l1 = s.append(prompt);
    REQUIRE(l1.has_value());
    auto p1 = sampler->distribution(l1->last());
    REQUIRE(p1.has_value());
    for (int32_t a = 0; a < V; ++a) {
      REQUIRE(s.truncate(static_cast<int64_t>(prompt.size())).has_value());
      auto l2 = s.append({a});
      REQUIRE(l2.has_value());
      auto p2 = sampler->distribution(l2->last());
      REQUIRE(p2.has_value());
      for (int32_t b = 0; b < V; ++b) exact[a * V + b] = p1->probability(a) * p2->probability(b);
    }
  }

  struct Variant {
    const char* name;
    double accuracy;  // replay drafter: proposes token 0 then 1 ... corrupted with 1 - accuracy
    int depth;
  };
  const int runs = 6000;
  for (const Variant& v : {Variant{"MTP drafter", -1.0, 2}, Variant{"replay, always wrong", 0.0, 2},
                           Variant{"replay, often right", 1.0, 2}, Variant{"no drafter", -2.0, 0}}) {
    const std::string name = v.name;
    CAPTURE(name);
    std::vector<int> counts(exact.size(), 0);
    for (int r = 0; r < runs; ++r) {
      auto sampler = mimo::Sampler::create({.temperature = temperature, .seed = static_cast<uint64_t>(1000 + r)}, V);
      auto s = session_of(m, 64, 16);
      // "Often right": propose the most likely pair, which sampling picks often.
      mimo::ReplayDrafter<mimo::Cpu> replay({0, 0, 0}, static_cast<int64_t>(prompt.size()), std::max(0.0, v.accuracy), V,
                                            static_cast<uint64_t>(r + 1));
      mimo::GenerateOptions<mimo::Cpu> o{.max_tokens = 2, .default_stop_tokens = false, .mtp_depth = v.depth,
                                         .drafter = v.accuracy >= 0 ? &replay : nullptr, .penalize_prompt = false,
                                         .commit_last = false};
      auto g = mimo::generate(s, prompt, *sampler, o);
      REQUIRE(g.has_value());
      REQUIRE(g->tokens.size() == 2);
      counts[g->tokens[0] * V + g->tokens[1]]++;
    }
    // Chi-square over cells with expected count >= 5, the rest pooled.
    double chi2 = 0.0, pooled_expected = 0.0, pooled_observed = 0.0;
    int cells = 0;
    for (size_t i = 0; i < exact.size(); ++i) {
      const double e = exact[i] * runs;
      if (e < 5.0) {
        pooled_expected += e;
        pooled_observed += counts[i];
        continue;
      }
      chi2 += (counts[i] - e) * (counts[i] - e) / e;
      ++cells;
    }
    if (pooled_expected > 0) {
      chi2 += (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) / pooled_expected;
      ++cells;
    }
    const int dof = cells - 1;
    // Wilson-Hilferty: the chi-square value at p = 0.001 for dof degrees of freedom.
    const double z = 3.09, k = dof;
    const double critical = k * std::pow(1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k)), 3.0);
    MESSAGE(name, ": chi2 = ", chi2, " with ", dof, " dof (critical at p=0.001: ", critical, ")");
    CHECK(chi2 < critical);
  }
}

TEST_CASE("speculative: the MTP drafter's logits equal the fixture's at every position") {
  const Model m = load(test::tiny_fixture());
  const auto prompt = fixture_prompt();
  const auto expected = test::read_f32(test::tiny_fixture() / "mtp_logits.f32");
  const int64_t V = m.config().vocab_size;
  auto drafter = mimo::MtpDrafter<mimo::Cpu>::create(m, {.depth = 1});
  REQUIRE(drafter.has_value());
  auto s = session_of(m, 512, 64, /*exact=*/true);  // fp32 products, to compare at 1e-4
  double worst = 0.0;
  // Feed the prompt token by token; at each position t the drafter proposes from (h_t, x_{t+1}).
  for (size_t t = 0; t + 1 < prompt.size(); ++t) {
    REQUIRE(s.append({prompt[t]}).has_value());
    auto drafts = drafter->propose(s, prompt[t + 1], 1, nullptr);
    REQUIRE(drafts.has_value());
    REQUIRE(drafts->size() == 1);
    const auto row = s.mtp_logits().last();
    for (int64_t v = 0; v < V; ++v) worst = std::max(worst, static_cast<double>(std::abs(row[v] - expected[t * V + v])));
    CHECK((*drafts)[0] == test::argmax(std::span<const float>(expected).subspan(t * V, V)));
  }
  MESSAGE("max |MTP logit - fixture| = ", worst);
  CHECK(worst <= 1e-4);
  // Its step-0 cache now holds every position 0..T-2, each made with the right token.
  CHECK(s.mtp_size(0) == static_cast<int64_t>(prompt.size()) - 1);

  // The same through catch_up after a one-call prefill (fp32, to compare at 1e-4), then one
  // proposal at the end.
  auto s2 = session_of(m, 512, 64, /*exact=*/true);
  REQUIRE(s2.append(std::span<const int32_t>(prompt).first(prompt.size() - 1), {.hidden = mimo::OutputRows::all}).has_value());
  REQUIRE(drafter->catch_up(s2).has_value());
  CHECK(s2.mtp_size(0) == static_cast<int64_t>(prompt.size()) - 2);
  auto d = drafter->propose(s2, prompt.back(), 1, nullptr);
  REQUIRE(d.has_value());
  const auto row = s2.mtp_logits().last();
  const size_t t = prompt.size() - 2;
  double w2 = 0.0;
  for (int64_t v = 0; v < V; ++v) w2 = std::max(w2, static_cast<double>(std::abs(row[v] - expected[t * V + v])));
  CHECK(w2 <= 1e-4);
}

TEST_CASE("speculative: MTP entries follow truncation and replaced tokens") {
  const auto config = test::small_config(300, 64, 2, 4, 2, 16, 96, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 3);
  const Model m = load(dir.path());
  auto drafter = mimo::MtpDrafter<mimo::Cpu>::create(m, {.depth = 2});
  REQUIRE(drafter.has_value());
  auto s = session_of(m);
  const auto prompt = test::random_tokens(10, config.vocab_size, 4);
  REQUIRE(s.append(prompt, {.hidden = mimo::OutputRows::all}).has_value());
  REQUIRE(drafter->catch_up(s).has_value());
  CHECK(s.mtp_size(0) == 9);  // positions 0..8 (token 9 is the last one known)
  CHECK(s.mtp_size(1) == 8);
  auto d = drafter->propose(s, 17, 2, nullptr);
  REQUIRE(d.has_value());
  CHECK(s.mtp_size(0) == 10);  // the row at position 9 combined pending 17: one ahead
  CHECK(s.mtp_size(1) == 9);   // position 8 combined 17 too; the draft row (9) was dropped again
  // Appending a different token than 17 invalidates the entries that ran ahead.
  REQUIRE(s.append({18}).has_value());
  CHECK(s.mtp_size(0) == 9);
  CHECK(s.mtp_size(1) == 8);
  // Truncation drops entries that would run more than one token ahead.
  REQUIRE(s.truncate(6).has_value());
  CHECK(s.mtp_positions(0).back() == 5);  // entry 5 combined x_6: one ahead, kept until checked
  CHECK(s.mtp_positions(1).back() == 4);
  REQUIRE(s.append({prompt[6]}).has_value());  // the same token: entry 5 stays
  CHECK(s.mtp_positions(0).back() == 5);
}

TEST_CASE("speculative: a deeper draft step matches the reference chain (two MTP layers, depth 3)") {
  const auto config = test::small_config(256, 64, 2, 4, 2, 16, 80, 2);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 12);
  auto ck = mimo::Checkpoint::open(dir.path());
  REQUIRE(ck.has_value());
  test::Reference ref(*ck);
  const Model m = load(dir.path());
  const auto tokens = test::random_tokens(14, config.vocab_size, 6);  // x_0..x_12 in the session, x_13 pending
  const int64_t S = 13;
  auto drafter = mimo::MtpDrafter<mimo::Cpu>::create(m, {.depth = 3});
  REQUIRE(drafter.has_value());
  auto s = session_of(m, 512, 64, /*exact=*/true);  // fp32 products, to compare at 1e-4
  // Prefill in two chunks with a catch-up after each, as generate does.
  for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 7}, {7, 6}}) {
    REQUIRE(s.append(std::span<const int32_t>(tokens).subspan(first, n), {.hidden = mimo::OutputRows::all}).has_value());
    REQUIRE(drafter->catch_up(s).has_value());
  }
  auto drafts = drafter->propose(s, tokens[S], 3, nullptr);
  REQUIRE(drafts.has_value());
  REQUIRE(drafts->size() == 3);
  const std::vector<float> last(s.mtp_logits().last().begin(), s.mtp_logits().last().end());

  // Reference: the steps chained over positions 0..S-1, teacher-forced on x_1..x_S and then the
  // drafts d_1, d_2 in the slots of the unknown tokens.
  std::vector<int32_t> known(tokens.begin(), tokens.end());
  known.push_back((*drafts)[0]);
  known.push_back((*drafts)[1]);
  test::Mat logits, hidden;
  ref.forward(std::vector<int32_t>(tokens.begin(), tokens.begin() + S), logits, hidden);
  test::Mat prev = hidden, out, step_logits;
  for (int k = 0; k < 3; ++k) {
    std::vector<int32_t> next(known.begin() + 1 + k, known.begin() + 1 + k + S);
    ref.mtp(k, prev, next, out, step_logits);
    // Step k proposes d_{k+1} from its row at S-1.
    CHECK((*drafts)[k] == std::max_element(step_logits[S - 1].begin(), step_logits[S - 1].end()) - step_logits[S - 1].begin());
    prev = out;
  }
  // The drafter's last MTP logits are step 2's at S-1.
  CHECK(test::max_abs_diff(last, step_logits[S - 1]) <= 1e-4 * std::max(1.0, test::max_abs(step_logits[S - 1])));
  // Teacher-forced caches: step k holds positions 0..S-1-k (its row at S-1 combined a draft and was dropped).
  CHECK(s.mtp_size(0) == S);
  CHECK(s.mtp_size(1) == S - 1);
  CHECK(s.mtp_size(2) == S - 2);
}

// The MTP step-0 logits after `prompt` (its last token is the one the step embeds).
std::vector<float> first_mtp_logits(const Model& m, const std::vector<int32_t>& prompt) {
  auto s = session_of(m);
  REQUIRE(s.append(std::span<const int32_t>(prompt).first(prompt.size() - 1), {.hidden = mimo::OutputRows::all}).has_value());
  auto d = mimo::MtpDrafter<mimo::Cpu>::create(m);
  REQUIRE(d.has_value());
  REQUIRE(d->propose(s, prompt.back(), 1, nullptr).has_value());
  const auto logits = s.mtp_logits();
  CHECK(logits.vocab == m.draft_vocab());
  const auto row = logits.last();
  return std::vector<float>(row.begin(), row.end());
}

TEST_CASE("speculative: a quantized draft head or MTP layers change the drafts' logits a little and the output not at all") {
  const auto config = test::small_config(300, 64, 2, 4, 2, 16, 96, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 31);
  const Model exact_head = load(dir.path());
  const auto prompt = test::random_tokens(20, config.vocab_size, 4);
  const auto plain = run(exact_head, prompt, 120, {.greedy = true}, 0);
  auto mtp_logits = [&](const Model& m) { return first_mtp_logits(m, prompt); };
  const auto reference = mtp_logits(exact_head);
  double scale = 0.0;
  for (float v : reference) scale = std::max(scale, static_cast<double>(std::abs(v)));
  using mimo::QuantType;
  struct Case {
    QuantType head, layers;
    double bound;  // of the largest MTP logit error, relative to the largest logit
  };
  for (const Case c : {Case{QuantType::q8, QuantType::none, 0.02}, Case{QuantType::q4, QuantType::none, 0.15},
                       Case{QuantType::none, QuantType::q8, 0.02}, Case{QuantType::none, QuantType::q4, 0.15},
                       Case{QuantType::q4, QuantType::q8, 0.15}}) {
    CAPTURE(mimo::to_string(c.head));
    CAPTURE(mimo::to_string(c.layers));
    const mimo::LoadOptions options{.draft_head = c.head, .draft_layers = c.layers};
    auto m = Model::load(dir.path(), options);
    REQUIRE(m.has_value());
    // The estimate before loading plans the copies this load made: the same weight bytes as the
    // loaded model's tensors; a draft head alone adds exactly its codes and scales.
    auto planned = Model::estimate_memory(dir.path(), options);
    REQUIRE(planned.has_value());
    CHECK(planned->weights == m->estimate({}).weights);
    if (c.layers == QuantType::none) {
      const uint64_t v = static_cast<uint64_t>(config.vocab_size), h = static_cast<uint64_t>(config.hidden_size);
      const uint64_t codes = c.head == QuantType::q4 ? v * h / 2 : v * h, scales = v * (h / (c.head == QuantType::q4 ? 32 : 64)) * 2;
      CHECK(planned->weights == exact_head.estimate({}).weights + codes + scales);
    } else {
      CHECK(planned->weights < exact_head.estimate({}).weights);
    }
    const auto got = mtp_logits(*m);
    double worst = 0.0;
    for (size_t v = 0; v < got.size(); ++v) worst = std::max(worst, static_cast<double>(std::abs(got[v] - reference[v])));
    MESSAGE("draft head ", mimo::to_string(c.head), ", MTP layers ", mimo::to_string(c.layers),
            ": max |MTP logit - as stored| = ", worst, " (logits up to ", scale, ")");
    CHECK(worst > 0.0);  // the quantized copies are in use
    CHECK(worst < c.bound * scale);
    // The main model's logits still go through lm_head as stored.
    auto a = session_of(exact_head), b = session_of(*m);
    auto la = a.append(prompt, {.logits = mimo::OutputRows::last});
    auto lb = b.append(prompt, {.logits = mimo::OutputRows::last});
    REQUIRE((la.has_value() && lb.has_value()));
    CHECK(std::equal(la->data, la->data + config.vocab_size, lb->data));
    for (int depth = 1; depth <= 3; ++depth) CHECK(run(*m, prompt, 120, {.greedy = true}, depth) == plain);
  }
  // Quantizing the drafter reports its own stage, and the host can cancel there.
  bool seen = false;
  auto cancelled = Model::load(dir.path(), {.on_progress = [&](const mimo::LoadProgress& p) {
                                              seen = seen || p.stage == "quantizing drafter layers";
                                              return p.stage != "quantizing drafter layers";
                                            },
                                            .draft_layers = QuantType::q8});
  CHECK(seen);
  REQUIRE_FALSE(cancelled.has_value());
  CHECK(cancelled.error().code() == mimo::Errc::cancelled);
  // Without MTP layers the option does nothing (and costs nothing).
  auto no_mtp = test::small_config(300, 64, 2, 4, 2, 16, 96, 0);
  test::TempDir dir2;
  test::synthesize(dir2.path(), no_mtp, 32);
  const mimo::LoadOptions drafter_options{.draft_head = mimo::QuantType::q8, .draft_layers = mimo::QuantType::q8};
  CHECK(Model::load(dir2.path(), drafter_options).has_value());
  auto plain_estimate = Model::estimate_memory(dir2.path()), drafter_estimate = Model::estimate_memory(dir2.path(), drafter_options);
  REQUIRE((plain_estimate.has_value() && drafter_estimate.has_value()));
  CHECK(drafter_estimate->weights == plain_estimate->weights);
}

TEST_CASE("speculative: a draft vocabulary drafts from the leading token ids only, and the output stays the same") {
  const auto config = test::small_config(300, 64, 2, 4, 2, 16, 96, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 33);
  const auto prompt = test::random_tokens(20, config.vocab_size, 6);
  constexpr int64_t kDraftVocab = 120;
  using mimo::QuantType;
  struct Case {
    QuantType model, head;  // LoadOptions::quantize.type, LoadOptions::draft_head
  };
  for (const Case c : {Case{QuantType::none, QuantType::none}, Case{QuantType::none, QuantType::q4},
                       Case{QuantType::q8, QuantType::none}}) {
    CAPTURE(mimo::to_string(c.model));
    CAPTURE(mimo::to_string(c.head));
    mimo::LoadOptions whole{.draft_head = c.head};
    whole.quantize.type = c.model;
    mimo::LoadOptions leading = whole;
    leading.draft_vocab = kDraftVocab;
    auto full = Model::load(dir.path(), whole);
    auto m = Model::load(dir.path(), leading);
    REQUIRE((full.has_value() && m.has_value()));
    CHECK(full->draft_vocab() == config.vocab_size);
    CHECK(m->draft_vocab() == kDraftVocab);
    // Each row of the head is the same dot product, whichever rows are read: the logits are the
    // whole vocabulary's first ones, exactly.
    const auto reference = first_mtp_logits(*full, prompt);
    const auto got = first_mtp_logits(*m, prompt);
    REQUIRE(got.size() == static_cast<size_t>(kDraftVocab));
    CHECK(std::equal(got.begin(), got.end(), reference.begin()));
    // A view of lm_head costs no memory; a quantized copy costs only its rows.
    auto planned = Model::estimate_memory(dir.path(), leading);
    REQUIRE(planned.has_value());
    CHECK(planned->weights == m->estimate({}).weights);
    if (c.head == QuantType::none) {
      CHECK(planned->weights == full->estimate({}).weights);
      CHECK(m->tensors().draft_head.data == m->tensors().lm_head.data);
    } else {
      const uint64_t h = static_cast<uint64_t>(config.hidden_size), v = static_cast<uint64_t>(config.vocab_size);
      const uint64_t per_row = h / 2 + h / 32 * 2;  // q4 codes and f16 scales in groups of 32
      CHECK(full->estimate({}).weights - planned->weights == (v - kDraftVocab) * per_row);
    }
    // Drafts stay below the limit at every depth, and the output is plain decoding's.
    for (int32_t pending : {5, 150, 299}) {
      auto s = session_of(*m);
      REQUIRE(s.append(prompt, {.hidden = mimo::OutputRows::all}).has_value());
      auto drafter = mimo::MtpDrafter<mimo::Cpu>::create(*m, {.depth = 4});
      REQUIRE(drafter.has_value());
      auto drafts = drafter->propose(s, pending, 4, nullptr);
      REQUIRE(drafts.has_value());
      CHECK(drafts->size() == 4);
      for (int32_t d : *drafts) CHECK(d < kDraftVocab);
    }
    const auto plain = run(*full, prompt, 120, {.greedy = true}, 0);
    for (int depth = 1; depth <= 3; ++depth) CHECK(run(*m, prompt, 120, {.greedy = true}, depth) == plain);
  }
  // The whole vocabulary is the same as none; beyond it, or below 0, is an error that names the option.
  auto all = Model::load(dir.path(), {.draft_vocab = config.vocab_size});
  REQUIRE(all.has_value());
  CHECK(all->draft_vocab() == config.vocab_size);
  CHECK_FALSE(all->tensors().draft_head);
  for (int64_t bad : {config.vocab_size + 1, int64_t{-1}}) {
    CAPTURE(bad);
    auto m = Model::load(dir.path(), {.draft_vocab = bad});
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code() == mimo::Errc::invalid_argument);
    CHECK(m.error().describe().find("draft_vocab") != std::string::npos);
    auto e = Model::estimate_memory(dir.path(), {.draft_vocab = bad});
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().code() == mimo::Errc::invalid_argument);
  }
}
