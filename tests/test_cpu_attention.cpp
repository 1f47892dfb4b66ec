// The CPU attention kernels and KV cache types against plain double-precision references: every
// instruction set this machine runs (the fallbacks forced), every KV element type, head_dim 16, 64
// and 128, query groups of 1, 2, 4 and 8, lengths up to ~2000 (not multiples of the block), and
// row counts of decode (1), verification (2-16) and prefill (64+). Also: the exp2 polynomial in
// ulps, results independent of thread count and of how rows are batched, the cache's store /
// copy / save / load per type, and the accuracy of the reduced-precision caches on the attention
// op, the tiny-mimo fixture and generated model shapes (tolerances are measured figures with
// headroom; see the MESSAGE lines).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

using mimo::cpu::Isa;
using mimo::cpu::KvType;

constexpr KvType kTypes[] = {KvType::f32, KvType::f16, KvType::bf16, KvType::i8};

std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (mimo::cpu::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

std::shared_ptr<mimo::cpu::ThreadPool> pool_of(int threads) {
  auto p = mimo::cpu::ThreadPool::create(threads);
  REQUIRE(p.has_value());
  return *p;
}

// Rows of floats with a stride wider than the width (the op must honour strides).
struct HostRows {
  std::vector<float> data;
  mimo::Rows rows;
  HostRows(int64_t n, int64_t width, int64_t pad = 3)
      : data(static_cast<size_t>(n * (width + pad)), 0.0f), rows{data.data(), n, width, width + pad} {}
};

// Keys and values shaped like a model's: Gaussian, a few channels much larger (as RoPE'd keys of
// real checkpoints have), scaled so the softmax is neither flat nor one-hot.
void fill_rows(HostRows& r, std::mt19937& rng, float scale, bool outliers) {
  std::normal_distribution<float> g(0.0f, scale);
  for (int64_t i = 0; i < r.rows.count; ++i) {
    for (int64_t c = 0; c < r.rows.width; ++c) {
      float x = g(rng);
      if (outliers && c % 16 == 3) x *= 8.0f;
      r.rows.row(i)[c] = x;
    }
  }
}

struct Problem {
  int64_t kv_heads, group, head_dim, capacity;
  mimo::AttentionShape shape() const { return {kv_heads * group, kv_heads, head_dim, 10000.0}; }
};

// Double-precision attention of query row q (all heads) over entries [0, visible) of `layer`,
// with keys and values as the cache holds them (read back, so the kernels are checked, not the
// rounding of the cache) or as given in f32 (`exact_k`, `exact_v`: [entry][kv_heads * head_dim]).
std::vector<double> reference_row(const Problem& p, const mimo::cpu::KvCache& kv, int64_t layer, const float* q,
                                  int64_t visible, const std::vector<float>* exact_k = nullptr,
                                  const std::vector<float>* exact_v = nullptr) {
  const int64_t d = p.head_dim, kvw = p.kv_heads * d;
  std::vector<double> out(static_cast<size_t>(p.kv_heads * p.group * d), 0.0);
  std::vector<float> key(static_cast<size_t>(d)), value(static_cast<size_t>(d));
  std::vector<double> scores(static_cast<size_t>(visible));
  std::vector<std::vector<float>> keys(static_cast<size_t>(visible)), values(static_cast<size_t>(visible));
  for (int64_t h = 0; h < p.kv_heads; ++h) {
    for (int64_t j = 0; j < visible; ++j) {
      if (exact_k) {
        keys[j].assign(exact_k->begin() + j * kvw + h * d, exact_k->begin() + j * kvw + (h + 1) * d);
        values[j].assign(exact_v->begin() + j * kvw + h * d, exact_v->begin() + j * kvw + (h + 1) * d);
      } else {
        kv.read(layer, h, j, false, key.data());
        kv.read(layer, h, j, true, value.data());
        keys[j] = key;
        values[j] = value;
      }
    }
    for (int64_t g = 0; g < p.group; ++g) {
      const float* qh = q + (h * p.group + g) * d;
      double mx = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qh[c]) * keys[j][c];
        scores[j] = dot / std::sqrt(static_cast<double>(d));
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < visible; ++j) sum += scores[j] = std::exp(scores[j] - mx);
      double* o = out.data() + (h * p.group + g) * d;
      for (int64_t j = 0; j < visible; ++j) {
        for (int64_t c = 0; c < d; ++c) o[c] += scores[j] / sum * values[j][c];
      }
    }
  }
  return out;
}

