// ModelConfig::parse on arbitrary text. What it accepts must satisfy the invariants the loader
// relies on, and survive a round trip through to_json().
#include <cstdint>
#include <string>

#include <mimo/config.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const simdjson::padded_string text(reinterpret_cast<const char*>(data), size);
  auto c = mimo::ModelConfig::parse(text, "config.json");
  if (!c) {
    FUZZ_CHECK(!c.error().message().empty());
    return 0;
  }
  FUZZ_CHECK(c->vocab_size >= 1 && c->hidden_size >= 1 && c->intermediate_size >= 1 && c->num_hidden_layers >= 1);
  FUZZ_CHECK(c->num_attention_heads >= 1 && c->num_key_value_heads >= 1);
  FUZZ_CHECK(c->num_attention_heads % c->num_key_value_heads == 0);
  FUZZ_CHECK(c->head_dim >= 2 && c->head_dim % 2 == 0);
  FUZZ_CHECK(c->num_nextn_predict_layers >= 0 && c->max_position_embeddings >= 1);
  FUZZ_CHECK(c->bos_token_id >= -1 && c->bos_token_id < c->vocab_size);
  for (int64_t id : c->eos_token_id) FUZZ_CHECK(id >= 0 && id < c->vocab_size);

  const std::string json = c->to_json();
  auto again = mimo::ModelConfig::parse(simdjson::padded_string(json), "round trip");
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(again->vocab_size == c->vocab_size && again->hidden_size == c->hidden_size);
  FUZZ_CHECK(again->intermediate_size == c->intermediate_size && again->num_hidden_layers == c->num_hidden_layers);
  FUZZ_CHECK(again->num_attention_heads == c->num_attention_heads);
  FUZZ_CHECK(again->num_key_value_heads == c->num_key_value_heads && again->head_dim == c->head_dim);
  FUZZ_CHECK(again->num_nextn_predict_layers == c->num_nextn_predict_layers);
  FUZZ_CHECK(again->max_position_embeddings == c->max_position_embeddings);
  FUZZ_CHECK(again->rope_theta == c->rope_theta && again->rms_norm_eps == c->rms_norm_eps);
  FUZZ_CHECK(again->attention_bias == c->attention_bias && again->tie_word_embeddings == c->tie_word_embeddings);
  FUZZ_CHECK(again->eos_token_id == c->eos_token_id && again->bos_token_id == c->bos_token_id);
  return 0;
}
