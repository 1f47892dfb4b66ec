// mimo bench --model DIR [--prompt 512] [--gen 64] [--threads N] [--mtp-depth D] [--repeat R]
//            [--quantize {q8,q4}] [--kv-cache {f32,f16,bf16,i8}] [--draft-head {q8,q4}] [--draft-layers {q8,q4}] [--draft-vocab N] [--exact]
//            [--prefetch {nta,t0}]
//
// Prefill and decode speed on the CPU (medians over repetitions), the bytes of weights one
// decoding step reads, the bandwidth that achieves and its fraction of the read bandwidth
// measured in the same run, peak resident memory, and a hash of the logits after the last
// generated token so that two runs (or two builds) can be compared.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <mimo/backend/cpu/bandwidth.hpp>
#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace {

using namespace mimo;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// "bf16", "q4 (g32)", ... after the first decoder layer's gate projection.
std::string weights_kind(const ModelTensors& m) {
  if (m.layers.empty()) return "?";
  const TensorView& t = m.layers[0].gate_proj;
  if (!t.quantized()) return std::string(to_string(t.dtype()));
  return std::string(to_string(t.quant)) + (t.mins ? "+min" : "") + " (groups of " + std::to_string(t.group) + ")";
}

uint64_t fnv1a(const float* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n * sizeof(float); ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  auto args = cli::Args::parse(argc, argv, {"model", "prompt", "gen", "threads", "mtp-depth", "repeat", "context", "quantize", "kv-cache", "draft-head", "draft-layers", "draft-vocab", "prefetch", "prefill-products"},
                               {"exact"});
  if (!args) return cli::fail("bench", args.error());
  auto prompt_n = args->get_int("prompt", 512);
  auto gen_n = args->get_int("gen", 64);
  auto threads = args->get_int("threads", 0);
  auto depth = args->get_int("mtp-depth", 0);
  auto repeat = args->get_int("repeat", 3);
  for (const Error* e : {prompt_n ? nullptr : &prompt_n.error(), gen_n ? nullptr : &gen_n.error(),
                         threads ? nullptr : &threads.error(), depth ? nullptr : &depth.error(),
                         repeat ? nullptr : &repeat.error()}) {
    if (e) return cli::fail("bench", *e);
  }
  if (*prompt_n < 1 || *gen_n < 1 || *repeat < 1) {
    return cli::fail("bench", Error(Errc::invalid_argument, "--prompt, --gen and --repeat must be at least 1"));
  }
  const std::string dir = args->get("model", cli::default_model_dir(cli::program_path(argv)).string());

  auto pool = cpu::ThreadPool::create(static_cast<int>(*threads));
  if (!pool) return cli::fail("bench", pool.error());
  const auto load_start = Clock::now();
  auto load = cli::load_options(*args);
  if (!load) return cli::fail("bench", load.error());
  auto kv = cli::kv_cache_type(*args);
  if (!kv) return cli::fail("bench", kv.error());
  auto prefetch = cli::weight_prefetch(*args);
  if (!prefetch) return cli::fail("bench", prefetch.error());
  auto model = Model<Cpu>::load(dir, *load);
  if (!model) return cli::fail("bench", model.error());
  const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
  // The machine's read bandwidth drifts (other tenants, frequency): probe it before the first
  // repetition and after each, and compare the decode rate with the median of the probes.
  // The probe reads (up to 1 GiB of) the model's own products, so it takes no memory of its own
  // and sees the same pages (and page size) as decoding.
  std::vector<double> bandwidths;
  std::vector<std::span<const std::byte>> probe_spans;
  uint64_t probe_bytes = 0;
  for (const auto& layer : model->tensors().layers) {
    for (const TensorView* t : {&layer.gate_proj, &layer.up_proj, &layer.down_proj, &layer.q_proj, &layer.o_proj}) {
      if (probe_bytes >= (1ull << 30)) break;
      probe_spans.emplace_back(t->data, t->nbytes());
      probe_bytes += t->nbytes();
    }
  }
  auto probe = [&]() -> Status {
    bandwidths.push_back(cpu::measure_read_bandwidth(**pool, probe_spans, 3));
    return ok();
  };
  if (auto s = probe(); !s) return cli::fail("bench", s.error());

  const int64_t context = *prompt_n + *gen_n + 8;
  Cpu::ContextOptions backend{.pool = *pool, .exact = args->flag("exact"), .kv_cache = *kv, .weight_prefetch = *prefetch};
  if (auto s = cli::prefill_products(*args, backend); !s) return cli::fail("bench", s.error());
  auto session = model->new_session({.context = context, .backend = backend});
  if (!session) return cli::fail("bench", session.error());
  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(static_cast<size_t>(*prompt_n));
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(std::min<int64_t>(model->config().vocab_size, 151643)));

  std::vector<double> prefill_rates, decode_rates;
  uint64_t logits_hash = 0;
  GenerationStats last_stats;
  for (int64_t r = 0; r < *repeat; ++r) {
    if (auto s = session->truncate(0); !s) return cli::fail("bench", s.error());
    auto sampler = Sampler::create({.greedy = true}, static_cast<int32_t>(model->config().vocab_size));
    if (!sampler) return cli::fail("bench", sampler.error());
    auto g = generate(*session, prompt, *sampler,
                      {.max_tokens = *gen_n, .default_stop_tokens = false, .mtp_depth = static_cast<int>(*depth),
                       .commit_last = false});
    if (!g) return cli::fail("bench", g.error());
    prefill_rates.push_back(g->stats.prefill_tokens_per_second());
    decode_rates.push_back(g->stats.decode_tokens_per_second());
    // The hash: the logits after the last generated token, from one more (untimed) step, as
    // greedy decoding keeps no logits on the host (only the backend's argmax ids).
    if (r + 1 == *repeat && !g->tokens.empty()) {
      auto after = session->append({g->tokens.back()});
      if (!after) return cli::fail("bench", after.error());
      const auto last = after->last();
      logits_hash = fnv1a(last.data(), last.size());
    }
    last_stats = g->stats;
    if (auto s = probe(); !s) return cli::fail("bench", s.error());
  }
  const double bandwidth = median(bandwidths);
  const auto [bw_min, bw_max] = std::minmax_element(bandwidths.begin(), bandwidths.end());
  const uint64_t bytes = decode_weight_bytes(model->tensors());
  const double decode = median(decode_rates);
  const double achieved = static_cast<double>(bytes) * decode / 1e9;
  std::printf("| model | %s |\n|---|---|\n", dir.c_str());
  std::printf("| threads | %d |\n", (*pool)->size());
  std::printf("| weights | %s |\n", weights_kind(model->tensors()).c_str());
  std::printf("| KV cache | %s%s |\n", std::string(cpu::to_string(*kv)).c_str(),
              args->flag("exact") ? ", exact (fp32) prefill" : "");
  std::printf("| weight prefetch hint | %s |\n", cpu::to_string(*prefetch));
  const cpu::PrefillProducts products{.exact = backend.exact, .bf16 = backend.bf16_prefill, .int8 = backend.int8_prefill};
  const auto& layers = model->tensors().layers;  // as prefill multiplies by the layers' weights
  const cpu::GemmPath path = layers.empty() ? cpu::GemmPath::f32
                                            : cpu::gemm_path(backend.isa, products, layers[0].gate_proj.quant,
                                                             layers[0].gate_proj.dtype());
  std::printf("| prefill products | %s |\n", cpu::to_string(path));
  std::printf("| load | %.2f s |\n", load_seconds);
  std::printf("| prefill (%lld tokens) | %.2f tokens/s |\n", static_cast<long long>(*prompt_n), median(prefill_rates));
  std::printf("| decode (%lld tokens, MTP depth %lld) | %.2f tokens/s |\n", static_cast<long long>(*gen_n),
              static_cast<long long>(*depth), decode);
  std::printf("| weights read per token | %.3f GB |\n", static_cast<double>(bytes) / 1e9);
  std::printf("| achieved | %.1f GB/s |\n", achieved);
  std::printf("| measured read bandwidth | %.1f GB/s (median of %zu probes over %.2f GB of the weights, %.1f to %.1f) |\n",
              bandwidth, bandwidths.size(), static_cast<double>(probe_bytes) / 1e9, *bw_min, *bw_max);
  std::printf("| fraction of bandwidth | %.0f%% |\n", 100.0 * achieved / bandwidth);
  if (*depth > 0) {
    std::printf("| drafted / accepted | %lld / %lld (%.2f tokens per pass) |\n",
                static_cast<long long>(last_stats.speculative.drafted), static_cast<long long>(last_stats.speculative.accepted),
                last_stats.speculative.tokens_per_pass());
    std::printf("| drafts from | token ids below %lld of %lld |\n", static_cast<long long>(model->draft_vocab()),
                static_cast<long long>(model->config().vocab_size));
  }
  if (load->quantize.type == QuantType::none) {
    // Stretches of the weights mapped in 4 KiB pages stream slower (a TLB miss per page): after
    // loading, which reads small-page stretches again where it can, they should be few.
    uint64_t mapped = 0, huge = 0;
    for (const auto& f : model->checkpoint().files()) {
      mapped += f->file_size();
      huge += f->mapping().huge_mapped_bytes();
    }
    std::printf("| weights mapped in huge pages | %.2f of %.2f GB |\n", static_cast<double>(huge) / 1e9,
                static_cast<double>(mapped) / 1e9);
  }
  std::printf("| peak resident memory | %.2f GiB |\n", peak_rss_gib());
  std::printf("| logits hash | %016llx |\n", static_cast<unsigned long long>(logits_hash));
  std::printf("| repetitions | %lld (medians) |\n", static_cast<long long>(*repeat));
  return 0;
}
