// The kernel launchers of the CUDA backend: declared here for host code (any C++20 compiler),
// defined by the kernel headers (*.cuh) that <mimo/cuda.cuh> compiles in exactly one .cu file of
// a program. Each launcher enqueues its kernels on `stream` and returns the launch status
// (cudaGetLastError); none synchronises. A launcher with nothing to do returns cudaSuccess.
//
// Why the split: nvcc's front end cannot compile the host library (simdjson's SIMD code, C++20
// implicit moves into Expected<T>), so the model, the session and the backend's host side are
// compiled by the host compiler and only the kernels go through nvcc.
//
// Data: activations are mimo::Rows of fp32 in device memory; weights are bf16 bit patterns
// (uint16_t) in row-major [rows, cols]; a KV layer is [kv_head][entry][head_dim] of f32, f16 or bf16.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/kv_type.hpp"

namespace mimo::cuda {

// Element type of a tensor as stored in the checkpoint (converted to bf16 at upload).
enum class StoredType : int { f32 = 0, f16 = 1, bf16 = 2 };

// One product y (+)= x W^T + bias of the GEMV kernel (x has 1..kMaxGemvRows rows).
struct GemvJob {
  const uint16_t* weight = nullptr;  // bf16 [rows, cols], row-major, contiguous
  int64_t rows = 0;
  const float* bias = nullptr;       // rows floats, or null
  float* out = nullptr;              // row r of x writes out[r * out_stride + 0..rows)
  int64_t out_stride = 0;
  int accumulate = 0;                // 1: out += x W^T + bias
};
inline constexpr int kMaxGemvJobs = 4;
inline constexpr int kMaxGemvRows = 8;
inline constexpr int64_t kMaxGemvNormCols = 8192;  // the normed row in 32 KiB of shared memory
struct GemvBatch {
  GemvJob jobs[kMaxGemvJobs];
  int count = 0;
};

// Whether p is 16-byte aligned: the float4 and 16-byte weight loads the vector paths take.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// One decoder layer of a KV cache: elements of `type` (f32, f16 or bf16; see cuda_kv_type).
struct KvLayer {
  void* keys = nullptr;    // [kv_heads][capacity][head_dim]
  void* values = nullptr;  // same layout
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t capacity = 0;
  KvType type = KvType::f32;
};

// The KV element types the CUDA kernels store: f32, and f16 and bf16 rounded to nearest even as
// the CPU backend rounds them (f16 saturating at +-65504), so both backends store the same bits.
constexpr bool cuda_kv_type(KvType t) { return t == KvType::f32 || t == KvType::f16 || t == KvType::bf16; }

// Causal attention of q.count new rows whose keys and values are already stored at entries
// [length, length + q.count) of `kv`: row i sees entries [0, length + i].
struct AttentionArgs {
  KvLayer kv;
  const int64_t* length = nullptr;  // device memory: entries before the first new row
  Rows q;                           // q.count rows of num_heads * head_dim
  Rows out;                         // same shape as q
  int64_t num_heads = 0;
  float scale = 0.0f;               // 1 / sqrt(head_dim)
};

inline constexpr int64_t kMaxHeadDim = 256;  // the attention kernels' limit (even head_dim only)
inline constexpr int kDecodeMaxGroup = 8;    // query heads per block of the split-K kernel
inline constexpr int kMaxDecodeRows = 8;     // rows of the split-K decode kernel
inline constexpr int kMaxSplits = 256;       // key splits of the split-K decode kernel

namespace launch {

// cudaSuccess when the kernels were compiled for the current device (CUDA_ARCHITECTURES), else
// the error the first launch would report (cudaErrorNoKernelImageForDevice).
cudaError_t probe_kernels();

// dst[i] = bf16(src[i]) for i < n; src is f32 or f16 in device memory.
cudaError_t convert_to_bf16(cudaStream_t stream, const void* src, StoredType type, uint16_t* dst, int64_t n);

// hi[i][c] = bf16(x[i][c]) and, when lo is not null, lo[i][c] = bf16(x[i][c] - hi[i][c]), both
// contiguous [x.count][x.width]: the inputs of cuBLASLt products (hi + lo carries ~16 bits).
cudaError_t split_bf16(cudaStream_t stream, const Rows& x, uint16_t* hi, uint16_t* lo);

// Whether the kernels can be launched as programmatic dependents (sm_90 code in this build, on
// this device): the GEMV launchers take `programmatic` only then.
bool programmatic_supported();

// The jobs of `batch` over the same `rows` input rows x (x_stride floats apart) of `cols` values.
// programmatic: one-row products start loading their weights while the kernel before them ends.
cudaError_t gemv(cudaStream_t stream, const GemvBatch& batch, const float* x, int64_t x_stride, int rows, int64_t cols,
                 bool programmatic = false);

// The products of `batch` over rms_norm(x) for one input row x of `cols` values (norm_weight:
// cols floats), the norm folded into the product (nothing else reads or writes x's normed form).
// swiglu: jobs[0] is the gate product and jobs[1] the up product (the same shape, no bias, no
// accumulate); jobs[0].out receives silu(gate) * up. The results equal rms_norm then gemv (and
// silu_mul) bit for bit. Needs cols % 8 == 0, cols <= kMaxGemvNormCols (the normed row sits in
// shared memory) and x, norm_weight and every weight 16-byte aligned (cudaErrorInvalidValue
// otherwise: callers check gemv_norm_fits).
bool gemv_norm_fits(const GemvBatch& batch, const float* x, const float* norm_weight, int64_t cols, bool swiglu);
cudaError_t gemv_norm(cudaStream_t stream, const GemvBatch& batch, const float* x, const float* norm_weight, double eps,
                      int64_t cols, bool swiglu, bool programmatic = false);

// out[i][c] += bias[c].
cudaError_t add_bias(cudaStream_t stream, const Rows& out, const float* bias);

// out = weight * x / sqrt(mean(x^2) + eps) per row; out may alias x.
cudaError_t rms_norm(cudaStream_t stream, const Rows& x, const float* weight, double eps, const Rows& out);

// Rotate-half RoPE of every head of row i at positions[i] (device memory).
cudaError_t rope(cudaStream_t stream, const Rows& x, int64_t heads, int64_t head_dim, const int64_t* positions,
                 double theta);

// gate = silu(gate) * up.
cudaError_t silu_mul(cudaStream_t stream, const Rows& gate, const Rows& up);

// out[i] = table[tokens[i]] widened to fp32; tokens (device memory) are clamped to [0, vocab).
cudaError_t embed(cudaStream_t stream, const uint16_t* table, int64_t vocab, const int32_t* tokens, const Rows& out);

// dst[i] = src[rows[i]]; rows (device memory) are clamped to [0, src.count).
cudaError_t gather_rows(cudaStream_t stream, const Rows& src, const int32_t* rows, const Rows& dst);

// Stores k, v (n rows of kv_heads * head_dim) at entries [*length, *length + n) of `kv`;
// entries past the capacity are dropped (the host checks first).
cudaError_t kv_store(cudaStream_t stream, const KvLayer& kv, const int64_t* length, const Rows& k, const Rows& v);

// rope(q, q_heads), rope(k, kv.kv_heads) and kv_store(k, v) in one launch: q and k are rotated in
// place and the rotated keys stored, with the same arithmetic as rope and kv_store.
cudaError_t rope_store(cudaStream_t stream, const Rows& q, int64_t q_heads, const Rows& k, const Rows& v, const KvLayer& kv,
                       const int64_t* length, const int64_t* positions, double theta);

// Split-K attention for at most kMaxDecodeRows rows: `splits` blocks of `split_len` keys per
// (row, KV head), then a combine pass. partials: rows * num_heads * splits * (head_dim + 2) floats.
cudaError_t attention_decode(cudaStream_t stream, const AttentionArgs& a, int splits, int64_t split_len,
                             float* partials);

// Tiled (flash-style) attention for any number of rows: 32 query rows of one head per block,
// keys and values streamed through shared memory with an online softmax.
cudaError_t attention_prefill(cudaStream_t stream, const AttentionArgs& a);

// out[i] = index of the largest value of row i (the first one on ties).
cudaError_t argmax_rows(cudaStream_t stream, const Rows& x, int32_t* out);

// Per row, its `count` largest values (value descending, -0 == +0, then lower index) in ascending
// index order: ids[r * count + j], values[r * count + j]; ids -1 for a row with NaN or +inf, or only
// -inf. 1 <= count <= min(width, max_top_count).
cudaError_t top_rows(cudaStream_t stream, const Rows& x, int32_t count, int32_t* ids, float* values);

}  // namespace launch
}  // namespace mimo::cuda
