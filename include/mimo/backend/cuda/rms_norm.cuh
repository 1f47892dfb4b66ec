// RMSNorm over rows: out = weight * x / sqrt(mean(x^2) + eps). The sum of squares is kept in
// double precision, as the CPU backend does. For .cu translation units only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

inline constexpr int kNormThreads = 256;

// One block per row. out may alias x: each thread reads an element before writing it.
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(Rows x, const float* __restrict__ w, double eps, Rows out) {
  __shared__ double partial[kNormThreads / 32];
  __shared__ float scale_shared;
  const int64_t r = blockIdx.x;
  const float* xr = x.data + r * x.stride;
  float* yr = out.data + r * out.stride;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < x.width; c += blockDim.x) {
    const double v = xr[c];
    ss += v * v;
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int i = 0; i < kNormThreads / 32; ++i) total += partial[i];
    scale_shared = static_cast<float>(1.0 / sqrt(total / static_cast<double>(x.width) + eps));
  }
  __syncthreads();
  const float scale = scale_shared;
  for (int64_t c = threadIdx.x; c < x.width; c += blockDim.x) yr[c] = w[c] * (xr[c] * scale);
}

}  // namespace kernels

namespace launch {

cudaError_t rms_norm(cudaStream_t stream, const Rows& x, const float* weight, double eps, const Rows& out) {
  if (x.count <= 0 || x.width <= 0) return cudaSuccess;
  kernels::rms_norm_kernel<<<static_cast<unsigned>(x.count), kernels::kNormThreads, 0, stream>>>(x, weight, eps, out);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
