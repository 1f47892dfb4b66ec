// y (+)= x W^T + bias for 1..8 input rows: the decode and verification products, which a GEMM
// library runs far below memory bandwidth. bf16 weights are streamed once with 16-byte loads,
// the fp32 input rows come through L1/L2 (every warp reads the same rows), products and sums are
// fp32 (no rounding of activations, unlike the cuBLASLt path). For .cu translation units only.
//
// Work split: one warp per RPW consecutive output rows, counted over all jobs of the batch (q, k
// and v in one launch); lanes split the columns, then a warp reduction.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

inline constexpr int kGemvThreads = 256;
inline constexpr int kGemvWarps = kGemvThreads / 32;

// The job and local row of global output row g (g < total rows of the batch).
__device__ __forceinline__ void gemv_locate(const GemvBatch& b, int64_t g, int& job, int64_t& row) {
  job = 0;
  row = g;
  while (job + 1 < b.count && row >= b.jobs[job].rows) {
    row -= b.jobs[job].rows;
    ++job;
  }
}

// Eight bf16 values packed in a uint4, widened to fp32.
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// R input rows, RPW output rows per warp. VEC: cols % 8 == 0 and x rows 16-byte aligned.
template <int R, int RPW, bool VEC>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(GemvBatch b, const float* __restrict__ x, int64_t x_stride,
                                                            int64_t cols, int64_t total_rows) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  const int64_t first = warp * RPW;
  if (first >= total_rows) return;  // whole warp: no shuffle below is left half-done

  int job[RPW];
  int64_t local[RPW];
  bool has[RPW];
  const uint16_t* w[RPW];
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
    has[p] = first + p < total_rows;
    gemv_locate(b, has[p] ? first + p : first, job[p], local[p]);
    w[p] = b.jobs[job[p]].weight + local[p] * cols;
  }

  float acc[RPW][R];
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[p][r] = 0.0f;
  }

  if constexpr (VEC) {
    constexpr int kUnroll = R <= 2 ? 4 : 2;  // iterations whose loads are in flight together
#pragma unroll kUnroll
    for (int64_t k = static_cast<int64_t>(lane) * 8; k < cols; k += 32 * 8) {
      float xv[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(x + r * x_stride + k);
        const float4 c = *reinterpret_cast<const float4*>(x + r * x_stride + k + 4);
        xv[r][0] = a.x; xv[r][1] = a.y; xv[r][2] = a.z; xv[r][3] = a.w;
        xv[r][4] = c.x; xv[r][5] = c.y; xv[r][6] = c.z; xv[r][7] = c.w;
      }
#pragma unroll
      for (int p = 0; p < RPW; ++p) {
        if (!has[p]) continue;
        float wf[8];
        unpack8(__ldg(reinterpret_cast<const uint4*>(w[p] + k)), wf);
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[p][r] = fmaf(wf[i], xv[r][i], acc[p][r]);
        }
      }
    }
  } else {
    for (int64_t k = lane; k < cols; k += 32) {
      float xs[R];
#pragma unroll
      for (int r = 0; r < R; ++r) xs[r] = x[r * x_stride + k];
#pragma unroll
      for (int p = 0; p < RPW; ++p) {
        if (!has[p]) continue;
        const float wf = bf16_to_float(w[p][k]);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[p][r] = fmaf(wf, xs[r], acc[p][r]);
      }
    }
  }

#pragma unroll
  for (int p = 0; p < RPW; ++p) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[p][r] = warp_sum(acc[p][r]);
  }
  if (lane != 0) return;
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
    if (!has[p]) continue;
    const GemvJob& j = b.jobs[job[p]];
    const float bias = j.bias ? j.bias[local[p]] : 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float* o = j.out + r * j.out_stride + local[p];
      const float y = acc[p][r] + bias;
      *o = j.accumulate ? *o + y : y;
    }
  }
}

template <int R>
cudaError_t gemv_rows(cudaStream_t stream, const GemvBatch& b, const float* x, int64_t x_stride, int64_t cols,
                      int64_t total_rows, bool vec) {
  constexpr int RPW = R <= 2 ? 1 : 2;  // with more input rows, share each x load between two weight rows
  const int64_t blocks = (total_rows + kGemvWarps * RPW - 1) / (kGemvWarps * RPW);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(blocks);
  if (vec) {
    gemv_kernel<R, RPW, true><<<grid, kGemvThreads, 0, stream>>>(b, x, x_stride, cols, total_rows);
  } else {
    gemv_kernel<R, RPW, false><<<grid, kGemvThreads, 0, stream>>>(b, x, x_stride, cols, total_rows);
  }
  return launched();
}

}  // namespace kernels

namespace launch {

cudaError_t gemv(cudaStream_t stream, const GemvBatch& batch, const float* x, int64_t x_stride, int rows, int64_t cols) {
  if (batch.count <= 0 || batch.count > kMaxGemvJobs || rows <= 0 || rows > kMaxGemvRows || cols <= 0) {
    return batch.count == 0 || rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  }
  int64_t total = 0;
  bool vec = cols % 8 == 0 && x_stride % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int j = 0; j < batch.count; ++j) {
    total += batch.jobs[j].rows;
    vec = vec && reinterpret_cast<uintptr_t>(batch.jobs[j].weight) % 16 == 0;
  }
  if (total <= 0) return cudaSuccess;
  switch (rows) {
    case 1: return kernels::gemv_rows<1>(stream, batch, x, x_stride, cols, total, vec);
    case 2: return kernels::gemv_rows<2>(stream, batch, x, x_stride, cols, total, vec);
    case 3: return kernels::gemv_rows<3>(stream, batch, x, x_stride, cols, total, vec);
    case 4: return kernels::gemv_rows<4>(stream, batch, x, x_stride, cols, total, vec);
    case 5: return kernels::gemv_rows<5>(stream, batch, x, x_stride, cols, total, vec);
    case 6: return kernels::gemv_rows<6>(stream, batch, x, x_stride, cols, total, vec);
    case 7: return kernels::gemv_rows<7>(stream, batch, x, x_stride, cols, total, vec);
    default: return kernels::gemv_rows<8>(stream, batch, x, x_stride, cols, total, vec);
  }
}

}  // namespace launch
}  // namespace mimo::cuda
