// y (+)= x W^T + bias for 1..8 input rows: the decode and verification products, which a GEMM
// library runs far below memory bandwidth. bf16 weights are streamed once with 16-byte loads,
// the fp32 input rows come through L1/L2 (every warp reads the same rows), products and sums are
// fp32 (no rounding of activations, unlike the cuBLASLt path). For .cu translation units only.
//
// Work split: one warp per RPW consecutive output rows, counted over all jobs of the batch (q, k
// and v in one launch); lanes split the columns, then a warp reduction.
#pragma once

#include <type_traits>

#include "mimo/backend/cuda/common.cuh"
#include "mimo/backend/cuda/rms_norm.cuh"

namespace mimo::cuda {
namespace kernels {

inline constexpr int kGemvThreads = 256;
inline constexpr int kGemvWarps = kGemvThreads / 32;

// The job of global output row g (g < total rows of the batch), and g's row within it, read with
// constant indices only.
__device__ __forceinline__ GemvJob gemv_locate(const GemvBatch& b, int64_t g, int64_t& row) {
  GemvJob job = b.jobs[0];
  row = g;
#pragma unroll
  for (int j = 1; j < kMaxGemvJobs; ++j) {
    if (j < b.count && row >= job.rows) {  // once false, stays false: row < job.rows
      row -= job.rows;
      job = b.jobs[j];
    }
  }
  return job;
}

// The same as an index into the batch.
__device__ __forceinline__ int gemv_locate_index(const GemvBatch& b, int64_t g, int64_t& row) {
  int job = 0;
  row = g;
  while (job + 1 < b.count && row >= b.jobs[job].rows) {
    row -= b.jobs[job].rows;
    ++job;
  }
  return job;
}

__device__ __forceinline__ const GemvJob& job_of(const GemvBatch&, const GemvJob& job) { return job; }
__device__ __forceinline__ const GemvJob& job_of(const GemvBatch& b, int job) { return b.jobs[job]; }

// Eight bf16 values packed in a uint4, widened to fp32.
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// Weights are read once: loaded with the evict-first hint, so they do not push the input rows
// (read by every warp) out of L1 and L2.
__device__ __forceinline__ uint4 load_streaming(const uint16_t* p) {
  const int4 v = __ldcs(reinterpret_cast<const int4*>(p));
  return make_uint4(static_cast<unsigned>(v.x), static_cast<unsigned>(v.y), static_cast<unsigned>(v.z),
                    static_cast<unsigned>(v.w));
}

// The vector path's column loop, shared by gemv_kernel and gemv_norm_kernel so that both sum in
// one order: lane l takes columns l * 8 + m * 256 (m = 0, 1, ...) of RPW weight rows w[p], 8 at
// a time, in increasing order, into acc[p][r] against R input rows (x_stride floats apart).
inline constexpr int64_t kGemvStep = 32 * 8;  // columns a warp covers with one 16-byte load per lane

// acc[p][r] += the 8 weights of row p at column k (already loaded, packed) times row r of x there.
template <int R, int RPW>
__device__ __forceinline__ void gemv_fma8(float (&acc)[RPW][R], int p, const uint4& packed, const float* x,
                                          int64_t x_stride, int64_t k) {
  float wf[8];
  unpack8(packed, wf);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float4 a = *reinterpret_cast<const float4*>(x + r * x_stride + k);
    const float4 c = *reinterpret_cast<const float4*>(x + r * x_stride + k + 4);
    const float xv[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[p][r] = fmaf(wf[i], xv[i], acc[p][r]);
  }
}

// The first U column groups of each row from k, loaded ahead (of a wait, of a norm); groups past
// the end (and all of them when !load) are left zero.
template <int RPW, int U>
__device__ __forceinline__ void gemv_load_head(uint4 (&head)[RPW][U], const uint16_t* const (&w)[RPW], int64_t k,
                                               int64_t cols, bool load = true) {
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
#pragma unroll
    for (int u = 0; u < U; ++u) head[p][u] = load && k + u * kGemvStep < cols ? load_streaming(w[p] + k + u * kGemvStep) : uint4{};
  }
}

// Uses the groups gemv_load_head loaded, in the order the loop below would have.
template <int R, int RPW, int U>
__device__ __forceinline__ void gemv_use_head(float (&acc)[RPW][R], const uint4 (&head)[RPW][U], const float* x,
                                              int64_t x_stride, int64_t k, int64_t cols) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (k + u * kGemvStep < cols) {
#pragma unroll
      for (int p = 0; p < RPW; ++p) gemv_fma8<R, RPW>(acc, p, head[p][u], x, x_stride, k + u * kGemvStep);
    }
  }
}

