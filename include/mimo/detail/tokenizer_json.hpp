// Reading tokenizer.json (and tokenizer_config.json) into the tables of detail/tokenizer_data.hpp.
//
// tokenizer.json is 11 MB, nearly all of it model.vocab and model.merges. Those two are read with
// simdjson's On-Demand API straight into the tables; every other field is copied, as JSON text,
// into a small document that the DOM helpers of io/json.hpp check. A DOM of the whole file would
// touch about 13 MB more memory (its tape and string copies), which costs more time than all the
// parsing on a machine where page faults are slow.
#pragma once

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/detail/bpe.hpp"
#include "mimo/detail/pretokenizer.hpp"
#include "mimo/detail/tokenizer_data.hpp"
#include "mimo/detail/unicode.hpp"
#include "mimo/error.hpp"
#include "mimo/io/json.hpp"

namespace mimo::detail {


inline std::string quote_text(std::string_view s) {
  constexpr size_t shown = 80;
  std::string out = "'";
  out.append(s.substr(0, shown));
  if (s.size() > shown) out += "...";
  out += "'";
  return out;
}

// A string field that must equal `expected` when present.
inline Status expect_string(const io::JsonObject& object, std::string_view key, std::string_view expected,
                            bool required = true) {
  if (!object.has(key)) {
    if (!required) return ok();
    return object.missing(key);
  }
  auto value = object.get_string(key);
  if (!value) return std::move(value).error();
  if (*value != expected) {
    return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': expected " +
                                        quote_text(expected) + ", found " + quote_text(*value));
  }
  return ok();
}

// A boolean field that must equal `expected` when present.
inline Status expect_bool(const io::JsonObject& object, std::string_view key, bool expected) {
  auto value = object.get_bool(key, expected);
  if (!value) return std::move(value).error();
  if (*value != expected) {
    return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': only " +
                                        (expected ? "true" : "false") + " is supported");
  }
  return ok();
}

// A field that must be null, absent, or the empty string.
inline Status expect_empty(const io::JsonObject& object, std::string_view key) {
  if (!object.has(key)) return ok();
  auto value = object.get_string(key);
  if (value && value->empty()) return ok();
  return Error(Errc::unsupported, object.where() + ": key '" + std::string(key) + "': only null or \"\" is supported");
}

inline Status check_normalizer(const io::JsonObject& root, bool& nfc) {
  nfc = false;
  if (!root.has("normalizer")) return ok();
  auto normalizer = root.get_object("normalizer");
  if (!normalizer) return std::move(normalizer).error();
  auto type = normalizer->get_string("type");
  if (!type) return std::move(type).error();
  if (*type == "NFC") {
    nfc = true;
    return ok();
  }
  if (*type == "Sequence") {
    auto list = normalizer->get_array("normalizers");
    if (!list) return std::move(list).error();
    size_t index = 0;
    for (simdjson::dom::element e : *list) {
      simdjson::dom::object o;
      std::string_view t;
      if (e.get(o) || o["type"].get(t) || t != "NFC") {
        return Error(Errc::unsupported, normalizer->where() + ".normalizers[" + std::to_string(index) +
                                            "]: only NFC normalizers are supported");
      }
      nfc = true;
      ++index;
    }
    return ok();
  }
  return Error(Errc::unsupported, normalizer->where() + ": key 'type': " + quote_text(*type) +
                                      " is not supported (only NFC, as MiMo's tokenizer uses)");
}

