// CPU product kernels on MiMo-7B shapes: decode (matvec) GB/s per weight format and number of
// activation rows (1..16), and prefill (GEMM) GFLOP/s per path and size, medians over
// repetitions, beside the memory read bandwidth measured in the same run; and the per-row work
// beside the products of one decoding step's layer (one row, on the calling thread), in scalar
// code and on the chosen instruction set.
//
//   bench_kernels [--threads N] [--repeat R] [--isa NAME] [--prefetch nta|t0] [--quick]
//
// Weights are random (values do not change the speed), in 2 MiB pages, and the decode products
// repeat a gate_proj-sized matrix to over 1 GiB, larger than any last-level cache (an Intel Xeon
// here had 260 MiB: a q4 matrix of 101 MB streamed from it at twice the memory's speed), so that
// every decode pass streams them from memory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <mimo/backend/cpu/bandwidth.hpp>
#include <mimo/backend/cpu/linear.hpp>
#include <mimo/backend/cpu/ops.hpp>
#include <mimo/detail/aligned_buffer.hpp>
#include <mimo/quant.hpp>

#include "bench_args.hpp"

namespace {

using namespace mimo;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Weights {
  const char* name;
  detail::AlignedBuffer<std::byte> data, scales, mins;
  cpu::WeightMatrix m;
};

// A [rows, cols] matrix in one format, filled in parallel: `distinct` random rows (all of them if 0),
// repeated.
void make(Weights& w, cpu::ThreadPool& pool, int64_t rows, int64_t cols, DType dtype, QuantType q, int64_t group,
          bool with_min, int64_t distinct = 0) {
  if (distinct <= 0 || distinct > rows) distinct = rows;
  w.m = cpu::WeightMatrix{nullptr, dtype, rows, cols};
  w.m.quant = q;
  w.m.group = group;
  const uint64_t row_bytes = static_cast<uint64_t>(q == QuantType::none ? cols * static_cast<int64_t>(dtype_size(dtype))
                                                                        : quant_row_bytes(q, cols));
  (void)w.data.reserve(rows * row_bytes, "weights");
  const int64_t groups = q == QuantType::none ? 0 : cols / group;
  if (q != QuantType::none) {
    (void)w.scales.reserve(static_cast<uint64_t>(rows * groups * 2), "scales");
    if (with_min) (void)w.mins.reserve(static_cast<uint64_t>(rows * groups * 2), "mins");
  }
  pool.parallel_for(distinct, [&](int64_t r0, int64_t r1) {
    std::mt19937 rng(static_cast<uint32_t>(r0));
    std::uniform_real_distribution<float> u(-0.03f, 0.03f);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      for (auto& v : row) v = u(rng);
      std::byte* dst = w.data.data() + r * row_bytes;
      if (q == QuantType::q8) {
        quantize_row_q8(row.data(), cols, group, reinterpret_cast<int8_t*>(dst), w.scales.data() + r * groups * 2);
      } else if (q == QuantType::q4) {
        quantize_row_q4(row.data(), cols, group, reinterpret_cast<uint8_t*>(dst), w.scales.data() + r * groups * 2,
                        with_min ? w.mins.data() + r * groups * 2 : nullptr);
      } else {
        for (int64_t k = 0; k < cols; ++k) {
          if (dtype == DType::f32) std::memcpy(dst + 4 * k, &row[k], 4);
          else {
            const uint16_t h = dtype == DType::bf16 ? f32_to_bf16(row[k]) : f32_to_f16(row[k]);
            std::memcpy(dst + 2 * k, &h, 2);
          }
        }
      }
    }
  });
  pool.parallel_for(rows - distinct, [&](int64_t r0, int64_t r1) {
    for (int64_t r = distinct + r0; r < distinct + r1; ++r) {
      const int64_t from = r % distinct;
      std::memcpy(w.data.data() + r * row_bytes, w.data.data() + from * row_bytes, row_bytes);
      if (q != QuantType::none) std::memcpy(w.scales.data() + r * groups * 2, w.scales.data() + from * groups * 2, groups * 2);
      if (with_min) std::memcpy(w.mins.data() + r * groups * 2, w.mins.data() + from * groups * 2, groups * 2);
    }
  });
  w.m.data = w.data.data();
  w.m.scales = q == QuantType::none ? nullptr : w.scales.data();
  w.m.mins = with_min ? w.mins.data() : nullptr;
}

}  // namespace

