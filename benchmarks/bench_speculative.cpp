// What speculative decoding costs and gives on the CPU, on a checkpoint of the real shape
// (`mimo synth --preset 7b`).
//
//   bench_speculative --model DIR [--threads N] [--prompt 64] [--gen 32] [--reps 5] [--draft-head q8|q4]
//                     [--draft-layers q8|q4] [--draft-vocab N] [--prefetch nta|t0]
//
// steps     the time of one decoding step (one token through the main model) at a context of
//           `prompt` tokens; the time of one verification pass over 2..5 tokens relative to it
//           (decoding is memory-bound, so more rows cost little); one MTP drafting step (the MTP
//           layer and lm_head over one row, plus its catch-up row) relative to it. Medians of
//           `reps` timings, the verification passes interleaved with decoding steps (ratios of
//           neighbours); each pass is rolled back afterwards, so every one sees the same context.
//           --draft-head: the MTP step's logits through a quantized copy of lm_head; --draft-layers:
//           the MTP layers quantized while loading; --draft-vocab: drafts from the first N token
//           ids only (LoadOptions); --prefetch: the hint for the streamed weights (default: the
//           CPU's, cpu::default_weight_prefetch).
// replay    end-to-end greedy decoding of `gen` tokens: plain, then with a ReplayDrafter that
//           proposes the plain run's own continuation, right with probability 100%, 90% and 70%,
//           at depths 1 to 3 (random weights accept almost nothing from the real MTP layer, so
//           the replay drafter measures the speed-up a given acceptance gives), each against a
//           plain run just before it. Every run's output is checked against the plain one:
//           speculative decoding must not change it.
#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>
#include <mimo/mtp_drafter.hpp>
#include <mimo/speculative.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench_args.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using mimo::Cpu;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

[[noreturn]] void die(const std::string& what, const mimo::Error& e) {
  std::fprintf(stderr, "bench_speculative: %s: %s\n", what.c_str(), e.describe().c_str());
  std::exit(1);
}

template <class T>
T take(mimo::Expected<T> v, const std::string& what) {
  if (!v) die(what, v.error());
  return std::move(*v);
}

