// A Hugging Face checkpoint directory as published: config.json plus either model.safetensors or
// shards listed by model.safetensors.index.json. Shards are memory-mapped; tensors are looked up
// by name and checked against the dtype and shape the caller expects.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/config.hpp"
#include "mimo/error.hpp"
#include "mimo/io/json.hpp"
#include "mimo/io/safetensors.hpp"
#include "mimo/quant.hpp"

namespace mimo {

namespace io {

// model.safetensors.index.json: which shard file holds each tensor.
struct SafetensorsIndex {
  // Shard file name -> the tensors the index places there, in the order listed.
  std::map<std::string, std::vector<std::string>, std::less<>> shards;
};

// Parses the text of an index. Shard names must be plain file names (no directory part, no
// control characters); at most limits.max_tensors entries and limits.max_files shards.
// `where` names the file in errors.
inline Expected<SafetensorsIndex> parse_safetensors_index(const simdjson::padded_string& text, const std::string& where,
                                                          const SafetensorsLimits& limits = {}) {
  simdjson::dom::parser parser;
  auto root = parse_object(parser, text, where);
  if (!root) return std::move(root).error();
  auto weight_map = root->get_object("weight_map");
  if (!weight_map) return std::move(weight_map).error();
  SafetensorsIndex index;
  uint64_t entries = 0;
  for (auto [name, value] : weight_map->raw()) {
    if (++entries > limits.max_tensors) {
      return Error(Errc::invalid_checkpoint, where + ": weight_map has more than " +
                                                 std::to_string(limits.max_tensors) + " entries");
    }
    std::string_view shard;
    if (value.get(shard) != simdjson::SUCCESS) {
      return Error(Errc::invalid_checkpoint, where + ": weight_map entry '" + std::string(name) + "' is not a file name");
    }
    const bool control = std::any_of(shard.begin(), shard.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
    if (shard.empty() || control || shard.find('/') != std::string_view::npos ||
        shard.find('\\') != std::string_view::npos || shard == "." || shard == "..") {
      return Error(Errc::invalid_checkpoint, where + ": shard name '" + std::string(shard) + "' is not a plain file name");
    }
    auto it = index.shards.find(shard);
    if (it == index.shards.end()) {
      if (index.shards.size() >= limits.max_files) {
        return Error(Errc::invalid_checkpoint, where + ": weight_map names more than " +
                                                   std::to_string(limits.max_files) + " shard files");
      }
      it = index.shards.emplace(std::string(shard), std::vector<std::string>{}).first;
    }
    it->second.emplace_back(name);
  }
  return index;
}

}  // namespace io

// A tensor used in place from a mapped file. Valid while its Checkpoint lives.
//
// A quantized weight (mimo/quant.hpp) is one view of its codes (info, data: dtype I8 or U8) with
// the format, the group size and its scales (and minimums) attached; its logical shape is
// [rows(), cols()]. Backends that cannot use a quantized view refuse it with an error.
struct TensorView {
  const io::TensorInfo* info = nullptr;
  const std::byte* data = nullptr;
  const std::string* file = nullptr;  // the shard that holds it, for messages
  QuantType quant = QuantType::none;
  int64_t group = 0;                  // quantized: columns per scale
  const std::byte* scales = nullptr;  // quantized: F16 [rows, cols / group]
  const std::byte* mins = nullptr;    // q4 with minimums: F16 [rows, cols / group]; else null