// Microseconds per call (median) of the work a decoding step's layer does beside its products
// and attention, for one row of the MiMo-7B shape.
void ops_table(cpu::Isa isa, int repeat) {
  const int64_t hidden = 4096, inter = 11008;
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(inter)), up(x.size()), gate(x.size()), y(x.size()), w(x.size(), 1.0f);
  for (auto& v : x) v = g(rng);
  for (auto& v : up) v = g(rng);
  detail::AlignedBuffer<std::byte> storage;
  (void)storage.reserve(cpu::QuantizedRows::bytes_for(1, inter), "quantized rows");
  std::vector<uint16_t> x16(static_cast<size_t>(cpu::bf16_row_stride(inter)));
  auto time_us = [&](auto&& fn) {
    std::vector<double> t;
    for (int r = 0; r < std::max(21, 5 * repeat); ++r) {
      const auto t0 = Clock::now();
      fn();
      t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return median(t);
  };
  auto quantized = [&](int64_t cols) {
    cpu::WeightMatrix m;
    m.quant = QuantType::q4;
    m.group = 32;
    m.cols = cols;
    return m;
  };
  const cpu::WeightMatrix q4_hidden = quantized(hidden), q4_inter = quantized(inter);
  cpu::QuantizedRows rows;
  rows.bind(storage.data(), 1, inter);
  cpu::RopeTable table;
  const std::vector<int64_t> position = {517};
  std::printf("\nper-row work of one layer's decoding step (us per call, median; the calling thread)\n");
  std::printf("| op | scalar | %s |\n|---|---|---|\n", std::string(cpu::to_string(isa)).c_str());
  auto row = [&](const char* name, auto&& fn) {
    std::printf("| %s | %.2f | %.2f |\n", name, time_us([&] { fn(cpu::Isa::scalar); }), time_us([&] { fn(isa); }));
  };
  row("rms_norm, 4096 (twice a layer)", [&](cpu::Isa i) {
    cpu::rms_norm_rows(i, nullptr, Rows{x.data(), 1, hidden, hidden}, w.data(), 1e-6, Rows{y.data(), 1, hidden, hidden});
  });
  row("silu_mul, 11008", [&](cpu::Isa i) {
    std::copy(x.begin(), x.end(), gate.begin());
    cpu::silu_mul_rows(i, nullptr, Rows{gate.data(), 1, inter, inter}, Rows{up.data(), 1, inter, inter});
  });
  row("q4 activations, 4096 (3 products a layer)", [&](cpu::Isa i) { cpu::prepare_rows(i, x.data(), hidden, 1, hidden, q4_hidden, rows); });
  row("q4 activations, 11008 (down_proj)", [&](cpu::Isa i) { cpu::prepare_rows(i, x.data(), inter, 1, inter, q4_inter, rows); });
  row("bf16 activations, 4096", [&](cpu::Isa i) { cpu::round_rows_bf16(i, x.data(), hidden, 1, hidden, x16.data()); });
  std::printf("| RoPE q and k, table kept | %.2f | |\n", time_us([&] {
    cpu::rope_rows(Rows{y.data(), 1, hidden, hidden}, 32, 128, position, 640000.0, table);
    cpu::rope_rows(Rows{y.data(), 1, 1024, 1024}, 8, 128, position, 640000.0, table);
  }));
  std::printf("| RoPE q and k, new positions (table computed for q, kept for k) | %.2f | |\n", time_us([&] {
    cpu::RopeTable fresh;
    cpu::rope_rows(Rows{y.data(), 1, hidden, hidden}, 32, 128, position, 640000.0, fresh);
    cpu::rope_rows(Rows{y.data(), 1, 1024, 1024}, 8, 128, position, 640000.0, fresh);
  }));
}