// Largest |got - expected| over a row, relative to the largest |expected| value of the problem.
double row_error(const float* got, const std::vector<double>& expected) {
  double worst = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) worst = std::max(worst, std::abs(got[i] - expected[i]));
  return worst;
}

// The rows of one call that are checked against the reference (all of a short call, a sample of
// a long one, always the first and last).
std::vector<int64_t> checked_rows(int64_t n) {
  if (n <= 16) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[i] = i;
    return all;
  }
  return {0, 1, n / 3, n / 2, n - 17, n - 2, n - 1};
}

// Runs one attention call of n rows at `length` and checks the chosen rows. Returns the worst
// error relative to the largest value magnitude.
double run_and_check(mimo::Cpu::Context& ctx, const Problem& p, mimo::cpu::KvCache& kv, int64_t layer, int64_t length,
                     int64_t n, std::mt19937& rng) {
  const int64_t d = p.head_dim;
  HostRows q(n, p.kv_heads * p.group * d, 5), k(n, p.kv_heads * d, 1), v(n, p.kv_heads * d, 2),
      out(n, p.kv_heads * p.group * d, 7);
  fill_rows(q, rng, 1.0f, false);
  fill_rows(k, rng, 1.0f, true);
  fill_rows(v, rng, 1.0f, false);
  mimo::Cpu::attention(ctx, kv, layer, length, q.rows, k.rows, v.rows, p.shape(), out.rows);
  double worst = 0.0;
  for (int64_t i : checked_rows(n)) {
    const auto expected = reference_row(p, kv, layer, q.rows.row(i), length + i + 1);
    worst = std::max(worst, row_error(out.rows.row(i), expected));
  }
  return worst;
}

// Fills entries [length, length + n) of every layer with random keys and values (no attention).
void fill_cache(const Problem& p, mimo::cpu::KvCache& kv, int64_t length, int64_t n, std::mt19937& rng) {
  HostRows k(n, p.kv_heads * p.head_dim), v(n, p.kv_heads * p.head_dim);
  for (int64_t layer = 0; layer < kv.layers; ++layer) {
    fill_rows(k, rng, 1.0f, true);
    fill_rows(v, rng, 1.0f, false);
    kv.store(layer, length, k.rows, v.rows);
  }
}

}  // namespace

TEST_CASE("attention: exp2 polynomial within 2 ulp of the exact value, 0 below -126, NaN kept") {
  std::vector<float> xs;
  for (int i = 0; i <= 200000; ++i) xs.push_back(-130.0f + 131.0f * static_cast<float>(i) / 200000.0f);
  for (float x : {0.0f, -0.0f, -0.5f, 0.5f, -1e-8f, -125.99f, -126.0f, -126.01f, -INFINITY, NAN}) xs.push_back(x);
  while (xs.size() % 16) xs.push_back(-1.0f);
  auto ulps = [](float got, double want) {
    if (want == 0.0) return got == 0.0f ? 0.0 : 1e9;
    int e;
    std::frexp(want, &e);
    return std::abs(static_cast<double>(got) - want) / std::ldexp(1.0, e - 24);
  };
  for (Isa isa : runnable_isas()) {
    if (isa == Isa::scalar) continue;
    CAPTURE(mimo::cpu::to_string(isa));
    std::vector<float> got(xs.size());
    mimo::cpu::detail::exp2_array(isa, xs.data(), got.data(), static_cast<int64_t>(xs.size()));
    double worst = 0.0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const float x = xs[i];
      if (std::isnan(x)) {
        CHECK(std::isnan(got[i]));
      } else if (x < -126.0f) {
        CHECK(got[i] == 0.0f);
      } else {
        worst = std::max(worst, ulps(got[i], std::exp2(static_cast<double>(x))));
      }
    }
    MESSAGE(mimo::cpu::to_string(isa), ": exp2 max error ", worst, " ulp");
    CHECK(worst <= 2.0);
  }
}