  explicit operator bool() const { return info != nullptr; }
  const std::string& name() const { return info->name; }
  DType dtype() const { return info->dtype; }
  const std::vector<int64_t>& shape() const { return info->shape; }
  int64_t dim(size_t i) const { return info->shape[i]; }
  uint64_t numel() const { return info->numel(); }
  uint64_t nbytes() const { return info->end - info->begin; }
  bool quantized() const { return quant != QuantType::none; }
  // Bytes a pass over the weight reads: the data, and the scales and minimums of a quantized one.
  uint64_t stored_bytes() const {
    if (!quantized()) return nbytes();
    return nbytes() + quant_scale_bytes(rows(), cols(), group) * (mins ? 2 : 1);
  }
  // The logical shape of a 2-d weight (for q4, two codes per stored byte).
  int64_t rows() const { return dim(0); }
  int64_t cols() const { return quant == QuantType::q4 ? 2 * dim(1) : dim(1); }
};

class Checkpoint {
 public:
  // Opens a checkpoint directory. Nothing is read beyond the headers and config.json.
  // `huge_pages`: see detail::MappedFile::open.
  static Expected<Checkpoint> open(const std::filesystem::path& dir, const io::SafetensorsLimits& limits = {},
                                   bool huge_pages = false);

  // Reads every page of tensor data once, calling progress(bytes done, bytes total) every 64 MiB
  // (return false to cancel). With `huge_pages`, a file whose cached pages turn out to be small
  // is evicted and read again into huge pages, once per file, while this helps; where only parts
  // are small (Linux 6.7+ tells which), only those. Must run before any TensorView is taken: files
  // may be mapped anew.
  template <class Progress>
  Status preload(bool huge_pages, Progress&& progress);

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& directory() const { return dir_; }
  std::span<const std::unique_ptr<io::SafetensorsFile>> files() const { return files_; }

  // A tensor by name, or an empty view.
  TensorView find(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) return {};
    const io::SafetensorsFile& f = *files_[it->second.file];
    return TensorView{it->second.info, f.data(*it->second.info), &f.path()};
  }

  // A tensor that must exist with one of the float dtypes and exactly this shape.
  Expected<TensorView> require(std::string_view name, const std::vector<int64_t>& shape) const {
    TensorView t = find(name);
    if (!t) return Error(Errc::invalid_checkpoint, dir_.string() + ": missing tensor '" + std::string(name) + "'");
    if (!is_float_weight_dtype(t.dtype())) {
      return Error(Errc::invalid_checkpoint, *t.file + ": tensor '" + std::string(name) + "' has dtype " +
                                                 std::string(to_string(t.dtype())) + ", expected BF16, F16 or F32");
    }
    if (!std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end())) {
      return Error(Errc::invalid_checkpoint, *t.file + ": tensor '" + std::string(name) + "' has shape " +
                                                 io::detail_st::shape_string(t.shape()) + ", expected " +
                                                 io::detail_st::shape_string(shape));
    }
    return t;
  }

