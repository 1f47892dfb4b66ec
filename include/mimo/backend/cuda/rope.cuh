// Rotary position embedding in the Hugging Face rotate-half (NEOX) form: pairs (j, j + D/2) of
// every head rotate by position * theta^(-2j/D). Angles, cosines and sines are computed in double
// precision and rounded to float, as the CPU backend does. For .cu translation units only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

// One thread per (row, head, j) pair: no thread waits on another's loads, so a decode step's
// RoPE costs one round trip to memory. Each thread computes its own angle (the same double
// expression for every head: the same rounding as the CPU backend).
__global__ void rope_kernel(Rows x, int64_t heads, int64_t head_dim, const int64_t* __restrict__ positions,
                            double theta) {
  const int64_t half = head_dim / 2, per_row = heads * half;
  const int64_t n = x.count * per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / per_row, in_row = i - r * per_row;
    const int64_t h = in_row / half, j = in_row - h * half;
    float* v = x.data + r * x.stride + h * head_dim;
    const float a = v[j], b = v[j + half];
    const double angle =
        static_cast<double>(positions[r]) * pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
    double s, c;
    sincos(angle, &s, &c);
    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
    v[j] = a * cf - b * sf;
    v[j + half] = b * cf + a * sf;
  }
}

}  // namespace kernels

namespace launch {

cudaError_t rope(cudaStream_t stream, const Rows& x, int64_t heads, int64_t head_dim, const int64_t* positions,
                 double theta) {
  const int64_t n = x.count * heads * (head_dim / 2);
  if (n <= 0) return cudaSuccess;
  kernels::rope_kernel<<<kernels::grid_for(n, 256), 256, 0, stream>>>(x, heads, head_dim, positions, theta);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
