// RMSNorm over rows: out = weight * x / sqrt(mean(x^2) + eps). The sum of squares is kept in
// double precision, as the CPU backend does. For .cu translation units only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

inline constexpr int kNormThreads = 256;
inline constexpr int kNormCached = 8;  // accesses per thread kept in registers: rows up to 8192 floats read once

template <bool VEC>
struct NormAccess {
  using type = float;
  static __device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
  static __device__ __forceinline__ double squares(float v) { return static_cast<double>(v) * v; }
  static __device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
  static __device__ __forceinline__ float scaled(float x, float w, float s) { return w * (x * s); }
};
template <>
struct NormAccess<true> {
  using type = float4;
  static __device__ __forceinline__ float4 load(const float* p, int64_t i) { return reinterpret_cast<const float4*>(p)[i]; }
  static __device__ __forceinline__ double squares(float4 v) {
    return static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y + static_cast<double>(v.z) * v.z +
           static_cast<double>(v.w) * v.w;
  }
  static __device__ __forceinline__ void store(float* p, int64_t i, float4 v) { reinterpret_cast<float4*>(p)[i] = v; }
  static __device__ __forceinline__ float4 scaled(float4 x, float4 w, float s) {
    return make_float4(w.x * (x.x * s), w.y * (x.y * s), w.z * (x.z * s), w.w * (x.w * s));
  }
};

// RMSNorm of one row by a whole block of kNormThreads threads: yr = w * xr / sqrt(mean(xr^2) +
// eps). The row's first CACHED accesses per thread are all loaded before the first use and kept
// in registers (a decode step's norm is one row: its time is the latency of one round trip to
// memory, not of one per element); later ones are read twice. The sums run in the same order
// whatever CACHED is. yr may alias xr: each element is written by the thread
// that read it, after reading it. VEC: float4 accesses (width % 4 == 0, xr, yr and w 16-byte
// aligned). Shared by rms_norm_kernel and the GEMV that folds the norm in (gemv.cuh), so both
// round alike.
template <bool VEC, int CACHED = kNormCached>
__device__ __forceinline__ void rms_norm_row(const float* xr, const float* __restrict__ w, double eps, int64_t width,
                                             float* yr) {
  using A = NormAccess<VEC>;
  using V = typename A::type;
  __shared__ double partial[kNormThreads / 32];
  __shared__ float scale_shared;
  const int64_t n = VEC ? width / 4 : width;
  V cached[CACHED] = {};
  double ss = 0.0;
#pragma unroll
  for (int i = 0; i < CACHED; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * kNormThreads;
    if (c < n) cached[i] = A::load(xr, c);
  }
#pragma unroll
  for (int i = 0; i < CACHED; ++i) {
    if (threadIdx.x + static_cast<int64_t>(i) * kNormThreads < n) ss += A::squares(cached[i]);
  }
  for (int64_t c = threadIdx.x + static_cast<int64_t>(CACHED) * kNormThreads; c < n; c += kNormThreads) {
    ss += A::squares(A::load(xr, c));
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double total = threadIdx.x < kNormThreads / 32 ? partial[threadIdx.x] : 0.0;
    total = warp_sum(total);
    if (threadIdx.x == 0) scale_shared = static_cast<float>(1.0 / sqrt(total / static_cast<double>(width) + eps));
  }
  __syncthreads();
  const float scale = scale_shared;
#pragma unroll
  for (int i = 0; i < CACHED; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * kNormThreads;
    if (c < n) A::store(yr, c, A::scaled(cached[i], A::load(w, c), scale));
  }
  for (int64_t c = threadIdx.x + static_cast<int64_t>(CACHED) * kNormThreads; c < n; c += kNormThreads) {
    A::store(yr, c, A::scaled(A::load(xr, c), A::load(w, c), scale));
  }
}

// One block per row.
template <bool VEC>
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(Rows x, const float* __restrict__ w, double eps, Rows out) {
  allow_dependents();  // the product after a norm may start loading its weights
  const int64_t r = blockIdx.x;
  rms_norm_row<VEC>(x.data + r * x.stride, w, eps, x.width, out.data + r * out.stride);
}

}  // namespace kernels

namespace launch {

cudaError_t rms_norm(cudaStream_t stream, const Rows& x, const float* weight, double eps, const Rows& out) {
  if (x.count <= 0 || x.width <= 0) return cudaSuccess;
  const bool vec = x.width % 4 == 0 && x.stride % 4 == 0 && out.stride % 4 == 0 && aligned16(x.data) &&
                   aligned16(out.data) && aligned16(weight);
  const unsigned grid = static_cast<unsigned>(x.count);
  if (vec) {
    kernels::rms_norm_kernel<true><<<grid, kernels::kNormThreads, 0, stream>>>(x, weight, eps, out);
  } else {
    kernels::rms_norm_kernel<false><<<grid, kernels::kNormThreads, 0, stream>>>(x, weight, eps, out);
  }
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