// The pre-tokenizer must be Sequence[Split(Qwen2 pattern, Isolated), ByteLevel(no regex)].
inline Status check_pre_tokenizer(const io::JsonObject& root) {
  auto pre = root.get_object("pre_tokenizer");
  if (!pre) return std::move(pre).error();
  const std::string expected_text =
      "a Sequence of Split (the Qwen2 pattern, behavior Isolated) and ByteLevel (use_regex false)";
  if (auto s = expect_string(*pre, "type", "Sequence"); !s) return std::move(s).error().with_context("expected " + expected_text);
  auto list = pre->get_array("pretokenizers");
  if (!list) return std::move(list).error();
  if (list->size() != 2) {
    return Error(Errc::unsupported, pre->where() + ": key 'pretokenizers': expected " + expected_text + ", found " +
                                        std::to_string(list->size()) + " entries");
  }
  simdjson::dom::object split_raw, byte_level_raw;
  if (list->at(0).get(split_raw) || list->at(1).get(byte_level_raw)) {
    return Error(Errc::unsupported, pre->where() + ".pretokenizers: entries must be objects");
  }
  const io::JsonObject split(split_raw, pre->where() + ".pretokenizers[0]");
  const io::JsonObject byte_level_object(byte_level_raw, pre->where() + ".pretokenizers[1]");
  if (auto s = expect_string(split, "type", "Split"); !s) return s;
  auto pattern = split.get_object("pattern");
  if (!pattern) return std::move(pattern).error();
  if (auto s = expect_string(*pattern, "Regex", qwen2_split_pattern); !s) return s;
  if (auto s = expect_string(split, "behavior", "Isolated"); !s) return s;
  if (auto s = expect_bool(split, "invert", false); !s) return s;
  if (auto s = expect_string(byte_level_object, "type", "ByteLevel"); !s) return s;
  if (auto s = expect_bool(byte_level_object, "add_prefix_space", false); !s) return s;
  if (auto s = expect_bool(byte_level_object, "use_regex", false); !s) return s;
  return ok();
}

inline Status check_decoder_and_post_processor(const io::JsonObject& root) {
  auto decoder = root.get_object("decoder");
  if (!decoder) return std::move(decoder).error();
  if (auto s = expect_string(*decoder, "type", "ByteLevel"); !s) return s;
  if (root.has("post_processor")) {
    auto post = root.get_object("post_processor");
    if (!post) return std::move(post).error();
    // ByteLevel post-processing only adjusts offsets; anything that adds tokens is refused.
    if (auto s = expect_string(*post, "type", "ByteLevel"); !s) return s;
  }
  return ok();
}

// Reads "bos_token" etc. of tokenizer_config.json: a string or an object with "content".
inline Expected<std::optional<std::string_view>> config_token(const io::JsonObject& config, std::string_view key) {
  if (!config.has(key)) return std::optional<std::string_view>();
  auto e = config.element(key);
  if (!e) return std::move(e).error();
  std::string_view text;
  if (e->get(text) == simdjson::SUCCESS) return std::optional<std::string_view>(text);
  simdjson::dom::object o;
  if (e->get(o) == simdjson::SUCCESS && o["content"].get(text) == simdjson::SUCCESS)
    return std::optional<std::string_view>(text);
  return config.bad(key, "expected a string or an object with \"content\"");
}

// Appends `s` as a JSON string literal.
inline void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<uint8_t>(c) < 0x20) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\u00";
      out += hex[(c >> 4) & 0xF];
      out += hex[c & 0xF];
    } else {
      out += c;
    }
  }
  out += '"';
}

inline Error json_error(const std::string& where, simdjson::error_code code) {
  return Error(Errc::parse, where + ": invalid JSON: " + io::json_error_text(code));
}

// The JSON text of a value, consuming it.
inline simdjson::simdjson_result<std::string_view> raw_json_of(simdjson::ondemand::value value) {
  simdjson::ondemand::json_type type;
  if (auto error = value.type().get(type)) return error;
  if (type == simdjson::ondemand::json_type::object) {
    simdjson::ondemand::object o;
    if (auto error = value.get_object().get(o)) return error;
    return o.raw_json();
  }
  if (type == simdjson::ondemand::json_type::array) {
    simdjson::ondemand::array a;
    if (auto error = value.get_array().get(a)) return error;
    return a.raw_json();
  }
  return value.raw_json_token();
}

// The text of a JSON string that starts after the opening quote at `p`, when it has no escapes:
// then the text is used where it lies instead of being copied into the parser's buffer (which
// would touch megabytes more memory). nullopt: it has escapes, unescape it. `end` bounds the scan.
inline std::optional<std::string_view> plain_string_at(const char* p, const char* end) {
  for (const char* q = p; q < end; ++q) {
    if (*q == '"') return std::string_view(p, static_cast<size_t>(q - p));
    if (*q == '\\') return std::nullopt;
  }
  return std::nullopt;
}

// A string value's text, in place when it can be.
inline simdjson::error_code string_value(simdjson::ondemand::value& value, const char* end, std::string_view& out) {
  const std::string_view token = value.raw_json_token();
  if (!token.empty() && token[0] == '"') {
    if (auto plain = plain_string_at(token.data() + 1, end)) {
      out = *plain;
      return simdjson::SUCCESS;
    }
  }
  return value.get_string().get(out);
}

