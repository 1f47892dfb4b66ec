// Device helpers shared by the kernels of the CUDA backend. For .cu translation units only
// (included through <mimo/cuda.cuh>).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "mimo/backend/cuda/launch.hpp"

namespace mimo::cuda::kernels {

__device__ __forceinline__ float bf16_to_float(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// Round to nearest even (NaN stays NaN), as mimo::f32_to_bf16 on the host.
__device__ __forceinline__ uint16_t float_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Elements of a KV cache of each type, as the kernels load and store them: the rounding of the
// CPU backend's cache (kv_cache.hpp), NaN patterns included, so both backends store the same bits.
template <KvType T>
struct KvElement;
template <>
struct KvElement<KvType::f32> {
  using Stored = float;
  static __device__ __forceinline__ float load(Stored s) { return s; }
  static __device__ __forceinline__ Stored store(float x) { return x; }
};
template <>
struct KvElement<KvType::f16> {
  using Stored = uint16_t;
  static __device__ __forceinline__ float load(Stored s) { return __half2float(__ushort_as_half(s)); }
  static __device__ __forceinline__ Stored store(float x) {  // saturating at +-65504, never infinity
    const uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7e00u);
    x = x > 65504.0f ? 65504.0f : x < -65504.0f ? -65504.0f : x;
    return __half_as_ushort(__float2half_rn(x));
  }
};
template <>
struct KvElement<KvType::bf16> {
  using Stored = uint16_t;
  static __device__ __forceinline__ float load(Stored s) { return bf16_to_float(s); }
  static __device__ __forceinline__ Stored store(float x) {
    const uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
    return float_to_bf16(x);
  }
};

// f(KvElement<t>{}) for a cache of type t; cudaErrorInvalidValue for a type the kernels lack.
template <class F>
cudaError_t with_kv_element(KvType t, F&& f) {
  switch (t) {
    case KvType::f32: return f(KvElement<KvType::f32>{});
    case KvType::f16: return f(KvElement<KvType::f16>{});
    case KvType::bf16: return f(KvElement<KvType::bf16>{});
    case KvType::i8: break;
  }
  return cudaErrorInvalidValue;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class T>
__host__ __device__ __forceinline__ T min_of(T a, T b) {
  return b < a ? b : a;
}
template <class T>
__host__ __device__ __forceinline__ T max_of(T a, T b) {
  return a < b ? b : a;
}

// Blocks for a grid-stride loop over n items, capped (the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > cap ? cap : blocks);
}

inline cudaError_t launched() { return cudaGetLastError(); }

// Programmatic dependent launch (sm_90 and newer): a kernel launched with the programmatic
// attribute (see launch()) may start before the kernel ahead of it in the stream has finished,
// once every block of that one has called allow_dependents(). It must call wait_for_previous()
// before it reads what that kernel writes or writes anything at all; until then it may only read
// constant data (weights). Both are no-ops elsewhere, and for kernels launched without the
// attribute. Kernels built for older architectures lack them: programmatic_supported() tells.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, shared, stream>>>(args...), as a programmatic dependent of the
// kernel before it when `programmatic`.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), unsigned grid, unsigned block, size_t shared, cudaStream_t stream,
                   bool programmatic, Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1]{};
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = programmatic ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
  const cudaError_t last = cudaGetLastError();  // clears e (or an earlier failure) as launched() does
  return e != cudaSuccess ? e : last;
}

}  // namespace mimo::cuda::kernels
