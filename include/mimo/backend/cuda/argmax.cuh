// Greedy selection on the device: the index of each row's largest value (the first on ties, as
// std::max_element), so that only 4 bytes per row come back to the host; -1 for a row holding NaN
// or +inf, or only -inf (the rows a sampler refuses), as the CPU backend's argmax_rows. For .cu
// TUs only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

inline constexpr int kArgmaxThreads = 256;

// (value, index) pairs: larger value wins, then smaller index. NaN never wins.
__device__ __forceinline__ bool argmax_better(float v, int64_t i, float best, int64_t best_i) {
  return v > best || (v == best && i < best_i);
}

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(Rows x, int32_t* __restrict__ out) {
  __shared__ float values[kArgmaxThreads];
  __shared__ int64_t indices[kArgmaxThreads];
  const int64_t r = blockIdx.x;
  const float* row = x.data + r * x.stride;
  float best = -INFINITY;
  int64_t best_i = INT64_MAX;
  int invalid = 0;
  for (int64_t c = threadIdx.x; c < x.width; c += blockDim.x) {
    const float v = row[c];
    invalid |= !(v < INFINITY);  // NaN or +inf
    if (argmax_better(v, c, best, best_i)) {
      best = v;
      best_i = c;
    }
  }
  values[threadIdx.x] = best;
  indices[threadIdx.x] = best_i;
  invalid = __syncthreads_or(invalid);
  for (int half = kArgmaxThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      const float v = values[threadIdx.x + half];
      const int64_t i = indices[threadIdx.x + half];
      if (argmax_better(v, i, values[threadIdx.x], indices[threadIdx.x])) {
        values[threadIdx.x] = v;
        indices[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  // Nothing above -inf (the pairs compare equal, so an index won anyway): no index either.
  if (threadIdx.x == 0) out[r] = invalid || !(values[0] > -INFINITY) ? -1 : static_cast<int32_t>(indices[0]);
}

}  // namespace kernels

namespace launch {

cudaError_t argmax_rows(cudaStream_t stream, const Rows& x, int32_t* out) {
  if (x.count <= 0 || x.width <= 0) return cudaSuccess;
  kernels::argmax_kernel<<<static_cast<unsigned>(x.count), kernels::kArgmaxThreads, 0, stream>>>(x, out);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