// model.vocab: {"token": id, ...}
inline Status read_vocab(simdjson::ondemand::value value, TokenizerData& data, const std::string& where,
                         const char* end) {
  simdjson::ondemand::object vocab;
  if (value.get_object().get(vocab)) return Error(Errc::invalid_checkpoint, where + ": expected an object");
  size_t count = 0;
  if (auto error = vocab.count_fields().get(count)) return json_error(where, error);
  if (count > TokenizerLimits::max_vocab) {
    return Error(Errc::out_of_memory, where + ": " + std::to_string(count) + " tokens, more than the limit of " +
                                          std::to_string(TokenizerLimits::max_vocab));
  }
  data.vocab.reset(count);
  // Tokens are added in batches whose table slots are fetched first, to overlap cache misses.
  struct Pending {
    std::string_view token;
    int32_t id;
    uint64_t hash;
  };
  std::array<Pending, 32> batch;
  size_t batched = 0;
  const auto add_batch = [&]() -> Status {
    for (size_t i = 0; i < batched; ++i) data.vocab.prefetch(batch[i].hash);
    for (size_t i = 0; i < batched; ++i) {
      const Pending& p = batch[i];
      switch (data.vocab.add(p.token, p.id, p.hash)) {
        case Vocabulary::AddResult::added: break;
        case Vocabulary::AddResult::id_taken:
          return Error(Errc::invalid_checkpoint, where + ": id " + std::to_string(p.id) + " is given to two tokens (" +
                                                     quote_text(p.token) + " is the second)");
        case Vocabulary::AddResult::text_taken:
          return Error(Errc::invalid_checkpoint, where + ": token " + quote_text(p.token) + " appears twice");
      }
    }
    batched = 0;
    return ok();
  };
  for (auto field_result : vocab) {
    simdjson::ondemand::field field;
    if (auto error = std::move(field_result).get(field)) return json_error(where, error);
    std::string_view token;
    if (auto plain = plain_string_at(field.key().raw(), end)) token = *plain;
    else if (auto error = field.unescaped_key().get(token)) return json_error(where, error);
    if (token.size() > TokenizerLimits::max_token_bytes) {
      return Error(Errc::out_of_memory, where + ": token " + quote_text(token) + " is longer than " +
                                            std::to_string(TokenizerLimits::max_token_bytes) + " bytes");
    }
    int64_t id;
    if (field.value().get_int64().get(id) || id < 0 || id > TokenizerLimits::max_token_id) {
      return Error(Errc::invalid_checkpoint, where + ": token " + quote_text(token) + ": expected an id in [0, " +
                                                 std::to_string(TokenizerLimits::max_token_id) + "]");
    }
    batch[batched++] = {token, static_cast<int32_t>(id), hash_bytes(token)};
    if (batched == batch.size()) {
      if (auto s = add_batch(); !s) return s;
    }
  }
  if (auto s = add_batch(); !s) return s;
  data.vocab.finish();
  return ok();
}

// The byte a token stands for when its text is one byte-level character, else -1.
inline int single_byte_of(std::string_view text) {
  if (text.empty() || text.size() > 2) return -1;
  const auto c = decode_utf8(text.data(), text.data() + text.size());
  return c.valid && c.length == text.size() ? byte_of_byte_level_char(c.code_point) : -1;
}

static_assert(TokenizerLimits::max_token_id <= MergeTable::max_id && TokenizerLimits::max_merges <= MergeTable::max_merges,
              "the merge table packs ids and ranks into the bits these limits allow");