void check(const mimo::Status& s, const std::string& what) {
  if (!s) die(what, s.error());
}

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int threads = 2, prompt_n = 64, gen_n = 32, reps = 5;
  mimo::LoadOptions load;
  mimo::cpu::WeightPrefetch prefetch = mimo::cpu::default_weight_prefetch();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") model_dir = argv[i + 1];
    else if (a == "--threads") threads = static_cast<int>(bench::integer("bench_speculative", a, argv[i + 1], 0, 1024));
    else if (a == "--prompt") prompt_n = static_cast<int>(bench::integer("bench_speculative", a, argv[i + 1], 2, 1 << 20));
    else if (a == "--gen") gen_n = static_cast<int>(bench::integer("bench_speculative", a, argv[i + 1], 2, 1 << 20));
    else if (a == "--reps") reps = static_cast<int>(bench::integer("bench_speculative", a, argv[i + 1], 1, 1000));
    else if (a == "--draft-vocab") load.draft_vocab = bench::integer("bench_speculative", a, argv[i + 1]);
    else if (a == "--prefetch" && (std::string(argv[i + 1]) == "nta" || std::string(argv[i + 1]) == "t0")) {
      prefetch = std::string(argv[i + 1]) == "t0" ? mimo::cpu::WeightPrefetch::t0 : mimo::cpu::WeightPrefetch::non_temporal;
    } else if (a == "--draft-head" || a == "--draft-layers") {
      const std::string q = argv[i + 1];
      if (q != "q8" && q != "q4") {
        std::fprintf(stderr, "bench_speculative: %s must be q8 or q4, not '%s'\n", a.c_str(), q.c_str());
        return 2;
      }
      (a == "--draft-head" ? load.draft_head : load.draft_layers) = q == "q4" ? mimo::QuantType::q4 : mimo::QuantType::q8;
    } else {
      std::fprintf(stderr, "bench_speculative: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (model_dir.empty() || prompt_n < 2 || gen_n < 2 || reps < 1 || threads < 0) {
    std::fprintf(stderr, "usage: bench_speculative --model DIR [--threads N] [--prompt 64] [--gen 32] [--reps 5] [--draft-head q8|q4] [--draft-layers q8|q4] [--draft-vocab N] [--prefetch nta|t0]\n");
    return 2;
  }

  auto model = take(mimo::Model<Cpu>::load(model_dir, load), "load " + model_dir);
  const int32_t V = static_cast<int32_t>(model.config().vocab_size);
  auto session = take(model.new_session({.context = prompt_n + 8 * gen_n + 16, .backend = {.threads = threads, .weight_prefetch = prefetch}}), "session");
  std::mt19937 rng(42);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_n));
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(std::min(V, 151643)));
  const int64_t P = prompt_n;
  take(session.append(prompt, {.hidden = mimo::OutputRows::last}), "prefill");
  const int32_t next = argmax(session.logits().last());

  // --- steps -------------------------------------------------------------------------------------
  auto time_pass = [&](int rows) {
    std::vector<int32_t> input(static_cast<size_t>(rows), next);
    const auto start = Clock::now();
    take(session.append(input, {.logits = mimo::OutputRows::all, .hidden = mimo::OutputRows::all}), "pass");
    const double t = seconds_since(start);
    check(session.truncate(P), "truncate");
    return t;
  };
  time_pass(1);  // warm the scratch and the page tables
  // Interleaved: each repetition times a decoding step and then passes of 2..5 tokens, and each
  // ratio compares passes seconds apart (this machine's speed drifts by half within minutes).
  std::vector<double> steps;
  std::vector<std::vector<double>> times(6), ratios(6);
  for (int r = 0; r < reps; ++r) {
    const double one = time_pass(1);
    steps.push_back(one);
    for (int rows = 2; rows <= 5; ++rows) {
      times[rows].push_back(time_pass(rows));
      ratios[rows].push_back(times[rows].back() / one);
    }
  }
  const double step = median(steps);
  std::printf("## Steps (%s, %d threads, context %lld, weight prefetch %s, medians of %d interleaved repetitions)\n\n",
              model_dir.c_str(), threads, static_cast<long long>(P),
              mimo::cpu::to_string(prefetch), reps);
  std::printf("| pass | ms | relative to one decoding step |\n|---|---|---|\n");
  std::printf("| decode, 1 token | %.1f | 1.00 |\n", 1e3 * step);
  for (int rows = 2; rows <= 5; ++rows) {
    std::printf("| verify, %d tokens | %.1f | %.3f |\n", rows, 1e3 * median(times[rows]), median(ratios[rows]));
  }
  if (model.config().num_nextn_predict_layers > 0) {
    // Drafting as generate() does it: propose one draft, verify it, repeat.
    auto drafter = take(mimo::MtpDrafter<Cpu>::create(model, {.depth = 1}), "drafter");
    check(drafter.catch_up(session), "catch up");
    int32_t pending = next;
    std::vector<double> t_mtp;
    mimo::SpeculativeStats stats;
    std::vector<int32_t> emitted;
    for (int r = 0; r < reps + 1; ++r) {
      const auto start = Clock::now();
      auto drafts = take(drafter.propose(session, pending, 1, nullptr), "propose");
      if (r > 0) t_mtp.push_back(seconds_since(start));  // the first includes the prompt's catch-up
      emitted.clear();
      take(mimo::verify_drafts(session, pending, drafts,
                               [](std::span<const float> l) -> mimo::Expected<int32_t> { return argmax(l); }, emitted,
                               stats),
           "verify");
      pending = emitted.back();
    }
    const double mtp = median(t_mtp);
    auto as = [](mimo::QuantType q) { return q == mimo::QuantType::none ? "as stored" : mimo::to_string(q).data(); };
    std::printf("| MTP drafting step (1 draft, lm_head %s over %lld tokens, MTP layers %s) | %.1f | %.3f |\n",
                as(load.draft_head), static_cast<long long>(model.draft_vocab()), as(load.draft_layers), 1e3 * mtp,
                mtp / step);
    check(session.truncate(P), "truncate");
  }

  // --- replay ------------------------------------------------------------------------------------
  // generate() appends its prompt: keep the first P - 1 tokens and pass the last one.
  const std::vector<int32_t> last{prompt.back()};
  auto run = [&](mimo::Drafter<Cpu>* drafter, int depth, std::vector<int32_t>& out) {
    check(session.truncate(P - 1), "truncate");
    auto sampler = take(mimo::Sampler::create({.greedy = true}, V), "sampler");
    auto g = take(mimo::generate(session, last, sampler,
                                 {.max_tokens = gen_n, .default_stop_tokens = false, .mtp_depth = depth,
                                  .drafter = drafter, .commit_last = false}),
                  "generate");
    out = g.tokens;
    return g.stats;
  };
  std::vector<int32_t> plain_tokens, again;
  run(nullptr, 0, plain_tokens);  // warm
  std::printf("\n## Replay drafter, %d greedy tokens (after the first)\n\n", gen_n);
  std::printf("Each speed-up is against plain decoding timed just before it (the machine's speed drifts\n"
              "between minutes).\n\n");
  std::printf("| drafts right | depth | plain tokens/s | tokens/s | speed-up | acceptance | tokens per pass | output |\n"
              "|---|---|---|---|---|---|---|---|\n");
  bool all_equal = true;
  for (double accuracy : {1.0, 0.9, 0.7}) {
    for (int depth = 1; depth <= 3; ++depth) {
      const double plain_rate = run(nullptr, 0, again).decode_tokens_per_second();
      mimo::ReplayDrafter<Cpu> replay(plain_tokens, P, accuracy, V, 7);
      std::vector<int32_t> tokens;
      const auto s = run(&replay, depth, tokens);
      const bool equal = tokens == plain_tokens && again == plain_tokens;
      all_equal = all_equal && equal;
      std::printf("| %.0f%% | %d | %.2f | %.2f | %.2f | %.1f%% | %.2f | %s |\n", 100 * accuracy, depth, plain_rate,
                  s.decode_tokens_per_second(), s.decode_tokens_per_second() / plain_rate,
                  100 * s.speculative.acceptance_rate(), s.speculative.tokens_per_pass(), equal ? "same" : "DIFFERENT");
    }
  }
  return all_equal ? 0 : 1;
}
