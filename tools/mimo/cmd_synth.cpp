// mimo synth --out DIR --preset {tiny,7b} [--seed S] [--shards N] [--dtype bf16|f16|f32]
//            [--tokenizer FILE] [--<config key> VALUE ...]
#include <cstdio>
#include <set>
#include <string>

#include <mimo/synth.hpp>

#include "args.hpp"
#include "commands.hpp"

int cmd_synth(int argc, char** argv) {
  using namespace mimo;
  const std::set<std::string> int_keys = {
      "vocab_size",          "hidden_size",         "intermediate_size",        "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim",                 "num_nextn_predict_layers",
      "max_position_embeddings", "bos_token_id",    "eos_token_id"};
  const std::set<std::string> float_keys = {"rope_theta", "rms_norm_eps"};
  const std::set<std::string> bool_keys = {"attention_bias", "tie_word_embeddings"};
  std::set<std::string> options = {"out", "preset", "seed", "shards", "dtype", "tokenizer"};
  options.insert(int_keys.begin(), int_keys.end());
  options.insert(float_keys.begin(), float_keys.end());
  options.insert(bool_keys.begin(), bool_keys.end());
  auto args = cli::Args::parse(argc, argv, options, {"quiet"});
  if (!args) return cli::fail("synth", args.error());
  if (!args->has("out")) return cli::fail("synth", Error(Errc::invalid_argument, "--out DIR is required"));

  const std::string preset = args->get("preset", "tiny");
  ModelConfig c;
  if (preset == "tiny") c = synth::preset_tiny();
  else if (preset == "7b") c = synth::preset_7b();
  else return cli::fail("synth", Error(Errc::invalid_argument, "--preset must be tiny or 7b, not '" + preset + "'"));

  for (const auto& [key, value] : args->values()) {
    if (int_keys.count(key)) {
      auto v = cli::Args::parse_int(key, value);
      if (!v) return cli::fail("synth", v.error());
      if (key == "vocab_size") c.vocab_size = *v;
      else if (key == "hidden_size") c.hidden_size = *v;
      else if (key == "intermediate_size") c.intermediate_size = *v;
      else if (key == "num_hidden_layers") c.num_hidden_layers = *v;
      else if (key == "num_attention_heads") c.num_attention_heads = *v;
      else if (key == "num_key_value_heads") c.num_key_value_heads = *v;
      else if (key == "head_dim") c.head_dim = *v;
      else if (key == "num_nextn_predict_layers") c.num_nextn_predict_layers = *v;
      else if (key == "max_position_embeddings") c.max_position_embeddings = *v;
      else if (key == "bos_token_id") c.bos_token_id = *v;
      else if (key == "eos_token_id") c.eos_token_id = {*v};
    } else if (float_keys.count(key)) {
      auto v = args->get_double(key, 0.0);
      if (!v) return cli::fail("synth", v.error());
      if (key == "rope_theta") c.rope_theta = *v;
      else c.rms_norm_eps = *v;
    } else if (bool_keys.count(key)) {
      if (value != "true" && value != "false") {
        return cli::fail("synth", Error(Errc::invalid_argument, "--" + key + " must be true or false"));
      }
      if (key == "attention_bias") c.attention_bias = value == "true";
      else c.tie_word_embeddings = value == "true";
    }
  }
  // Keep ids valid when the vocabulary shrinks.
  if (c.bos_token_id >= c.vocab_size) c.bos_token_id = c.vocab_size - 1;
  for (auto& e : c.eos_token_id) {
    if (e >= c.vocab_size) e = c.vocab_size - 1;
  }
  // Validate through the same parser the loader uses.
  {
    const std::string json = c.to_json();
    simdjson::padded_string text(json);
    auto parsed = ModelConfig::parse(text, "synthesised config");
    if (!parsed) return cli::fail("synth", parsed.error());
  }

  synth::Options o;
  auto seed = args->get_int("seed", 0);
  if (!seed) return cli::fail("synth", seed.error());
  o.seed = static_cast<uint64_t>(*seed);
  auto shards = args->get_int("shards", 1);
  if (!shards) return cli::fail("synth", shards.error());
  o.shards = static_cast<int>(*shards);
  const std::string dtype = args->get("dtype", "bf16");
  if (dtype == "bf16") o.dtype = DType::bf16;
  else if (dtype == "f16") o.dtype = DType::f16;
  else if (dtype == "f32") o.dtype = DType::f32;
  else return cli::fail("synth", Error(Errc::invalid_argument, "--dtype must be bf16, f16 or f32"));
  o.tokenizer = args->get("tokenizer");
  const bool quiet = args->flag("quiet");
  int last_percent = -1;
  o.on_progress = [&](uint64_t done, uint64_t total) {
    const int percent = static_cast<int>(100 * done / (total ? total : 1));
    if (!quiet && percent != last_percent) {
      std::fprintf(stderr, "\rmimo synth: %3d%% of %.2f GB", percent, static_cast<double>(total) / 1e9);
      last_percent = percent;
    }
    return true;
  };
  auto st = synth::write_checkpoint(args->get("out"), c, o);
  if (!quiet) std::fprintf(stderr, "\n");
  if (!st) return cli::fail("synth", st.error());
  return 0;
}