// model.merges: [["a", "b"], ...] or, as older files write them, ["a b", ...]. Needs the vocabulary.
inline Status read_merges(simdjson::ondemand::value value, TokenizerData& data, const std::string& where,
                          const char* end) {
  // The byte-level symbol of each byte, and the table of merges between two bytes' symbols.
  bool all_bytes = true;
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    append_utf8(symbol, byte_level.char_of_byte[b]);
    data.byte_ids[b] = data.vocab.find(symbol);
    all_bytes = all_bytes && data.byte_ids[b] >= 0;
  }
  if (all_bytes) data.byte_pair_ranks.assign(256 * 256, no_rank);

  simdjson::ondemand::array merges;
  if (value.get_array().get(merges)) return Error(Errc::invalid_checkpoint, where + ": expected an array");
  size_t count = 0;
  if (auto error = merges.count_elements().get(count)) return json_error(where, error);
  if (count > TokenizerLimits::max_merges) {
    return Error(Errc::out_of_memory, where + ": " + std::to_string(count) + " merges, more than the limit of " +
                                          std::to_string(TokenizerLimits::max_merges));
  }
  data.merges.reset(count);
  std::string joined;
  uint32_t rank = 0;
  size_t index = 0;
  int32_t merged_id_offset = 0;
  // Merges are resolved in batches: fetch the vocabulary slots of a batch, look its tokens up,
  // fetch the merge-table slots, then insert; the cache misses of a batch overlap.
  struct Pending {
    std::string_view left, right;
    size_t index;
    uint64_t left_hash, right_hash;
    int32_t left_id, right_id, merged_id;
  };
  std::array<Pending, 32> batch;
  size_t batched = 0;
  const auto merge_batch = [&]() -> Status {
    for (size_t i = 0; i < batched; ++i) {
      data.vocab.prefetch(batch[i].left_hash);
      data.vocab.prefetch(batch[i].right_hash);
    }
    for (size_t i = 0; i < batched; ++i) {
      Pending& p = batch[i];
      p.left_id = data.vocab.find(p.left, p.left_hash);
      p.right_id = data.vocab.find(p.right, p.right_hash);
      joined.assign(p.left).append(p.right);
      // Vocabularies trained by BPE list each merge's result in merge order (Qwen2: id 256 +
      // rank), so try the id that continues the pattern before hashing.
      const uint32_t this_rank = rank + static_cast<uint32_t>(i);
      p.merged_id = static_cast<int32_t>(this_rank) + merged_id_offset;
      if (!data.vocab.contains_id(p.merged_id) || data.vocab.text(p.merged_id) != joined) {
        p.merged_id = data.vocab.find(joined);
        merged_id_offset = p.merged_id - static_cast<int32_t>(this_rank);
      }
      if (p.left_id < 0 || p.right_id < 0 || p.merged_id < 0) {
        const std::string_view missing = p.left_id < 0 ? p.left : p.right_id < 0 ? p.right : std::string_view(joined);
        return Error(Errc::invalid_checkpoint, where + "[" + std::to_string(p.index) + "]: merge " + quote_text(p.left) +
                                                   " + " + quote_text(p.right) + ": token " + quote_text(missing) +
                                                   " is not in the vocabulary");
      }
      data.merges.prefetch(p.left_id, p.right_id);
    }
    for (size_t i = 0; i < batched; ++i) {
      const Pending& p = batch[i];
      data.merges.push_back(p.left_id, p.right_id, p.merged_id);  // a pair listed twice: the later wins, as in HF
      if (!data.byte_pair_ranks.empty() && p.left.size() <= 2 && p.right.size() <= 2) {
        const int left_byte = single_byte_of(p.left), right_byte = single_byte_of(p.right);
        if (left_byte >= 0 && right_byte >= 0)
          data.byte_pair_ranks[static_cast<size_t>(left_byte) * 256 + static_cast<size_t>(right_byte)] = rank;
      }
      ++rank;
    }
    batched = 0;
    return ok();
  };
  for (auto element : merges) {
    const auto here = [&] { return where + "[" + std::to_string(index) + "]"; };
    simdjson::ondemand::value entry;
    if (auto error = element.get(entry)) return json_error(here(), error);
    std::string_view left, right;
    simdjson::ondemand::json_type type;
    if (auto error = entry.type().get(type)) return json_error(here(), error);
    if (type == simdjson::ondemand::json_type::string) {
      std::string_view line;
      if (auto error = string_value(entry, end, line)) return json_error(here(), error);
      if (line.starts_with("#version")) {  // the header line of a merges.txt, skipped as HF does
        ++index;
        continue;
      }
      const size_t space = line.find(' ');
      if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos)
        return Error(Errc::invalid_checkpoint, here() + ": expected \"left right\", found " + quote_text(line));
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (type == simdjson::ondemand::json_type::array) {
      simdjson::ondemand::array pair;
      if (auto error = entry.get_array().get(pair)) return json_error(here(), error);
      size_t items = 0;
      for (auto item_result : pair) {
        simdjson::ondemand::value item;
        std::string_view s;
        if (std::move(item_result).get(item) || string_value(item, end, s))
          return Error(Errc::invalid_checkpoint, here() + ": expected two strings");
        if (items == 0) left = s;
        else if (items == 1) right = s;
        ++items;
      }
      if (items != 2) return Error(Errc::invalid_checkpoint, here() + ": expected two strings");
    } else {
      return Error(Errc::invalid_checkpoint, here() + ": expected two strings");
    }
    batch[batched++] = {left, right, index, hash_bytes(left), hash_bytes(right), -1, -1, -1};
    ++index;
    if (batched == batch.size()) {
      if (auto s = merge_batch(); !s) return s;
    }
  }
  if (auto s = merge_batch(); !s) return s;
  return ok();
}

