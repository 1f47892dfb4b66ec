// bench_cuda: the CUDA backend on a checkpoint (meant for `mimo synth --preset 7b`), one table:
//   load time; the device's measured copy bandwidth; decode tokens/s at batch 1 (median step) for
//   Session<Cuda> (eager, logits to the host) and for a graph-captured step with device argmax,
//   each also with ContextOptions::fuse_kernels and programmatic_launch, with bytes read per token
//   and the fraction of the bandwidth limit; decode after a long prompt (--long-context, 0: none)
//   with f32, f16 and bf16 KV caches; prefill tokens/s for the
//   given prompt lengths with both product precisions; speculative decoding with a replay drafter
//   at 100% acceptance (generate() with sessions, and graph-captured verification passes).
// Result checks: the greedy tokens of the session and the graph decoder must agree, and a checksum
// of the last logits row is printed.
//
//   bench_cuda --model DIR [--prompt 128] [--decode 256] [--prefill 512,4096] [--reps 3]
//              [--depths 1,3,7] [--peak-gbs 4800] [--long-context 4096]
//   bench_cuda --model DIR --steps N [--prompt 128] [--fuse-kernels] [--programmatic-launch] [--kv-cache T]
//              only the prompt and N decode steps of one session, with those options, and no
//              table: the run that tests/gpu/check.sh --profile hands to ncu
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <mimo/cuda.hpp>
#include <mimo/generate.hpp>
#include <mimo/speculative.hpp>

#include "../bench_args.hpp"
#include "graph_decoder.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_cuda: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T must(mimo::Expected<T> e, const char* what) {
  if (!e) die(std::string(what) + ": " + e.error().describe());
  return std::move(*e);
}
void must(const mimo::Status& s, const char* what) {
  if (!s) die(std::string(what) + ": " + s.error().describe());
}

void row(const std::string& metric, const std::string& value, const std::string& detail) {
  std::printf("| %-44s | %14s | %s\n", metric.c_str(), value.c_str(), detail.c_str());
  std::fflush(stdout);
}
std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// Bytes a decode step reads: every weight of the main layers and lm_head, one embedding row, the
// norms and biases, and the KV cache (of `kv_element` bytes an element) up to `length` entries.
struct StepBytes {
  double weights = 0.0, kv_per_entry = 0.0;
  double at(double length) const { return weights + kv_per_entry * length; }
};
StepBytes step_bytes(const mimo::ModelConfig& c, int64_t kv_element = 4) {
  const double H = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double per_layer = 2.0 * (H * (q + 2 * kv) + q * H + 3 * H * F) + 4.0 * (q + 2 * kv + 2 * H);
  StepBytes b;
  b.weights = per_layer * static_cast<double>(c.num_hidden_layers) + 2.0 * static_cast<double>(c.vocab_size) * H +
              2.0 * H + 4.0 * H;
  b.kv_per_entry = 2.0 * static_cast<double>(kv_element) * kv * static_cast<double>(c.num_hidden_layers);
  return b;
}

std::vector<int32_t> prompt_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& x : t) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(vocab));
  }
  return t;
}

double measured_copy_gbs() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    if (a) (void)cudaFree(a);
    return 0.0;
  }
  (void)cudaMemset(a, 1, bytes);
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    (void)cudaDeviceSynchronize();
    const auto start = Clock::now();
    (void)cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    (void)cudaDeviceSynchronize();
    t.push_back(since(start));
  }
  (void)cudaFree(a);
  (void)cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / median(t) / 1e9;  // read + write
}

// Rows of the graph decoders' steps; a longer prompt goes through in several steps.
constexpr size_t kDecoderBatch = 256;

// The prompt through a graph decoder, in steps of at most its batch of rows.
void prefill(cuda_test::GraphDecoder& d, std::span<const int32_t> prompt, std::vector<int32_t>& ids) {
  for (size_t i = 0; i < prompt.size(); i += kDecoderBatch) {
    must(d.step(prompt.subspan(i, std::min(kDecoderBatch, prompt.size() - i)), false, ids), "prefill");
  }
}

