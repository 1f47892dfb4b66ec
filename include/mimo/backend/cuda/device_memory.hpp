// Host-side RAII for the CUDA backend: errors as mimo::Error values, the current-device scope,
// device and pinned host buffers, streams, events and graphs. Plain C++ (no kernels): compiled by
// the host compiler against the CUDA runtime API.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "mimo/error.hpp"

namespace mimo::cuda {

// "CUDA: <what>: cudaErrorX (description)".
inline Error cuda_error(cudaError_t e, std::string_view what) {
  return Error(Errc::backend, "CUDA: " + std::string(what) + ": " + cudaGetErrorName(e) + " (" +
                                  cudaGetErrorString(e) + ")");
}
inline Status check(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return ok();
  (void)cudaGetLastError();  // reported here: not again by the next launch's check
  return cuda_error(e, what);
}

// Makes `device` the calling thread's current device for the scope and restores the previous
// one afterwards (the backend never leaves the thread's device changed).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      previous_ = -1;
      status_ = cudaGetLastError();
      return;
    }
    if (previous_ != device) status_ = cudaSetDevice(device);
  }
  ~DeviceScope() {
    if (previous_ >= 0 && status_ == cudaSuccess) {
      int now = -1;
      if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
    }
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

inline int current_device() {
  int d = 0;
  if (cudaGetDevice(&d) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return d;
}

// Device memory for n elements of T. Growing discards the contents. Freeing waits for the device
// first, so memory still read by queued kernels is never released under them.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), device_(o.device_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      device_ = o.device_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  // At least n elements on the current device; `what` names the buffer in errors.
  Status reserve(uint64_t n, const char* what) {
    if (n <= size_ && data_) return ok();
    if (n == 0) n = 1;
    if (n > (UINT64_MAX >> 1) / sizeof(T)) return Error(Errc::out_of_memory, std::string(what) + ": size overflows");
    release();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, static_cast<size_t>(n * sizeof(T)));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // an allocation failure is not sticky: clear it
      return Error(e == cudaErrorMemoryAllocation ? Errc::out_of_memory : Errc::backend,
                   std::string(what) + ": cannot allocate " + std::to_string(n * sizeof(T)) + " bytes of device memory (" +
                       cudaGetErrorString(e) + ")");
    }
    data_ = static_cast<T*>(p);
    size_ = n;
    device_ = current_device();
    return ok();
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  uint64_t size() const { return size_; }
  uint64_t bytes() const { return size_ * sizeof(T); }
  int device() const { return device_; }

 private:
  void release() {
    if (data_) {
      DeviceScope scope(device_);
      (void)cudaDeviceSynchronize();
      (void)cudaFree(data_);
      (void)cudaGetLastError();
    }
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  uint64_t size_ = 0;
  int device_ = 0;
};

// Page-locked host memory (the source or target of asynchronous copies).
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { release(); }

  // Makes room for n elements, reallocating (without the contents) only when there is less.
  Status reserve(uint64_t n, const char* what) { return n <= size_ && data_ ? ok() : allocate(n, what); }

  Status allocate(uint64_t n, const char* what) {
    release();
    void* p = nullptr;
    const cudaError_t e = cudaMallocHost(&p, static_cast<size_t>(n * sizeof(T)));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return Error(Errc::out_of_memory, std::string(what) + ": cannot allocate " + std::to_string(n * sizeof(T)) +
                                            " bytes of pinned host memory (" + cudaGetErrorString(e) + ")");
    }
    data_ = static_cast<T*>(p);
    size_ = n;
    return ok();
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void release() {
    if (data_) {
      (void)cudaDeviceSynchronize();  // no queued copy still reads or writes it
      (void)cudaFreeHost(data_);
      (void)cudaGetLastError();
    }
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  uint64_t size_ = 0;
};

// Owning handles with the destroy call of each kind.
template <class H, auto Destroy>
class Handle {
 public:
  Handle() = default;
  explicit Handle(H h) : h_(h) {}
  Handle(Handle&& o) noexcept : h_(std::exchange(o.h_, H{})) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, H{});
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  void reset(H h = H{}) {
    if (h_) (void)Destroy(h_);
    h_ = h;
  }
  H get() const { return h_; }
  explicit operator bool() const { return h_ != H{}; }

 private:
  H h_{};
};

using StreamHandle = Handle<cudaStream_t, cudaStreamDestroy>;
using EventHandle = Handle<cudaEvent_t, cudaEventDestroy>;
using GraphHandle = Handle<cudaGraph_t, cudaGraphDestroy>;
using GraphExecHandle = Handle<cudaGraphExec_t, cudaGraphExecDestroy>;

}  // namespace mimo::cuda
