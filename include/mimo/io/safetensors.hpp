// The safetensors format: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the raw data. Every size and offset is validated
// before a tensor can be used: a hostile file gets an error, never an out-of-bounds read.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mimo/detail/mapped_file.hpp"
#include "mimo/dtype.hpp"
#include "mimo/error.hpp"
#include "mimo/io/json.hpp"

namespace mimo::io {

// Limits checked before anything is allocated for what a file declares. Parsing JSON text takes
// up to about 13 times its size in memory while it lasts (a 16 MiB header: ~200 MiB), so the text
// limits are far below the reference implementation's 100 MB header limit but far above any real
// file: a shard of MiMo-7B has a 30 KB header, a file of 100,000 tensors about 10 MB.
struct SafetensorsLimits {
  uint64_t max_header_bytes = 16ull << 20;
  uint64_t max_tensors = 1u << 20;         // per file, in all, and entries of an index's weight_map
  int max_rank = 8;
  uint64_t max_index_bytes = 16ull << 20;  // model.safetensors.index.json
  uint64_t max_files = 4096;               // shards an index may name
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets inside the data section
  uint64_t end = 0;
  uint64_t numel() const {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
};

// The parsed header of one safetensors file.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by name
  std::vector<std::pair<std::string, std::string>> metadata;
  uint64_t data_offset = 0;  // where the data section starts in the file
  uint64_t data_size = 0;

  const TensorInfo* find(std::string_view name) const {
    auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                               [](const TensorInfo& t, std::string_view n) { return t.name < n; });
    return it != tensors.end() && it->name == name ? &*it : nullptr;
  }
};