  // A weight of logical shape {rows, cols}: float (as require), or quantized as mimo/quant.hpp
  // describes (codes at `name`, F16 scales at name_scale, optional F16 minimums at name_min for
  // q4), every shape and dtype checked against the others.
  Expected<TensorView> require_linear(std::string_view name, const std::vector<int64_t>& shape) const {
    TensorView t = find(name);
    if (!t || is_float_weight_dtype(t.dtype()) || shape.size() != 2) return require(name, shape);
    const std::string where = *t.file + ": tensor '" + std::string(name) + "'";
    const int64_t rows = shape[0], cols = shape[1];
    if (t.dtype() == DType::i8) {
      t.quant = QuantType::q8;
    } else if (t.dtype() == DType::u8) {
      t.quant = QuantType::q4;
    } else {
      return Error(Errc::invalid_checkpoint, where + " has dtype " + std::string(to_string(t.dtype())) +
                                                 ", expected BF16, F16, F32, or I8/U8 codes of a quantized weight");
    }
    const std::vector<int64_t> stored = {rows, quant_row_bytes(t.quant, cols)};
    if (cols % kQuantBlock != 0 || t.shape() != stored) {
      return Error(Errc::invalid_checkpoint, where + " (" + std::string(to_string(t.quant)) + " codes) has shape " +
                                                 io::detail_st::shape_string(t.shape()) + ", expected " +
                                                 (cols % kQuantBlock ? std::string("columns in multiples of 32 for [") +
                                                                           std::to_string(rows) + ", " + std::to_string(cols) + "]"
                                                                     : io::detail_st::shape_string(stored)));
    }
    const std::string scale_name = quant_scale_name(name);
    const TensorView scale = find(scale_name);
    if (!scale) {
      return Error(Errc::invalid_checkpoint, where + " holds " + std::string(to_string(t.quant)) +
                                                 " codes but '" + scale_name + "' is missing");
    }
    const std::string scale_where = *scale.file + ": tensor '" + scale_name + "'";
    if (scale.dtype() != DType::f16) {
      return Error(Errc::invalid_checkpoint, scale_where + " has dtype " + std::string(to_string(scale.dtype())) +
                                                 ", expected F16");
    }
    const int64_t groups = scale.shape().size() == 2 ? scale.dim(1) : 0;
    if (scale.shape().size() != 2 || scale.dim(0) != rows || groups < 1 || cols % groups != 0 ||
        !quantizable(cols, cols / groups)) {
      return Error(Errc::invalid_checkpoint, scale_where + " has shape " + io::detail_st::shape_string(scale.shape()) +
                                                 ", expected [" + std::to_string(rows) +
                                                 ", G] with " + std::to_string(cols) +
                                                 " / G (the group size) a power of two from 32 to 4096");
    }
    t.group = cols / groups;
    t.scales = scale.data;
    const std::string min_name = quant_min_name(name);
    if (const TensorView mins = find(min_name)) {
      const std::string min_where = *mins.file + ": tensor '" + min_name + "'";
      if (t.quant != QuantType::q4) return Error(Errc::invalid_checkpoint, min_where + ": minimums are only for q4 weights");
      if (mins.dtype() != DType::f16 || mins.shape() != scale.shape()) {
        return Error(Errc::invalid_checkpoint, min_where + " is " + std::string(to_string(mins.dtype())) + " " +
                                                   io::detail_st::shape_string(mins.shape()) + ", expected F16 " +
                                                   io::detail_st::shape_string(scale.shape()));
      }
      t.mins = mins.data;
    }
    return t;
  }

  // Total bytes of tensor data over all files.
  uint64_t tensor_bytes() const {
    uint64_t n = 0;
    for (const auto& [name, loc] : index_) n += loc.info->end - loc.info->begin;
    return n;
  }

 private:
  struct Location {
    size_t file;
    const io::TensorInfo* info;
  };
  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<io::SafetensorsFile>> files_;  // stable addresses for TensorView
  std::map<std::string, Location, std::less<>> index_;

  bool huge_pages_ = false;

  Status add_file(const std::filesystem::path& path, const io::SafetensorsLimits& limits) {
    auto f = io::SafetensorsFile::open(path, limits, huge_pages_);
    if (!f) return std::move(f).error();
    if (f->header().tensors.size() > limits.max_tensors - std::min<uint64_t>(index_.size(), limits.max_tensors)) {
      return Error(Errc::invalid_checkpoint, path.string() + ": the checkpoint's files hold more than " +
                                                 std::to_string(limits.max_tensors) + " tensors in all");
    }
    files_.push_back(std::make_unique<io::SafetensorsFile>(std::move(*f)));
    const size_t file_index = files_.size() - 1;
    for (const auto& t : files_.back()->header().tensors) {
      auto [it, inserted] = index_.emplace(t.name, Location{file_index, &t});
      if (!inserted) {
        return Error(Errc::invalid_checkpoint, path.string() + ": tensor '" + t.name + "' also appears in " +
                                                   files_[it->second.file]->path());
      }
    }
    return ok();
  }
};