// The columns from k on: U groups per row in flight, then the remainder one group at a time.
template <int R, int RPW, int U>
__device__ __forceinline__ void gemv_columns(float (&acc)[RPW][R], const uint16_t* const (&w)[RPW], const float* x,
                                             int64_t x_stride, int64_t k, int64_t cols) {
  for (; k + (U - 1) * kGemvStep < cols; k += U * kGemvStep) {
    uint4 wv[RPW][U];
#pragma unroll
    for (int p = 0; p < RPW; ++p) {
#pragma unroll
      for (int u = 0; u < U; ++u) wv[p][u] = load_streaming(w[p] + k + u * kGemvStep);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int p = 0; p < RPW; ++p) gemv_fma8<R, RPW>(acc, p, wv[p][u], x, x_stride, k + u * kGemvStep);
    }
  }
  for (; k < cols; k += kGemvStep) {
#pragma unroll
    for (int p = 0; p < RPW; ++p) gemv_fma8<R, RPW>(acc, p, load_streaming(w[p] + k), x, x_stride, k);
  }
}

// R input rows, RPW output rows per warp, U 16-byte weight loads per row and lane issued before
// the first is used (the bytes in flight that keep memory busy). VEC: cols % 8 == 0 and x rows
// 16-byte aligned. EARLY (with VEC): the first U loads of each row are issued before waiting for
// the kernel ahead (launched as its programmatic dependent), so they overlap its last blocks.
template <int R, int RPW, int U, bool VEC, bool EARLY = false>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(GemvBatch b, const float* __restrict__ x, int64_t x_stride,
                                                            int64_t cols, int64_t total_rows) {
  static_assert(!EARLY || VEC, "early loads take the vector path");
  allow_dependents();
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  const int64_t first = warp * RPW;
  if (first >= total_rows) return;  // whole warp: no shuffle below is left half-done

  // The rows' jobs. One row per warp: the job itself, found with constant indices (with a
  // run-time index into the batch, the products ran 5% slower on an H200). Two rows per warp:
  // indices into the batch (holding two jobs took R = 2 from 58 to 80 registers, 3 blocks per
  // multiprocessor instead of 4).
  using JobRef = std::conditional_t<RPW == 1, GemvJob, int>;
  JobRef job[RPW];
  int64_t local[RPW];
  bool has[RPW];
  const uint16_t* w[RPW];
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
    has[p] = first + p < total_rows;
    const int64_t g = has[p] ? first + p : first;  // a missing row repeats the first: loads stay in bounds
    if constexpr (RPW == 1) {
      job[p] = gemv_locate(b, g, local[p]);
    } else {
      job[p] = gemv_locate_index(b, g, local[p]);
    }
    w[p] = job_of(b, job[p]).weight + local[p] * cols;
  }

  float acc[RPW][R];
#pragma unroll
  for (int p = 0; p < RPW; ++p) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[p][r] = 0.0f;
  }

  if constexpr (VEC) {
    int64_t k = static_cast<int64_t>(lane) * 8;
    if constexpr (EARLY) {
      // The first U column groups, loaded before the wait.
      uint4 head[RPW][U];
      gemv_load_head<RPW, U>(head, w, k, cols);
      wait_for_previous();
      gemv_use_head<R, RPW, U>(acc, head, x, x_stride, k, cols);
      k += U * kGemvStep;
    }
    gemv_columns<R, RPW, U>(acc, w, x, x_stride, k, cols);
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
    const GemvJob& j = job_of(b, job[p]);
    const float bias = j.bias ? j.bias[local[p]] : 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float* o = j.out + r * j.out_stride + local[p];
      const float y = acc[p][r] + bias;
      *o = j.accumulate ? *o + y : y;
    }
  }
}