inline Error other_fields_too_large(const std::string& where) {
  return Error(Errc::out_of_memory, where + ": the fields other than model.vocab and model.merges exceed " +
                                        std::to_string(TokenizerLimits::max_other_json_bytes) + " bytes");
}

// The on-demand pass: reads model.vocab and model.merges, and returns every other field as a
// small JSON document {"key": value, ..., "model": {...}} for the DOM checks.
inline Expected<std::string> read_large_fields(const simdjson::padded_string& json, TokenizerData& data,
                                               const std::string& source) {
  const char* end = json.data() + json.size();
  simdjson::ondemand::parser parser;
  simdjson::ondemand::document doc;
  if (auto error = parser.iterate(json).get(doc)) return json_error(source, error);
  simdjson::ondemand::object root;
  if (auto error = doc.get_object().get(root)) {
    return error == simdjson::INCORRECT_TYPE ? Error(Errc::parse, source + ": expected a JSON object at the top level")
                                             : json_error(source, error);
  }
  std::string rest = "{";
  bool have_model = false;
  for (auto field : root) {
    std::string_view key;
    if (auto error = field.unescaped_key().get(key)) return json_error(source, error);
    if (rest.size() > 1) rest += ',';
    append_json_string(rest, key);
    rest += ':';
    const std::string key_text(key);  // the parser's string buffer moves on
    simdjson::ondemand::value value;
    if (auto error = field.value().get(value)) return json_error(source + "." + key_text, error);
    if (key_text != "model") {
      std::string_view raw;
      if (auto error = raw_json_of(value).get(raw)) return json_error(source + "." + key_text, error);
      if (raw.size() > TokenizerLimits::max_other_json_bytes || rest.size() > TokenizerLimits::max_other_json_bytes - raw.size())
        return other_fields_too_large(source + "." + key_text);
      rest += raw;
      continue;
    }
    const std::string where = source + ".model";
    simdjson::ondemand::object model;
    if (have_model) return Error(Errc::invalid_checkpoint, source + ": key 'model' appears twice");
    if (value.get_object().get(model)) return Error(Errc::invalid_checkpoint, source + ": key 'model': expected an object");
    have_model = true;
    // First the vocabulary and the small fields, then (rewinding) the merges, which need the
    // vocabulary wherever they stand. Keys are compared raw the second time, so that no string
    // is unescaped twice into the parser's buffer.
    std::string model_rest = "{";
    bool have_vocab = false;
    for (auto model_field : model) {
      std::string_view model_key;
      if (auto error = model_field.unescaped_key().get(model_key)) return json_error(where, error);
      const std::string model_key_text(model_key);
      simdjson::ondemand::value model_value;
      if (auto error = model_field.value().get(model_value)) return json_error(where + "." + model_key_text, error);
      if (model_key_text == "merges") continue;
      if (model_key_text == "vocab") {
        if (have_vocab) return Error(Errc::invalid_checkpoint, where + ": key 'vocab' appears twice");
        have_vocab = true;
        if (auto s = read_vocab(model_value, data, where + ".vocab", end); !s) return std::move(s).error();
        continue;
      }
      std::string_view raw;
      if (auto error = raw_json_of(model_value).get(raw)) return json_error(where + "." + model_key_text, error);
      if (model_rest.size() > 1) model_rest += ',';
      append_json_string(model_rest, model_key_text);
      model_rest += ':';
      if (raw.size() > TokenizerLimits::max_other_json_bytes ||
          model_rest.size() > TokenizerLimits::max_other_json_bytes - raw.size())
        return other_fields_too_large(where + "." + model_key_text);
      model_rest += raw;
    }
    if (!have_vocab) return Error(Errc::invalid_checkpoint, where + ": missing key 'vocab'");
    if (auto error = model.reset().error()) return json_error(where, error);
    bool have_merges = false;
    for (auto model_field : model) {
      simdjson::ondemand::raw_json_string raw_key;
      if (auto error = model_field.key().get(raw_key)) return json_error(where, error);
      simdjson::ondemand::value model_value;
      if (auto error = model_field.value().get(model_value)) return json_error(where, error);
      if (!raw_key.is_equal("merges")) continue;
      if (have_merges) return Error(Errc::invalid_checkpoint, where + ": key 'merges' appears twice");
      have_merges = true;
      if (auto s = read_merges(model_value, data, where + ".merges", end); !s) return std::move(s).error();
    }
    if (!have_merges) return Error(Errc::invalid_checkpoint, where + ": missing key 'merges'");
    model_rest += '}';
    rest += model_rest;
  }
  rest += '}';
  return rest;
}