TEST_CASE("attention: every ISA, KV type, head_dim, group, length and row count against a double reference") {
  // Error bound relative to the value scale (values ~N(0,1)): fp32 summation over ~2000 keys.
  constexpr double kTolerance = 2e-5;
  for (Isa isa : runnable_isas()) {
    for (KvType type : kTypes) {
      for (int64_t d : {16, 64, 128}) {
        for (int64_t group : {1, 2, 4, 8}) {
          CAPTURE(mimo::cpu::to_string(isa));
          CAPTURE(mimo::cpu::to_string(type));
          CAPTURE(d);
          CAPTURE(group);
          const Problem p{2, group, d, 2100};
          auto ctx = mimo::Cpu::make_context({.pool = pool_of(2), .isa = isa, .kv_cache = type}, p.shape(), p.capacity, 64);
          REQUIRE(ctx.has_value());
          mimo::cpu::KvCache kv;
          REQUIRE(mimo::Cpu::make_kv_cache(*ctx, kv, 2, p.shape(), p.capacity).has_value());
          CHECK(kv.type == type);
          std::mt19937 rng(static_cast<uint32_t>(d * 100 + group));
          int64_t length = 0;
          double worst = 0.0;
          // Short calls from an empty cache: every row count class, lengths across block edges.
          for (int64_t n : {1, 2, 13, 1, 16, 64, 3, 1}) {
            CAPTURE(length);
            CAPTURE(n);
            worst = std::max(worst, run_and_check(*ctx, p, kv, 1, length, n, rng));
            length += n;
          }
          // Long contexts: fill up to ~1900 entries, then decode, verify and prefill there.
          fill_cache(p, kv, length, 1811 - length, rng);
          length = 1811;
          for (int64_t n : {1, 5, 16, 1, 70}) {
            CAPTURE(length);
            CAPTURE(n);
            worst = std::max(worst, run_and_check(*ctx, p, kv, 1, length, n, rng));
            length += n;
          }
          CHECK(worst <= kTolerance);
          if (worst > kTolerance / 4) MESSAGE("worst error ", worst);
        }
      }
    }
  }
}

