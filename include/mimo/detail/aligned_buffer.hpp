// Owned, 64-byte aligned float storage whose allocation failure is an error value, not a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "mimo/error.hpp"

namespace mimo::detail {

template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { release(); }

  // Grows to hold at least n elements (contents are not preserved when it grows). `what` names
  // the buffer in the error.
  Status reserve(uint64_t n, const char* what) {
    if (n <= size_) return ok();
    if (n > (UINT64_MAX - 63) / sizeof(T)) return Error(Errc::out_of_memory, std::string(what) + ": size overflows");
    const uint64_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = nullptr;
#if defined(_WIN32)
    p = _aligned_malloc(static_cast<size_t>(bytes), 64);
#else
    if (posix_memalign(&p, 64, static_cast<size_t>(bytes)) != 0) p = nullptr;
#endif
    if (!p) return Error(Errc::out_of_memory, std::string(what) + ": cannot allocate " + std::to_string(bytes) + " bytes");
    release();
    data_ = static_cast<T*>(p);
    size_ = n;
    return ok();
  }

  // Copies the first n elements of another buffer (a session copy).
  Status copy_from(const AlignedBuffer& o, uint64_t n, const char* what) {
    if (auto s = reserve(o.size_, what); !s) return s;
    if (n) std::memcpy(data_, o.data_, static_cast<size_t>(n * sizeof(T)));
    return ok();
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void release() {
#if defined(_WIN32)
    _aligned_free(data_);
#else
    std::free(data_);
#endif
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace mimo::detail
