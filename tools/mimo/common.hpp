// Pieces the mimo subcommands share: model, tokenizer and session options from the command line,
// sampler options, statistics on stderr. Templates over the backend, so the CUDA build of the
// tool runs the same commands.
#pragma once

#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include <unistd.h>

#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>
#include <mimo/sampler.hpp>
#include <mimo/tokenizer.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "cpu_model.hpp"

namespace mimo::cli {

// Options every model-running command accepts.
inline std::set<std::string> model_options() {
  return {"model", "threads", "context", "backend", "tokenizer", "device", "quantize", "kv-cache", "draft-head", "draft-layers", "draft-vocab", "prefetch", "prefill-products"};
}
inline std::set<std::string> sampling_options() {
  return {"temp", "top-k", "top-p", "min-p", "repeat-penalty", "seed", "mtp-depth"};
}

// Where the model is: --model, or the embedded default model.
inline std::string model_dir(const Args& args, const char* argv0) {
  return args.get("model", default_model_dir(argv0).string());
}

// The tokenizer: --tokenizer, else the checkpoint's tokenizer.json when it has one.
inline Expected<std::optional<Tokenizer>> load_tokenizer(const Args& args, const std::string& model) {
  std::error_code ec;
  if (args.has("tokenizer")) {
    auto t = Tokenizer::load(args.get("tokenizer"));
    if (!t) return std::move(t).error();
    return std::optional<Tokenizer>(std::move(*t));
  }
  if (!std::filesystem::exists(std::filesystem::path(model) / "tokenizer.json", ec)) return std::optional<Tokenizer>();
  auto t = Tokenizer::load(model);
  if (!t) return std::move(t).error();
  return std::optional<Tokenizer>(std::move(*t));
}

// --greedy, or --temp/--top-k/--top-p/--min-p/--repeat-penalty/--seed. The defaults are MiMo's
// recommended temperature 0.6 and top-p 0.95.
inline Expected<SamplerOptions> sampler_options(const Args& args) {
  SamplerOptions o{.temperature = 0.6f, .top_p = 0.95f};
  auto temp = args.get_double("temp", o.temperature);
  auto top_k = args.get_int("top-k", 0);
  auto top_p = args.get_double("top-p", o.top_p);
  auto min_p = args.get_double("min-p", 0.0);
  auto repeat = args.get_double("repeat-penalty", 1.0);
  auto seed = args.get_int("seed", 0);
  for (const Error* e : {temp ? nullptr : &temp.error(), top_k ? nullptr : &top_k.error(),
                         top_p ? nullptr : &top_p.error(), min_p ? nullptr : &min_p.error(),
                         repeat ? nullptr : &repeat.error(), seed ? nullptr : &seed.error()}) {
    if (e) return *e;
  }
  o.temperature = static_cast<float>(*temp);
  o.top_k = static_cast<int32_t>(*top_k);
  o.top_p = static_cast<float>(*top_p);
  o.min_p = static_cast<float>(*min_p);
  o.repeat_penalty = static_cast<float>(*repeat);
  o.seed = static_cast<uint64_t>(*seed);
  o.greedy = args.flag("greedy");
  return o;
}

// --quantize {q8,q4}: quantize the float products while loading (CPU backend; a checkpoint
// written by `mimo quantize` needs no option). --draft-head {q8,q4}: the MTP drafter's logits
// through a quantized copy of lm_head (LoadOptions::draft_head; CPU backend). --draft-layers
// {q8,q4}: the MTP layers quantized while loading (LoadOptions::draft_layers; CPU backend).
// --draft-vocab N: the drafter proposes only token ids below N (LoadOptions::draft_vocab).
inline Expected<LoadOptions> load_options(const Args& args) {
  LoadOptions o;
  auto quant = [&](const char* flag) -> Expected<QuantType> {
    const std::string q = args.get(flag, "none");
    if (q == "q8") return QuantType::q8;
    if (q == "q4") return QuantType::q4;
    if (q == "none") return QuantType::none;
    return Error(Errc::invalid_argument, std::string("--") + flag + " must be q8, q4 or none, not '" + q + "'");
  };
  auto q = quant("quantize");
  if (!q) return std::move(q).error();
  o.quantize.type = *q;
  auto head = quant("draft-head");
  if (!head) return std::move(head).error();
  o.draft_head = *head;
  auto layers = quant("draft-layers");
  if (!layers) return std::move(layers).error();
  o.draft_layers = *layers;
  auto vocab = args.get_int("draft-vocab", 0);
  if (!vocab) return std::move(vocab).error();
  o.draft_vocab = *vocab;
  return o;
}

// --kv-cache {f32,f16,bf16,i8}: the KV cache's element type (default: `fallback`, the backend's
// default; the CUDA backend stores f32, f16 and bf16 and says so when asked for i8).
inline Expected<KvType> kv_cache_type(const Args& args, KvType fallback = KvType::f16) {
  if (!args.has("kv-cache")) return fallback;
  const std::string t = args.get("kv-cache", "");
  for (KvType k : {KvType::f32, KvType::f16, KvType::bf16, KvType::i8}) {
    if (t == to_string(k)) return k;
  }
  return Error(Errc::invalid_argument, "--kv-cache must be f32, f16, bf16 or i8, not '" + t + "'");
}

// --prefetch {nta,t0} (CPU backend): the hint for the weights decoding streams (default: what this
// CPU's vendor measured faster, cpu::default_weight_prefetch).
inline Expected<cpu::WeightPrefetch> weight_prefetch(const Args& args) {
  if (!args.has("prefetch")) return cpu::default_weight_prefetch();
  const std::string t = args.get("prefetch", "");
  if (t == "nta") return cpu::WeightPrefetch::non_temporal;
  if (t == "t0") return cpu::WeightPrefetch::t0;
  return Error(Errc::invalid_argument, "--prefetch must be nta or t0, not '" + t + "'");
}

// --prefill-products {auto,int8,bf16,fp32} (CPU backend): what prefill's products over BF16 and
// quantized weights may use: auto, the context's defaults (int8 activations for quantized weights
// where the CPU has AVX512_VNNI; bf16 dot products on AMD); int8, int8 activations where it can,
// else bf16 dot products; bf16, bf16 dot products where it can; fp32, widened weights (as --exact
// does for prefill). Sets o's bf16_prefill and int8_prefill.
inline Status prefill_products(const Args& args, Cpu::ContextOptions& o) {
  const std::string t = args.get("prefill-products", "auto");
  if (t == "auto") return ok();
  if (t != "int8" && t != "bf16" && t != "fp32") {
    return Error(Errc::invalid_argument, "--prefill-products must be auto, int8, bf16 or fp32, not '" + t + "'");
  }
  o.int8_prefill = t == "int8";
  o.bf16_prefill = t != "fp32";
  return ok();
}

// The backend's execution options from the command line (specialised per backend).
template <class B>
Expected<typename B::ContextOptions> context_options(const Args& args);

template <>
inline Expected<Cpu::ContextOptions> context_options<Cpu>(const Args& args) {
  auto threads = args.get_int("threads", 0);
  if (!threads) return std::move(threads).error();
  if (*threads < 0 || *threads > 1024) return Error(Errc::invalid_argument, "--threads must be in [0, 1024]");
  auto kv = kv_cache_type(args);
  if (!kv) return std::move(kv).error();
  auto prefetch = weight_prefetch(args);
  if (!prefetch) return std::move(prefetch).error();
  Cpu::ContextOptions o{.threads = static_cast<int>(*threads), .kv_cache = *kv, .weight_prefetch = *prefetch};
  if (auto s = prefill_products(args, o); !s) return std::move(s).error();
  return o;
}

inline void print_stats(const GenerationStats& s) {
  std::fprintf(stderr, "prompt: %lld tokens in %.2f s (%.1f tokens/s); first token after %.2f s\n",
               static_cast<long long>(s.prompt_tokens), s.prefill_seconds, s.prefill_tokens_per_second(),
               s.time_to_first_token);
  std::fprintf(stderr, "generated: %lld tokens, %.2f tokens/s\n", static_cast<long long>(s.generated_tokens),
               s.decode_tokens_per_second());
  if (s.speculative.drafted > 0) {
    std::fprintf(stderr, "speculative: drafted %lld, accepted %lld (%.1f%%), %.2f tokens per main-model pass\n",
                 static_cast<long long>(s.speculative.drafted), static_cast<long long>(s.speculative.accepted),
                 100.0 * s.speculative.acceptance_rate(), s.speculative.tokens_per_pass());
  }
}

inline bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) != 0; }

}  // namespace mimo::cli
