// Row gathers: the token embedding (bf16 table to fp32 rows) and fp32 row gathers.
// For .cu translation units only (included through <mimo/cuda.cuh>).
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

// One block per output row.
__global__ void embed_kernel(const uint16_t* __restrict__ table, int64_t vocab, const int32_t* __restrict__ tokens,
                             Rows out) {
  const int64_t i = blockIdx.x;
  const int64_t token = min_of<int64_t>(max_of<int64_t>(tokens[i], 0), vocab - 1);
  const uint16_t* src = table + token * out.width;
  float* dst = out.data + i * out.stride;
  for (int64_t c = threadIdx.x; c < out.width; c += blockDim.x) dst[c] = bf16_to_float(src[c]);
}

__global__ void gather_rows_kernel(Rows src, const int32_t* __restrict__ rows, Rows dst) {
  const int64_t i = blockIdx.x;
  const int64_t r = min_of<int64_t>(max_of<int64_t>(rows[i], 0), src.count - 1);
  const float* s = src.data + r * src.stride;
  float* d = dst.data + i * dst.stride;
  for (int64_t c = threadIdx.x; c < dst.width; c += blockDim.x) d[c] = s[c];
}

}  // namespace kernels

namespace launch {

cudaError_t embed(cudaStream_t stream, const uint16_t* table, int64_t vocab, const int32_t* tokens, const Rows& out) {
  if (out.count <= 0 || out.width <= 0 || vocab <= 0) return cudaSuccess;
  kernels::embed_kernel<<<static_cast<unsigned>(out.count), 256, 0, stream>>>(table, vocab, tokens, out);
  return kernels::launched();
}

cudaError_t gather_rows(cudaStream_t stream, const Rows& src, const int32_t* rows, const Rows& dst) {
  if (dst.count <= 0 || dst.width <= 0 || src.count <= 0) return cudaSuccess;
  kernels::gather_rows_kernel<<<static_cast<unsigned>(dst.count), 256, 0, stream>>>(src, rows, dst);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