// The prompt, then `n` greedy steps of one token each: the tokens fed (in `out`) and the median
// step's tokens per second.
double greedy_steps(cuda_test::GraphDecoder& d, std::span<const int32_t> prompt, int64_t n, std::vector<int32_t>& out) {
  std::vector<int32_t> ids;
  prefill(d, prompt, ids);
  std::vector<double> steps;
  out.clear();
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(ids.back());
    const auto t = Clock::now();
    must(d.step(std::span<const int32_t>(&out.back(), 1), false, ids), "decode");
    steps.push_back(since(t));
  }
  return 1.0 / median(steps);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int64_t prompt_len = 128, decode = 256, reps = 3, long_context = 4096;
  std::vector<int64_t> prefills = {512, 4096}, depths = {1, 3, 7};
  double peak_gbs = 4800.0;
  int64_t steps_only = 0;
  mimo::Cuda::ContextOptions step_options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--model") model_dir = next();
    else if (a == "--prompt") prompt_len = bench::integer("bench_cuda", a, next(), 1);
    else if (a == "--decode") decode = bench::integer("bench_cuda", a, next(), 1);
    else if (a == "--reps") reps = bench::integer("bench_cuda", a, next(), 1, 1000);
    else if (a == "--long-context") long_context = bench::integer("bench_cuda", a, next(), 0);
    else if (a == "--prefill") prefills = bench::integers("bench_cuda", a, next(), 1);
    else if (a == "--depths") depths = bench::integers("bench_cuda", a, next(), 1, 7);
    else if (a == "--peak-gbs") peak_gbs = bench::number("bench_cuda", a, next(), 1.0, 1e6);
    else if (a == "--steps") steps_only = bench::integer("bench_cuda", a, next(), 1);
    else if (a == "--fuse-kernels") step_options.fuse_kernels = true;
    else if (a == "--programmatic-launch") step_options.programmatic_launch = true;
    else if (a == "--kv-cache") {
      const std::string t = next();
      if (t == "f32") step_options.kv_cache = mimo::KvType::f32;
      else if (t == "f16") step_options.kv_cache = mimo::KvType::f16;
      else if (t == "bf16") step_options.kv_cache = mimo::KvType::bf16;
      else die("--kv-cache must be f32, f16 or bf16");
    }
    else die("unknown argument " + a + " (see the top of benchmarks/cuda/bench_cuda.cpp)");
  }
  if (model_dir.empty()) die("--model DIR is required");
  if (mimo::Cuda::device_count() == 0) {
    std::printf("bench_cuda: skipped: no usable CUDA device (%s)\n", mimo::Cuda::describe_devices().c_str());
    return 77;
  }

  if (steps_only > 0) {
    auto model = must(mimo::Model<mimo::Cuda>::load(model_dir), "load");
    auto s = must(model.new_session({.context = prompt_len + steps_only, .batch = 256, .backend = step_options}), "session");
    auto logits = must(s.append(prompt_tokens(prompt_len, model.config().vocab_size, 1)), "prefill");
    for (int64_t i = 0; i < steps_only; ++i) {
      const auto last = logits.last();
      const auto next_token = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
      logits = must(s.append({next_token}), "decode");
    }
    return 0;
  }

  std::printf("mimo CUDA benchmark: %s\n", mimo::Cuda::describe_devices().c_str());
  const auto load_start = Clock::now();
  auto model = must(mimo::Model<mimo::Cuda>::load(model_dir), "load");
  const double load_s = since(load_start);
  const mimo::ModelConfig& c = model.config();
  const double weight_bytes = static_cast<double>(model.checkpoint().tensor_bytes());
  std::printf("model %s: %lld layers, hidden %lld, %lld/%lld heads of %lld, ffn %lld, vocab %lld, %lld MTP; %.2f GB of weights\n\n",
              model_dir.c_str(), static_cast<long long>(c.num_hidden_layers), static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.num_attention_heads), static_cast<long long>(c.num_key_value_heads),
              static_cast<long long>(c.head_dim), static_cast<long long>(c.intermediate_size),
              static_cast<long long>(c.vocab_size), static_cast<long long>(c.num_nextn_predict_layers), weight_bytes / 1e9);
  std::printf("| %-44s | %14s | %s\n", "measurement", "value", "detail");
  std::printf("|-%s-|-%s-|-%s\n", std::string(44, '-').c_str(), std::string(14, '-').c_str(), std::string(50, '-').c_str());
  row("load (read + upload to the device)", fmt("%.1f s", load_s), fmt("%.2f GB/s from the page cache or disk", weight_bytes / 1e9 / load_s));
  const double copy_gbs = measured_copy_gbs();
  row("device copy bandwidth (measured)", fmt("%.0f GB/s", copy_gbs), "cudaMemcpy device to device, 1 GiB, read + write");

  const StepBytes bytes = step_bytes(c);
  const int64_t V = c.vocab_size;
  const auto prompt = prompt_tokens(prompt_len, V, 1);
  const int64_t context = prompt_len + decode + 64;
  auto bandwidth = [&](double tok_s, double avg_length, const StepBytes& read) {
    const double gbs = read.at(avg_length) * tok_s / 1e9;
    return fmt("%.2f GB/token, ", read.at(avg_length) / 1e9) + fmt("%.0f GB/s = ", gbs) + fmt("%.0f%% of nominal", 100.0 * gbs / peak_gbs) +
           (copy_gbs > 0 ? fmt(", %.0f%% of measured copy", 100.0 * gbs / copy_gbs) : std::string());
  };
  const double avg_length = static_cast<double>(prompt_len) + static_cast<double>(decode) / 2;

  // --- decode at batch 1: Session<Cuda>, eager, logits to the host; plain and fused kernels ---
  std::vector<int32_t> session_tokens;
  for (bool fuse : {false, true}) {
    auto s = must(model.new_session({.context = context, .batch = 256, .backend = {.fuse_kernels = fuse}}), "session");
    auto logits = must(s.append(prompt), "prefill");
    std::vector<double> steps;
    std::vector<int32_t> tokens;
    for (int64_t i = 0; i < decode; ++i) {
      tokens.push_back(static_cast<int32_t>(std::max_element(logits.last().begin(), logits.last().end()) - logits.last().begin()));
      const auto t = Clock::now();
      logits = must(s.append({tokens.back()}), "decode");
      steps.push_back(since(t));
    }
    const double tok_s = 1.0 / median(steps);
    if (!fuse) session_tokens = tokens;
    row(fuse ? "decode batch 1: Session, fused kernels" : "decode batch 1: Session (eager, logits to host)", fmt("%.1f tok/s", tok_s),
        bandwidth(tok_s, avg_length, bytes) + (fuse ? std::string(", same tokens: ") + (tokens == session_tokens ? "yes" : "NO") : std::string()));
  }

  // --- decode at batch 1: one graph per step, argmax on the device ---
  struct DecodeVariant {
    bool graphs, fuse, programmatic;
    const char* name;
  };
  double graph_tok_s = 0.0;  // the plain graph step at the short context, for the long-context rows
  for (DecodeVariant v : {DecodeVariant{false, false, false, "decode batch 1: eager + device argmax"},
                          DecodeVariant{true, false, false, "decode batch 1: CUDA graph + device argmax"},
                          DecodeVariant{true, false, true, "decode batch 1: graph + argmax, programmatic"},
                          DecodeVariant{true, true, false, "decode batch 1: graph + argmax, fused"},
                          DecodeVariant{true, true, true, "decode batch 1: graph + argmax, fused + progr."}}) {
    const bool graphs = v.graphs;
    auto d = must(cuda_test::GraphDecoder::create(model, context, static_cast<int64_t>(kDecoderBatch),
                                                  {.graphs = graphs, .fuse_kernels = v.fuse, .programmatic_launch = v.programmatic}),
                  "decoder");
    std::vector<int32_t> out;
    const double tok_s = greedy_steps(d, prompt, decode, out);
    const int64_t agree = static_cast<int64_t>(std::mismatch(out.begin(), out.end(), session_tokens.begin()).first - out.begin());
    row(std::string(v.name) + (v.programmatic && !mimo::Cuda::programmatic(d.context()) ? " (inactive)" : ""),
        fmt("%.1f tok/s", tok_s),
        bandwidth(tok_s, avg_length, bytes) + ", same tokens as the session: " + std::to_string(agree) + "/" + std::to_string(decode) +
            (graphs ? ", graph launches " + std::to_string(mimo::Cuda::graph_launches(d.context())) : std::string()));
    if (graphs && !v.fuse && !v.programmatic) {
      graph_tok_s = tok_s;
      std::vector<float> last;
      must(d.logits(last), "logits");
      double sum = 0.0;
      for (float value : last) sum += value;
      std::string first;
      for (size_t i = 0; i < std::min<size_t>(3, out.size()); ++i) first += (i ? "," : "") + std::to_string(out[i]);
      row("result check", fmt("%.6g", sum), "sum of the last logits row; first tokens " + first);
    }
  }

  // --- decode at a long context, per KV cache type: there the cache is a share of the bytes ---
  if (long_context > 0 && long_context + 72 <= c.max_position_embeddings) {
    const auto long_prompt = prompt_tokens(long_context, V, 3);
    const int64_t long_steps = std::min<int64_t>(decode, 64);
    std::vector<int32_t> f32_tokens;
    for (mimo::KvType type : {mimo::KvType::f32, mimo::KvType::f16, mimo::KvType::bf16}) {
      auto d = must(cuda_test::GraphDecoder::create(model, long_context + long_steps + 8, static_cast<int64_t>(kDecoderBatch),
                                                    {.kv_cache = type}),
                    "decoder");
      std::vector<int32_t> out;
      const double tok_s = greedy_steps(d, long_prompt, long_steps, out);
      if (type == mimo::KvType::f32) f32_tokens = out;
      const int64_t agree = static_cast<int64_t>(std::mismatch(out.begin(), out.end(), f32_tokens.begin()).first - out.begin());
      const StepBytes read = step_bytes(c, mimo::kv_element_bytes(type));
      const double long_avg = static_cast<double>(long_context) + static_cast<double>(long_steps) / 2;
      // What the longer cache costs: the step's time beyond the short-context graph step, against
      // the cache bytes beyond it (the rate decode attention reads the cache at).
      const double extra_s = 1.0 / tok_s - (graph_tok_s > 0 ? 1.0 / graph_tok_s : 0.0);
      const double extra_bytes = read.kv_per_entry * long_avg - bytes.kv_per_entry * avg_length;
      row("decode at " + std::to_string(long_context) + " entries: graph, " + std::string(to_string(type)) + " cache", fmt("%.1f tok/s", tok_s),
          bandwidth(tok_s, long_avg, read) + fmt(", +%.2f ms a step over ", 1e3 * extra_s) +
              fmt("+%.2f GB of cache", extra_bytes / 1e9) + (extra_s > 0 ? fmt(" (%.0f GB/s)", extra_bytes / extra_s / 1e9) : std::string()) +
              ", tokens as with f32: " + std::to_string(agree) + "/" + std::to_string(long_steps));
    }
  }

  // --- prefill ---
  for (auto precision : {mimo::Cuda::GemmPrecision::split_bf16, mimo::Cuda::GemmPrecision::bf16}) {
    for (int64_t n : prefills) {
      if (n < 1 || n > c.max_position_embeddings) continue;
      const auto tokens = prompt_tokens(n, V, 2);
      auto s = must(model.new_session({.context = n, .batch = n, .backend = {.precision = precision}}), "session");
      std::vector<double> t;
      // Two untimed runs: the first chooses cuBLASLt algorithms, the second captures the graph.
      for (int64_t r = 0; r < reps + 2; ++r) {
        must(s.truncate(0), "truncate");
        const auto start = Clock::now();
        must(s.append(tokens, {.logits = mimo::OutputRows::last, .hidden = mimo::OutputRows::none}), "prefill");
        if (r > 1) t.push_back(since(start));
      }
      const double tok_s = static_cast<double>(n) / median(t);
      row("prefill " + std::to_string(n) + " tokens (" + (precision == mimo::Cuda::GemmPrecision::split_bf16 ? "split-bf16" : "bf16") + ")",
          fmt("%.0f tok/s", tok_s), fmt("median of %.0f runs, ", static_cast<double>(reps)) + fmt("%.1f ms", 1e3 * median(t)));
    }
  }

  // --- speculative decoding with a replay drafter at 100% acceptance ---
  const std::vector<int32_t>& continuation = session_tokens;  // the greedy tokens after the prompt
  {
    auto plain_session = must(model.new_session({.context = context, .batch = 64}), "session");
    auto sampler = must(mimo::Sampler::create({.greedy = true}, static_cast<int32_t>(V)), "sampler");
    auto plain = must(mimo::generate(plain_session, prompt, sampler, {.max_tokens = decode, .default_stop_tokens = false, .mtp_depth = 0}),
                      "generate");
    row("generate(), plain greedy (session)", fmt("%.1f tok/s", plain.stats.decode_tokens_per_second()),
        "decode phase, the device's argmax ids (Sampler::chooses_argmax)");
    {  // the same with the logits copied and the full sampler (a zero logit bias turns the ids off)
      auto s = must(model.new_session({.context = context, .batch = 64}), "session");
      auto sam = must(mimo::Sampler::create({.logit_bias = {{0, 0.0f}}, .greedy = true}, static_cast<int32_t>(V)), "sampler");
      auto g = must(mimo::generate(s, prompt, sam, {.max_tokens = decode, .default_stop_tokens = false, .mtp_depth = 0}), "generate");
      row("generate(), greedy via logits to host", fmt("%.1f tok/s", g.stats.decode_tokens_per_second()),
          std::string("decode phase, host sampler over 151,680 logits; same tokens: ") + (g.tokens == plain.tokens ? "yes" : "NO"));
    }
    // Sampled decoding (temperature 0.7, top_k 40, top_p 0.95, a repeat penalty over 64 tokens):
    // the device's selection of the 104 largest logits (Sampler::candidates_needed) against every
    // logit copied to the host; the same seed gives the same tokens both ways.
    std::vector<int32_t> sampled[2];
    for (bool selection : {true, false}) {
      auto s = must(model.new_session({.context = context, .batch = 64}), "session");
      auto sam = must(mimo::Sampler::create({.temperature = 0.7f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.1f, .seed = 1},
                                            static_cast<int32_t>(V)),
                      "sampler");
      auto g = must(mimo::generate(s, prompt, sam, {.max_tokens = decode, .default_stop_tokens = false, .mtp_depth = 0,
                                                    .backend_selection = selection}),
                    "generate");
      sampled[selection ? 0 : 1] = g.tokens;
      row(std::string("generate(), sampled, ") + (selection ? "device selection" : "logits to host"),
          fmt("%.1f tok/s", g.stats.decode_tokens_per_second()),
          selection ? fmt("%.0f ids and logits a token come back", static_cast<double>(sam.candidates_needed()))
                    : std::string("host sampler over 151,680 logits; same tokens: ") + (g.tokens == sampled[0] ? "yes" : "NO"));
    }
    for (int64_t depth : depths) {
      if (depth < 1 || depth > 16) continue;
      mimo::ReplayDrafter<mimo::Cuda> replay(continuation, prompt_len, 1.0, static_cast<int32_t>(V));
      auto s = must(model.new_session({.context = context, .batch = 64}), "session");
      auto sam = must(mimo::Sampler::create({.greedy = true}, static_cast<int32_t>(V)), "sampler");
      auto g = must(mimo::generate(s, prompt, sam,
                                   {.max_tokens = decode, .default_stop_tokens = false, .mtp_depth = static_cast<int>(depth), .drafter = &replay}),
                    "generate");
      const bool same = g.tokens == plain.tokens;
      row("generate(), replay drafter 100%, depth " + std::to_string(depth), fmt("%.1f tok/s", g.stats.decode_tokens_per_second()),
          fmt("%.2f tokens/pass, ", g.stats.speculative.tokens_per_pass()) + fmt("acceptance %.2f, ", g.stats.speculative.acceptance_rate()) +
              (same ? "same tokens as plain" : "TOKENS DIFFER FROM PLAIN"));
    }
  }
  for (int64_t depth : depths) {
    if (depth < 1 || depth + 1 > 8 || static_cast<int64_t>(continuation.size()) < 2) continue;
    auto d = must(cuda_test::GraphDecoder::create(model, context, static_cast<int64_t>(kDecoderBatch)), "decoder");
    std::vector<int32_t> ids;
    prefill(d, prompt, ids);
    std::vector<double> passes;
    int64_t done = 0, mismatches = 0;
    int32_t pending = ids.back();
    while (done + depth + 1 <= static_cast<int64_t>(continuation.size())) {
      std::vector<int32_t> rows = {pending};
      for (int64_t j = 0; j < depth; ++j) rows.push_back(continuation[static_cast<size_t>(done + 1 + j)]);
      const auto t = Clock::now();
      must(d.step(rows, true, ids), "verify");
      passes.push_back(since(t));
      for (int64_t j = 0; j < depth; ++j) mismatches += ids[static_cast<size_t>(j)] != rows[static_cast<size_t>(j + 1)];
      pending = ids.back();
      done += depth + 1;
    }
    const double tok_s = static_cast<double>(depth + 1) / median(passes);
    row("verification passes of " + std::to_string(depth + 1) + " rows (graph)", fmt("%.1f tok/s", tok_s),
        fmt("%.2f ms/pass, ", 1e3 * median(passes)) + "all drafts accepted: " + (mismatches == 0 ? "yes" : "NO (" + std::to_string(mismatches) + ")"));
  }
  return 0;
}
