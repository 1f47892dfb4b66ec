// Causal grouped-query attention over a KV cache laid out [kv_head][entry][head_dim], of f32, f16
// or bf16 elements (each kernel is instantiated per type, KvElement in common.cuh):
//   kv_store           writes the new rows' keys and values at entries [length, length + n);
//   attention_decode   split-K for few rows (decode, verification of drafts): each block takes one
//                      row, one KV head with up to G of its query heads (G = 4 or kDecodeMaxGroup,
//                      the least that holds the group), and one span of keys (each key is read once
//                      for the whole group); a second kernel merges the spans' partial softmax
//                      states;
//   attention_prefill  tiled, flash-style, for many rows: a block holds 32 query rows of one head,
//                      streams key/value tiles through shared memory and keeps an online softmax;
//                      four threads share each query row (interleaved dimensions).
// All arithmetic is fp32, with expf; 16-bit elements are widened as they are loaded. `length` is
// read from device memory so that the same launch is valid for every decode step of a CUDA graph.
// For .cu translation units only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

template <class E>
__global__ void kv_store_kernel(KvLayer kv, const int64_t* __restrict__ length, Rows k, Rows v) {
  using S = typename E::Stored;
  const int64_t D = kv.head_dim;
  const int64_t n = k.count * kv.kv_heads * D;
  const int64_t base = *length;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t row = i / (kv.kv_heads * D);
    const int64_t rest = i - row * kv.kv_heads * D;
    const int64_t h = rest / D, d = rest - h * D;
    const int64_t entry = base + row;
    if (entry < 0 || entry >= kv.capacity) continue;
    const int64_t at = (h * kv.capacity + entry) * D + d;
    static_cast<S*>(kv.keys)[at] = E::store(k.data[row * k.stride + h * D + d]);
    static_cast<S*>(kv.values)[at] = E::store(v.data[row * v.stride + h * D + d]);
  }
}

// ----- split-K decode -----

inline constexpr int kDecodeWarps = 4;

// One record per (row, query head, split): m, l, then head_dim accumulators (not yet divided by l).
__device__ __forceinline__ float* decode_record(float* partials, int64_t row, int64_t head, int64_t num_heads,
                                                int split, int splits, int64_t D) {
  return partials + ((row * num_heads + head) * splits + split) * (D + 2);
}

// DPL: head dimensions per lane (head_dim <= 32 * DPL); lane l holds dimensions l, l + 32, ...
// G: query heads per block (registers and shared memory are sized for G; MiMo's groups are 4).
template <int DPL, int G, class E>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(AttentionArgs a, int64_t group, int chunks, int splits, int64_t split_len,
                            float* __restrict__ partials) {
  using S = typename E::Stored;
  __shared__ float s_m[kDecodeWarps][G];
  __shared__ float s_l[kDecodeWarps][G];
  __shared__ float s_acc[kDecodeWarps][G][32 * DPL];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int split = blockIdx.x;
  const int64_t kvh = blockIdx.y / chunks;
  const int64_t g0 = static_cast<int64_t>(blockIdx.y % chunks) * G;
  const int64_t row = blockIdx.z;
  const int64_t D = a.kv.head_dim, cap = a.kv.capacity;
  const int ng = static_cast<int>(min_of<int64_t>(G, group - g0));
  const int64_t limit = min_of<int64_t>(*a.length + row + 1, cap);  // entries this row sees
  const int64_t begin = static_cast<int64_t>(split) * split_len;
  const int64_t end = min_of<int64_t>(begin + split_len, limit);

  const float* qrow = a.q.data + row * a.q.stride + (kvh * group + g0) * D;
  float q[G][DPL], acc[G][DPL], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int64_t d = lane + 32 * c;
      q[g][c] = g < ng && d < D ? qrow[g * D + d] : 0.0f;
      acc[g][c] = 0.0f;
    }
  }

  // Warp w takes keys begin + w, begin + w + 4, ... in increasing order, U of them per iteration
  // so that their loads are in flight together (the order, and so the result, is the same for
  // any U; fewer where the iteration's scores would crowd the registers).
  constexpr int U = DPL * G <= 16 ? 4 : 2;
  const S* K = static_cast<const S*>(a.kv.keys) + kvh * cap * D;
  const S* V = static_cast<const S*>(a.kv.values) + kvh * cap * D;
  for (int64_t j0 = begin + warp; j0 < end; j0 += kDecodeWarps * U) {
    float kj[U][DPL], vj[U][DPL];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t j = j0 + u * kDecodeWarps;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int64_t d = lane + 32 * c;
        const bool in = j < end && d < D;
        kj[u][c] = in ? E::load(K[j * D + d]) : 0.0f;
        vj[u][c] = in ? E::load(V[j * D + d]) : 0.0f;
      }
    }
    // Every score of the iteration first: the reductions are independent of each other (and of
    // the softmax state), so their shuffles overlap instead of waiting on one update at a time.
    // Masked keys and heads past the group score 0, which nothing reads.
    float score[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < DPL; ++c) dot = fmaf(q[g][c], kj[u][c], dot);
        score[u][g] = warp_sum(dot) * a.scale;  // every lane holds the same score
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (j0 + u * kDecodeWarps >= end) break;  // uniform over the warp
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g >= ng) break;  // uniform over the block
        const float s = score[u][g];
        if (s > m[g]) {
          const float corr = expf(m[g] - s);  // 0 for the first key (m = -inf)
          l[g] *= corr;
#pragma unroll
          for (int c = 0; c < DPL; ++c) acc[g][c] *= corr;
          m[g] = s;
        }
        const float p = expf(s - m[g]);
        l[g] += p;