namespace detail_st {

inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

inline Expected<TensorInfo> parse_tensor_entry(std::string_view name, simdjson::dom::element value,
                                               uint64_t data_size, const SafetensorsLimits& limits,
                                               const std::string& where) {
  const std::string tensor_where = where + ": tensor '" + std::string(name) + "'";
  simdjson::dom::object obj;
  if (value.get(obj) != simdjson::SUCCESS) return Error(Errc::parse, tensor_where + ": entry is not an object");
  JsonObject fields(obj, tensor_where);

  TensorInfo info;
  info.name = std::string(name);
  auto dtype_name = fields.get_string("dtype");
  if (!dtype_name) return Error(Errc::parse, dtype_name.error().message());
  auto dtype = parse_dtype(*dtype_name);
  if (!dtype) return Error(Errc::parse, tensor_where + ": unknown dtype '" + std::string(*dtype_name) + "'");
  info.dtype = *dtype;

  auto shape = fields.get_array("shape");
  if (!shape) return Error(Errc::parse, shape.error().message());
  uint64_t numel = 1;
  for (simdjson::dom::element d : *shape) {
    if (static_cast<int>(info.shape.size()) >= limits.max_rank) {
      return Error(Errc::parse, tensor_where + ": rank exceeds " + std::to_string(limits.max_rank));
    }
    uint64_t dim;
    if (d.get(dim) != simdjson::SUCCESS || dim > (1ull << 62)) {
      return Error(Errc::parse, tensor_where + ": shape entries must be non-negative integers");
    }
    if (dim != 0 && numel > UINT64_MAX / dim) {
      return Error(Errc::parse, tensor_where + ": element count of shape overflows 64 bits");
    }
    numel *= dim;
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  const uint64_t esize = dtype_size(info.dtype);
  if (numel > UINT64_MAX / esize) return Error(Errc::parse, tensor_where + ": byte size of shape overflows 64 bits");
  const uint64_t nbytes = numel * esize;

  auto offsets = fields.get_array("data_offsets");
  if (!offsets) return Error(Errc::parse, offsets.error().message());
  uint64_t off[2];
  size_t count = 0;
  for (simdjson::dom::element o : *offsets) {
    if (count == 2 || o.get(off[count]) != simdjson::SUCCESS) {
      return Error(Errc::parse, tensor_where + ": data_offsets must be two non-negative integers");
    }
    ++count;
  }
  if (count != 2) return Error(Errc::parse, tensor_where + ": data_offsets must be two non-negative integers");
  info.begin = off[0];
  info.end = off[1];
  if (info.begin > info.end) {
    return Error(Errc::parse, tensor_where + ": data_offsets [" + std::to_string(info.begin) + ", " +
                                  std::to_string(info.end) + "] are reversed");
  }
  if (info.end > data_size) {
    return Error(Errc::parse, tensor_where + ": data_offsets end " + std::to_string(info.end) +
                                  " is past the end of the data (" + std::to_string(data_size) + " bytes)");
  }
  if (info.end - info.begin != nbytes) {
    return Error(Errc::parse, tensor_where + ": " + std::string(to_string(info.dtype)) + " " +
                                  shape_string(info.shape) + " needs " + std::to_string(nbytes) +
                                  " bytes but data_offsets span " + std::to_string(info.end - info.begin));
  }
  return info;
}

}  // namespace detail_st

// Parses and validates the header of a safetensors file held in memory (the whole file, or at
// least its first bytes; `file_size` is the size of the whole file). `where` names the file.
inline Expected<SafetensorsHeader> parse_safetensors_header(const std::byte* file, uint64_t available,
                                                            uint64_t file_size, const std::string& where,
                                                            const SafetensorsLimits& limits = {}) {
  if (file_size < 8 || available < 8) {
    return Error(Errc::parse, where + ": file is " + std::to_string(file_size) +
                                  " bytes, too short for a safetensors header");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(file[i]);
  if (header_len > limits.max_header_bytes) {
    return Error(Errc::parse, where + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
                                  std::to_string(limits.max_header_bytes) + " bytes");
  }
  if (header_len > file_size - 8) {
    return Error(Errc::parse, where + ": header length " + std::to_string(header_len) +
                                  " is larger than the file (" + std::to_string(file_size) + " bytes)");
  }
  if (header_len > available - 8) return Error(Errc::io, where + ": header not fully available");
  if (header_len < 2 || static_cast<char>(file[8]) != '{') {
    return Error(Errc::parse, where + ": header does not start with a JSON object");
  }

  simdjson::padded_string text(reinterpret_cast<const char*>(file + 8), static_cast<size_t>(header_len));
  simdjson::dom::parser parser;
  auto root = parse_object(parser, text, where + ": header");
  if (!root) return Error(Errc::parse, root.error().message());

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  header.data_size = file_size - header.data_offset;
  for (auto [key, value] : root->raw()) {
    if (key == "__metadata__") {
      simdjson::dom::object meta;
      if (value.get(meta) != simdjson::SUCCESS) return Error(Errc::parse, where + ": __metadata__ is not an object");
      for (auto [mk, mv] : meta) {
        std::string_view s;
        if (mv.get(s) != simdjson::SUCCESS) {
          return Error(Errc::parse, where + ": __metadata__ value of '" + std::string(mk) + "' is not a string");
        }
        header.metadata.emplace_back(std::string(mk), std::string(s));
      }
      continue;
    }
    if (header.tensors.size() >= limits.max_tensors) {
      return Error(Errc::parse, where + ": more than " + std::to_string(limits.max_tensors) + " tensors");
    }
    auto info = detail_st::parse_tensor_entry(key, value, header.data_size, limits, where);
    if (!info) return std::move(info).error();
    header.tensors.push_back(std::move(*info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    if (header.tensors[i].name == header.tensors[i - 1].name) {
      return Error(Errc::parse, where + ": tensor '" + header.tensors[i].name + "' is listed twice");
    }
  }
  // No two tensors may share bytes (empty tensors occupy none).
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(header.tensors.size());
  for (const auto& t : header.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return Error(Errc::parse, where + ": tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                                    "' have overlapping data_offsets");
    }
  }
  return header;
}

// A memory-mapped safetensors file with its validated header.
class SafetensorsFile {
 public:
  static Expected<SafetensorsFile> open(const std::filesystem::path& path, const SafetensorsLimits& limits = {},
                                        bool huge_pages = false) {
    auto mapped = mimo::detail::MappedFile::open(path, huge_pages);
    if (!mapped) return std::move(mapped).error();
    auto header = parse_safetensors_header(mapped->data(), mapped->size(), mapped->size(), mapped->path(), limits);
    if (!header) return std::move(header).error();
    SafetensorsFile f;
    f.file_ = std::move(*mapped);
    f.header_ = std::move(*header);
    return f;
  }

  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* find(std::string_view name) const { return header_.find(name); }
  const std::byte* data(const TensorInfo& t) const { return file_.data() + header_.data_offset + t.begin; }
  uint64_t file_size() const { return file_.size(); }
  const mimo::detail::MappedFile& mapping() const { return file_; }

  // Maps the file again after evicting its cached pages (all, or those in `ranges`: offset, end),
  // so that they are read back into huge pages. Pointers into the old mapping become invalid. The
  // file must not have changed size.
  Status remap_huge(std::span<const std::pair<uint64_t, uint64_t>> ranges = {}) {
    const std::string path = file_.path();
    const uint64_t size = file_.size();
    file_ = mimo::detail::MappedFile();  // mapped pages would stay cached
    if (ranges.empty()) mimo::detail::MappedFile::drop_cached_pages(path);
    for (const auto& [begin, end] : ranges) mimo::detail::MappedFile::drop_cached_pages(path, begin, end - begin);
    auto mapped = mimo::detail::MappedFile::open(path, true);
    if (!mapped) return std::move(mapped).error();
    if (mapped->size() != size) return Error(Errc::io, path + ": file changed size while loading");
    file_ = std::move(*mapped);
    return ok();
  }

 private:
  mimo::detail::MappedFile file_;
  SafetensorsHeader header_;
};

}  // namespace mimo::io
