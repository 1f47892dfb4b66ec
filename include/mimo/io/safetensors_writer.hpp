// Writes safetensors files as a stream: the header first (every tensor's dtype, shape and
// offsets are known up front), then each tensor's bytes in order. Nothing is held in memory, so a
// 15 GB checkpoint can be written on a machine with little RAM.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "mimo/dtype.hpp"
#include "mimo/error.hpp"

namespace mimo::io {

struct TensorSpec {
  std::string name;
  DType dtype = DType::bf16;
  std::vector<int64_t> shape;
  uint64_t nbytes() const {
    uint64_t n = dtype_size(dtype);
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
};

// Escapes a string for a JSON string literal.
inline std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

class SafetensorsWriter {
 public:
  SafetensorsWriter(SafetensorsWriter&& o) noexcept
      : path_(std::move(o.path_)), file_(std::exchange(o.file_, nullptr)), expected_(o.expected_), written_(o.written_) {}
  SafetensorsWriter& operator=(SafetensorsWriter&&) = delete;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter() {
    if (file_) std::fclose(file_);
  }

  // Creates the file and writes its header. Tensors' data must then be written in this order.
  static Expected<SafetensorsWriter> create(const std::filesystem::path& path, const std::vector<TensorSpec>& tensors,
                                            const std::vector<std::pair<std::string, std::string>>& metadata = {
                                                {"format", "pt"}}) {
    std::string header = "{";
    if (!metadata.empty()) {
      header += "\"__metadata__\":{";
      for (size_t i = 0; i < metadata.size(); ++i) {
        header += (i ? "," : "") + std::string("\"") + json_escape(metadata[i].first) + "\":\"" +
                  json_escape(metadata[i].second) + "\"";
      }
      header += "}";
    }
    uint64_t offset = 0;
    for (const auto& t : tensors) {
      if (header.size() > 1) header += ",";
      header += "\"" + json_escape(t.name) + "\":{\"dtype\":\"" + std::string(to_string(t.dtype)) + "\",\"shape\":[";
      for (size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
      header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.nbytes()) + "]}";
      offset += t.nbytes();
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';  // keeps the data 8-byte aligned

    std::FILE* f = std::fopen(path.string().c_str(), "wb");
    if (!f) return Error(Errc::io, path.string() + ": cannot create");
    SafetensorsWriter w(path.string(), f, offset);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
    if (std::fwrite(len, 1, 8, f) != 8 || std::fwrite(header.data(), 1, header.size(), f) != header.size()) {
      return Error(Errc::io, path.string() + ": write failed");
    }
    return w;
  }

  Status write(const void* data, size_t n) {
    if (written_ + n > expected_) return Error(Errc::invalid_argument, path_ + ": more data than the header declares");
    if (n && std::fwrite(data, 1, n, file_) != n) return Error(Errc::io, path_ + ": write failed (disk full?)");
    written_ += n;
    return ok();
  }

  // Closes the file; every declared byte must have been written.
  Status finish() {
    if (written_ != expected_) {
      return Error(Errc::invalid_argument, path_ + ": " + std::to_string(written_) + " of " +
                                               std::to_string(expected_) + " data bytes written");
    }
    const int rc = std::fclose(file_);
    file_ = nullptr;
    if (rc != 0) return Error(Errc::io, path_ + ": close failed");
    return ok();
  }

 private:
  SafetensorsWriter(std::string path, std::FILE* f, uint64_t expected)
      : path_(std::move(path)), file_(f), expected_(expected) {}
  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
};

}  // namespace mimo::io