#pragma unroll
        for (int c = 0; c < DPL; ++c) acc[g][c] = fmaf(p, vj[u][c], acc[g][c]);
      }
    }
  }

  // Merge the warps' states, then write this split's record for each head of the group.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
#pragma unroll
    for (int c = 0; c < DPL; ++c) s_acc[warp][g][lane + 32 * c] = acc[g][c];
  }
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(ng) * D; idx += blockDim.x) {
    const int g = static_cast<int>(idx / D);
    const int64_t d = idx - g * D;
    float M = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) M = max_of(M, s_m[w][g]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY) {
      for (int w = 0; w < kDecodeWarps; ++w) {
        if (s_m[w][g] == -INFINITY) continue;  // a warp that saw no key
        const float e = expf(s_m[w][g] - M);
        L = fmaf(s_l[w][g], e, L);
        A = fmaf(s_acc[w][g][d], e, A);
      }
    }
    float* rec = decode_record(partials, row, kvh * group + g0 + g, a.num_heads, split, splits, D);
    if (d == 0) {
      rec[0] = M;
      rec[1] = L;
    }
    rec[2 + d] = A;
  }
}

// One block per (row, query head): merges the splits' records into the output row. The splits'
// weights exp(m - M) are computed once, into shared memory; then each thread sums its dimensions
// over the splits with up to 32 independent loads in flight (a chain of one load per split took
// 8 us for 16 splits on an H200; 8 at a time left 17 round trips for the 132 splits of a
// 4096-token context, 5 now). Splits past the row's last key are empty and skipped.
inline constexpr int kCombineThreads = 128;
__global__ void __launch_bounds__(kCombineThreads)
    attention_combine_kernel(AttentionArgs a, int splits, int64_t split_len, const float* __restrict__ partials) {
  allow_dependents();  // the output product after it may start loading its weights
  constexpr int kWarps = kCombineThreads / 32;
  __shared__ float s_weight[kMaxSplits];
  __shared__ float s_part[kWarps];
  __shared__ float s_max, s_sum;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x, head = blockIdx.y;
  const int64_t D = a.kv.head_dim;
  const int64_t limit = min_of<int64_t>(*a.length + row + 1, a.kv.capacity);
  const int used = static_cast<int>(min_of<int64_t>(splits, (limit + split_len - 1) / split_len));
  const float* base = partials + (row * a.num_heads + head) * splits * (D + 2);

  float m = -INFINITY;
  for (int s = threadIdx.x; s < used; s += kCombineThreads) m = max_of(m, base[s * (D + 2)]);
  m = warp_max(m);
  if (lane == 0) s_part[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = s_part[0];
    for (int w = 1; w < kWarps; ++w) M = max_of(M, s_part[w]);
    s_max = M;
  }
  __syncthreads();
  const float M = s_max;
  float l = 0.0f;
  for (int s = threadIdx.x; s < used; s += kCombineThreads) {
    const float* rec = base + s * (D + 2);
    const float w = M == -INFINITY || rec[0] == -INFINITY ? 0.0f : expf(rec[0] - M);  // 0: an empty split
    s_weight[s] = w;
    l = fmaf(rec[1], w, l);
  }
  l = warp_sum(l);
  if (lane == 0) s_part[warp] = l;
  __syncthreads();
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kWarps; ++w) L += s_part[w];
    s_sum = L;
  }
  __syncthreads();
  const float L = s_sum;

  float* out = a.out.data + row * a.out.stride + head * D;
  for (int64_t d = threadIdx.x; d < D; d += kCombineThreads) {
    constexpr int U = 32;  // splits summed per round trip (predicated: a partial round is one too)
    float acc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) acc[u] = 0.0f;
    const float* col = base + 2 + d;
    for (int s0 = 0; s0 < used; s0 += U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (s0 + u < used) acc[u] = fmaf(col[(s0 + u) * (D + 2)], s_weight[s0 + u], acc[u]);
      }
    }
    float sum[U / 2];  // pairwise, in a fixed order