// Rows per warp and loads in flight by the number of input rows, as measured on an H200 (decode
// shapes of MiMo-7B): one row, 8 loads per lane; two, two weight rows sharing each input load.
template <int R>
cudaError_t gemv_rows(cudaStream_t stream, const GemvBatch& b, const float* x, int64_t x_stride, int64_t cols,
                      int64_t total_rows, bool vec, bool programmatic) {
  constexpr int RPW = R == 1 ? 1 : 2;
  constexpr int U = R == 1 ? 8 : R == 2 ? 4 : 2;
  const int64_t blocks = (total_rows + kGemvWarps * RPW - 1) / (kGemvWarps * RPW);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(blocks);
  if constexpr (R == 1) {
    if (vec && programmatic) {
      return launch(gemv_kernel<R, RPW, U, true, true>, grid, kGemvThreads, 0, stream, true, b, x, x_stride, cols, total_rows);
    }
  }
  if (vec) {
    gemv_kernel<R, RPW, U, true><<<grid, kGemvThreads, 0, stream>>>(b, x, x_stride, cols, total_rows);
  } else {
    gemv_kernel<R, RPW, U, false><<<grid, kGemvThreads, 0, stream>>>(b, x, x_stride, cols, total_rows);
  }
  return launched();
}

// The products of one decode row over rms_norm(x), the norm folded in: each block first normalises
// x into shared memory with rms_norm_row (the rms_norm kernel's own code, so the same bits), while
// the first weight loads of its warps are already in flight (issued before waiting for the kernel
// ahead when launched as its programmatic dependent); the product then reads the normed
// row from shared memory. One weight row per warp with 8 loads per lane in flight, or with SWIGLU
// the same row of the gate (jobs[0]) and up (jobs[1]) products with 4 loads each, written as
// silu(gate) * up (silu_mul's arithmetic). Every lane sums its columns in gemv_kernel's order, so
// the results equal rms_norm, then gemv_kernel<1, 1, 8, true> (and silu_mul) bit for bit.
// Dynamic shared memory: cols floats. cols % 8 == 0; x, gamma and the weights 16-byte aligned.
template <bool SWIGLU>
__global__ void __launch_bounds__(kGemvThreads) gemv_norm_kernel(GemvBatch b, const float* __restrict__ x,
                                                                 const float* __restrict__ gamma, double eps,
                                                                 int64_t cols, int64_t total_rows) {
  static_assert(kGemvThreads == kNormThreads, "rms_norm_row needs the whole block");
  allow_dependents();
  extern __shared__ float4 normed_shared[];
  const float* normed = reinterpret_cast<const float*>(normed_shared);
  constexpr int P = SWIGLU ? 2 : 1;  // weight rows per warp
  constexpr int U = 8 / P;           // loads per row and lane in flight
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  const bool active = warp < total_rows;  // a warp past the end still takes part in the norm
  const int64_t g = active ? warp : 0;  // an inactive warp loads nothing, but needs a valid job
  int64_t row = g;
  // The row's job as an index into the batch: holding the job itself kept 11 registers live
  // through the loop (80 registers and a 16-byte spill; 76 and none this way).
  const int j = SWIGLU ? 0 : gemv_locate_index(b, g, row);
  const uint16_t* w[P];
  w[0] = b.jobs[j].weight + row * cols;
  if constexpr (SWIGLU) w[1] = b.jobs[1].weight + row * cols;

  // The first U column groups of each row, loaded before the norm.
  const int64_t k0 = static_cast<int64_t>(lane) * 8;
  uint4 head[P][U];
  gemv_load_head<P, U>(head, w, k0, cols, active);
  wait_for_previous();  // x comes from the kernel ahead
  // One float4 of x per thread kept in registers (of 4 for 4096 columns): the norm's sums and
  // products are the same whatever it keeps, and the weight loads above hold 32 registers already
  // (with 2 kept, the SwiGLU kernel took 76 registers instead of 64: 3 blocks a multiprocessor
  // instead of 4).
  rms_norm_row<true, 1>(x, gamma, eps, cols, reinterpret_cast<float*>(normed_shared));
  __syncthreads();
  if (!active) return;

  // The product over the normed row, in gemv_kernel's column order: the head groups, then the rest.
  float acc[P][1] = {};
  gemv_use_head<1, P, U>(acc, head, normed, 0, k0, cols);
  gemv_columns<1, P, U>(acc, w, normed, 0, k0 + U * kGemvStep, cols);

#pragma unroll
  for (int p = 0; p < P; ++p) acc[p][0] = warp_sum(acc[p][0]);
  if (lane != 0) return;
  if constexpr (SWIGLU) {
    // + 0.0f: the plain GEMV stores acc + 0.0f (no bias), which turns -0 into +0.
    const float gate = acc[0][0] + 0.0f, up = acc[1][0] + 0.0f;
    b.jobs[0].out[row] = gate / (1.0f + expf(-gate)) * up;
  } else {
    const GemvJob& job = b.jobs[j];
    float* o = job.out + row;
    const float y = acc[0][0] + (job.bias ? job.bias[row] : 0.0f);
    *o = job.accumulate ? *o + y : y;
  }
}

}  // namespace kernels