TEST_CASE("attention: a row's output does not depend on threads, on batching, or on the other rows") {
  const Problem p{2, 4, 64, 1500};
  for (Isa isa : runnable_isas()) {
    for (KvType type : kTypes) {
      CAPTURE(mimo::cpu::to_string(isa));
      CAPTURE(mimo::cpu::to_string(type));
      const int64_t prefix = 1100, n = 40;  // crosses segment boundaries (512) inside the batch
      std::mt19937 rng(7);
      HostRows q(n, p.kv_heads * p.group * p.head_dim), k(n, p.kv_heads * p.head_dim), v(n, p.kv_heads * p.head_dim);
      fill_rows(q, rng, 1.0f, false);
      fill_rows(k, rng, 1.0f, true);
      fill_rows(v, rng, 1.0f, false);
      std::vector<std::vector<float>> results;
      for (int variant = 0; variant < 4; ++variant) {
        // 0: one call, 2 threads; 1: one call, 1 thread; 2: row by row, 2 threads; 3: calls of 3 rows
        auto ctx = mimo::Cpu::make_context({.pool = pool_of(variant == 1 ? 1 : 2), .isa = isa, .kv_cache = type},
                                           p.shape(), p.capacity, 64);
        REQUIRE(ctx.has_value());
        mimo::cpu::KvCache kv;
        REQUIRE(mimo::Cpu::make_kv_cache(*ctx, kv, 1, p.shape(), p.capacity).has_value());
        std::mt19937 fill_rng(3);
        fill_cache(p, kv, 0, prefix, fill_rng);
        HostRows out(n, q.rows.width);
        const int64_t step = variant == 2 ? 1 : variant == 3 ? 3 : n;
        for (int64_t i = 0; i < n; i += step) {
          const int64_t m = std::min(step, n - i);
          mimo::Cpu::attention(*ctx, kv, 0, prefix + i, q.rows.slice(i, m), k.rows.slice(i, m), v.rows.slice(i, m),
                               p.shape(), out.rows.slice(i, m));
        }
        std::vector<float> flat;
        for (int64_t i = 0; i < n; ++i) flat.insert(flat.end(), out.rows.row(i), out.rows.row(i) + out.rows.width);
        results.push_back(std::move(flat));
      }
      for (size_t i = 1; i < results.size(); ++i) {
        CAPTURE(i);
        CHECK(std::memcmp(results[0].data(), results[i].data(), results[0].size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("attention: decode over runs of segments equals one task per segment, and the reference") {
  // One KV head and 8701-8709 keys (17 segments): one thread takes runs of 2 segments (the last
  // run has one), two threads one segment per task, three threads one as well but in another
  // order. The outputs must be bit-identical, and within the reference's tolerance.
  const Problem p{1, 4, 32, 8800};
  const int64_t prefix = 8700;
  for (Isa isa : runnable_isas()) {
    for (KvType type : kTypes) {
      CAPTURE(mimo::cpu::to_string(isa));
      CAPTURE(mimo::cpu::to_string(type));
      for (int64_t n : {1, 3, 8}) {
        CAPTURE(n);
        std::mt19937 rng(11);
        HostRows q(n, p.group * p.head_dim), k(n, p.head_dim), v(n, p.head_dim);
        fill_rows(q, rng, 1.0f, false);
        fill_rows(k, rng, 1.0f, true);
        fill_rows(v, rng, 1.0f, false);
        std::vector<std::vector<float>> results;
        for (int threads : {1, 2, 3}) {
          CAPTURE(threads);
          auto ctx = mimo::Cpu::make_context({.pool = pool_of(threads), .isa = isa, .kv_cache = type}, p.shape(),
                                             p.capacity, 64);
          REQUIRE(ctx.has_value());
          mimo::cpu::KvCache kv;
          REQUIRE(mimo::Cpu::make_kv_cache(*ctx, kv, 1, p.shape(), p.capacity).has_value());
          std::mt19937 fill_rng(5);
          fill_cache(p, kv, 0, prefix, fill_rng);
          HostRows out(n, q.rows.width);
          mimo::Cpu::attention(*ctx, kv, 0, prefix, q.rows, k.rows, v.rows, p.shape(), out.rows);
          std::vector<float> flat;
          for (int64_t i = 0; i < n; ++i) flat.insert(flat.end(), out.rows.row(i), out.rows.row(i) + out.rows.width);
          results.push_back(std::move(flat));
          if (threads == 1) {
            for (int64_t i : {int64_t{0}, n - 1}) {
              CHECK(row_error(out.rows.row(i), reference_row(p, kv, 0, q.rows.row(i), prefix + i + 1)) <= 2e-5);
            }
          }
        }
        CHECK(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(float)) == 0);
        CHECK(std::memcmp(results[0].data(), results[2].data(), results[0].size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("kv cache: store and read back per type within the type's rounding") {
  const Problem p{3, 1, 40, 50};
  std::mt19937 rng(5);
  HostRows k(37, p.kv_heads * p.head_dim), v(37, p.kv_heads * p.head_dim);
  fill_rows(k, rng, 3.0f, true);
  fill_rows(v, rng, 3.0f, false);
  k.rows.row(4)[7] = 1e6f;   // saturates in f16
  v.rows.row(5)[0] = 0.0f;
  for (int64_t c = 0; c < p.head_dim; ++c) v.rows.row(6)[p.head_dim + c] = 0.0f;  // an all-zero int8 entry
  for (KvType type : kTypes) {
    CAPTURE(mimo::cpu::to_string(type));
    mimo::cpu::KvCache kv;
    REQUIRE(mimo::Cpu::make_kv_cache(kv, 2, p.shape(), p.capacity, type).has_value());
    kv.store(1, 3, k.rows, v.rows);
    std::vector<float> got(static_cast<size_t>(p.head_dim));
    for (int64_t h = 0; h < p.kv_heads; ++h) {
      for (int64_t i = 0; i < 37; ++i) {
        for (bool value : {false, true}) {
          kv.read(1, h, 3 + i, value, got.data());
          const float* want = (value ? v : k).rows.row(i) + h * p.head_dim;
          float amax = 0.0f;
          for (int64_t c = 0; c < p.head_dim; ++c) amax = std::max(amax, std::abs(want[c]));
          for (int64_t c = 0; c < p.head_dim; ++c) {
            const float w = want[c], e = std::abs(got[c] - w);
            switch (type) {
              case KvType::f32: CHECK(got[c] == w); break;
              case KvType::f16:
                if (std::abs(w) > 65504.0f) CHECK(std::abs(got[c]) == 65504.0f);
                else CHECK(e <= std::abs(w) * 0x1p-11f + 0x1p-25f);
                break;
              case KvType::bf16: CHECK(e <= std::abs(w) * 0x1p-8f); break;
              case KvType::i8: CHECK(e <= amax / 254.0f * 1.0001f); break;
            }
          }
        }
      }
    }
  }
}

TEST_CASE("kv cache: copy, save and load per type move exactly entries [0, length)") {
  const Problem p{2, 2, 32, 70};
  for (KvType type : kTypes) {
    CAPTURE(mimo::cpu::to_string(type));
    mimo::cpu::KvCache kv;
    REQUIRE(mimo::Cpu::make_kv_cache(kv, 3, p.shape(), p.capacity, type).has_value());
    std::mt19937 rng(9);
    fill_cache(p, kv, 0, 45, rng);
    const int64_t length = 37;  // not a multiple of the block
    // Saved bytes: the documented size, and a load into a fresh cache saves the same bytes.
    std::vector<std::byte> a;
    mimo::detail::ByteWriter w(a);
    REQUIRE(mimo::Cpu::kv_save(kv, length, w).has_value());
    CHECK(a.size() == mimo::Cpu::kv_bytes(kv, length));
    CHECK(mimo::Cpu::kv_bytes_layers(kv, 1, length) * 3 == mimo::Cpu::kv_bytes(kv, length));
    CHECK(mimo::Cpu::kv_format(kv) == static_cast<uint32_t>(type));
    const uint64_t per_entry = type == KvType::f32 ? 4 * 32 : type == KvType::i8 ? 32 + 4 : 2 * 32;
    CHECK(a.size() == 2ull * 3 * 2 * length * per_entry);
    mimo::cpu::KvCache loaded;
    REQUIRE(mimo::Cpu::make_kv_cache(loaded, 3, p.shape(), p.capacity, type).has_value());
    mimo::detail::ByteReader r(a, "state");
    REQUIRE(mimo::Cpu::kv_load(loaded, length, r).has_value());
    CHECK(r.remaining() == 0);
    // A truncated state is refused.
    mimo::detail::ByteReader short_reader(std::span<const std::byte>(a).first(a.size() - 1), "state");
    CHECK_FALSE(mimo::Cpu::kv_load(loaded, length, short_reader).has_value());
    mimo::detail::ByteReader again(a, "state");
    REQUIRE(mimo::Cpu::kv_load(loaded, length, again).has_value());
    mimo::cpu::KvCache copied;
    REQUIRE(mimo::Cpu::copy_kv_cache(copied, kv, length).has_value());
    CHECK(copied.type == type);
    std::vector<float> x(32), y(32), z(32);
    for (int64_t l = 0; l < 3; ++l) {
      for (int64_t h = 0; h < 2; ++h) {
        for (int64_t e = 0; e < length; ++e) {
          for (bool value : {false, true}) {
            kv.read(l, h, e, value, x.data());
            loaded.read(l, h, e, value, y.data());
            copied.read(l, h, e, value, z.data());
            CHECK(x == y);
            CHECK(x == z);
          }
        }
      }
    }
    for (auto* c : {&loaded, &copied}) {
      std::vector<std::byte> b;
      mimo::detail::ByteWriter wb(b);
      REQUIRE(mimo::Cpu::kv_save(*c, length, wb).has_value());
      CHECK(a == b);
    }
  }
  // f32 keeps the format of the original fp32 cache: per layer and head, keys [length][d] then values.
  mimo::cpu::KvCache kv;
  REQUIRE(mimo::Cpu::make_kv_cache(kv, 1, p.shape(), p.capacity).has_value());
  HostRows k(3, 64), v(3, 64);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t c = 0; c < 64; ++c) {
      k.rows.row(i)[c] = static_cast<float>(i * 1000 + c);
      v.rows.row(i)[c] = -static_cast<float>(i * 1000 + c);
    }
  }
  kv.store(0, 0, k.rows, v.rows);
  std::vector<std::byte> bytes;
  mimo::detail::ByteWriter w(bytes);
  REQUIRE(mimo::Cpu::kv_save(kv, 3, w).has_value());
  std::vector<float> f(bytes.size() / 4);
  std::memcpy(f.data(), bytes.data(), bytes.size());
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 3; ++i) {
      for (int64_t c = 0; c < 32; ++c) {
        CHECK(f[static_cast<size_t>(h * 192 + i * 32 + c)] == k.rows.row(i)[h * 32 + c]);
        CHECK(f[static_cast<size_t>(h * 192 + 96 + i * 32 + c)] == v.rows.row(i)[h * 32 + c]);
      }
    }
  }
}

TEST_CASE("attention: error of the reduced-precision caches against exact keys and values") {
  // Max |error| over rows, relative to the value scale (values ~N(0,1); keys with every 16th
  // channel 8x larger, which sets the int8 scale), measured: f32 2.3e-6, f16 1.0e-3,
  // bf16 1.4e-2, i8 8.8e-2. The bounds leave about 2x headroom.
  const Problem p{2, 4, 128, 1200};
  const double bound[] = {1e-5, 2e-3, 3e-2, 0.15};  // f32, f16, bf16, i8
  for (KvType type : kTypes) {
    CAPTURE(mimo::cpu::to_string(type));
    auto ctx = mimo::Cpu::make_context({.pool = pool_of(2), .kv_cache = type}, p.shape(), p.capacity, 64);
    REQUIRE(ctx.has_value());
    mimo::cpu::KvCache kv;
    REQUIRE(mimo::Cpu::make_kv_cache(*ctx, kv, 1, p.shape(), p.capacity).has_value());
    std::mt19937 rng(11);
    const int64_t n = 1100, kvw = p.kv_heads * p.head_dim;
    HostRows q(n, kvw * p.group), k(n, kvw), v(n, kvw), out(n, kvw * p.group);
    fill_rows(q, rng, 1.0f, false);
    fill_rows(k, rng, 1.0f, true);
    fill_rows(v, rng, 1.0f, false);
    mimo::Cpu::attention(*ctx, kv, 0, 0, q.rows, k.rows, v.rows, p.shape(), out.rows);
    std::vector<float> exact_k, exact_v;
    for (int64_t i = 0; i < n; ++i) {
      exact_k.insert(exact_k.end(), k.rows.row(i), k.rows.row(i) + kvw);
      exact_v.insert(exact_v.end(), v.rows.row(i), v.rows.row(i) + kvw);
    }
    double worst = 0.0;
    for (int64_t i : {int64_t{0}, int64_t{5}, int64_t{100}, int64_t{517}, int64_t{1099}}) {
      const auto expected = reference_row(p, kv, 0, q.rows.row(i), i + 1, &exact_k, &exact_v);
      worst = std::max(worst, row_error(out.rows.row(i), expected));
    }
    MESSAGE(mimo::cpu::to_string(type), ": max |attention - exact| = ", worst);
    CHECK(worst <= bound[static_cast<int>(type) - 1]);
  }
}

namespace {

struct ModelError {
  double max_abs = 0.0;      // largest |logit - expected|
  double max_logit = 0.0;    // largest |expected logit| (for scale)
  int64_t rows = 0, argmax_agree = 0;
};

ModelError compare_logits(const std::vector<float>& got, const std::vector<float>& expected, int64_t vocab) {
  ModelError e;
  e.rows = static_cast<int64_t>(expected.size()) / vocab;
  for (int64_t r = 0; r < e.rows; ++r) {
    const float* g = got.data() + r * vocab;
    const float* x = expected.data() + r * vocab;
    for (int64_t v = 0; v < vocab; ++v) {
      e.max_abs = std::max(e.max_abs, static_cast<double>(std::abs(g[v] - x[v])));
      e.max_logit = std::max(e.max_logit, static_cast<double>(std::abs(x[v])));
    }
    e.argmax_agree += std::max_element(g, g + vocab) == g + (std::max_element(x, x + vocab) - x);
  }
  return e;
}

// Logits of every position of `tokens`, appended as a prompt of `prompt` tokens and then one
// token at a time, with the given KV cache type. The matrix products are exact (fp32), so the
// differences between types are the cache's.
std::vector<float> session_logits(const mimo::Model<mimo::Cpu>& model, const std::vector<int32_t>& tokens,
                                  int64_t prompt, KvType type) {
  auto s = model.new_session({.context = static_cast<int64_t>(tokens.size()), .batch = 8,
                              .backend = {.threads = 2, .exact = true, .kv_cache = type}});
  REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().describe()));
  std::vector<float> out;
  auto keep = [&](const mimo::Logits& l) { out.insert(out.end(), l.data, l.data + l.rows * l.vocab); };
  auto first = s->append(std::span<const int32_t>(tokens).first(static_cast<size_t>(prompt)), {.logits = mimo::OutputRows::all});
  REQUIRE(first.has_value());
  keep(*first);
  for (size_t t = static_cast<size_t>(prompt); t < tokens.size(); ++t) {
    auto l = s->append({tokens[t]});
    REQUIRE(l.has_value());
    keep(*l);
  }
  return out;
}

}  // namespace

TEST_CASE("kv types: logits on the tiny-mimo fixture against its float64 reference") {
  // Measured on this fixture (max |logit - expected| over 24 x 4096 logits reaching 7.5):
  // f32 2.4e-6, f16 1.8e-3, bf16 1.15e-2, i8 5.5e-2; argmax agrees at all 24 positions for
  // every type. The bounds leave about 2x headroom.
  auto model = mimo::Model<mimo::Cpu>::load(test::tiny_fixture());
  REQUIRE(model.has_value());
  simdjson::dom::parser parser;
  simdjson::padded_string text(test::read_text(test::tiny_fixture() / "prompt.json"));
  simdjson::dom::element root = parser.parse(text).value_unsafe();
  std::vector<int32_t> prompt;
  simdjson::dom::array ids = root["token_ids"].get_array().value_unsafe();  // held: a temporary would dangle
  for (simdjson::dom::element x : ids) {
    prompt.push_back(static_cast<int32_t>(x.get_int64().value_unsafe()));
  }
  const auto expected = test::read_f32(test::tiny_fixture() / "logits.f32");
  const double bound[] = {1e-4, 4e-3, 2.5e-2, 0.12};  // f32, f16, bf16, i8
  for (KvType type : kTypes) {
    CAPTURE(mimo::cpu::to_string(type));
    // The whole prompt at once, and a prompt of 8 followed by single tokens.
    for (int64_t first : {int64_t{24}, int64_t{8}}) {
      const auto got = session_logits(*model, prompt, first, type);
      const ModelError e = compare_logits(got, expected, 4096);
      MESSAGE(mimo::cpu::to_string(type), " (prompt ", first, "): max |logit - expected| = ", e.max_abs, " (max |logit| ",
              e.max_logit, "), argmax agrees at ", e.argmax_agree, "/", e.rows);
      CHECK(e.max_abs <= bound[static_cast<int>(type) - 1]);
      CHECK(e.argmax_agree == e.rows);
    }
  }
}

TEST_CASE("kv types: logits of a generated MiMo-like shape against the f32 cache over 600 positions") {
  // head_dim 128 and 4 query heads per KV head as in MiMo-7B; 4 layers; random weights; a prompt
  // of 520 then 80 single tokens. Measured (max |logit - f32| relative to the largest |logit|,
  // 4.4): f16 3.1e-4, bf16 2.2e-3, i8 8.8e-3; argmax agrees with f32 at 600, 599 and 597 of 600
  // positions. The bounds leave about 2x headroom.
  auto config = test::small_config(512, 256, 4, 8, 2, 128, 512, 0);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 21);
  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  const auto tokens = test::random_tokens(600, config.vocab_size, 4);
  const auto reference = session_logits(*model, tokens, 520, KvType::f32);
  const double bound[] = {0.0, 6e-4, 5e-3, 2e-2};
  const double agree[] = {1.0, 0.995, 0.99, 0.985};
  for (KvType type : {KvType::f16, KvType::bf16, KvType::i8}) {
    CAPTURE(mimo::cpu::to_string(type));
    const auto got = session_logits(*model, tokens, 520, type);
    const ModelError e = compare_logits(got, reference, config.vocab_size);
    const double relative = e.max_abs / e.max_logit;
    const double agreement = static_cast<double>(e.argmax_agree) / static_cast<double>(e.rows);
    MESSAGE(mimo::cpu::to_string(type), ": max |logit - f32| = ", e.max_abs, " = ", relative, " of max |logit| ",
            e.max_logit, "; argmax agrees at ", e.argmax_agree, "/", e.rows);
    CHECK(relative <= bound[static_cast<int>(type) - 1]);
    CHECK(agreement >= agree[static_cast<int>(type) - 1]);
  }
}