#pragma unroll
    for (int u = 0; u < U / 2; ++u) sum[u] = acc[2 * u] + acc[2 * u + 1];
#pragma unroll
    for (int u = 0; u < U / 4; ++u) sum[u] = sum[2 * u] + sum[2 * u + 1];
#pragma unroll
    for (int u = 0; u < U / 8; ++u) sum[u] = sum[2 * u] + sum[2 * u + 1];
#pragma unroll
    for (int u = 0; u < U / 16; ++u) sum[u] = sum[2 * u] + sum[2 * u + 1];
    const float A = sum[0] + sum[1];
    out[d] = L > 0.0f ? A / L : 0.0f;
  }
}

// ----- tiled prefill -----

inline constexpr int kPrefillRows = 32;                 // query rows per block
inline constexpr int kPrefillTeam = 4;                  // threads per query row
inline constexpr int kPrefillThreads = kPrefillRows * kPrefillTeam;

// DPT: dimensions per thread (head_dim <= 4 * DPT; thread t of a team holds dimensions 4c + t);
// BC: keys per shared-memory tile. Shared rows are padded to 4 * DPT with zeros.
template <int DPT, int BC, class E>
__global__ void __launch_bounds__(kPrefillThreads) attention_prefill_kernel(AttentionArgs a, int64_t group) {
  using S = typename E::Stored;
  constexpr int DP = kPrefillTeam * DPT;
  __shared__ float Ks[BC][DP];
  __shared__ float Vs[BC][DP];

  const int tid = threadIdx.x, team = tid / kPrefillTeam, t = tid % kPrefillTeam;
  const int64_t n = a.q.count, D = a.kv.head_dim, cap = a.kv.capacity;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kPrefillRows;
  const int64_t row = r0 + team;
  const bool valid = row < n;
  const int64_t head = blockIdx.y, kvh = head / group;
  const int64_t length = *a.length;
  const int64_t limit = valid ? min_of<int64_t>(length + row + 1, cap) : 0;
  const int64_t block_limit = min_of<int64_t>(length + min_of<int64_t>(r0 + kPrefillRows, n), cap);

  float q[DPT], acc[DPT];
  const float* qrow = a.q.data + (valid ? row : 0) * a.q.stride + head * D;
#pragma unroll
  for (int c = 0; c < DPT; ++c) {
    const int64_t d = kPrefillTeam * c + t;
    q[c] = valid && d < D ? qrow[d] : 0.0f;
    acc[c] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  const S* K = static_cast<const S*>(a.kv.keys) + kvh * cap * D;
  const S* V = static_cast<const S*>(a.kv.values) + kvh * cap * D;
  for (int64_t tile = 0; tile < block_limit; tile += BC) {  // the same trip count for the whole block
    __syncthreads();
    const int64_t count = min_of<int64_t>(BC, block_limit - tile);
    for (int idx = tid; idx < BC * DP; idx += kPrefillThreads) {
      const int j = idx / DP, d = idx % DP;
      const bool in = j < count && d < D;
      Ks[j][d] = in ? E::load(K[(tile + j) * D + d]) : 0.0f;
      Vs[j][d] = in ? E::load(V[(tile + j) * D + d]) : 0.0f;
    }
    __syncthreads();

    // Scores of this tile. Every thread runs the shuffles (invalid rows too): they span a team.
    float s[BC];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < BC; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < DPT; ++c) dot = fmaf(q[c], Ks[j][kPrefillTeam * c + t], dot);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      s[j] = tile + j < limit ? dot * a.scale : -INFINITY;
      tile_max = max_of(tile_max, s[j]);
    }
    const float m_new = max_of(m, tile_max);
    if (m_new == -INFINITY) continue;  // no visible key yet (uniform over the team)
    const float corr = expf(m - m_new);  // 0 while m is -inf
    l *= corr;
#pragma unroll
    for (int c = 0; c < DPT; ++c) acc[c] *= corr;
#pragma unroll
    for (int j = 0; j < BC; ++j) {
      const float p = expf(s[j] - m_new);  // 0 for masked keys
      l += p;
#pragma unroll
      for (int c = 0; c < DPT; ++c) acc[c] = fmaf(p, Vs[j][kPrefillTeam * c + t], acc[c]);
    }
    m = m_new;
  }
  if (!valid) return;
  float* out = a.out.data + row * a.out.stride + head * D;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int c = 0; c < DPT; ++c) {
    const int64_t d = kPrefillTeam * c + t;
    if (d < D) out[d] = acc[c] * inv;
  }
}

