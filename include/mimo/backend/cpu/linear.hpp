// y = x W^T (+ bias) (+ y) for one or several weights that read the same input rows, dispatched as
// one parallel job so that q/k/v (or gate/up) cost one wake-up of the thread pool.
//   n <= kMaxMatvecRows (decode, verification of drafts): each thread streams a share of the
//     weight rows once (memory-bound; matvec.hpp, matvec_quant.hpp);
//   larger n (prefill): blocked, packed matrix-matrix products (compute-bound; gemm.hpp).
// Unless `exact`, BF16 weights use bf16 dot products of activations rounded to bf16 where the CPU
// has AVX512_BF16, and quantized weights in prefill int8 activations, as decoding does, where it
// has AVX512_VNNI (or bf16 dot products; gemm_path); `exact` keeps every product of float
// weights, and prefill's of quantized ones, in fp32.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/cpu/gemm.hpp"
#include "mimo/backend/cpu/matvec.hpp"
#include "mimo/backend/cpu/matvec_quant.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"
#include "mimo/detail/aligned_buffer.hpp"

namespace mimo::cpu {

// Scratch of a context for products with up to max_cols input columns.
struct LinearScratch {
  GemmScratch gemm;
  mimo::detail::AlignedBuffer<std::byte> quant;  // per thread: activation rows quantized for the decode kernels
  mimo::detail::AlignedBuffer<uint16_t> x16;     // per thread: activation rows rounded to bf16 for the decode kernels
  uint64_t quant_per_thread = 0;
  int64_t x16_per_thread = 0;
  int64_t max_cols = 0;
  WeightPrefetch prefetch = default_weight_prefetch();  // how the decode kernels stream the weights
  bool bf16_prefill = true;  // prefill may use bf16 dot products (gemm_path); false: fp32 panels
  bool int8_prefill = true;  // prefill of quantized weights may use int8 activations (gemm_path)

  Status reserve(int threads, int64_t cols) {
    max_cols = cols;
    if (auto s = gemm.reserve(threads, cols); !s) return s;
    quant_per_thread = (QuantizedRows::bytes_for(kMaxMatvecRows, cols) + 63) / 64 * 64;
    if (auto s = quant.reserve(static_cast<uint64_t>(threads) * quant_per_thread, "quantized activation scratch"); !s) {
      return s;
    }
    x16_per_thread = kMaxMatvecRows * bf16_row_stride(cols);
    return x16.reserve(static_cast<uint64_t>(threads * x16_per_thread), "bf16 activation scratch");
  }
};

inline void linear(ThreadPool& pool, Isa isa, bool exact, const Rows& x, std::span<const LinearJob> jobs,
                   LinearScratch& scratch) {
  const int64_t n = x.count;
  if (n == 0) return;
  if (n > kMaxMatvecRows) {
    return gemm(pool, isa, {.exact = exact, .bf16 = scratch.bf16_prefill, .int8 = scratch.int8_prefill}, x, jobs,
                scratch.gemm);
  }

  // Output rows of all jobs, concatenated, are handed out in blocks from a shared counter: a thread
  // slowed by other work on its core (another process, the host application's threads, a late
  // wake-up) leaves more blocks to the others instead of holding the call back, as an even split
  // did (one core a third slower than the other over whole q8 steps, measured). Each block is a
  // share of the rows left (1 / (2 x threads)), so blocks start large (few restarts of the weight
  // stream) and end small (little waiting at the end): q4 7B steps 76-85 ms against 79-86 with 8
  // equal blocks per thread, alternating. Multiples of 16 rows, so that threads do not write the
  // same cache lines of y.
  int64_t total_rows = 0;
  for (const auto& j : jobs) total_rows += j.weight->rows;
  const int64_t share = 2 * static_cast<int64_t>(pool.size());
  std::atomic<int64_t> next{0};
  auto take_block = [&](int64_t& begin, int64_t& end) {
    begin = next.load(std::memory_order_relaxed);
    for (;;) {
      if (begin >= total_rows) return false;
      const int64_t left = total_rows - begin;
      end = begin + std::min(left, std::max<int64_t>(16, (left / share + 15) / 16 * 16));
      if (next.compare_exchange_weak(begin, end, std::memory_order_relaxed)) return true;
    }
  };
  pool.run([&](int t, int) {
    // Quantized weights read the rows quantized to int8 (laid out for their format), fast BF16
    // weights the rows rounded to bf16: prepared once per call and thread (no barrier between
    // threads), again only where a job's format differs from the one before.
    QuantizedRows xq;
    xq.bind(scratch.quant.data() + t * scratch.quant_per_thread, kMaxMatvecRows, scratch.max_cols);
    uint16_t* x16 = scratch.x16.data() + t * scratch.x16_per_thread;
    bool rounded = false;
    for (int64_t begin = 0, end = 0; take_block(begin, end);) {
      int64_t offset = 0;
      for (const auto& j : jobs) {
        const int64_t r0 = std::max(begin, offset) - offset, r1 = std::min(end, offset + j.weight->rows) - offset;
        offset += j.weight->rows;
        if (r0 >= r1) continue;
        const WeightMatrix& w = *j.weight;
        if (w.quantized() && !xq.prepared_for(w)) prepare_rows(isa, x.data, x.stride, static_cast<int>(n), x.width, w, xq);
        const bool fast = !exact && matvec_fast(isa, w);
        if (fast && !rounded) {
          round_rows_bf16(isa, x.data, x.stride, static_cast<int>(n), x.width, x16);
          rounded = true;
        }
        const MatvecArgs args{x.data,       x.stride, static_cast<int>(n), j.out.data, j.out.stride, j.bias,
                              j.accumulate, &xq,      fast ? x16 : nullptr, bf16_row_stride(x.width),
                              scratch.prefetch};
        matvec(isa, w, args, r0, r1);
      }
    }
  });
}

}  // namespace mimo::cpu
