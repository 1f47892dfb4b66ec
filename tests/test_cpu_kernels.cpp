// CPU kernels against plain scalar references, for every instruction set this machine can run,
// over sizes that are and are not multiples of the SIMD width, and misaligned pointers.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <mimo/backend/cpu/linear.hpp>
#include <mimo/backend/cpu/matvec.hpp>
#include <mimo/backend/cpu/thread_pool.hpp>

namespace {

using mimo::DType;
using mimo::cpu::Isa;

std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (mimo::cpu::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

// Weights stored as `dtype` at byte offset `misalign` into a buffer.
struct Stored {
  std::vector<unsigned char> bytes;
  mimo::cpu::WeightMatrix m;
};

Stored store(const std::vector<float>& w, int64_t rows, int64_t cols, DType dtype, size_t misalign) {
  Stored s;
  const size_t esize = mimo::dtype_size(dtype);
  s.bytes.assign(misalign + w.size() * esize, 0);
  for (size_t i = 0; i < w.size(); ++i) {
    unsigned char* p = s.bytes.data() + misalign + i * esize;
    if (dtype == DType::f32) std::memcpy(p, &w[i], 4);
    else {
      const uint16_t h = dtype == DType::bf16 ? mimo::f32_to_bf16(w[i]) : mimo::f32_to_f16(w[i]);
      std::memcpy(p, &h, 2);
    }
  }
  s.m = {reinterpret_cast<const std::byte*>(s.bytes.data() + misalign), dtype, rows, cols};
  return s;
}

}  // namespace

TEST_CASE("matvec: every instruction set, dtype, row count and size against double sums") {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    for (int64_t cols : {1, 7, 16, 17, 64, 100, 257}) {
      const int64_t rows = 37;
      std::vector<float> w(static_cast<size_t>(rows * cols));
      for (auto& x : w) x = u(rng);
      for (size_t misalign : {0, 2, 6}) {
        const Stored s = store(w, rows, cols, dtype, misalign);
        for (int n : {1, 2, 3, 5, 8}) {
          const int64_t ldx = cols + 3;  // padded rows
          std::vector<float> x(static_cast<size_t>(n * ldx + 1));
          for (auto& v : x) v = u(rng);
          const float* xp = x.data() + 1;  // misaligned activations
          std::vector<float> bias(static_cast<size_t>(rows));
          for (auto& v : bias) v = u(rng);
          // Reference from the stored (rounded) weights, in double.
          std::vector<double> ref(static_cast<size_t>(n * rows));
          for (int i = 0; i < n; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double acc = bias[r];
              for (int64_t k = 0; k < cols; ++k) {
                acc += static_cast<double>(mimo::load_float(s.m.data, dtype, static_cast<uint64_t>(r * cols + k))) *
                       xp[i * ldx + k];
              }
              ref[i * rows + r] = acc;
            }
          }
          for (Isa isa : runnable_isas()) {
            CAPTURE(mimo::cpu::to_string(isa));
            CAPTURE(cols);
            CAPTURE(n);
            CAPTURE(misalign);
            for (bool accumulate : {false, true}) {
              std::vector<float> y(static_cast<size_t>(n * rows), accumulate ? 0.5f : -99.0f);
              const mimo::cpu::MatvecArgs args{xp, ldx, n, y.data(), rows, bias.data(), accumulate};
              // Two calls over a split of the rows, as threads would.
              mimo::cpu::matvec(isa, s.m, args, 0, 20);
              mimo::cpu::matvec(isa, s.m, args, 20, rows);
              double worst = 0.0;
              for (size_t i = 0; i < y.size(); ++i) {
                worst = std::max(worst, std::abs(y[i] - (ref[i] + (accumulate ? 0.5 : 0.0))));
              }
              CHECK(worst < 1e-5 * static_cast<double>(cols));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("widen_rows: exact conversion of stored rows") {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    const int64_t rows = 9, cols = 23;
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (auto& x : w) x = u(rng);
    const Stored s = store(w, rows, cols, dtype, 2);
    for (Isa isa : runnable_isas()) {
      std::vector<float> out(static_cast<size_t>(5 * cols));
      mimo::cpu::widen_rows(isa, s.m, 3, 8, out.data());
      for (int64_t i = 0; i < 5 * cols; ++i) {
        REQUIRE(out[i] == mimo::load_float(s.m.data, dtype, static_cast<uint64_t>(3 * cols + i)));
      }
    }
  }
}

TEST_CASE("linear: several weights in one job, streaming and panel paths agree with the reference") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto pool = mimo::cpu::ThreadPool::create(2);
  REQUIRE(pool.has_value());
  const int64_t cols = 70;
  const int64_t rows_a = 130, rows_b = 45;
  std::vector<float> wa(static_cast<size_t>(rows_a * cols)), wb(static_cast<size_t>(rows_b * cols));
  for (auto& x : wa) x = u(rng);
  for (auto& x : wb) x = u(rng);
  const Stored a = store(wa, rows_a, cols, DType::bf16, 0), b = store(wb, rows_b, cols, DType::f32, 0);
  std::vector<float> bias(static_cast<size_t>(rows_a));
  for (auto& v : bias) v = u(rng);
  mimo::cpu::PanelScratch panels;
  REQUIRE(panels.reserve(2, cols).has_value());
  for (int64_t n : {1, 4, 8, 9, 33}) {
    std::vector<float> x(static_cast<size_t>(n * cols));
    for (auto& v : x) v = u(rng);
    std::vector<float> ya(static_cast<size_t>(n * rows_a)), yb(static_cast<size_t>(n * rows_b), 1.0f);
    const mimo::Rows xr{x.data(), n, cols, cols};
    const mimo::cpu::LinearJob jobs[] = {{&a.m, bias.data(), mimo::Rows{ya.data(), n, rows_a, rows_a}, false},
                                         {&b.m, nullptr, mimo::Rows{yb.data(), n, rows_b, rows_b}, true}};
    for (Isa isa : runnable_isas()) {
      std::fill(yb.begin(), yb.end(), 1.0f);
      mimo::cpu::linear(**pool, isa, xr, jobs, panels);
      double worst = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < rows_a; ++r) {
          double acc = bias[r];
          for (int64_t k = 0; k < cols; ++k) acc += static_cast<double>(mimo::load_float(a.m.data, DType::bf16, static_cast<uint64_t>(r * cols + k))) * x[i * cols + k];
          worst = std::max(worst, std::abs(acc - ya[i * rows_a + r]));
        }
        for (int64_t r = 0; r < rows_b; ++r) {
          double acc = 1.0;
          for (int64_t k = 0; k < cols; ++k) acc += static_cast<double>(wb[r * cols + k]) * x[i * cols + k];
          worst = std::max(worst, std::abs(acc - yb[i * rows_b + r]));
        }
      }
      CAPTURE(n);
      CAPTURE(mimo::cpu::to_string(isa));
      CHECK(worst < 1e-4);
    }
  }
}

TEST_CASE("thread pool: every thread runs once per job, jobs from several callers, sizes") {
  auto pool = mimo::cpu::ThreadPool::create(3);
  REQUIRE(pool.has_value());
  CHECK((*pool)->size() == 3);
  for (int round = 0; round < 200; ++round) {
    std::atomic<int> mask{0};
    (*pool)->run([&](int t, int nt) {
      CHECK(nt == 3);
      mask.fetch_or(1 << t);
    });
    REQUIRE(mask.load() == 7);
  }
  std::vector<int> hits(1000, 0);
  (*pool)->parallel_for(1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  // Two threads submitting jobs concurrently to one pool are served one after another.
  std::atomic<int64_t> total{0};
  auto submit = [&] {
    for (int i = 0; i < 100; ++i) (*pool)->run([&](int, int) { total.fetch_add(1); });
  };
  std::thread a(submit), b(submit);
  a.join();
  b.join();
  CHECK(total.load() == 2 * 100 * 3);
  auto single = mimo::cpu::ThreadPool::create(1);
  REQUIRE(single.has_value());
  int calls = 0;
  (*single)->run([&](int t, int nt) { calls += (t == 0 && nt == 1); });
  CHECK(calls == 1);
  CHECK_FALSE(mimo::cpu::ThreadPool::create(100000).has_value());
}
