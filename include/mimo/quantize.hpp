// Quantizing a checkpoint's products (mimo/quant.hpp describes the formats): into memory while
// loading (LoadOptions::quantize), or into a new checkpoint that the library maps directly
// (write_quantized_checkpoint, the `mimo quantize` command). Both stream: a tensor (or a block
// of its rows) at a time, so the bf16 model never has to fit in memory.
//
// What is quantized: the seven projections of every decoder layer, the MTP layers' projections
// and input_proj (unless keep_mtp), and lm_head (in its own format, q8 by default). Embeddings,
// norms and biases keep their stored dtype; so does any weight whose columns the group size does
// not divide.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#if !defined(_WIN32)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/backend/cpu/weight_matrix.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"
#include "mimo/io/safetensors_writer.hpp"
#include "mimo/quant.hpp"
#include "mimo/weights.hpp"

namespace mimo {

struct QuantizeOptions {
  QuantType type = QuantType::none;   // none: use the weights as stored
  int64_t group = 0;                  // columns per scale (a power of two >= 32); 0: 64 for q8, 32 for q4
  bool with_min = false;              // q4: a minimum per group (asymmetric codes) instead of symmetric
  QuantType lm_head = QuantType::q8;  // lm_head's format when `type` is set (none: as stored)
  bool keep_mtp = false;              // leave the MTP layers as stored (a full-precision drafter)
  int threads = 0;                    // threads that quantize (0: the hardware threads)
};

inline int64_t quant_group(QuantType t, const QuantizeOptions& o) {
  return o.group > 0 ? o.group : t == QuantType::q8 ? 64 : 32;
}

// The format a tensor of the checkpoint gets (none: kept as stored).
inline QuantType quant_target(std::string_view name, const io::TensorInfo& info, const QuantizeOptions& o) {
  if (o.type == QuantType::none || info.shape.size() != 2 || !is_float_weight_dtype(info.dtype)) return QuantType::none;
  const bool mtp = name.rfind("model.mtp_layers.", 0) == 0;
  const bool proj = name.size() > 12 && name.substr(name.size() - 12) == "_proj.weight";
  QuantType t = QuantType::none;
  if (name == "lm_head.weight") t = o.lm_head;
  else if (proj && !(mtp && o.keep_mtp)) t = o.type;
  if (t != QuantType::none && !quantizable(info.shape[1], quant_group(t, o))) return QuantType::none;
  return t;
}

namespace detail {

// Codes, scales (and minimums) of rows [r0, r1) of a float weight, written at row r0 of each
// output (row-major, as the format stores them). `row` is scratch of cols floats.
inline void quantize_rows(const TensorView& t, QuantType q, int64_t group, bool with_min, int64_t r0, int64_t r1,
                          std::byte* codes, std::byte* scales, std::byte* mins, float* row) {
  const int64_t cols = t.dim(1), groups = cols / group, row_bytes = quant_row_bytes(q, cols);
  const cpu::WeightMatrix w{t.data, t.dtype(), t.dim(0), cols};
  const cpu::Isa isa = cpu::detect_isa();
  for (int64_t r = r0; r < r1; ++r) {
    cpu::widen_row_range(isa, w, r, 0, cols, row);
    std::byte* c = codes + (r - r0) * row_bytes;
    std::byte* s = scales + (r - r0) * groups * 2;
    if (q == QuantType::q8) {
      quantize_row_q8(row, cols, group, reinterpret_cast<int8_t*>(c), s);
    } else {
      quantize_row_q4(row, cols, group, reinterpret_cast<uint8_t*>(c), s, with_min ? mins + (r - r0) * groups * 2 : nullptr);
    }
  }
}

// Hands the pages of [p, p + n) of a read-only mapping back to the OS (they stay in the page
// cache): the memory of a weight once it has been quantized.
inline void release_pages(const std::byte* p, uint64_t n) {
#if !defined(_WIN32) && defined(MADV_DONTNEED)
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace detail

// A weight quantized in memory: the view points into `storage`.
struct QuantizedTensor {
  io::TensorInfo info;  // the codes, as a file would describe them
  mimo::detail::AlignedBuffer<std::byte> storage;  // codes, then scales, then minimums
  TensorView view;
};

// Quantizes a float weight into memory with `pool`'s threads.
inline Expected<std::unique_ptr<QuantizedTensor>> quantize_tensor(const TensorView& t, QuantType q, int64_t group,
                                                                  bool with_min, cpu::ThreadPool& pool) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  if (!quantizable(cols, group)) {
    return Error(Errc::invalid_argument, "quantize: tensor '" + t.name() + "' has " + std::to_string(cols) +
                                             " columns, not a multiple of the group size " + std::to_string(group));
  }
  auto out = std::unique_ptr<QuantizedTensor>(new (std::nothrow) QuantizedTensor);
  if (!out) return Error(Errc::out_of_memory, "quantize: " + t.name());
  const uint64_t code_bytes = static_cast<uint64_t>(rows) * static_cast<uint64_t>(quant_row_bytes(q, cols));
  const uint64_t scale_bytes = quant_scale_bytes(rows, cols, group);
  const bool mins = q == QuantType::q4 && with_min;
  // + 64: the scales start on the next 64-byte boundary after the codes
  if (auto s = out->storage.reserve(quant_tensor_bytes(q, rows, cols, group, with_min) + 64, t.name().c_str()); !s) {
    return std::move(s).error();
  }
  std::byte* codes = out->storage.data();
  std::byte* scales = codes + (code_bytes + 63) / 64 * 64;
  std::byte* min_data = mins ? scales + scale_bytes : nullptr;
  mimo::detail::AlignedBuffer<float> rows_scratch;
  if (auto s = rows_scratch.reserve(static_cast<uint64_t>(pool.size()) * cols, "quantize scratch"); !s) {
    return std::move(s).error();
  }
  pool.run([&](int k, int nt) {
    const int64_t r0 = rows * k / nt, r1 = rows * (k + 1) / nt;
    if (r0 >= r1) return;
    detail::quantize_rows(t, q, group, mins, r0, r1, codes + r0 * quant_row_bytes(q, cols), scales + r0 * (cols / group) * 2,
                          min_data ? min_data + r0 * (cols / group) * 2 : nullptr, rows_scratch.data() + k * cols);
  });
  out->info.name = t.name();
  out->info.dtype = q == QuantType::q8 ? DType::i8 : DType::u8;
  out->info.shape = {rows, quant_row_bytes(q, cols)};
  out->info.begin = 0;
  out->info.end = code_bytes;
  out->view = t;
  out->view.info = &out->info;
  out->view.data = codes;
  out->view.quant = q;
  out->view.group = group;
  out->view.scales = scales;
  out->view.mins = min_data;
  return out;
}

// Which products quantize_in_memory converts: all of the model's, or only the MTP layers' (they
// only draft tokens, which the main model verifies: LoadOptions::draft_layers).
enum class QuantizeScope { model, drafter };

namespace detail {

// The products quantize_in_memory considers for `scope`, in order.
inline std::vector<TensorView*> quantizable_views(ModelTensors& m, QuantizeScope scope) {
  std::vector<TensorView*> views;
  auto add_block = [&](DecoderBlockTensors& b) {
    for (TensorView* v : {&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj, &b.gate_proj, &b.up_proj, &b.down_proj}) views.push_back(v);
  };
  if (scope == QuantizeScope::model) {
    for (auto& l : m.layers) add_block(l);
  }
  for (auto& l : m.mtp_layers) {
    add_block(l.block);
    views.push_back(&l.input_proj);
  }
  if (scope == QuantizeScope::model && m.lm_head.info != m.embed_tokens.info) views.push_back(&m.lm_head);
  return views;
}

}  // namespace detail

// Bytes of a copy of float weight t quantized to q (codes, scales, minimums), as quantize_tensor
// makes it.
inline uint64_t quantized_bytes(const TensorView& t, QuantType q, int64_t group, bool with_min) {
  return quant_tensor_bytes(q, t.dim(0), t.dim(1), group, with_min);
}

// Bytes of the bound weights once Model::load has applied its quantization options (`quantize`
// over the model, `draft_layers` over the MTP layers, a `draft_head` copy of lm_head or of its
// first `draft_vocab` rows), worked out from the shapes without quantizing anything: what
// Model::estimate_memory reports.
inline uint64_t planned_weight_bytes(const ModelTensors& bound, const QuantizeOptions& quantize, QuantType draft_layers,
                                     QuantType draft_head, int64_t draft_vocab = 0) {
  ModelTensors m = bound;  // views only: the copy lets the plan mark what it converts
  uint64_t bytes = resident_weight_bytes(m);
  std::vector<const TensorView*> converted;
  auto plan = [&](const QuantizeOptions& o, QuantizeScope scope) {
    if (o.type == QuantType::none) return;
    for (TensorView* v : detail::quantizable_views(m, scope)) {
      if (v->quantized() || std::find(converted.begin(), converted.end(), v) != converted.end()) continue;
      const QuantType q = quant_target(v->name(), *v->info, o);
      if (q == QuantType::none) continue;
      bytes = bytes - v->stored_bytes() + quantized_bytes(*v, q, quant_group(q, o), o.with_min);
      converted.push_back(v);
    }
  };
  plan(quantize, QuantizeScope::model);
  QuantizeOptions drafter = quantize;
  drafter.type = draft_layers;
  drafter.keep_mtp = false;
  plan(drafter, QuantizeScope::drafter);
  const bool head_quantized =
      m.lm_head.quantized() || std::find(converted.begin(), converted.end(), &m.lm_head) != converted.end();
  // (a draft head already bound is counted in resident_weight_bytes)
  if (draft_head != QuantType::none && !m.mtp_layers.empty() && !head_quantized && !m.draft_head) {
    const int64_t rows = draft_vocab > 0 ? std::min(draft_vocab, m.lm_head.rows()) : m.lm_head.rows();
    bytes += quant_tensor_bytes(draft_head, rows, m.lm_head.cols(), quant_group(draft_head, quantize), quantize.with_min);
  }
  return bytes;
}

// Quantizes the products of bound tensors in memory (Model::load), releasing the mapped pages
// of each float weight once its quantized copy exists. `progress(done, total)` after each tensor.
template <class Progress>
Status quantize_in_memory(ModelTensors& m, const QuantizeOptions& o, std::vector<std::unique_ptr<QuantizedTensor>>& out,
                          Progress&& progress, QuantizeScope scope = QuantizeScope::model) {
  if (o.type == QuantType::none) return ok();
  auto pool = cpu::ThreadPool::create(o.threads);
  if (!pool) return std::move(pool).error();
  const std::vector<TensorView*> views = detail::quantizable_views(m, scope);
  size_t done = 0;
  for (TensorView* v : views) {
    const QuantType q = v->quantized() ? QuantType::none : quant_target(v->name(), *v->info, o);
    if (q != QuantType::none) {
      auto t = quantize_tensor(*v, q, quant_group(q, o), o.with_min, **pool);
      if (!t) return std::move(t).error();
      detail::release_pages(v->data, v->nbytes());
      *v = (*t)->view;
      out.push_back(std::move(*t));
    }
    if (!progress(++done, views.size())) return Error(Errc::cancelled, "model load cancelled");
  }
  return ok();
}

// Writes a quantized copy of the checkpoint in `in` to the directory `out` (created if
// missing): one output file per input file with the same tensors in their new formats, an index
// when there are several, config.json with a "quantization_config" entry, and the tokenizer
// files. Streams blocks of rows: memory stays a few MiB beyond the page cache the mapping uses,
// whose pages are handed back as each tensor is done. `progress(bytes read, total)`; return false
// to cancel.
inline Status write_quantized_checkpoint(const std::filesystem::path& in, const std::filesystem::path& out,
                                         const QuantizeOptions& o,
                                         const std::function<bool(uint64_t, uint64_t)>& progress = {}) {
  if (o.type == QuantType::none) return Error(Errc::invalid_argument, "quantize: no type given (q8 or q4)");
  for (QuantType t : {o.type, o.lm_head}) {
    if (t != QuantType::none && (quant_group(t, o) < kQuantBlock || !quantizable(quant_group(t, o), quant_group(t, o)))) {
      return Error(Errc::invalid_argument, "quantize: group size " + std::to_string(quant_group(t, o)) +
                                               " is not a power of two from 32 to 4096");
    }
  }
  std::error_code ec;
  if (std::filesystem::equivalent(in, out, ec)) return Error(Errc::invalid_argument, "quantize: --out is the input directory");
  auto ck = Checkpoint::open(in);
  if (!ck) return std::move(ck).error();
  std::filesystem::create_directories(out, ec);
  if (ec) return Error(Errc::io, out.string() + ": cannot create directory: " + ec.message());
  auto pool = cpu::ThreadPool::create(o.threads);
  if (!pool) return std::move(pool).error();

  const uint64_t total = ck->tensor_bytes();
  uint64_t done = 0;
  const bool sharded = ck->files().size() > 1;
  std::string weight_map;
  uint64_t total_out = 0;
  constexpr int64_t kRowsPerBlock = 256;
  mimo::detail::AlignedBuffer<std::byte> buffer;
  mimo::detail::AlignedBuffer<float> rows_scratch;
  for (const auto& file : ck->files()) {
    const std::string name = std::filesystem::path(file->path()).filename().string();
    // Tensors in file order; each becomes one, or codes + scales (+ minimums).
    std::vector<const io::TensorInfo*> tensors;
    for (const auto& t : file->header().tensors) tensors.push_back(&t);
    std::sort(tensors.begin(), tensors.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    std::vector<io::TensorSpec> specs;
    for (const io::TensorInfo* t : tensors) {
      const QuantType q = quant_target(t->name, *t, o);
      if (q == QuantType::none) {
        specs.push_back({t->name, t->dtype, t->shape});
        continue;
      }
      const int64_t rows = t->shape[0], cols = t->shape[1], groups = cols / quant_group(q, o);
      specs.push_back({t->name, q == QuantType::q8 ? DType::i8 : DType::u8, {rows, quant_row_bytes(q, cols)}});
      specs.push_back({quant_scale_name(t->name), DType::f16, {rows, groups}});
      if (q == QuantType::q4 && o.with_min) specs.push_back({quant_min_name(t->name), DType::f16, {rows, groups}});
    }
    for (const auto& s : specs) {
      weight_map += std::string(weight_map.empty() ? "" : ",\n") + "    \"" + io::json_escape(s.name) + "\": \"" + name + "\"";
      total_out += s.nbytes();
    }
    const std::string marker = std::string(to_string(o.type)) + (o.type == QuantType::q4 && o.with_min ? "+min" : "") +
                               " g" + std::to_string(quant_group(o.type, o));
    auto w = io::SafetensorsWriter::create(out / name, specs, {{"format", "pt"}, {"mimo_quant", marker}});
    if (!w) return std::move(w).error();
    for (const io::TensorInfo* t : tensors) {
      const TensorView view{t, file->data(*t), &file->path()};
      const QuantType q = quant_target(t->name, *t, o);
      if (q == QuantType::none) {
        // As stored, in pieces of 64 MiB.
        for (uint64_t off = 0; off < view.nbytes(); off += 64ull << 20) {
          const uint64_t n = std::min<uint64_t>(64ull << 20, view.nbytes() - off);
          if (auto s = w->write(view.data + off, static_cast<size_t>(n)); !s) return s;
        }
      } else {
        // Blocks of rows, quantized by all threads; codes first, then scales, then minimums,
        // each written for the whole tensor in order (three passes over the rows).
        const int64_t rows = t->shape[0], cols = t->shape[1], group = quant_group(q, o), groups = cols / group;
        const int64_t row_bytes = quant_row_bytes(q, cols);
        const bool mins = q == QuantType::q4 && o.with_min;
        const uint64_t block_bytes = static_cast<uint64_t>(kRowsPerBlock) * (row_bytes + groups * 4);
        if (auto s = buffer.reserve(block_bytes + 128, "quantize buffer"); !s) return s;
        if (auto s = rows_scratch.reserve(static_cast<uint64_t>((*pool)->size()) * cols, "quantize scratch"); !s) return s;
        for (int part = 0; part < (mins ? 3 : 2); ++part) {
          for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerBlock) {
            const int64_t n = std::min(kRowsPerBlock, rows - r0);
            std::byte* codes = buffer.data();
            std::byte* sc = codes + (n * row_bytes + 63) / 64 * 64;
            std::byte* mn = sc + n * groups * 2;
            (*pool)->run([&](int k, int nt) {
              const int64_t a = r0 + n * k / nt, b = r0 + n * (k + 1) / nt;
              if (a < b) {
                detail::quantize_rows(view, q, group, mins, a, b, codes + (a - r0) * row_bytes, sc + (a - r0) * groups * 2,
                                      mins ? mn + (a - r0) * groups * 2 : nullptr, rows_scratch.data() + k * cols);
              }
            });
            const std::byte* src = part == 0 ? codes : part == 1 ? sc : mn;
            const uint64_t bytes = part == 0 ? static_cast<uint64_t>(n * row_bytes) : static_cast<uint64_t>(n * groups * 2);
            if (auto s = w->write(src, static_cast<size_t>(bytes)); !s) return s;
          }
        }
      }
      detail::release_pages(view.data, view.nbytes());
      done += view.nbytes();
      if (progress && !progress(done, total)) return Error(Errc::cancelled, "quantize cancelled");
    }
    if (auto s = w->finish(); !s) return s;
  }
  if (sharded) {
    const std::string index = "{\n  \"metadata\": {\"total_size\": " + std::to_string(total_out) +
                              "},\n  \"weight_map\": {\n" + weight_map + "\n  }\n}\n";
    std::FILE* f = std::fopen((out / "model.safetensors.index.json").string().c_str(), "wb");
    if (!f) return Error(Errc::io, (out / "model.safetensors.index.json").string() + ": cannot create");
    const bool good = std::fwrite(index.data(), 1, index.size(), f) == index.size();
    if (std::fclose(f) != 0 || !good) return Error(Errc::io, (out / "model.safetensors.index.json").string() + ": write failed");
  }
  // config.json with the quantization recorded (the loader itself goes by the tensors).
  auto text = io::read_padded(in / "config.json", 1 << 20);
  if (!text) return std::move(text).error();
  std::string config(text->data(), text->size());
  const size_t close = config.find_last_of('}');
  if (close == std::string::npos) return Error(Errc::parse, (in / "config.json").string() + ": not a JSON object");
  const std::string entry = std::string(",\n  \"quantization_config\": {\"quant_method\": \"mimo\", \"type\": \"") +
                            std::string(to_string(o.type)) + "\", \"group_size\": " + std::to_string(quant_group(o.type, o)) +
                            ", \"symmetric\": " + (o.type == QuantType::q4 && o.with_min ? "false" : "true") +
                            ", \"lm_head\": \"" + std::string(to_string(o.lm_head)) + "\", \"mtp_layers\": \"" +
                            (o.keep_mtp ? "as stored" : std::string(to_string(o.type))) + "\"}\n";
  size_t last = close;
  while (last > 0 && (config[last - 1] == ' ' || config[last - 1] == '\n' || config[last - 1] == '\r')) --last;
  config = config.substr(0, last) + entry + config.substr(close);
  {
    std::FILE* f = std::fopen((out / "config.json").string().c_str(), "wb");
    if (!f) return Error(Errc::io, (out / "config.json").string() + ": cannot create");
    const bool good = std::fwrite(config.data(), 1, config.size(), f) == config.size();
    if (std::fclose(f) != 0 || !good) return Error(Errc::io, (out / "config.json").string() + ": write failed");
  }
  for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    if (std::filesystem::exists(in / extra, ec)) {
      std::filesystem::copy_file(in / extra, out / extra, std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) return Error(Errc::io, (in / extra).string() + ": cannot copy: " + ec.message());
    }
  }
  return ok();
}

}  // namespace mimo
