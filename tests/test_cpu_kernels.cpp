// CPU kernels against plain scalar references, for every instruction set this machine can run
// (each lower level forced in turn), over sizes that are and are not multiples of the SIMD width,
// and misaligned pointers: decode products (float and quantized weights), prefill products
// (exact and bf16), row widening, and the invariant speculative decoding relies on: a row's
// output does not depend on how many rows are computed together.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <mimo/backend/cpu/linear.hpp>
#include <mimo/backend/cpu/matvec.hpp>
#include <mimo/backend/cpu/thread_pool.hpp>
#include <mimo/quant.hpp>

namespace {

using mimo::DType;
using mimo::QuantType;
using mimo::cpu::Isa;
constexpr mimo::cpu::WeightPrefetch t0 = mimo::cpu::WeightPrefetch::t0;

std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (Isa isa : mimo::cpu::kAllIsas) {
    if (mimo::cpu::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

// A weight matrix in one format, `misalign` bytes into its buffers, with its exact fp32 values.
struct Stored {
  std::vector<unsigned char> bytes, scales, mins;
  std::vector<float> values;  // what the weights are, widened
  mimo::cpu::WeightMatrix m;
};

struct Format {
  DType dtype = DType::bf16;
  QuantType quant = QuantType::none;
  int64_t group = 32;
  bool with_min = false;
  const char* name() const {
    if (quant == QuantType::q8) return group == 32 ? "q8/32" : "q8/64+";
    if (quant == QuantType::q4) return with_min ? "q4+min" : "q4";
    return dtype == DType::bf16 ? "bf16" : dtype == DType::f16 ? "f16" : "f32";
  }
};

std::vector<Format> float_formats() { return {{DType::bf16}, {DType::f16}, {DType::f32}}; }
std::vector<Format> quant_formats() {
  return {{DType::bf16, QuantType::q8, 32}, {DType::bf16, QuantType::q8, 64}, {DType::bf16, QuantType::q4, 32},
          {DType::bf16, QuantType::q4, 32, true}, {DType::bf16, QuantType::q4, 64, true},
          {DType::bf16, QuantType::q4, 128}};
}

Stored store(const std::vector<float>& w, int64_t rows, int64_t cols, const Format& f, size_t misalign) {
  Stored s;
  s.values.resize(w.size());
  if (f.quant == QuantType::none) {
    const size_t esize = mimo::dtype_size(f.dtype);
    s.bytes.assign(misalign + w.size() * esize, 0);
    for (size_t i = 0; i < w.size(); ++i) {
      unsigned char* p = s.bytes.data() + misalign + i * esize;
      if (f.dtype == DType::f32) std::memcpy(p, &w[i], 4);
      else {
        const uint16_t h = f.dtype == DType::bf16 ? mimo::f32_to_bf16(w[i]) : mimo::f32_to_f16(w[i]);
        std::memcpy(p, &h, 2);
      }
      s.values[i] = mimo::load_float(s.bytes.data() + misalign, f.dtype, i);
    }
    s.m = {reinterpret_cast<const std::byte*>(s.bytes.data() + misalign), f.dtype, rows, cols};
    return s;
  }
  const int64_t row_bytes = mimo::quant_row_bytes(f.quant, cols), groups = cols / f.group;
  s.bytes.assign(misalign + static_cast<size_t>(rows * row_bytes), 0);
  s.scales.assign(misalign + static_cast<size_t>(rows * groups * 2), 0);
  if (f.with_min) s.mins.assign(misalign + static_cast<size_t>(rows * groups * 2), 0);
  for (int64_t r = 0; r < rows; ++r) {
    unsigned char* codes = s.bytes.data() + misalign + r * row_bytes;
    unsigned char* sc = s.scales.data() + misalign + r * groups * 2;
    unsigned char* mn = f.with_min ? s.mins.data() + misalign + r * groups * 2 : nullptr;
    if (f.quant == QuantType::q8) mimo::quantize_row_q8(w.data() + r * cols, cols, f.group, reinterpret_cast<int8_t*>(codes), sc);
    else mimo::quantize_row_q4(w.data() + r * cols, cols, f.group, codes, sc, mn);
    mimo::dequantize_row(f.quant, codes, sc, mn, cols, f.group, s.values.data() + r * cols);
  }
  s.m = {reinterpret_cast<const std::byte*>(s.bytes.data() + misalign), DType::bf16, rows, cols};
  s.m.quant = f.quant;
  s.m.group = f.group;
  s.m.scales = reinterpret_cast<const std::byte*>(s.scales.data() + misalign);
  s.m.mins = f.with_min ? reinterpret_cast<const std::byte*>(s.mins.data() + misalign) : nullptr;
  return s;
}

std::vector<float> random_vector(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Scratch for quantized activations of up to kMaxMatvecRows rows.
struct QuantScratch {
  mimo::detail::AlignedBuffer<std::byte> storage;
  mimo::cpu::QuantizedRows rows;
  explicit QuantScratch(int64_t cols, int n = mimo::cpu::kMaxMatvecRows) {
    REQUIRE(storage.reserve(mimo::cpu::QuantizedRows::bytes_for(n, cols), "test").has_value());
    rows.bind(storage.data(), n, cols);
  }
};

}  // namespace

TEST_CASE("isa: levels, features and names") {
  CHECK(mimo::cpu::isa_supported(Isa::scalar));
  CHECK(mimo::cpu::isa_supported(mimo::cpu::detect_isa()));
  for (Isa isa : runnable_isas()) {
    CHECK(static_cast<int>(isa) <= static_cast<int>(mimo::cpu::detect_isa()));
    CHECK(mimo::cpu::to_string(isa) != "?");
  }
  CHECK(mimo::cpu::has_bf16(Isa::avx512_bf16));
  CHECK(mimo::cpu::has_vnni(Isa::avx512_bf16));
  CHECK_FALSE(mimo::cpu::has_vnni(Isa::avx512));
  CHECK(mimo::cpu::has_vnni(Isa::avx2_vnni));
  CHECK_FALSE(mimo::cpu::has_avx512(Isa::avx2_vnni));
  MESSAGE("this machine: ", mimo::cpu::to_string(mimo::cpu::detect_isa()));
}

TEST_CASE("matvec: float weights, every instruction set, dtype, row count and size against double sums") {
  std::mt19937 rng(42);
  for (const Format& f : float_formats()) {
    for (int64_t cols : {1, 7, 16, 17, 64, 100, 257}) {
      const int64_t rows = 37;
      const std::vector<float> w = random_vector(rng, static_cast<size_t>(rows * cols));
      for (size_t misalign : {0, 2, 6}) {
        const Stored s = store(w, rows, cols, f, misalign);
        for (int n : {1, 2, 3, 5, 8, 9, 13, 16}) {
          const int64_t ldx = cols + 3;  // padded rows
          std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx + 1));
          const float* xp = x.data() + 1;  // misaligned activations
          const std::vector<float> bias = random_vector(rng, static_cast<size_t>(rows));
          std::vector<double> ref(static_cast<size_t>(n * rows));
          for (int i = 0; i < n; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double acc = bias[r];
              for (int64_t k = 0; k < cols; ++k) acc += static_cast<double>(s.values[r * cols + k]) * xp[i * ldx + k];
              ref[i * rows + r] = acc;
            }
          }
          for (Isa isa : runnable_isas()) {
            CAPTURE(mimo::cpu::to_string(isa));
            CAPTURE(f.name());
            CAPTURE(cols);
            CAPTURE(n);
            CAPTURE(misalign);
            for (bool accumulate : {false, true}) {
              std::vector<float> y(static_cast<size_t>(n * rows), accumulate ? 0.5f : -99.0f);
              const mimo::cpu::MatvecArgs args{xp, ldx, n, y.data(), rows, bias.data(), accumulate};
              // Two calls over a split of the rows, as threads would.
              mimo::cpu::matvec(isa, s.m, args, 0, 19);
              mimo::cpu::matvec(isa, s.m, args, 19, rows);
              double worst = 0.0;
              for (size_t i = 0; i < y.size(); ++i) {
                worst = std::max(worst, std::abs(y[i] - (ref[i] + (accumulate ? 0.5 : 0.0))));
              }
              CHECK(worst < 1e-5 * static_cast<double>(cols));
            }
            // Each row alone gives bit for bit what it gave among n rows.
            std::vector<float> all(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
            mimo::cpu::matvec(isa, s.m, {xp, ldx, n, all.data(), rows, bias.data(), false}, 0, rows);
            // The prefetch hint changes the speed only.
            std::vector<float> hinted(all.size());
            mimo::cpu::matvec(isa, s.m, {xp, ldx, n, hinted.data(), rows, bias.data(), false, nullptr, nullptr, 0, t0}, 0, rows);
            CHECK(hinted == all);
            for (int i = 0; i < n; ++i) {
              mimo::cpu::matvec(isa, s.m, {xp + i * ldx, ldx, 1, one.data(), rows, bias.data(), false}, 3, rows);
              mimo::cpu::matvec(isa, s.m, {xp + i * ldx, ldx, 1, one.data(), rows, bias.data(), false}, 0, 3);
              for (int64_t r = 0; r < rows; ++r) REQUIRE(one[r] == all[i * rows + r]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("matvec: bf16 dot products (fast decode) against double sums of the rounded values") {
  if (!mimo::cpu::isa_supported(Isa::avx512_bf16)) {
    MESSAGE("no AVX512_BF16 on this machine: the fast decode path is not run");
    return;
  }
  std::mt19937 rng(7);
  // Two or more vectors, and one past 8192 columns, take 4 weight rows at a time (rows 37, split
  // at 19: whole groups and single rows left over); more than 3 vectors go in chunks of 2 and 3
  // (4 = 2 + 2, 7 = 3 + 2 + 2) over blocks of 16 rows.
  for (int64_t cols : {1, 2, 7, 31, 32, 33, 63, 64, 65, 100, 257, 4127, 4160, 8240}) {
    const int64_t rows = 37, ld16 = mimo::cpu::bf16_row_stride(cols);
    const std::vector<float> w = random_vector(rng, static_cast<size_t>(rows * cols));
    for (size_t misalign : {0, 2, 6}) {
      const Stored s = store(w, rows, cols, {DType::bf16}, misalign);
      REQUIRE(mimo::cpu::matvec_fast(Isa::avx512_bf16, s.m));
      for (int n : {1, 2, 3, 4, 5, 7, 8, 9, 16}) {
        CAPTURE(cols);
        CAPTURE(misalign);
        CAPTURE(n);
        const int64_t ldx = cols + 3;
        const std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx));
        std::vector<uint16_t> x16(static_cast<size_t>(n * ld16 + 1), 0xffff);
        uint16_t* x16p = x16.data() + 1;  // misaligned rows
        mimo::cpu::round_rows_bf16(Isa::avx512_bf16, x.data(), ldx, n, cols, x16p);
        for (int i = 0; i < n; ++i) {
          for (int64_t k = cols; k < ld16; ++k) REQUIRE(x16p[i * ld16 + k] == 0);  // the padding the kernel reads
        }
        const std::vector<float> bias = random_vector(rng, static_cast<size_t>(rows));
        // The fp32 activations passed alongside are zeros: a result that ignored x16 would be the bias.
        const std::vector<float> zeros(x.size(), 0.0f);
        std::vector<float> y(static_cast<size_t>(n * rows), -99.0f);
        const mimo::cpu::MatvecArgs args{zeros.data(), ldx, n, y.data(), rows, bias.data(), false, nullptr, x16p, ld16};
        mimo::cpu::matvec(Isa::avx512_bf16, s.m, args, 0, 19);
        mimo::cpu::matvec(Isa::avx512_bf16, s.m, args, 19, rows);
        double worst = 0.0;
        for (int i = 0; i < n; ++i) {
          for (int64_t r = 0; r < rows; ++r) {
            double acc = bias[r];
            for (int64_t k = 0; k < cols; ++k) {
              acc += static_cast<double>(s.values[r * cols + k]) * mimo::bf16_to_f32(mimo::f32_to_bf16(x[i * ldx + k]));
            }
            worst = std::max(worst, std::abs(acc - y[i * rows + r]));
          }
        }
        CHECK(worst < 1e-5 * static_cast<double>(cols));
        // The prefetch hint changes the speed only.
        std::vector<float> hinted(y.size());
        mimo::cpu::matvec(Isa::avx512_bf16, s.m,
                          {zeros.data(), ldx, n, hinted.data(), rows, bias.data(), false, nullptr, x16p, ld16, t0}, 0, rows);
        CHECK(hinted == y);
        // Each row alone gives bit for bit what it gave among n rows (verification = decoding).
        std::vector<float> one(static_cast<size_t>(rows));
        for (int i = 0; i < n; ++i) {
          const mimo::cpu::MatvecArgs a1{zeros.data(), ldx, 1, one.data(), rows, bias.data(), false, nullptr,
                                         x16p + i * ld16, ld16};
          mimo::cpu::matvec(Isa::avx512_bf16, s.m, a1, 0, rows);
          for (int64_t r = 0; r < rows; ++r) REQUIRE(one[r] == y[i * rows + r]);
        }
        // Lower levels ignore x16 and compute the exact product of the fp32 activations.
        std::vector<float> y2(static_cast<size_t>(n * rows));
        mimo::cpu::matvec(Isa::avx512_vnni, s.m, {zeros.data(), ldx, n, y2.data(), rows, bias.data(), false, nullptr, x16p, ld16},
                          0, rows);
        for (int i = 0; i < n; ++i) {
          for (int64_t r = 0; r < rows; ++r) REQUIRE(y2[i * rows + r] == bias[r]);
        }
      }
    }
  }
}

TEST_CASE("quantize: codes, scales and dequantized values of each format") {
  std::mt19937 rng(5);
  for (int64_t group : {32, 64, 128}) {
    const int64_t cols = 256;
    std::vector<float> w = random_vector(rng, static_cast<size_t>(cols), 0.05f);
    w[3] = 0.2f;  // an outlier
    std::vector<float> back(static_cast<size_t>(cols));
    // q8: every value within half a step of its group's scale.
    std::vector<int8_t> c8(static_cast<size_t>(cols));
    std::vector<uint16_t> sc(static_cast<size_t>(cols / group)), mn(static_cast<size_t>(cols / group));
    mimo::quantize_row_q8(w.data(), cols, group, c8.data(), sc.data());
    mimo::dequantize_row(QuantType::q8, c8.data(), sc.data(), nullptr, cols, group, back.data());
    for (int64_t k = 0; k < cols; ++k) {
      const float s = mimo::f16_to_f32(sc[k / group]);
      CHECK(std::abs(back[k] - w[k]) <= 0.5f * s * 1.001f + 1e-9f);
      CHECK(std::abs(c8[k]) <= 127);
    }
    // q4, symmetric and with minimums.
    for (bool with_min : {false, true}) {
      std::vector<uint8_t> c4(static_cast<size_t>(cols / 2));
      mimo::quantize_row_q4(w.data(), cols, group, c4.data(), sc.data(), with_min ? mn.data() : nullptr);
      mimo::dequantize_row(QuantType::q4, c4.data(), sc.data(), with_min ? mn.data() : nullptr, cols, group, back.data());
      double err = 0.0, norm = 0.0;
      for (int64_t k = 0; k < cols; ++k) {
        const float s = std::abs(mimo::f16_to_f32(sc[k / group]));
        CHECK(std::abs(back[k] - w[k]) <= 2.0f * s);  // candidates may clip the extremes
        err += (back[k] - w[k]) * (back[k] - w[k]);
        norm += w[k] * w[k];
        // The packing: column k's nibble.
        const int64_t base = k / 32 * 32, j = k - base;
        const uint8_t byte = c4[static_cast<size_t>(base / 2 + (j & 15))];
        CHECK(mimo::q4_code(c4.data(), k) == (j < 16 ? (byte & 15) : (byte >> 4)));
      }
      CAPTURE(group);
      CAPTURE(with_min);
      CHECK(std::sqrt(err / norm) < 0.15);
    }
  }
  // A group of zeros stays zero.
  std::vector<float> zeros(64, 0.0f), back(64);
  std::vector<uint8_t> c4(32);
  std::vector<uint16_t> sc(2);
  mimo::quantize_row_q4(zeros.data(), 64, 32, c4.data(), sc.data(), nullptr);
  mimo::dequantize_row(QuantType::q4, c4.data(), sc.data(), nullptr, 64, 32, back.data());
  for (float v : back) CHECK(v == 0.0f);
}

TEST_CASE("round_rows_bf16: every instruction set writes the scalar form's bits, NaN, infinities and ties too") {
  std::mt19937 rng(9);
  for (int64_t cols : {1, 15, 16, 17, 100, 4096}) {
    const int n = 2;
    const int64_t ldx = cols + 1, stride = mimo::cpu::bf16_row_stride(cols);
    std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx), 100.0f);
    const uint32_t special[] = {0x7fc00001u, 0xff800001u, 0x7f800000u, 0xff800000u, 0x3f808000u, 0x3f818000u,
                                0x7f7fffffu, 0x00000001u, 0x80008000u, 0x3f80ffffu, 0x00000000u, 0x80000000u};
    for (size_t i = 0; i < std::size(special) && i < x.size(); ++i) std::memcpy(&x[i], &special[i], 4);
    std::vector<uint16_t> ref(static_cast<size_t>(n * stride), 0xffff);
    mimo::cpu::round_rows_bf16(Isa::scalar, x.data(), ldx, n, cols, ref.data());
    for (int64_t k = 0; k < cols; ++k) REQUIRE(ref[k] == mimo::f32_to_bf16(x[k]));
    for (Isa isa : runnable_isas()) {
      CAPTURE(mimo::cpu::to_string(isa));
      CAPTURE(cols);
      std::vector<uint16_t> out(ref.size(), 0xffff);
      mimo::cpu::round_rows_bf16(isa, x.data(), ldx, n, cols, out.data());
      CHECK(out == ref);
    }
  }
}

TEST_CASE("prepare_rows: every instruction set writes the scalar form's bytes, scales and sums") {
  std::mt19937 rng(5);
  for (QuantType quant : {QuantType::q8, QuantType::q4}) {
    for (int64_t group : {32, 64}) {
      for (int64_t cols : {32, 96, 160, 4096, 11008}) {
        const int n = 3;
        const int64_t ldx = cols + 3;
        std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx), 4.0f);
        // Blocks that test the edges: all zero, one value only, ties at half a step (x * 127 / max
        // lands on k + 0.5), tiny and huge magnitudes.
        std::fill(x.begin(), x.begin() + 32, 0.0f);
        if (cols >= 96) {
          std::fill(x.begin() + 32, x.begin() + 64, 0.0f);
          x[40] = -2.5f;
          for (int k = 0; k < 32; ++k) x[64 + k] = (k == 0 ? 127.0f : static_cast<float>(k % 7) + 0.5f);
        }
        for (int64_t k = 0; k < std::min<int64_t>(cols, 32); ++k) x[ldx + k] *= 1e-30f;
        for (int64_t k = 0; k < std::min<int64_t>(cols, 32); ++k) x[2 * ldx + k] *= 1e30f;
        mimo::cpu::WeightMatrix w;
        w.quant = quant;
        w.group = group;
        w.cols = cols;
        QuantScratch ref(cols);
        mimo::cpu::prepare_rows(Isa::scalar, x.data(), ldx, n, cols, w, ref.rows);
        const int64_t blocks = cols / 32;
        for (Isa isa : runnable_isas()) {
          CAPTURE(mimo::cpu::to_string(isa));
          CAPTURE(static_cast<int>(quant));
          CAPTURE(group);
          CAPTURE(cols);
          QuantScratch q(cols);
          mimo::cpu::prepare_rows(isa, x.data(), ldx, n, cols, w, q.rows);
          const size_t record_bytes = static_cast<size_t>(n * ref.rows.records_per_row * ref.rows.record_bytes());
          CHECK(std::memcmp(q.rows.records, ref.rows.records, record_bytes) == 0);
          CHECK(std::memcmp(q.rows.scale, ref.rows.scale, static_cast<size_t>(n * blocks) * sizeof(float)) == 0);
          if (quant == QuantType::q4) {
            CHECK(std::memcmp(q.rows.group_sum, ref.rows.group_sum, static_cast<size_t>(n * ref.rows.groups) * 4) == 0);
          }
          // The codes are the rounded activations: within half a step, and the tie at 0.5 rounds to 0.
          for (int i = 0; i < n; ++i) {
            for (int64_t k = 0; k < cols; ++k) {
              REQUIRE(std::abs(q.rows.value(i, k) - x[i * ldx + k]) <= 0.5001f * q.rows.scale[i * blocks + k / 32]);
            }
          }
          if (cols >= 96) CHECK(q.rows.code(0, 64 + 7) == 0);  // 0.5 * 127 / 127: a tie, to even
        }
      }
    }
  }
}

TEST_CASE("matvec: quantized weights, every instruction set, format, row count and size") {
  std::mt19937 rng(7);
  for (const Format& f : quant_formats()) {
    // 33024 columns: rows longer than the kernels' chunk of 1024 blocks whose scales they widen.
    for (int64_t cols : {64, 128, 192, 352, 384, 4160, 33024}) {
      if (cols % f.group) continue;
      const bool long_rows = cols > 4160;
      const int64_t rows = 21;
      const std::vector<float> w = random_vector(rng, static_cast<size_t>(rows * cols), 0.1f);
      for (size_t misalign : {0, 1, 6}) {
        if (long_rows && misalign != 0) continue;
        const Stored s = store(w, rows, cols, f, misalign);
        for (int n : {1, 2, 3, 8, 9, 16}) {
          if (long_rows && n != 1 && n != 9) continue;
          const int64_t ldx = cols + 5;
          std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx + 1));
          const float* xp = x.data() + 1;
          const std::vector<float> bias = random_vector(rng, static_cast<size_t>(rows));
          for (Isa isa : runnable_isas()) {
            CAPTURE(mimo::cpu::to_string(isa));
            CAPTURE(f.name());
            CAPTURE(cols);
            CAPTURE(n);
            CAPTURE(misalign);
            QuantScratch q(cols);
            mimo::cpu::prepare_rows(isa, xp, ldx, n, cols, s.m, q.rows);
            // The activations as the kernels see them: within half a step of x.
            for (int i = 0; i < n; ++i) {
              for (int64_t k = 0; k < cols; ++k) {
                const float sx = q.rows.scale[i * (cols / 32) + k / 32];
                REQUIRE(std::abs(q.rows.value(i, k) - xp[i * ldx + k]) <= 0.5001f * sx);
              }
            }
            // Reference: the dequantized weights times the quantized activations, in double.
            double worst = 0.0, scale = 0.0;
            std::vector<float> y(static_cast<size_t>(n * rows), 0.25f);
            const mimo::cpu::MatvecArgs args{xp, ldx, n, y.data(), rows, bias.data(), true, &q.rows};
            mimo::cpu::matvec(isa, s.m, args, 0, 10);
            mimo::cpu::matvec(isa, s.m, args, 10, rows);
            for (int i = 0; i < n; ++i) {
              for (int64_t r = 0; r < rows; ++r) {
                double acc = 0.25 + bias[r];
                for (int64_t k = 0; k < cols; ++k) {
                  const double xk = q.rows.value(i, k);
                  acc += static_cast<double>(s.values[r * cols + k]) * xk;
                }
                worst = std::max(worst, std::abs(acc - y[i * rows + r]));
                scale = std::max(scale, std::abs(acc));
              }
            }
            CHECK(worst <= 1e-5 * std::max(1.0, scale));
            // Each row alone gives bit for bit what it gave among n rows.
            std::vector<float> all(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
            mimo::cpu::matvec(isa, s.m, {xp, ldx, n, all.data(), rows, nullptr, false, &q.rows}, 0, rows);
            // The prefetch hint changes the speed only.
            std::vector<float> hinted(all.size());
            mimo::cpu::matvec(isa, s.m, {xp, ldx, n, hinted.data(), rows, nullptr, false, &q.rows, nullptr, 0, t0}, 0, rows);
            CHECK(hinted == all);
            QuantScratch q1(cols);
            for (int i = 0; i < n; ++i) {
              mimo::cpu::prepare_rows(isa, xp + i * ldx, ldx, 1, cols, s.m, q1.rows);
              mimo::cpu::matvec(isa, s.m, {xp + i * ldx, ldx, 1, one.data(), rows, nullptr, false, &q1.rows}, 0, rows);
              for (int64_t r = 0; r < rows; ++r) REQUIRE(one[r] == all[i * rows + r]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("widen_rows: exact conversion of stored and quantized rows") {
  std::mt19937 rng(1);
  std::vector<Format> formats = float_formats();
  for (const Format& f : quant_formats()) formats.push_back(f);
  for (const Format& f : formats) {
    const int64_t rows = 9, cols = f.quant == QuantType::none ? 23 : 128;
    const std::vector<float> w = random_vector(rng, static_cast<size_t>(rows * cols), 4.0f);
    const Stored s = store(w, rows, cols, f, 2);
    for (Isa isa : runnable_isas()) {
      CAPTURE(f.name());
      CAPTURE(mimo::cpu::to_string(isa));
      std::vector<float> out(static_cast<size_t>(5 * cols));
      mimo::cpu::widen_rows(isa, s.m, 3, 8, out.data());
      for (int64_t i = 0; i < 5 * cols; ++i) REQUIRE(out[i] == s.values[3 * cols + i]);
    }
  }
}

namespace {

float round_bf16(float v) { return mimo::bf16_to_f32(mimo::f32_to_bf16(v)); }

// Checks linear() against double references over several jobs of different formats.
// int8: whether prefill may take int8 activations for quantized weights (else bf16 dot products).
void check_linear(int64_t n, int64_t cols, const std::vector<Format>& formats, std::vector<int64_t> rows, bool exact,
                  bool int8 = true) {
  std::mt19937 rng(static_cast<uint32_t>(n * 1000 + cols));
  auto pool = mimo::cpu::ThreadPool::create(2);
  REQUIRE(pool.has_value());
  std::vector<Stored> weights;
  std::vector<std::vector<float>> biases, ys;
  for (size_t j = 0; j < formats.size(); ++j) {
    weights.push_back(store(random_vector(rng, static_cast<size_t>(rows[j] * cols), 0.2f), rows[j], cols, formats[j], j));
    biases.push_back(j % 2 ? std::vector<float>{} : random_vector(rng, static_cast<size_t>(rows[j])));
  }
  const int64_t ldx = cols + 7;
  std::vector<float> x = random_vector(rng, static_cast<size_t>(n * ldx + 3));
  const mimo::Rows xr{x.data() + 3, n, cols, ldx};
  mimo::cpu::LinearScratch scratch;
  REQUIRE(scratch.reserve(2, cols).has_value());
  scratch.bf16_prefill = true;
  scratch.int8_prefill = int8;
  for (Isa isa : runnable_isas()) {
    CAPTURE(mimo::cpu::to_string(isa));
    CAPTURE(n);
    CAPTURE(cols);
    CAPTURE(exact);
    CAPTURE(int8);
    std::vector<mimo::cpu::LinearJob> jobs;
    ys.clear();
    for (size_t j = 0; j < formats.size(); ++j) {
      const int64_t ldy = rows[j] + 1;
      ys.push_back(std::vector<float>(static_cast<size_t>(n * ldy), 1.0f));
      jobs.push_back({&weights[j].m, biases[j].empty() ? nullptr : biases[j].data(),
                      mimo::Rows{ys[j].data(), n, rows[j], ldy}, j % 2 == 1});
    }
    mimo::cpu::linear(**pool, isa, exact, xr, jobs, scratch);
    QuantScratch q(cols, static_cast<int>(n));
    for (size_t j = 0; j < formats.size(); ++j) {
      const Stored& s = weights[j];
      CAPTURE(std::string(formats[j].name()));
      const bool prefill = n > mimo::cpu::kMaxMatvecRows;
      const auto path = mimo::cpu::gemm_path(isa, {.exact = exact, .bf16 = true, .int8 = int8}, s.m);
      // Quantized activations: decoding always, prefill on the int8 path.
      const bool quantized_decode = s.m.quantized() && (!prefill || path == mimo::cpu::GemmPath::int8);
      const bool fast = prefill ? path == mimo::cpu::GemmPath::bf16 : !exact && mimo::cpu::matvec_fast(isa, s.m);
      if (quantized_decode) mimo::cpu::prepare_rows(mimo::cpu::Isa::scalar, xr.data, xr.stride, static_cast<int>(n), cols, s.m, q.rows);
      double worst = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < rows[j]; ++r) {
          double acc = (j % 2 == 1 ? 1.0 : 0.0) + (biases[j].empty() ? 0.0 : biases[j][r]);
          for (int64_t k = 0; k < cols; ++k) {
            double xv = xr.row(i)[k], wv = s.values[r * cols + k];
            if (quantized_decode) xv = q.rows.value(static_cast<int>(i), k);
            if (fast) xv = round_bf16(xr.row(i)[k]), wv = round_bf16(s.values[r * cols + k]);
            acc += xv * wv;
          }
          worst = std::max(worst, std::abs(acc - ys[j][i * (rows[j] + 1) + r]));
        }
      }
      CHECK(worst < 2e-4);
    }
  }
}

}  // namespace

TEST_CASE("linear: several weights in one job, streaming and GEMM paths agree with the reference") {
  const std::vector<Format> floats = {{DType::bf16}, {DType::f32}, {DType::f16}};
  for (int64_t n : {1, 4, 8, 9, 16, 17, 33, 300}) {
    for (int64_t cols : {70, 129}) {
      for (bool exact : {true, false}) check_linear(n, cols, floats, {130, 45, 64}, exact);
    }
  }
  const std::vector<Format> quants = {quant_formats()[0], quant_formats()[2], quant_formats()[3], {DType::bf16}};
  for (int64_t n : {1, 5, 16, 17, 40, 270}) {
    for (bool exact : {true, false}) check_linear(n, 320, quants, {300, 17, 64, 257}, exact);
    if (n > mimo::cpu::kMaxMatvecRows) check_linear(n, 320, quants, {300, 17, 64, 257}, false, false);
  }
}

TEST_CASE("gemm: sizes around the block edges") {
  const std::vector<Format> one = {{DType::bf16}};
  for (int64_t n : {17, 23}) {
    for (int64_t cols : {1, 2, 31, 255, 256, 257, 520, 1030}) {  // K blocks of 512 fp32 or 1024 bf16 columns
      for (bool exact : {true, false}) check_linear(n, cols, one, {1}, exact), check_linear(n, cols, one, {513}, exact);
    }
  }
  // Quantized weights on the int8 path: K blocks of 8 code blocks (and a partial one), panels of
  // 32 weight rows (and partial ones), tiles of 6 activation rows (and every remainder), passes of
  // 256 activation rows.
  for (const Format& f : quant_formats()) {
    CAPTURE(f.name());
    for (int64_t cols : {256, 288, 1024}) {
      if (cols % f.group) continue;
      for (int64_t n : {17, 18, 19, 20, 21, 22, 257}) {
        if (n == 257 && cols != 288) continue;
        check_linear(n, cols, {f, f, f, f, f}, {1, 31, 33, 256, 300}, false);
      }
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
