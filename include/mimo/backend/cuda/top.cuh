// Top-k on the device: the `count` best entries of each row in the order every sampling stage uses
// (value descending, -0 == +0, then index ascending; see mimo::detail::rank_of), in ascending index
// order as mimo::detail::select_top_k returns them, so that only count ids and values per row come
// back to the host instead of the whole row. -1 ids for a row holding NaN or +inf, or only -inf
// (the rows a sampler refuses). For .cu TUs only.
#pragma once

#include "mimo/backend/cuda/common.cuh"

namespace mimo::cuda {
namespace kernels {

// One block per row: a 151,680-entry row is read 6 times, from L2 after the first.
inline constexpr int kTopThreads = 1024;
inline constexpr int kTopWarps = kTopThreads / 32;
inline constexpr int kTopBins = 256;  // 8 bits of the key per radix pass
static_assert(kTopWarps == 32, "top_exclusive_sum scans the warp totals with one warp");
static_assert(kTopThreads >= kTopBins, "one thread clears each bin");

// mimo::detail::order_key (larger key, larger value; -0 and +0 alike), on the bits: adding 0.0f
// to fold -0 into +0 would also flush denormals to 0 where the kernels are built with -ftz.
__device__ __forceinline__ uint32_t top_order_key(float v) {
  uint32_t bits = __float_as_uint(v);
  if (bits == 0x8000'0000u) bits = 0;
  return (bits & 0x8000'0000u) ? ~bits : (bits | 0x8000'0000u);
}

// Sum of v over the block's threads before this one (kTopThreads threads, all calling). The
// trailing barrier frees `warp_totals` (kTopWarps entries of shared memory) for the next call.
__device__ __forceinline__ int32_t top_exclusive_sum(int32_t v, int32_t* warp_totals) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  int32_t inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int32_t before = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += before;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int32_t total = warp_totals[lane];
    int32_t through = total;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int32_t before = __shfl_up_sync(0xffffffffu, through, offset);
      if (lane >= offset) through += before;
    }
    warp_totals[lane] = through - total;  // the warps before this one
  }
  __syncthreads();
  const int32_t result = warp_totals[warp] + inclusive - v;
  __syncthreads();
  return result;
}