int main(int argc, char** argv) {
  int threads = 0, repeat = 9;
  bool quick = false;
  cpu::Isa isa = cpu::detect_isa();
  cpu::WeightPrefetch prefetch = cpu::default_weight_prefetch();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = static_cast<int>(bench::integer("bench_kernels", a, argv[++i], 0, 1024));
    else if (a == "--repeat" && i + 1 < argc) repeat = static_cast<int>(bench::integer("bench_kernels", a, argv[++i], 1, 100000));
    else if (a == "--quick") quick = true;
    else if (a == "--prefetch" && i + 1 < argc && (std::string(argv[i + 1]) == "nta" || std::string(argv[i + 1]) == "t0")) {
      prefetch = std::string(argv[++i]) == "t0" ? cpu::WeightPrefetch::t0 : cpu::WeightPrefetch::non_temporal;
    }
    else if (a == "--isa" && i + 1 < argc) {
      const std::string name = argv[++i];
      for (cpu::Isa c : cpu::kAllIsas) {
        if (cpu::to_string(c) == name) isa = c;
      }
    } else {
      std::fprintf(stderr, "usage: bench_kernels [--threads N] [--repeat R] [--isa NAME] [--prefetch nta|t0] [--quick]\n");
      return 2;
    }
  }
  if (!cpu::isa_supported(isa)) isa = cpu::detect_isa();
  auto pool_or = cpu::ThreadPool::create(threads);
  if (!pool_or) return 1;
  cpu::ThreadPool& pool = **pool_or;
  auto bw0 = cpu::measure_read_bandwidth(pool);
  std::printf("threads %d, isa %s, weight prefetch %s, read bandwidth %.1f GB/s (median of 5 passes over 1 GiB)\n\n",
              pool.size(), std::string(cpu::to_string(isa)).c_str(),
              cpu::to_string(prefetch), bw0 ? *bw0 : 0.0);

  // Decode: a gate_proj-sized matrix times 4 (11008 x 4 rows, 4096 columns, 360 MB in BF16),
  // repeated to over 1 GiB.
  const int64_t rows = 44032, cols = 4096;
  struct Spec {
    const char* name;
    DType dtype;
    QuantType q;
    int64_t group;
    bool with_min;
    bool exact = false;  // fp32 products (default: bf16 dot products where the CPU has them)
  };
  std::vector<Spec> specs = {{"bf16 exact", DType::bf16, QuantType::none, 0, false, true},
                             {"bf16", DType::bf16, QuantType::none, 0, false},
                             {"q8 g32", DType::bf16, QuantType::q8, 32, false},
                             {"q8 g64", DType::bf16, QuantType::q8, 64, false},
                             {"q4 g32", DType::bf16, QuantType::q4, 32, false},
                             {"q4+min g32", DType::bf16, QuantType::q4, 32, true}};
  if (!quick) {
    specs.insert(specs.begin() + 2, {"f16", DType::f16, QuantType::none, 0, false});
    specs.insert(specs.begin() + 3, {"f32", DType::f32, QuantType::none, 0, false});
  }
  cpu::LinearScratch scratch;
  if (!scratch.reserve(pool.size(), 11008)) return 1;
  scratch.prefetch = prefetch;
  std::vector<float> x(static_cast<size_t>(16 * 11008)), y(static_cast<size_t>(512 * rows));  // also 16 x 1 GiB of rows
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = u(rng);

  const std::vector<int> ns = quick ? std::vector<int>{1, 2, 4, 16} : std::vector<int>{1, 2, 3, 4, 5, 8, 12, 16};
  std::printf("decode: GB/s of weights streamed (rows %lld x cols %lld, repeated to over 1 GiB), by activation rows\n| format |", static_cast<long long>(rows),
              static_cast<long long>(cols));
  for (int n : ns) std::printf(" %d |", n);
  std::printf(" MB |\n|---|");
  for (size_t i = 0; i < ns.size(); ++i) std::printf("---|");
  std::printf("---|\n");
  for (const Spec& s : specs) {
    Weights w;
    const uint64_t once = s.q == QuantType::none ? static_cast<uint64_t>(rows * cols) * dtype_size(s.dtype)
                                                 : static_cast<uint64_t>(rows * quant_row_bytes(s.q, cols));
    const int64_t all_rows = rows * static_cast<int64_t>(((1ull << 30) + once - 1) / once);
    make(w, pool, all_rows, cols, s.dtype, s.q, s.group, s.with_min, rows);
    std::printf("| %s |", s.name);
    for (int n : ns) {
      const Rows xr{x.data(), n, cols, cols};
      const cpu::LinearJob job{&w.m, nullptr, Rows{y.data(), n, all_rows, all_rows}, false};
      std::vector<double> rates;
      for (int r = 0; r < repeat; ++r) {
        const auto t0 = Clock::now();
        cpu::linear(pool, isa, s.exact, xr, std::span(&job, 1), scratch);
        rates.push_back(static_cast<double>(w.m.bytes()) / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
      }
      std::printf(" %.1f |", median(rates));
      std::fflush(stdout);
    }
    std::printf(" %.0f |\n", static_cast<double>(w.m.bytes()) / 1e6);
  }
  auto bw1 = cpu::measure_read_bandwidth(pool);
  std::printf("read bandwidth after the decode table: %.1f GB/s\n\n", bw1 ? *bw1 : 0.0);

  // Prefill: M activation rows times [N, K] weights, 2 M N K flops.
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const std::vector<Shape> shapes = {{"q_proj 4096x4096", 4096, 4096}, {"gate_proj 11008x4096", 11008, 4096},
                                     {"down_proj 4096x11008", 4096, 11008}};
  const std::vector<int64_t> ms = quick ? std::vector<int64_t>{256} : std::vector<int64_t>{64, 256};
  std::vector<float> xa(static_cast<size_t>(256 * 11008));
  for (auto& v : xa) v = u(rng);
  std::printf("prefill: GFLOP/s (2 M N K / time) per path (cpu::GemmPath; - where this CPU or format has none)\n"
              "| weights | shape | M | fp32 | bf16 | int8 |\n|---|---|---|---|---|---|\n");
  const std::vector<Spec> gemm_specs = {specs[0], {"q8 g32", DType::bf16, QuantType::q8, 32, false},
                                        {"q4 g32", DType::bf16, QuantType::q4, 32, false}};
  for (const Spec& s : gemm_specs) {
    for (const Shape& sh : shapes) {
      if (quick && sh.k != 4096) continue;
      Weights w;
      make(w, pool, sh.n, sh.k, s.dtype, s.q, s.group, s.with_min);
      for (int64_t m : ms) {
        std::printf("| %s | %s | %lld |", s.name, sh.name, static_cast<long long>(m));
        for (cpu::GemmPath path : {cpu::GemmPath::f32, cpu::GemmPath::bf16, cpu::GemmPath::int8}) {
          const cpu::PrefillProducts products{
              .exact = path == cpu::GemmPath::f32, .bf16 = path == cpu::GemmPath::bf16, .int8 = path == cpu::GemmPath::int8};
          if (cpu::gemm_path(isa, products, w.m) != path) {
            std::printf(" - |");
            continue;
          }
          scratch.bf16_prefill = products.bf16;
          scratch.int8_prefill = products.int8;
          const Rows xr{xa.data(), m, sh.k, sh.k};
          const cpu::LinearJob job{&w.m, nullptr, Rows{y.data(), m, sh.n, sh.n}, false};
          std::vector<double> rates;
          for (int r = 0; r < std::max(3, repeat / 3); ++r) {
            const auto t0 = Clock::now();
            cpu::linear(pool, isa, products.exact, xr, std::span(&job, 1), scratch);
            const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
            rates.push_back(2.0 * static_cast<double>(m) * static_cast<double>(sh.n) * static_cast<double>(sh.k) / sec / 1e9);
          }
          std::printf(" %.0f |", median(rates));
          std::fflush(stdout);
        }
        std::printf("\n");
      }
    }
  }
  auto bw2 = cpu::measure_read_bandwidth(pool);
  std::printf("read bandwidth at the end: %.1f GB/s\n", bw2 ? *bw2 : 0.0);
  ops_table(isa, repeat);
  return 0;
}