namespace launch {

bool programmatic_supported() {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, kernels::gemv_kernel<1, 1, 8, true, true>) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90;
}

bool gemv_norm_fits(const GemvBatch& batch, const float* x, const float* norm_weight, int64_t cols, bool swiglu) {
  if (batch.count < 1 || batch.count > kMaxGemvJobs || cols <= 0 || cols % 8 != 0 || cols > kMaxGemvNormCols ||
      !aligned16(x) || !aligned16(norm_weight)) {
    return false;
  }
  for (int j = 0; j < batch.count; ++j) {
    if (!aligned16(batch.jobs[j].weight) || batch.jobs[j].rows <= 0) return false;
  }
  if (!swiglu) return true;
  const GemvJob& gate = batch.jobs[0];
  const GemvJob& up = batch.jobs[1];
  return batch.count == 2 && gate.rows == up.rows && !gate.bias && !up.bias && !gate.accumulate && !up.accumulate;
}

cudaError_t gemv_norm(cudaStream_t stream, const GemvBatch& batch, const float* x, const float* norm_weight, double eps,
                      int64_t cols, bool swiglu, bool programmatic) {
  if (!gemv_norm_fits(batch, x, norm_weight, cols, swiglu)) return cudaErrorInvalidValue;
  // One warp per output row (per gate row with its up row).
  int64_t total = 0;
  for (int j = 0; j < (swiglu ? 1 : batch.count); ++j) total += batch.jobs[j].rows;
  const int64_t blocks = (total + kernels::kGemvWarps - 1) / kernels::kGemvWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(blocks);
  const size_t shared = static_cast<size_t>(cols) * sizeof(float);
  return kernels::launch(swiglu ? kernels::gemv_norm_kernel<true> : kernels::gemv_norm_kernel<false>, grid,
                         kernels::kGemvThreads, shared, stream, programmatic, batch, x, norm_weight, eps, cols, total);
}

cudaError_t gemv(cudaStream_t stream, const GemvBatch& batch, const float* x, int64_t x_stride, int rows, int64_t cols,
                 bool programmatic) {
  if (batch.count <= 0 || batch.count > kMaxGemvJobs || rows <= 0 || rows > kMaxGemvRows || cols <= 0) {
    return batch.count == 0 || rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  }
  int64_t total = 0;
  bool vec = cols % 8 == 0 && x_stride % 4 == 0 && aligned16(x);
  for (int j = 0; j < batch.count; ++j) {
    total += batch.jobs[j].rows;
    vec = vec && aligned16(batch.jobs[j].weight);
  }
  if (total <= 0) return cudaSuccess;
  switch (rows) {
    case 1: return kernels::gemv_rows<1>(stream, batch, x, x_stride, cols, total, vec, programmatic);
    case 2: return kernels::gemv_rows<2>(stream, batch, x, x_stride, cols, total, vec, false);
    case 3: return kernels::gemv_rows<3>(stream, batch, x, x_stride, cols, total, vec, false);
    case 4: return kernels::gemv_rows<4>(stream, batch, x, x_stride, cols, total, vec, false);
    case 5: return kernels::gemv_rows<5>(stream, batch, x, x_stride, cols, total, vec, false);
    case 6: return kernels::gemv_rows<6>(stream, batch, x, x_stride, cols, total, vec, false);
    case 7: return kernels::gemv_rows<7>(stream, batch, x, x_stride, cols, total, vec, false);
    default: return kernels::gemv_rows<8>(stream, batch, x, x_stride, cols, total, vec, false);
  }
}

}  // namespace launch
}  // namespace mimo::cuda
