// Helpers of the CUDA tests: rows in device memory, host tensors as TensorViews, and error
// measures (normalised squared error, as ggml's test-backend-ops compares backends).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <mimo/cuda.hpp>

namespace cuda_test {

inline void require_ok(const mimo::Status& s) { REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().describe())); }

// fp32 rows in device memory, `stride` floats apart, uploaded from and read back to packed host
// vectors of count * width values.
struct DeviceRows {
  mimo::Cuda::Buffer buffer;
  mimo::Rows rows;

  DeviceRows(int64_t count, int64_t width, int64_t stride = 0) {
    if (stride == 0) stride = width;
    REQUIRE(buffer.reserve(static_cast<uint64_t>(std::max<int64_t>(1, count * stride)), "test rows").has_value());
    rows = mimo::Rows{buffer.data(), count, width, stride};
    // Poison the padding and everything else: a kernel that reads or writes outside shows up.
    REQUIRE(cudaMemset(buffer.data(), 0x7f, buffer.bytes()) == cudaSuccess);
    // Copies on the legacy stream are not ordered with the contexts' non-blocking streams.
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  }
  void upload(const std::vector<float>& host) {
    REQUIRE(static_cast<int64_t>(host.size()) == rows.count * rows.width);
    if (host.empty()) return;
    REQUIRE(cudaMemcpy2D(rows.data, static_cast<size_t>(rows.stride) * 4, host.data(), static_cast<size_t>(rows.width) * 4,
                         static_cast<size_t>(rows.width) * 4, static_cast<size_t>(rows.count), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  }
  std::vector<float> download() const {
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<float> host(static_cast<size_t>(rows.count * rows.width));
    if (host.empty()) return host;
    REQUIRE(cudaMemcpy2D(host.data(), static_cast<size_t>(rows.width) * 4, rows.data, static_cast<size_t>(rows.stride) * 4,
                         static_cast<size_t>(rows.width) * 4, static_cast<size_t>(rows.count), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    return host;
  }
};

// Host rows with the same layout, for the CPU backend.
struct HostRows {
  std::vector<float> data;
  mimo::Rows rows;
  HostRows(int64_t count, int64_t width, int64_t stride = 0) {
    if (stride == 0) stride = width;
    data.assign(static_cast<size_t>(std::max<int64_t>(1, count * stride)), 1e30f);
    rows = mimo::Rows{data.data(), count, width, stride};
  }
  void upload(const std::vector<float>& host) {
    for (int64_t i = 0; i < rows.count; ++i) {
      for (int64_t c = 0; c < rows.width; ++c) rows.row(i)[c] = host[static_cast<size_t>(i * rows.width + c)];
    }
  }
  std::vector<float> download() const {
    std::vector<float> host(static_cast<size_t>(rows.count * rows.width));
    for (int64_t i = 0; i < rows.count; ++i) {
      for (int64_t c = 0; c < rows.width; ++c) host[static_cast<size_t>(i * rows.width + c)] = rows.row(i)[c];
    }
    return host;
  }
};

// A tensor held in host memory, viewed as if it came from a checkpoint.
struct HostTensor {
  mimo::io::TensorInfo info;
  std::vector<unsigned char> bytes;
  std::string file = "test";

  HostTensor(std::string name, mimo::DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
    info.name = std::move(name);
    info.dtype = dtype;
    info.shape = std::move(shape);
    const uint64_t n = info.numel();
    REQUIRE(values.size() == n);
    bytes.resize(static_cast<size_t>(n * mimo::dtype_size(dtype)));
    for (uint64_t i = 0; i < n; ++i) {
      if (dtype == mimo::DType::f32) {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      } else {
        const uint16_t h = dtype == mimo::DType::bf16 ? mimo::f32_to_bf16(values[i]) : mimo::f32_to_f16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    }
    info.begin = 0;
    info.end = bytes.size();
  }
  mimo::TensorView view() const {
    return mimo::TensorView{&info, reinterpret_cast<const std::byte*>(bytes.data()), &file};
  }
};

inline std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// sum (a - b)^2 / sum b^2 (0 when both are zero).
inline double nmse(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den > 0.0 ? num / den : num;
}

// Floats as the elements of a saved KV state of `type` (kv_load's input), rounded as the CPU
// backend's cache rounds them.
inline std::vector<std::byte> kv_state_of(const std::vector<float>& values, mimo::KvType type) {
  REQUIRE(type != mimo::KvType::i8);
  const size_t element = static_cast<size_t>(mimo::kv_element_bytes(type));
  std::vector<std::byte> bytes(values.size() * element);
  for (size_t i = 0; i < values.size(); ++i) {
    if (type == mimo::KvType::f32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t h = type == mimo::KvType::f16 ? mimo::f32_to_f16(values[i]) : mimo::f32_to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

// Saved KV state (kv_save) of a cache of `type` as floats.
inline std::vector<float> widen_kv_state(const std::vector<std::byte>& bytes, mimo::KvType type) {
  REQUIRE(type != mimo::KvType::i8);
  const size_t element = static_cast<size_t>(mimo::kv_element_bytes(type));
  std::vector<float> v(bytes.size() / element);
  for (size_t i = 0; i < v.size(); ++i) {
    if (type == mimo::KvType::f32) {
      std::memcpy(&v[i], bytes.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v[i] = type == mimo::KvType::f16 ? mimo::f16_to_f32(h) : mimo::bf16_to_f32(h);
    }
  }
  return v;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= m)) m = d;  // NaN wins
  }
  return m;
}

// A CPU and a CUDA context for the same attention shape, with KV caches of the same type.
struct Contexts {
  mimo::Cpu::Context cpu;
  mimo::Cuda::Context gpu;
  Contexts(const mimo::AttentionShape& shape, int64_t capacity, mimo::Cuda::ContextOptions options = {}) {
    // Exact fp32 products on the CPU: the GPU's GEMV keeps activations in fp32, while the CPU's
    // default rounds them to bf16 where it has AVX512_BF16 (an error of about 1e-6 in nmse).
    auto c = mimo::Cpu::make_context({.exact = true, .kv_cache = options.kv_cache}, shape, capacity, 4096);
    REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().describe()));
    cpu = std::move(*c);
    auto g = mimo::Cuda::make_context(options, shape, capacity, 4096);
    REQUIRE_MESSAGE(g.has_value(), (g ? "" : g.error().describe()));
    gpu = std::move(*g);
  }
  // Waits for the GPU and checks that no op failed.
  void sync() { require_ok(mimo::Cuda::synchronize(gpu)); }
};

}  // namespace cuda_test
