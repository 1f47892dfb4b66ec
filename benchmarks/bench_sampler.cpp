// Sampler cost per token over MiMo-7B's 151,680-entry logits vector, for each configuration.
//
//   bench_sampler [repetitions]      (default 2000)
//
// Two synthetic logit shapes, generated with mimo::Rng so every machine sees the same vectors:
//   peaked  a Gaussian bulk (mean 0, sd 2.5) plus 16 tokens at 10, 10.5, ..., 17.5: a fairly sure
//           model; the top token holds 38% of the mass, the 0.95 nucleus 8 tokens
//   flat    the Gaussian bulk alone: an unsure model; the top token holds 2.4%, the 0.95 nucleus
//           31,696 tokens
// Each repetition times one sample() on one Sampler (buffers warm; accept() follows, untimed, so
// the penalty window is full). Reported: median and 90th-percentile microseconds, the size of the
// final distribution, and a checksum of the drawn tokens: a result check, identical from run to
// run, that changes if the draws do. A second table times the configurations that depend only on
// the largest logits from those alone (Sampler::sample_top), as when a backend selects them.
#include <mimo/backend/cpu/ops.hpp>
#include <mimo/sampler.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "bench_args.hpp"

namespace {

constexpr int32_t vocab_size = 151680;

// A standard normal from twelve uniforms (Irwin-Hall): plain arithmetic, so the same bits on
// every platform, unlike anything through std::log or std::cos.
double normal(mimo::Rng& rng) {
  double sum = -6.0;
  for (int i = 0; i < 12; ++i) sum += rng.next_double();
  return sum;
}

std::vector<float> make_logits(uint64_t seed, size_t peaks) {
  mimo::Rng rng(seed);
  std::vector<float> logits(vocab_size);
  for (float& logit : logits) logit = static_cast<float>(2.5 * normal(rng));
  for (size_t i = 0; i < peaks; ++i) {
    logits[rng.next_u64() % vocab_size] = 10.0f + 0.5f * static_cast<float>(i);
  }
  return logits;
}

struct Row {
  std::string name;
  mimo::SamplerOptions options;
};

struct Result {
  double median_us = 0;
  double p90_us = 0;
  size_t kept = 0;
  uint64_t checksum = 0;
};

mimo::Sampler make_sampler(const mimo::SamplerOptions& options) {
  mimo::Expected<mimo::Sampler> sampler = mimo::Sampler::create(options, vocab_size);
  if (!sampler) {
    std::fprintf(stderr, "%s\n", sampler.error().describe().c_str());
    std::exit(1);
  }
  return std::move(*sampler);
}

// Times `draw()` (one token, then accepted into `sampler`'s window, untimed) over the repetitions
// after a warm-up: median, p90 and the checksum of the tokens.
template <class Draw>
Result time_draws(mimo::Sampler& sampler, int repetitions, Draw&& draw) {
  Result result;
  std::vector<double> times;
  times.reserve(static_cast<size_t>(repetitions));
  const int warmup = std::max(1, repetitions / 20);
  for (int i = 0; i < warmup + repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    mimo::Expected<int32_t> token = draw();
    const auto stop = std::chrono::steady_clock::now();
    if (!token || !sampler.accept(*token)) {
      std::fprintf(stderr, "sampling failed\n");
      std::exit(1);
    }
    if (i < warmup) continue;
    times.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
    result.checksum = result.checksum * 1000003u + static_cast<uint64_t>(*token);
  }
  std::sort(times.begin(), times.end());
  result.median_us = times[times.size() / 2];
  result.p90_us = times[times.size() * 9 / 10];
  return result;
}

Result measure(const mimo::SamplerOptions& options, const std::vector<float>& logits, int repetitions) {
  mimo::Sampler sampler = make_sampler(options);
  Result result = time_draws(sampler, repetitions, [&] { return sampler.sample(logits); });
  mimo::Expected<mimo::Distribution> distribution = sampler.distribution(logits);
  result.kept = distribution ? distribution->size() : 0;
  return result;
}

// The same loop over the candidates_needed() largest logits (Sampler::sample_top), selected once
// as a backend selects them (AppendOptions::top): what the host pays when only they come back.
// The checksum equals measure()'s when the tokens are the same.
Result measure_top(const mimo::SamplerOptions& options, const std::vector<float>& logits, int repetitions) {
  mimo::Sampler sampler = make_sampler(options);
  const int32_t count = sampler.candidates_needed();
  std::vector<int32_t> ids(static_cast<size_t>(count));
  std::vector<float> values(ids.size());
  mimo::cpu::TopScratch scratch;
  if (count == 0 || !mimo::cpu::top_or_invalid(logits.data(), vocab_size, count, ids.data(), values.data(), scratch)) {
    std::exit(1);
  }
  Result result = time_draws(sampler, repetitions, [&] { return sampler.sample_top(ids, values); });
  result.kept = static_cast<size_t>(count);
  return result;
}

// The CPU backend's selection of the `count` largest of the logits (Cpu::top_rows, per row).
double measure_selection(const std::vector<float>& logits, int32_t count, int repetitions) {
  std::vector<int32_t> ids(static_cast<size_t>(count));
  std::vector<float> values(ids.size());
  mimo::cpu::TopScratch scratch;
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const bool valid = mimo::cpu::top_or_invalid(logits.data(), vocab_size, count, ids.data(), values.data(), scratch);
    const auto stop = std::chrono::steady_clock::now();
    if (!valid) std::exit(1);
    times.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// The floor every configuration pays: copying the logits into the candidate buffer.
double measure_assign(const std::vector<float>& logits, int repetitions) {
  mimo::Candidates candidates;
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const mimo::Status status = candidates.assign(logits);
    const auto stop = std::chrono::steady_clock::now();
    if (!status) std::exit(1);
    times.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int repetitions = argc > 1 ? static_cast<int>(bench::integer("bench_sampler", "the repetition count", argv[1], 10, 10000000)) : 2000;
  const std::vector<float> peaked = make_logits(1, 16);
  const std::vector<float> flat = make_logits(2, 0);

  const std::vector<Row> rows = {
      {"greedy", {.greedy = true}},
      {"top-k 40", {.top_k = 40, .seed = 1}},
      {"top-p 0.95", {.top_p = 0.95f, .seed = 1}},
      {"min-p 0.05", {.min_p = 0.05f, .seed = 1}},
      {"temperature 0.8 only", {.temperature = 0.8f, .seed = 1}},
      {"full chain",
       {.temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.1f,
        .presence_penalty = 0.1f,
        .frequency_penalty = 0.1f,
        .penalty_window = 64,
        .seed = 1}},
      {"full chain, no top-k",
       {.temperature = 0.8f,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.1f,
        .presence_penalty = 0.1f,
        .frequency_penalty = 0.1f,
        .penalty_window = 64,
        .seed = 1}},
  };

  std::printf("sampler over %d logits, %d repetitions per row (median / p90 microseconds per token)\n\n", vocab_size,
              repetitions);
  std::printf("| configuration        | logits | median us | p90 us | kept   | checksum         |\n");
  std::printf("|----------------------|--------|-----------|--------|--------|------------------|\n");
  for (const Row& row : rows) {
    for (const auto& [shape, logits] : {std::pair{"peaked", &peaked}, std::pair{"flat", &flat}}) {
      const Result r = measure(row.options, *logits, repetitions);
      std::printf("| %-20s | %-6s | %9.1f | %6.1f | %6zu | %016llx |\n", row.name.c_str(), shape, r.median_us, r.p90_us,
                  r.kept, static_cast<unsigned long long>(r.checksum));
    }
  }
  std::printf("\nfloor: Candidates::assign (validate + copy 151,680 logits): %.1f us\n",
              measure_assign(peaked, repetitions));

  // The configurations whose token depends only on the largest logits, from those alone.
  std::printf("\nthe same from the candidates_needed() largest logits (Sampler::sample_top), and their selection\n"
              "by the CPU backend (cpu::top_or_invalid; on a GPU the device selects them)\n\n");
  std::printf("| configuration        | logits | candidates | median us | p90 us | selection us | same tokens |\n");
  std::printf("|----------------------|--------|------------|-----------|--------|--------------|-------------|\n");
  for (const Row& row : rows) {
    mimo::Expected<mimo::Sampler> probe = mimo::Sampler::create(row.options, vocab_size);
    if (!probe || probe->candidates_needed() == 0) continue;
    for (const auto& [shape, logits] : {std::pair{"peaked", &peaked}, std::pair{"flat", &flat}}) {
      const Result full = measure(row.options, *logits, repetitions);
      const Result top = measure_top(row.options, *logits, repetitions);
      std::printf("| %-20s | %-6s | %10zu | %9.1f | %6.1f | %12.1f | %-11s |\n", row.name.c_str(), shape, top.kept,
                  top.median_us, top.p90_us, measure_selection(*logits, probe->candidates_needed(), repetitions),
                  top.checksum == full.checksum ? "yes" : "NO");
    }
  }
  return 0;
}