// Row r writes ids[r * count + j] and values[r * count + j], j < count, 1 <= count <= width.
// A radix select finds the key T of the count-th best entry, 8 bits a pass from the top (4 passes
// over the row, each counting only the keys that share the bits found so far); every key above T
// is taken, and of the keys equal to T the `desired` lowest-index ones. The gather then gives
// each thread a contiguous strip of the row, so that prefix sums over the threads place the
// entries in index order without sorting them.
__global__ void __launch_bounds__(kTopThreads)
    top_kernel(Rows x, int32_t count, int32_t* __restrict__ ids, float* __restrict__ values) {
  __shared__ int32_t histogram[kTopBins];
  __shared__ int32_t warp_totals[kTopWarps];
  __shared__ uint32_t found_prefix;
  __shared__ int32_t found_desired;
  const int64_t r = blockIdx.x;
  const float* row = x.data + r * x.stride;
  int32_t* row_ids = ids + r * count;
  float* row_values = values + r * count;
  const int64_t width = x.width;

  uint32_t prefix = 0;      // the key bits above `shift` that T has
  int32_t desired = count;  // entries still to take among the keys with those bits (>= 1)
#pragma unroll
  for (int shift = 24; shift >= 0; shift -= 8) {
    const bool first = shift == 24;
    const uint32_t mask = first ? 0u : ~0u << (shift + 8);
    if (threadIdx.x < kTopBins) histogram[threadIdx.x] = 0;
    __syncthreads();
    int invalid = 0;
    int live = 0;
    // Logits crowd a few bins (the first pass sees little more than their exponents), and shared
    // atomics on one address serialise: the lanes of a warp that share a bin add once, together.
    // The loop runs the same number of times in every thread, so whole warps take part.
    for (int64_t base = 0; base < width; base += kTopThreads) {
      const int64_t c = base + threadIdx.x;
      constexpr uint32_t none = kTopBins;
      uint32_t bin = none;
      if (c < width) {
        const float v = row[c];
        if (first) {
          invalid |= !(v < INFINITY);  // NaN or +inf
          live |= v > -INFINITY;
        }
        const uint32_t key = top_order_key(v);
        if (((key ^ prefix) & mask) == 0) bin = (key >> shift) & (kTopBins - 1);
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin != none && (threadIdx.x % 32) == static_cast<unsigned>(__ffs(peers) - 1)) {
        atomicAdd(&histogram[bin], __popc(peers));
      }
    }
    if (first) {
      // The first pass checks the row on the way (the barriers also end the counting).
      invalid = __syncthreads_or(invalid);
      live = __syncthreads_or(live);
      if (invalid || !live) {  // uniform: the whole block leaves
        for (int32_t j = static_cast<int32_t>(threadIdx.x); j < count; j += kTopThreads) row_ids[j] = -1;
        return;
      }
    } else {
      __syncthreads();
    }
    // The bin b holding the desired-th largest key: above(b) < desired <= above(b) + histogram[b],
    // above(b) counting the keys in the bins over b. Lane l sums bins 255 - 8l down to 248 - 8l,
    // so a scan over the lanes in order counts from the top bin down.
    if (threadIdx.x < 32) {
      const int lane = static_cast<int>(threadIdx.x);
      const int top = kTopBins - 1 - 8 * lane;
      int32_t own = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) own += histogram[top - i];
      int32_t through = own;  // keys in this lane's bins and above
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int32_t before = __shfl_up_sync(0xffffffffu, through, offset);
        if (lane >= offset) through += before;
      }
      int32_t above = through - own;
      if (above < desired && desired <= through) {  // exactly one lane
        int b = top;
        while (above + histogram[b] < desired) above += histogram[b--];  // stops by top - 7
        found_prefix = prefix | (static_cast<uint32_t>(b) << shift);
        found_desired = desired - above;
      }
    }
    __syncthreads();
    prefix = found_prefix;  // rewritten only two barriers into the next pass
    desired = found_desired;
  }

  // Gather: thread t walks [t * strip, (t + 1) * strip), so the threads' prefix sums give each
  // taken entry its place in index order; the lowest-index ties are the ones taken.
  const uint32_t threshold = prefix;
  const int64_t strip = (width + kTopThreads - 1) / kTopThreads;
  const int64_t begin = min_of<int64_t>(threadIdx.x * strip, width);
  const int64_t end = min_of<int64_t>(begin + strip, width);
  int32_t greater = 0;
  int32_t equal = 0;
  for (int64_t c = begin; c < end; ++c) {
    const uint32_t key = top_order_key(row[c]);
    greater += key > threshold;
    equal += key == threshold;
  }
  const int32_t equal_before = top_exclusive_sum(equal, warp_totals);
  int32_t ties = min_of(max_of(desired - equal_before, 0), equal);  // ties this strip takes
  int32_t left = greater + ties;
  int32_t out = top_exclusive_sum(left, warp_totals);
  for (int64_t c = begin; left > 0; ++c) {  // ends within the strip: it holds `left` entries
    const float v = row[c];
    const uint32_t key = top_order_key(v);
    bool take = key > threshold;
    if (key == threshold && ties > 0) {
      take = true;
      --ties;
    }
    if (take) {
      row_ids[out] = static_cast<int32_t>(c);
      row_values[out] = v;  // as read, -0 included
      ++out;
      --left;
    }
  }
}

}  // namespace kernels

namespace launch {

// For each row r: the count best entries (value descending, then index ascending) in ascending
// index order, at ids[r * count + j] and values[r * count + j]; -1 ids (values unspecified) for a
// row holding NaN or +inf, or only -inf. 1 <= count <= min(width, 4096), width < 2^31.
cudaError_t top_rows(cudaStream_t stream, const Rows& x, int32_t count, int32_t* ids, float* values) {
  if (x.count <= 0 || x.width <= 0 || count <= 0) return cudaSuccess;
  kernels::top_kernel<<<static_cast<unsigned>(x.count), kernels::kTopThreads, 0, stream>>>(x, count, ids, values);
  return kernels::launched();
}

}  // namespace launch
}  // namespace mimo::cuda
