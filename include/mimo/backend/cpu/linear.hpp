// y = x W^T (+ bias) (+ y) for one or several weights that read the same input rows, dispatched as
// one parallel job so that q/k/v (or gate/up) cost one wake-up of the thread pool.
//   n <= kMaxMatvecRows: each thread streams a share of the weight rows once (memory-bound decode);
//   larger n (prefill): each thread widens a panel of weight rows to fp32 and multiplies it with
//   all input rows (compute-bound; Eigen's GEMM kernel on the panel).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <span>

#include "mimo/backend/backend.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/backend/cpu/matvec.hpp"
#include "mimo/backend/cpu/thread_pool.hpp"

namespace mimo::cpu {

struct LinearJob {
  const WeightMatrix* weight;
  const float* bias;  // weight->rows floats, or null
  Rows out;           // x.count rows of weight->rows values
  bool accumulate;    // out += x W^T instead of out = x W^T
};

inline constexpr int64_t kPanelRows = 64;

// Per-thread fp32 panels for the prefill path: threads * kPanelRows * max_cols floats.
struct PanelScratch {
  mimo::detail::AlignedBuffer<float> data;
  int64_t per_thread = 0;
  Status reserve(int threads, int64_t max_cols) {
    per_thread = kPanelRows * max_cols;
    return data.reserve(static_cast<uint64_t>(threads) * per_thread, "weight panel scratch");
  }
};

inline void linear(ThreadPool& pool, Isa isa, const Rows& x, std::span<const LinearJob> jobs, PanelScratch& panels) {
  const int64_t n = x.count;
  if (n == 0) return;
  // Output rows of all jobs, concatenated, are split evenly between threads (in panels for GEMM).
  int64_t total_rows = 0;
  for (const auto& j : jobs) total_rows += j.weight->rows;

  if (n <= kMaxMatvecRows) {
    pool.run([&](int t, int nt) {
      // Round shares to 16 rows so threads do not write the same cache lines of y.
      const int64_t blocks = (total_rows + 15) / 16;
      int64_t begin = std::min(total_rows, blocks * t / nt * 16), end = std::min(total_rows, blocks * (t + 1) / nt * 16);
      int64_t offset = 0;
      for (const auto& j : jobs) {
        const int64_t r0 = std::max(begin, offset) - offset, r1 = std::min(end, offset + j.weight->rows) - offset;
        if (r0 < r1) {
          const MatvecArgs args{x.data, x.stride, static_cast<int>(n), j.out.data, j.out.stride, j.bias, j.accumulate};
          matvec(isa, *j.weight, args, r0, r1);
        }
        offset += j.weight->rows;
      }
    });
    return;
  }

  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  const int64_t total_panels = [&] {
    int64_t p = 0;
    for (const auto& j : jobs) p += (j.weight->rows + kPanelRows - 1) / kPanelRows;
    return p;
  }();
  pool.run([&](int t, int nt) {
    float* panel = panels.data.data() + t * panels.per_thread;
    for (int64_t p = total_panels * t / nt; p < total_panels * (t + 1) / nt; ++p) {
      // Find the job and the rows of panel p.
      int64_t rest = p;
      const LinearJob* job = nullptr;
      for (const auto& j : jobs) {
        const int64_t count = (j.weight->rows + kPanelRows - 1) / kPanelRows;
        if (rest < count) {
          job = &j;
          break;
        }
        rest -= count;
      }
      const WeightMatrix& w = *job->weight;
      const int64_t r0 = rest * kPanelRows, r1 = std::min(w.rows, r0 + kPanelRows), nr = r1 - r0;
      widen_rows(isa, w, r0, r1, panel);
      Eigen::Map<const RowMajor, 0, Stride> X(x.data, n, w.cols, Stride(x.stride));
      Eigen::Map<const RowMajor> P(panel, nr, w.cols);
      Eigen::Map<RowMajor, 0, Stride> Y(job->out.data + r0, n, nr, Stride(job->out.stride));
      if (job->accumulate) Y.noalias() += X * P.transpose();
      else Y.noalias() = X * P.transpose();
      if (job->bias) {
        for (int64_t i = 0; i < n; ++i) {
          float* yr = job->out.row(i) + r0;
          for (int64_t c = 0; c < nr; ++c) yr[c] += job->bias[r0 + c];
        }
      }
    }
  });
}

}  // namespace mimo::cpu
