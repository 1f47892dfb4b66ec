// y = x W^T (+ bias) (+ y) for one or several weights that read the same input rows, dispatched as
// one parallel job so that q/k/v (or gate/up) cost one wake-up of the thread pool.
//   n <= kMaxMatvecRows (decode, verification of drafts): each thread streams a share of the
//     weight rows once (memory-bound; matvec.hpp, matvec_quant.hpp);
//   larger n (prefill): blocked, packed matrix-matrix products (compute-bound; gemm.hpp), exact
//     fp32 or, unless `exact_prefill`, bf16 dot products where the CPU has them.
#pragma once

#include <algorithm>
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
  uint64_t quant_per_thread = 0;
  int64_t max_cols = 0;

  Status reserve(int threads, int64_t cols) {
    max_cols = cols;
    if (auto s = gemm.reserve(threads, cols); !s) return s;
    quant_per_thread = (QuantizedRows::bytes_for(kMaxMatvecRows, cols) + 63) / 64 * 64;
    return quant.reserve(static_cast<uint64_t>(threads) * quant_per_thread, "quantized activation scratch");
  }
};

inline void linear(ThreadPool& pool, Isa isa, bool exact_prefill, const Rows& x, std::span<const LinearJob> jobs,
                   LinearScratch& scratch) {
  const int64_t n = x.count;
  if (n == 0) return;
  if (n > kMaxMatvecRows) return gemm(pool, isa, exact_prefill, x, jobs, scratch.gemm);

  // Output rows of all jobs, concatenated, are split evenly between threads.
  int64_t total_rows = 0;
  for (const auto& j : jobs) total_rows += j.weight->rows;
  pool.run([&](int t, int nt) {
    // Round shares to 16 rows so threads do not write the same cache lines of y.
    const int64_t blocks = (total_rows + 15) / 16;
    const int64_t begin = std::min(total_rows, blocks * t / nt * 16), end = std::min(total_rows, blocks * (t + 1) / nt * 16);
    // Quantized weights read the rows quantized to int8, once per call and thread.
    QuantizedRows xq;
    xq.bind(scratch.quant.data() + t * scratch.quant_per_thread, kMaxMatvecRows, scratch.max_cols);
    bool prepared = false;
    int64_t offset = 0;
    for (const auto& j : jobs) {
      const int64_t r0 = std::max(begin, offset) - offset, r1 = std::min(end, offset + j.weight->rows) - offset;
      offset += j.weight->rows;
      if (r0 >= r1) continue;
      const WeightMatrix& w = *j.weight;
      if (w.quantized() && !prepared) {
        prepare_rows(x.data, x.stride, static_cast<int>(n), x.width, xq);
        prepared = true;
      }
      const MatvecArgs args{x.data, x.stride, static_cast<int>(n), j.out.data, j.out.stride, j.bias, j.accumulate, &xq};
      matvec(isa, w, args, r0, r1);
    }
  });
}

}  // namespace mimo::cpu
