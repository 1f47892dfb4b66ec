// JSON helpers over simdjson's DOM API: bounded file reads and typed field access whose errors
// name the file and the key.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "mimo/error.hpp"

namespace mimo::io {

inline std::string json_error_text(simdjson::error_code code) { return simdjson::error_message(code); }

// Size of a regular file, or an error naming it.
inline Expected<uint64_t> regular_file_size(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) return Error(Errc::io, path.string() + ": no such file");
  if (!std::filesystem::is_regular_file(status)) return Error(Errc::io, path.string() + ": not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return Error(Errc::io, path.string() + ": cannot read size: " + ec.message());
  return static_cast<uint64_t>(size);
}

// Reads a whole file into a buffer padded for simdjson. Files larger than max_bytes are refused
// before anything is allocated.
inline Expected<simdjson::padded_string> read_padded(const std::filesystem::path& path, uint64_t max_bytes) {
  auto size = regular_file_size(path);
  if (!size) return std::move(size).error();
  if (*size > max_bytes) {
    return Error(Errc::out_of_memory, path.string() + ": file is " + std::to_string(*size) +
                                          " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::FILE* f = std::fopen(path.string().c_str(), "rb");
  if (!f) return Error(Errc::io, path.string() + ": cannot open");
  simdjson::padded_string buffer(static_cast<size_t>(*size));
  if (*size > 0 && buffer.data() == nullptr) {
    std::fclose(f);
    return Error(Errc::out_of_memory, path.string() + ": cannot allocate " + std::to_string(*size) + " bytes");
  }
  const size_t got = *size ? std::fread(buffer.data(), 1, static_cast<size_t>(*size), f) : 0;
  std::fclose(f);
  if (got != *size) return Error(Errc::io, path.string() + ": short read (file changed while reading?)");
  return buffer;
}

// Typed access to the fields of one JSON object. `where` names the file (and object) for errors.
class JsonObject {
 public:
  JsonObject(simdjson::dom::object object, std::string where) : object_(object), where_(std::move(where)) {}

  const std::string& where() const { return where_; }
  simdjson::dom::object raw() const { return object_; }

  bool has(std::string_view key) const {
    auto e = object_[key];
    return !e.error() && !e.value_unsafe().is_null();
  }

  Expected<simdjson::dom::element> element(std::string_view key) const {
    auto e = object_[key];
    if (e.error() == simdjson::NO_SUCH_FIELD) return missing(key);
    if (e.error()) return bad(key, json_error_text(e.error()));
    return e.value_unsafe();
  }

  Expected<int64_t> get_int(std::string_view key) const {
    auto e = element(key);
    if (!e) return std::move(e).error();
    return as_int(*e, key);
  }

  Expected<int64_t> get_int(std::string_view key, int64_t fallback) const {
    if (!has(key)) return fallback;
    return get_int(key);
  }

  Expected<double> get_number(std::string_view key) const {
    auto e = element(key);
    if (!e) return std::move(e).error();
    double d;
    if (e->get(d) != simdjson::SUCCESS) return bad(key, "expected a number, found " + type_name(*e));
    return d;
  }

  Expected<double> get_number(std::string_view key, double fallback) const {
    if (!has(key)) return fallback;
    return get_number(key);
  }

  Expected<bool> get_bool(std::string_view key, bool fallback) const {
    if (!has(key)) return fallback;
    auto e = element(key);
    if (!e) return std::move(e).error();
    bool b;
    if (e->get(b) != simdjson::SUCCESS) return bad(key, "expected true or false, found " + type_name(*e));
    return b;
  }

  Expected<std::string_view> get_string(std::string_view key) const {
    auto e = element(key);
    if (!e) return std::move(e).error();
    std::string_view s;
    if (e->get(s) != simdjson::SUCCESS) return bad(key, "expected a string, found " + type_name(*e));
    return s;
  }

  Expected<JsonObject> get_object(std::string_view key) const {
    auto e = element(key);
    if (!e) return std::move(e).error();
    simdjson::dom::object o;
    if (e->get(o) != simdjson::SUCCESS) return bad(key, "expected an object, found " + type_name(*e));
    return JsonObject(o, where_ + "." + std::string(key));
  }

  Expected<simdjson::dom::array> get_array(std::string_view key) const {
    auto e = element(key);
    if (!e) return std::move(e).error();
    simdjson::dom::array a;
    if (e->get(a) != simdjson::SUCCESS) return bad(key, "expected an array, found " + type_name(*e));
    return a;
  }

  // An integer that must lie in [lo, hi].
  Expected<int64_t> get_int_in(std::string_view key, int64_t lo, int64_t hi) const {
    auto v = get_int(key);
    if (!v) return v;
    return check_range(key, *v, lo, hi);
  }
  Expected<int64_t> get_int_in(std::string_view key, int64_t fallback, int64_t lo, int64_t hi) const {
    auto v = get_int(key, fallback);
    if (!v) return v;
    return check_range(key, *v, lo, hi);
  }

  Expected<int64_t> as_int(simdjson::dom::element e, std::string_view key) const {
    int64_t i;
    if (e.get(i) == simdjson::SUCCESS) return i;
    uint64_t u;
    if (e.get(u) == simdjson::SUCCESS) return bad(key, "integer " + std::to_string(u) + " is too large");
    double d;  // accept 5.0 but not 5.5; the range is checked before the conversion, which is
               // undefined for a double outside int64_t (8e42 in a hostile file)
    if (e.get(d) == simdjson::SUCCESS && d > -9.0e18 && d < 9.0e18 && d == static_cast<double>(static_cast<int64_t>(d)))
      return static_cast<int64_t>(d);
    return bad(key, "expected an integer, found " + type_name(e));
  }

  Error missing(std::string_view key) const {
    return Error(Errc::invalid_checkpoint, where_ + ": missing key '" + std::string(key) + "'");
  }
  Error bad(std::string_view key, std::string_view what) const {
    return Error(Errc::invalid_checkpoint, where_ + ": key '" + std::string(key) + "': " + std::string(what));
  }

  static std::string type_name(simdjson::dom::element e) {
    switch (e.type()) {
      case simdjson::dom::element_type::ARRAY: return "an array";
      case simdjson::dom::element_type::OBJECT: return "an object";
      case simdjson::dom::element_type::INT64:
      case simdjson::dom::element_type::UINT64: return "an integer";
      case simdjson::dom::element_type::DOUBLE: return "a number";
      case simdjson::dom::element_type::STRING: return "a string";
      case simdjson::dom::element_type::BOOL: return "a boolean";
      case simdjson::dom::element_type::NULL_VALUE: return "null";
    }
    return "something else";
  }

 private:
  Expected<int64_t> check_range(std::string_view key, int64_t v, int64_t lo, int64_t hi) const {
    if (v < lo || v > hi) {
      return bad(key, std::to_string(v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return v;
  }

  simdjson::dom::object object_;
  std::string where_;
};

// Parses a document whose root must be an object. The parser owns the parsed tree, so it must
// outlive the returned object.
inline Expected<JsonObject> parse_object(simdjson::dom::parser& parser, const simdjson::padded_string& text,
                                         std::string where) {
  simdjson::dom::element root;
  if (auto err = parser.parse(text).get(root); err) {
    return Error(Errc::parse, where + ": invalid JSON: " + json_error_text(err));
  }
  simdjson::dom::object object;
  if (root.get(object) != simdjson::SUCCESS) {
    return Error(Errc::parse, where + ": expected a JSON object at the top level, found " + JsonObject::type_name(root));
  }
  return JsonObject(object, std::move(where));
}

}  // namespace mimo::io
