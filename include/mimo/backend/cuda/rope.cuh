// Rotary position embedding in the Hugging Face rotate-half (NEOX) form: pairs (j, j + D/2) of
// every head rotate by position * theta^(-2j/D). Angles, cosines and sines are computed in double
// precision and rounded to float, as the CPU backend does. rope_store also stores the new keys and
// values in the KV cache (rope, rope and kv_store of a layer in one launch). For .cu translation
// units only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

// Rotates the pair (v[j], v[j + half]) of one head to `position`. Each thread computes its own
// angle (the same double expression for every head: the same rounding as the CPU backend).
__device__ __forceinline__ void rotate_pair(float* v, int64_t j, int64_t head_dim, int64_t position, double theta) {
  const int64_t half = head_dim / 2;
  const float a = v[j], b = v[j + half];
  const double angle =
      static_cast<double>(position) * pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
  double s, c;
  sincos(angle, &s, &c);
  const float cf = static_cast<float>(c), sf = static_cast<float>(s);
  v[j] = a * cf - b * sf;
  v[j + half] = b * cf + a * sf;
}

// One thread per (row, head, j) pair: no thread waits on another's loads, so a decode step's
// RoPE costs one round trip to memory.
__global__ void rope_kernel(Rows x, int64_t heads, int64_t head_dim, const int64_t* __restrict__ positions,
                            double theta) {
  const int64_t half = head_dim / 2, per_row = heads * half;
  const int64_t n = x.count * per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / per_row, in_row = i - r * per_row;
    const int64_t h = in_row / half, j = in_row - h * half;
    rotate_pair(x.data + r * x.stride + h * head_dim, j, head_dim, positions[r], theta);
  }
}

// rope of q and k, and the store of the rotated keys and of the values at entries
// [*length, *length + n), in one launch: per row, the query pairs, then the key pairs (each
// thread stores the pair it rotated), then the values. Entries past the capacity are dropped
// (the host checks first), as in kv_store.
template <class E>
__global__ void rope_store_kernel(Rows q, int64_t q_heads, Rows k, Rows v, KvLayer kv, const int64_t* __restrict__ length,
                                  const int64_t* __restrict__ positions, double theta) {
  using S = typename E::Stored;
  const int64_t D = kv.head_dim, half = D / 2;
  const int64_t q_pairs = q_heads * half, k_pairs = kv.kv_heads * half;
  const int64_t per_row = q_pairs + k_pairs + kv.kv_heads * D;
  const int64_t n = q.count * per_row;
  const int64_t base = *length;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / per_row, in_row = i - r * per_row;
    const int64_t entry = base + r;
    const bool stored = entry >= 0 && entry < kv.capacity;
    if (in_row < q_pairs) {
      const int64_t h = in_row / half, j = in_row - h * half;
      rotate_pair(q.data + r * q.stride + h * D, j, D, positions[r], theta);
    } else if (in_row < q_pairs + k_pairs) {
      const int64_t h = (in_row - q_pairs) / half, j = in_row - q_pairs - h * half;
      float* key = k.data + r * k.stride + h * D;
      rotate_pair(key, j, D, positions[r], theta);
      if (stored) {
        S* cached = static_cast<S*>(kv.keys) + (h * kv.capacity + entry) * D;
        cached[j] = E::store(key[j]);
        cached[j + half] = E::store(key[j + half]);
      }
    } else if (stored) {
      const int64_t h = (in_row - q_pairs - k_pairs) / D, d = in_row - q_pairs - k_pairs - h * D;
      static_cast<S*>(kv.values)[(h * kv.capacity + entry) * D + d] = E::store(v.data[r * v.stride + h * D + d]);
    }
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

cudaError_t rope_store(cudaStream_t stream, const Rows& q, int64_t q_heads, const Rows& k, const Rows& v, const KvLayer& kv,
                       const int64_t* length, const int64_t* positions, double theta) {
  const int64_t n = q.count * (q_heads * (kv.head_dim / 2) + kv.kv_heads * (kv.head_dim / 2) + kv.kv_heads * kv.head_dim);
  if (n <= 0) return cudaSuccess;
  return kernels::with_kv_element(kv.type, [&]<class E>(E) {
    kernels::rope_store_kernel<E><<<kernels::grid_for(n, 256), 256, 0, stream>>>(q, q_heads, k, v, kv, length, positions, theta);
    return kernels::launched();
  });
}

}  // namespace launch
}  // namespace mimo::cuda
