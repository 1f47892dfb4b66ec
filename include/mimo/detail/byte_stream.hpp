// Little-endian byte streams with a running 64-bit checksum, for saved session state. The reader
// checks every read against the end of its span, so a truncated or hostile buffer is an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "mimo/error.hpp"

namespace mimo::detail {

// A fast non-cryptographic 64-bit hash, fed in pieces (detects corruption, not tampering).
class RunningHash {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    auto byte = [&] {
      pending_ |= static_cast<uint64_t>(*p++) << (8 * fill_);
      --n;
      if (++fill_ == 8) flush();
    };
    while (n && fill_) byte();
    for (; n >= 8; n -= 8, p += 8) {  // whole words: the fast path for large buffers
      std::memcpy(&pending_, p, 8);
      flush();
    }
    while (n) byte();
  }
  uint64_t digest() const {
    RunningHash h = *this;
    h.pending_ ^= 0x80ull << (8 * (h.fill_ % 8));
    h.flush();
    uint64_t x = h.state_ ^ h.length_;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
  }

 private:
  void flush() {
    state_ = (state_ ^ pending_) * 0x100000001b3ull;
    state_ ^= state_ >> 29;
    length_ += 8;
    pending_ = 0;
    fill_ = 0;
  }
  uint64_t state_ = 0xcbf29ce484222325ull;
  uint64_t pending_ = 0;
  uint64_t length_ = 0;
  unsigned fill_ = 0;
};

// Writes to a growing byte vector or to a FILE*.
class ByteWriter {
 public:
  explicit ByteWriter(std::vector<std::byte>& out) : vec_(&out) {}
  explicit ByteWriter(std::FILE* f, std::string what) : file_(f), what_(std::move(what)) {}

  Status write(const void* data, size_t n) {
    hash_.update(data, n);
    if (vec_) {
      const auto* p = static_cast<const std::byte*>(data);
      vec_->insert(vec_->end(), p, p + n);
    } else if (n && std::fwrite(data, 1, n, file_) != n) {
      return Error(Errc::io, what_ + ": write failed (disk full?)");
    }
    return ok();
  }
  template <class T>
  Status put(T v) {
    return write(&v, sizeof v);  // the supported platforms are little-endian
  }
  // Appends the checksum of everything written so far.
  Status finish() {
    const uint64_t d = hash_.digest();
    if (vec_) {
      const auto* p = reinterpret_cast<const std::byte*>(&d);
      vec_->insert(vec_->end(), p, p + sizeof d);
      return ok();
    }
    if (std::fwrite(&d, 1, sizeof d, file_) != sizeof d) return Error(Errc::io, what_ + ": write failed");
    return ok();
  }

 private:
  std::vector<std::byte>* vec_ = nullptr;
  std::FILE* file_ = nullptr;
  std::string what_;
  RunningHash hash_;
};

// Reads from a span; every read past the end is an error naming what was being read.
class ByteReader {
 public:
  ByteReader(std::span<const std::byte> data, std::string what) : data_(data), what_(std::move(what)) {}

  Status read(void* out, size_t n, const char* field) {
    if (n > data_.size() - pos_) return Error(Errc::corrupt_state, what_ + ": truncated while reading " + field);
    std::memcpy(out, data_.data() + pos_, n);
    pos_ += n;
    return ok();
  }
  template <class T>
  Expected<T> get(const char* field) {
    T v{};
    if (auto s = read(&v, sizeof v, field); !s) return std::move(s).error();
    return v;
  }
  // A view of the next n bytes (no copy).
  Expected<std::span<const std::byte>> take(uint64_t n, const char* field) {
    if (n > data_.size() - pos_) return Error(Errc::corrupt_state, what_ + ": truncated while reading " + field);
    auto s = data_.subspan(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  size_t remaining() const { return data_.size() - pos_; }
  const std::string& what() const { return what_; }

 private:
  std::span<const std::byte> data_;
  size_t pos_ = 0;
  std::string what_;
};

}  // namespace mimo::detail