// Everything: the tables of a tokenizer.json and, when given, its tokenizer_config.json.
inline Expected<std::shared_ptr<TokenizerData>> read_tokenizer(const simdjson::padded_string& json,
                                                               const simdjson::padded_string* config,
                                                               const std::string& source,
                                                               const std::string& config_source) {
  auto data = std::make_shared<TokenizerData>();
  data->source = source;
  auto rest_text = read_large_fields(json, *data, source);
  if (!rest_text) return std::move(rest_text).error();
  const simdjson::padded_string rest(*rest_text);
  simdjson::dom::parser parser;
  auto root_or = io::parse_object(parser, rest, source);
  if (!root_or) return std::move(root_or).error();
  const io::JsonObject& root = *root_or;

  if (auto s = check_normalizer(root, data->normalize_nfc); !s) return std::move(s).error();
  if (auto s = check_pre_tokenizer(root); !s) return std::move(s).error();
  if (auto s = check_decoder_and_post_processor(root); !s) return std::move(s).error();

  auto model = root.get_object("model");
  if (!model) return std::move(model).error();
  if (auto s = expect_string(*model, "type", "BPE", false); !s) return std::move(s).error();
  if (model->has("dropout")) {
    auto dropout = model->get_number("dropout");
    if (!dropout) return std::move(dropout).error();
    if (*dropout != 0.0) return Error(Errc::unsupported, model->where() + ": key 'dropout': BPE dropout is not supported");
  }
  if (auto s = expect_empty(*model, "continuing_subword_prefix"); !s) return std::move(s).error();
  if (auto s = expect_empty(*model, "end_of_word_suffix"); !s) return std::move(s).error();
  if (auto s = expect_bool(*model, "byte_fallback", false); !s) return std::move(s).error();
  auto fuse_unk = model->get_bool("fuse_unk", false);
  if (!fuse_unk) return std::move(fuse_unk).error();
  data->fuse_unk = *fuse_unk;
  auto ignore_merges = model->get_bool("ignore_merges", false);
  if (!ignore_merges) return std::move(ignore_merges).error();
  data->ignore_merges = *ignore_merges;
  if (model->has("unk_token")) {
    auto unk = model->get_string("unk_token");
    if (!unk) return std::move(unk).error();
    data->unk_id = data->vocab.find(*unk);
    if (data->unk_id < 0) return model->bad("unk_token", quote_text(*unk) + " is not in the vocabulary");
  }

  int64_t max_id = static_cast<int64_t>(data->vocab.id_limit()) - 1;
  // Added tokens: parsed now, because their ids extend the id range.
  if (root.has("added_tokens")) {
    auto list = root.get_array("added_tokens");
    if (!list) return std::move(list).error();
    if (list->size() > TokenizerLimits::max_added_tokens) {
      return Error(Errc::out_of_memory, source + ": added_tokens: more than " +
                                            std::to_string(TokenizerLimits::max_added_tokens) + " entries");
    }
    size_t index = 0;
    for (simdjson::dom::element e : *list) {
      const std::string where = source + ".added_tokens[" + std::to_string(index++) + "]";
      simdjson::dom::object raw;
      if (e.get(raw)) return Error(Errc::invalid_checkpoint, where + ": expected an object");
      const io::JsonObject entry(raw, where);
      AddedToken token;
      auto id = entry.get_int_in("id", 0, TokenizerLimits::max_token_id);
      if (!id) return std::move(id).error();
      auto content = entry.get_string("content");
      if (!content) return std::move(content).error();
      if (content->empty() || content->size() > TokenizerLimits::max_token_bytes) {
        return entry.bad("content", "must have 1 to " + std::to_string(TokenizerLimits::max_token_bytes) + " bytes");
      }
      token.id = static_cast<int32_t>(*id);
      token.content = std::string(*content);
      bool* flags[] = {&token.special, &token.single_word, &token.lstrip, &token.rstrip, &token.normalized};
      const char* names[] = {"special", "single_word", "lstrip", "rstrip", "normalized"};
      for (size_t f = 0; f < 5; ++f) {
        auto value = entry.get_bool(names[f], false);
        if (!value) return std::move(value).error();
        *flags[f] = *value;
      }
      max_id = std::max<int64_t>(max_id, token.id);
      data->added.push_back(std::move(token));
    }
  }

  {  // no two added tokens with the same content or id
    std::vector<const AddedToken*> sorted;
    for (const AddedToken& t : data->added) sorted.push_back(&t);
    const auto repeated = [&](auto less, auto same) -> const AddedToken* {
      std::sort(sorted.begin(), sorted.end(), less);
      for (size_t i = 1; i < sorted.size(); ++i)
        if (same(*sorted[i - 1], *sorted[i])) return sorted[i];
      return nullptr;
    };
    const AddedToken* twice = repeated([](auto* a, auto* b) { return a->content < b->content; },
                                       [](auto& a, auto& b) { return a.content == b.content; });
    if (!twice) {
      twice = repeated([](auto* a, auto* b) { return a->id < b->id; }, [](auto& a, auto& b) { return a.id == b.id; });
    }
    if (twice) {
      return Error(Errc::invalid_checkpoint, source + ": added_tokens: token " + quote_text(twice->content) + " (id " +
                                                 std::to_string(twice->id) + ") repeats the content or id of another");
    }
  }

  const size_t id_limit = static_cast<size_t>(max_id + 1);
  // Kinds of ids. An added token with the id of a vocabulary entry hides it, as in Hugging Face.
  data->kinds.assign(id_limit, TokenKind::none);
  for (size_t i = 0; i < id_limit; ++i) {
    if (data->vocab.contains_id(static_cast<int32_t>(i))) data->kinds[i] = TokenKind::vocab;
  }
  for (size_t i = 0; i < data->added.size(); ++i) {
    const AddedToken& t = data->added[i];
    data->kinds[t.id] = t.special ? TokenKind::added_special : TokenKind::added;
    data->added_by_id.emplace_back(t.id, static_cast<uint32_t>(i));
  }
  std::sort(data->added_by_id.begin(), data->added_by_id.end());

  // Added-token matchers: raw text, or NFC text for tokens marked normalized.
  for (size_t i = 0; i < data->added.size(); ++i) {
    const AddedToken& t = data->added[i];
    if (t.normalized && data->normalize_nfc) data->normalized_matcher.add(to_nfc(t.content), static_cast<uint32_t>(i));
    else if (t.normalized) data->normalized_matcher.add(t.content, static_cast<uint32_t>(i));
    else data->raw_matcher.add(t.content, static_cast<uint32_t>(i));
  }
  data->raw_matcher.finish();
  data->normalized_matcher.finish();

  // tokenizer_config.json: the ids of the named bos/eos/pad tokens.
  if (config != nullptr) {
    simdjson::dom::parser config_parser;
    auto config_root = io::parse_object(config_parser, *config, config_source);
    if (!config_root) return std::move(config_root).error();
    const std::pair<const char*, std::optional<int32_t>*> named[] = {
        {"bos_token", &data->bos_id}, {"eos_token", &data->eos_id}, {"pad_token", &data->pad_id}};
    for (const auto& [key, slot] : named) {
      auto text = config_token(*config_root, key);
      if (!text) return std::move(text).error();
      if (!*text) continue;
      const auto id = data->find_token(**text);
      if (!id) return config_root->bad(key, quote_text(**text) + " is not a token of " + source);
      *slot = *id;
    }
  }
  return data;
}

}  // namespace mimo::detail
