// Element-wise kernels: dtype conversion at upload, the bf16 split of GEMM inputs, bias add,
// SwiGLU. For .cu translation units only (included through <mimo/cuda.cuh>).
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

__global__ void convert_to_bf16_kernel(const void* __restrict__ src, int type, uint16_t* __restrict__ dst, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    float v;
    if (type == static_cast<int>(StoredType::f16)) {
      v = __half2float(__ushort_as_half(static_cast<const unsigned short*>(src)[i]));
    } else if (type == static_cast<int>(StoredType::f32)) {
      v = static_cast<const float*>(src)[i];
    } else {
      dst[i] = static_cast<const uint16_t*>(src)[i];
      continue;
    }
    dst[i] = float_to_bf16(v);
  }
}

__global__ void split_bf16_kernel(Rows x, uint16_t* __restrict__ hi, uint16_t* __restrict__ lo) {
  const int64_t n = x.count * x.width;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / x.width, c = i - r * x.width;
    const float v = x.data[r * x.stride + c];
    const uint16_t h = float_to_bf16(v);
    hi[i] = h;
    if (lo) lo[i] = float_to_bf16(v - bf16_to_float(h));
  }
}

__global__ void add_bias_kernel(Rows out, const float* __restrict__ bias) {
  const int64_t n = out.count * out.width;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / out.width, c = i - r * out.width;
    out.data[r * out.stride + c] += bias[c];
  }
}

__global__ void silu_mul_kernel(Rows gate, Rows up) {
  allow_dependents();  // the down product after it may start loading its weights
  const int64_t n = gate.count * gate.width;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / gate.width, c = i - r * gate.width;
    float* g = gate.data + r * gate.stride + c;
    const float v = *g;
    *g = v / (1.0f + expf(-v)) * up.data[r * up.stride + c];
  }
}

}  // namespace kernels

namespace launch {

cudaError_t probe_kernels() {
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, kernels::add_bias_kernel);
}

cudaError_t convert_to_bf16(cudaStream_t stream, const void* src, StoredType type, uint16_t* dst, int64_t n) {
  if (n <= 0) return cudaSuccess;
  kernels::convert_to_bf16_kernel<<<kernels::grid_for(n, 256), 256, 0, stream>>>(src, static_cast<int>(type), dst, n);
  return kernels::launched();
}

cudaError_t split_bf16(cudaStream_t stream, const Rows& x, uint16_t* hi, uint16_t* lo) {
  const int64_t n = x.count * x.width;
  if (n <= 0) return cudaSuccess;
  kernels::split_bf16_kernel<<<kernels::grid_for(n, 256), 256, 0, stream>>>(x, hi, lo);
  return kernels::launched();
}

cudaError_t add_bias(cudaStream_t stream, const Rows& out, const float* bias) {
  const int64_t n = out.count * out.width;
  if (n <= 0 || !bias) return cudaSuccess;
  kernels::add_bias_kernel<<<kernels::grid_for(n, 256), 256, 0, stream>>>(out, bias);
  return kernels::launched();
}

cudaError_t silu_mul(cudaStream_t stream, const Rows& gate, const Rows& up) {
  const int64_t n = gate.count * gate.width;
  if (n <= 0) return cudaSuccess;
  kernels::silu_mul_kernel<<<kernels::grid_for(n, 256), 256, 0, stream>>>(gate, up);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
