// Owned, 64-byte aligned float storage whose allocation failure is an error value, not a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "mimo/error.hpp"

#if !defined(_WIN32)
#include <sys/mman.h>
#endif

namespace mimo::detail {

template <class T>
class AlignedBuffer {
  static constexpr uint64_t kHugePage = 2ull << 20;

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
    // Large buffers (KV caches, activations) get 2 MiB alignment and a huge-page hint: attention
    // streams them, and 4 KiB pages cost a TLB miss each.
    const size_t align = bytes >= kHugePage ? kHugePage : 64;
    if (posix_memalign(&p, align, static_cast<size_t>(bytes)) != 0) p = nullptr;
#if defined(MADV_HUGEPAGE)
    if (p && bytes >= kHugePage) ::madvise(p, static_cast<size_t>(bytes), MADV_HUGEPAGE);
#endif
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