template <int DPT, int BC>
cudaError_t prefill_with(cudaStream_t stream, const AttentionArgs& a, int64_t group) {
  const dim3 grid(static_cast<unsigned>((a.q.count + kPrefillRows - 1) / kPrefillRows), static_cast<unsigned>(a.num_heads));
  return with_kv_element(a.kv.type, [&]<class E>(E) {
    attention_prefill_kernel<DPT, BC, E><<<grid, kPrefillThreads, 0, stream>>>(a, group);
    return launched();
  });
}

template <int DPL, int G>
cudaError_t decode_with(cudaStream_t stream, const AttentionArgs& a, int64_t group, int splits, int64_t split_len,
                        float* partials) {
  const int chunks = static_cast<int>((group + G - 1) / G);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(a.kv.kv_heads * chunks),
                  static_cast<unsigned>(a.q.count));
  const cudaError_t e = with_kv_element(a.kv.type, [&]<class E>(E) {
    attention_decode_kernel<DPL, G, E><<<grid, kDecodeWarps * 32, 0, stream>>>(a, group, chunks, splits, split_len, partials);
    return launched();
  });
  if (e != cudaSuccess) return e;
  const dim3 cgrid(static_cast<unsigned>(a.q.count), static_cast<unsigned>(a.num_heads));
  attention_combine_kernel<<<cgrid, kCombineThreads, 0, stream>>>(a, splits, split_len, partials);
  return launched();
}

inline bool attention_shape_ok(const AttentionArgs& a) {
  return a.kv.kv_heads > 0 && a.num_heads % a.kv.kv_heads == 0 && a.kv.head_dim > 0 &&
         a.kv.head_dim <= kMaxHeadDim && a.num_heads <= 65535 && a.q.count > 0;
}

}  // namespace kernels

namespace launch {

cudaError_t kv_store(cudaStream_t stream, const KvLayer& kv, const int64_t* length, const Rows& k, const Rows& v) {
  const int64_t n = k.count * kv.kv_heads * kv.head_dim;
  if (n <= 0) return cudaSuccess;
  return kernels::with_kv_element(kv.type, [&]<class E>(E) {
    kernels::kv_store_kernel<E><<<kernels::grid_for(n, 256), 256, 0, stream>>>(kv, length, k, v);
    return kernels::launched();
  });
}

cudaError_t attention_decode(cudaStream_t stream, const AttentionArgs& a, int splits, int64_t split_len,
                             float* partials) {
  if (a.q.count == 0) return cudaSuccess;
  if (!kernels::attention_shape_ok(a) || a.q.count > kMaxDecodeRows || splits < 1 || splits > kMaxSplits ||
      split_len < 1) {
    return cudaErrorInvalidValue;
  }
  const int64_t group = a.num_heads / a.kv.kv_heads;
  const int64_t D = a.kv.head_dim;
  const auto with_dims = [&]<int G>() {
    if (D <= 32) return kernels::decode_with<1, G>(stream, a, group, splits, split_len, partials);
    if (D <= 64) return kernels::decode_with<2, G>(stream, a, group, splits, split_len, partials);
    if (D <= 128) return kernels::decode_with<4, G>(stream, a, group, splits, split_len, partials);
    return kernels::decode_with<8, G>(stream, a, group, splits, split_len, partials);
  };
  // Blocks of 4 query heads where the group fits (MiMo: 32 over 8 KV heads), else of 8.
  return group <= 4 ? with_dims.template operator()<4>() : with_dims.template operator()<kDecodeMaxGroup>();
}

cudaError_t attention_prefill(cudaStream_t stream, const AttentionArgs& a) {
  if (a.q.count == 0) return cudaSuccess;
  if (!kernels::attention_shape_ok(a)) return cudaErrorInvalidValue;
  const int64_t group = a.num_heads / a.kv.kv_heads;
  const int64_t D = a.kv.head_dim;
  if (D <= 16) return kernels::prefill_with<4, 32>(stream, a, group);
  if (D <= 32) return kernels::prefill_with<8, 32>(stream, a, group);
  if (D <= 64) return kernels::prefill_with<16, 32>(stream, a, group);
  if (D <= 128) return kernels::prefill_with<32, 32>(stream, a, group);
  return kernels::prefill_with<64, 16>(stream, a, group);
}

}  // namespace launch
}  // namespace mimo::cuda