inline Expected<Checkpoint> Checkpoint::open(const std::filesystem::path& dir, const io::SafetensorsLimits& limits,
                                             bool huge_pages) {
  Checkpoint ck;
  ck.dir_ = dir;
  ck.huge_pages_ = huge_pages;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return Error(Errc::io, dir.string() + ": not a directory (expected a checkpoint with config.json)");
  }
  auto config = ModelConfig::load(dir / "config.json");
  if (!config) return std::move(config).error();
  ck.config_ = std::move(*config);

  const auto index_path = dir / "model.safetensors.index.json";
  const auto single_path = dir / "model.safetensors";
  if (std::filesystem::exists(index_path, ec)) {
    auto text = io::read_padded(index_path, limits.max_index_bytes);
    if (!text) return std::move(text).error();
    auto index = io::parse_safetensors_index(*text, index_path.string(), limits);
    if (!index) return std::move(index).error();
    for (const auto& [shard, names] : index->shards) {
      const auto shard_path = dir / shard;
      if (!std::filesystem::exists(shard_path, ec)) {
        return Error(Errc::io, shard_path.string() + ": shard listed in " + index_path.filename().string() +
                                   " is missing (it holds '" + names.front() + "')");
      }
      if (auto s = ck.add_file(shard_path, limits); !s) return std::move(s).error();
      for (const auto& name : names) {
        auto it = ck.index_.find(name);
        if (it == ck.index_.end() || it->second.file != ck.files_.size() - 1) {
          return Error(Errc::invalid_checkpoint, shard_path.string() + ": does not contain tensor '" + name +
                                                     "' that " + index_path.filename().string() + " places there");
        }
      }
    }
  } else if (std::filesystem::exists(single_path, ec)) {
    if (auto s = ck.add_file(single_path, limits); !s) return std::move(s).error();
  } else {
    return Error(Errc::io, dir.string() + ": neither model.safetensors nor model.safetensors.index.json found");
  }
  return ck;
}

template <class Progress>
Status Checkpoint::preload(bool huge_pages, Progress&& progress) {
  const uint64_t total = tensor_bytes();
  uint64_t done = 0, next_report = 0;
  auto touch = [&](const io::SafetensorsFile& file, bool report) -> Status {
    const auto& header = file.header();
    file.mapping().advise_willneed(header.data_offset, header.data_size);
    const auto* p = reinterpret_cast<const volatile unsigned char*>(file.mapping().data());
    unsigned sink = 0;
    uint64_t counted = 0;
    for (uint64_t off = header.data_offset; off < file.file_size(); off += 4096) {
      sink += p[off];
      if (!report) continue;
      counted = std::min(off - header.data_offset, header.data_size);
      if (done + counted >= next_report) {
        if (!progress(done + counted, total)) return Error(Errc::cancelled, "model load cancelled");
        next_report += 64ull << 20;
      }
    }
    (void)sink;
    if (report) done += header.data_size;
    return ok();
  };
  bool remap_helps = huge_pages;
  for (auto& file : files_) {
    // A file cut short since it was opened would fault on its lost pages: refuse it instead.
    if (auto s = file->mapping().size_unchanged(); !s) return s;
    if (auto s = touch(*file, true); !s) return s;
    if (!remap_helps || file->file_size() < (64ull << 20)) continue;
    if (file->mapping().huge_mapped_bytes() < file->file_size() / 2) {
      // Mostly small pages: read it all again.
      if (auto s = file->remap_huge(); !s) return s;
      if (auto s = touch(*file, false); !s) return s;
      // Where the kernel cannot map this file with huge pages, do not pay the re-read again.
      remap_helps = file->mapping().huge_mapped_bytes() >= file->file_size() / 2;
    } else if (auto small = file->mapping().small_page_ranges(); small && !small->empty()) {
      // Mostly huge pages, with stretches read back in small pages after the kernel evicted them
      // (or evicted since the pass above): read again only those. Where the kernel cannot tell
      // which they are, they stay.
      if (auto s = file->remap_huge(*small); !s) return s;
      if (auto s = touch(*file, false); !s) return s;  // reads those, maps the rest from the cache
    }
  }
  return ok();
}

}  // namespace mimo
