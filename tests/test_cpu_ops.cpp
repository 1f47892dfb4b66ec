// The CPU backend's element-wise ops (ops.hpp): every instruction set this machine runs against
// the scalar forms, over widths that are and are not multiples of the SIMD width, one row and
// several (more than 16 run over the thread pool); and RoPE's table, reused across calls, against a
// fresh one.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <mimo/backend/cpu/ops.hpp>

namespace {

using mimo::cpu::Isa;

std::vector<float> random_values(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Distance in units in the last place between two finite floats of the same sign or zero.
int64_t ulps(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = std::numeric_limits<int32_t>::min() - ia;
  if (ib < 0) ib = std::numeric_limits<int32_t>::min() - ib;
  return std::abs(static_cast<int64_t>(ia) - ib);
}

std::shared_ptr<mimo::cpu::ThreadPool> pool2() {
  auto pool = mimo::cpu::ThreadPool::create(2);
  REQUIRE(pool.has_value());
  return *pool;
}

}  // namespace

TEST_CASE("rms_norm: every instruction set within an ulp of the scalar form, in place too") {
  std::mt19937 rng(7);
  auto pool = pool2();
  for (int64_t width : {1, 7, 8, 15, 16, 17, 33, 4096, 4100}) {
    for (int64_t rows : {1, 3, 20}) {
      const std::vector<float> x = random_values(rng, static_cast<size_t>(rows * width), -3.0f, 3.0f);
      const std::vector<float> w = random_values(rng, static_cast<size_t>(width), 0.5f, 1.5f);
      std::vector<float> xs = x, ref(x.size());
      mimo::cpu::rms_norm_rows(Isa::scalar, nullptr, mimo::Rows{xs.data(), rows, width, width}, w.data(), 1e-6,
                               mimo::Rows{ref.data(), rows, width, width});
      for (Isa isa : mimo::cpu::kAllIsas) {
        if (!mimo::cpu::isa_supported(isa)) continue;
        CAPTURE(mimo::cpu::to_string(isa));
        CAPTURE(width);
        CAPTURE(rows);
        std::vector<float> y = x;  // in place
        const mimo::Rows r{y.data(), rows, width, width};
        mimo::cpu::rms_norm_rows(isa, pool.get(), r, w.data(), 1e-6, r);
        int64_t worst = 0;
        for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, ulps(y[i], ref[i]));
        CHECK(worst <= 1);
      }
    }
  }
}

TEST_CASE("silu_mul: every instruction set within 4 ulp of the scalar form (expf), special values") {
  std::mt19937 rng(11);
  auto pool = pool2();
  for (int64_t width : {1, 5, 8, 13, 11008}) {
    for (int64_t rows : {1, 4, 17}) {
      std::vector<float> g = random_values(rng, static_cast<size_t>(rows * width), -30.0f, 30.0f);
      const std::vector<float> u = random_values(rng, g.size(), -2.0f, 2.0f);
      if (g.size() >= 8) {  // the edges of the reduced range and of the exponent
        const float special[] = {0.0f, -0.0f, 87.0f, -87.0f, 0.3465736f, -0.3465736f, 1e-20f, -1e-20f};
        std::copy(std::begin(special), std::end(special), g.begin());
      }
      std::vector<float> ref = g;
      mimo::cpu::silu_mul_rows(Isa::scalar, nullptr, mimo::Rows{ref.data(), rows, width, width},
                               mimo::Rows{const_cast<float*>(u.data()), rows, width, width});
      for (Isa isa : mimo::cpu::kAllIsas) {
        if (!mimo::cpu::isa_supported(isa)) continue;
        CAPTURE(mimo::cpu::to_string(isa));
        CAPTURE(width);
        std::vector<float> y = g;
        mimo::cpu::silu_mul_rows(isa, pool.get(), mimo::Rows{y.data(), rows, width, width},
                                 mimo::Rows{const_cast<float*>(u.data()), rows, width, width});
        int64_t worst = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          // Results below FLT_MIN's neighbourhood (silu of a large negative gate) only need to be tiny.
          if (std::abs(ref[i]) < 1e-30f) CHECK(std::abs(y[i]) < 1e-30f);
          else worst = std::max(worst, ulps(y[i], ref[i]));
        }
        CHECK(worst <= 4);  // exp within 1 ulp; the division by 1 + e^-x of a negative gate adds to it
      }
    }
  }
  // Far outside the polynomial's range: silu(x) -> x for large x, -> -0 for very negative x; NaN stays.
  for (Isa isa : mimo::cpu::kAllIsas) {
    if (!mimo::cpu::isa_supported(isa)) continue;
    CAPTURE(mimo::cpu::to_string(isa));
    std::vector<float> g = {200.0f, -200.0f, 1e30f, -1e30f, 89.0f, -89.0f, std::nanf(""), 3.0f, 1.0f};
    const std::vector<float> u(g.size(), 1.0f);
    const auto n = static_cast<int64_t>(g.size());
    mimo::cpu::silu_mul_rows(isa, nullptr, mimo::Rows{g.data(), 1, n, n}, mimo::Rows{const_cast<float*>(u.data()), 1, n, n});
    CHECK(g[0] == 200.0f);
    CHECK(std::abs(g[1]) < 1e-30f);
    CHECK(g[2] == 1e30f);
    CHECK(std::abs(g[3]) < 1e-7f);
    CHECK(g[4] == 89.0f);
    CHECK(std::abs(g[5]) < 1e-30f);
    CHECK(std::isnan(g[6]));
    CHECK(std::abs(g[7] - 3.0f / (1.0f + std::exp(-3.0f))) <= 4e-7f);
  }
}

TEST_CASE("rope: the table kept between calls gives what a fresh one gives, for changing positions") {
  const int64_t heads = 4, d = 128, width = heads * d;
  std::mt19937 rng(3);
  const std::vector<int64_t> calls[] = {{5}, {5}, {6}, {6, 7}, {7, 6}, {6, 7}, std::vector<int64_t>(20, 9), {9}, {0}};
  mimo::cpu::RopeTable kept;
  for (const auto& positions : calls) {
    CAPTURE(positions.size());
    CAPTURE(positions[0]);
    const auto rows = static_cast<int64_t>(positions.size());
    const std::vector<float> x = random_values(rng, static_cast<size_t>(rows * width), -1.0f, 1.0f);
    std::vector<float> a = x, b = x;
    mimo::cpu::rope_rows(mimo::Rows{a.data(), rows, width, width}, heads, d, positions, 640000.0, kept);
    mimo::cpu::RopeTable fresh;
    mimo::cpu::rope_rows(mimo::Rows{b.data(), rows, width, width}, heads, d, positions, 640000.0, fresh);
    CHECK(a == b);
    // And against the rotation written out for the last pair of the first head of the first row.
    const double angle = static_cast<double>(positions[0]) * std::pow(640000.0, -2.0 * 63 / 128.0);
    const double c = std::cos(angle), s = std::sin(angle);
    CHECK(std::abs(a[63] - (x[63] * c - x[127] * s)) < 1e-6);
    CHECK(std::abs(a[127] - (x[127] * c + x[63] * s)) < 1e-6);
  }
  // Another theta or head size is another table.
  std::vector<float> a(width, 1.0f), b(width, 1.0f);
  const std::vector<int64_t> p = {1000};
  mimo::cpu::rope_rows(mimo::Rows{a.data(), 1, width, width}, heads, d, p, 10000.0, kept);
  mimo::cpu::RopeTable fresh;
  mimo::cpu::rope_rows(mimo::Rows{b.data(), 1, width, width}, heads, d, p, 10000.0, fresh);
  CHECK(a == b);
}

TEST_CASE("argmax_or_invalid: the first largest value, or -1 for NaN, +inf or nothing above -inf") {
  using mimo::cpu::argmax_or_invalid;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const auto of = [](std::vector<float> v) { return argmax_or_invalid(v.data(), static_cast<int64_t>(v.size())); };
  CHECK(of({1.0f, 3.0f, 3.0f, 2.0f}) == 1);
  CHECK(of({-0.0f, 0.0f}) == 0);  // equal: the first
  CHECK(of({-inf, -5.0f, -inf}) == 1);
  CHECK(of({-inf, -inf}) == -1);
  CHECK(of({}) == -1);
  CHECK(of({2.0f, nan, 1.0f}) == -1);
  CHECK(of({nan}) == -1);
  CHECK(of({1.0f, inf}) == -1);
  std::mt19937 rng(3);
  const auto v = random_values(rng, 151680, -30.0f, 30.0f);
  CHECK(argmax_or_invalid(v.data(), static_cast<int64_t>(v.size())) == std::max_element(v.begin(), v.end()) - v.begin());
}

TEST_CASE("top_or_invalid: the count largest in the sampler's order, ascending ids, or -1 ids for refused rows") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  mimo::cpu::TopScratch scratch;
  // Returns the ids, and checks the values are the row's.
  const auto top = [&](const std::vector<float>& v, int32_t count) {
    std::vector<int32_t> ids(static_cast<size_t>(count), 7);
    std::vector<float> values(static_cast<size_t>(count));
    const bool valid = mimo::cpu::top_or_invalid(v.data(), static_cast<int64_t>(v.size()), count, ids.data(), values.data(), scratch);
    for (size_t j = 0; valid && j < ids.size(); ++j) CHECK(std::memcmp(&values[j], &v[static_cast<size_t>(ids[j])], sizeof(float)) == 0);
    CHECK(valid == (ids[0] != -1));
    return ids;
  };
  using Ids = std::vector<int32_t>;
  CHECK(top({1.0f, 3.0f, 3.0f, 2.0f}, 1) == Ids{1});
  CHECK(top({1.0f, 3.0f, 3.0f, 2.0f}, 2) == Ids{1, 2});
  CHECK(top({5.0f, 3.0f, 3.0f, 3.0f}, 3) == Ids{0, 1, 2});  // ties: the lower ids
  CHECK(top({0.0f, -0.0f, 0.0f, -1.0f}, 2) == Ids{0, 1});     // -0 == +0
  CHECK(top({-0.0f, -1.0f, 0.0f}, 1) == Ids{0});
  CHECK(top({-inf, -5.0f, -inf, -inf}, 3) == Ids{0, 1, 2});  // -inf entries fill the count
  CHECK(top({4.0f, 1.0f, 2.0f}, 3) == Ids{0, 1, 2});          // all of them
  CHECK(top({-inf, -inf}, 1) == Ids{-1});
  CHECK(top({-inf, -inf, -inf}, 3) == Ids{-1, -1, -1});
  CHECK(top({2.0f, nan, 1.0f}, 1) == Ids{-1});  // NaN anywhere, even outside the selection
  CHECK(top({2.0f, 1.0f, inf}, 3) == Ids{-1, -1, -1});
  CHECK(top({2.0f, 1.0f, nan}, 3) == Ids{-1, -1, -1});
  // Against sorting, over a vocabulary-sized row with many ties.
  std::mt19937 rng(5);
  std::vector<float> v = random_values(rng, 151680, -30.0f, 30.0f);
  for (size_t i = 0; i < v.size(); i += 3) v[i] = std::round(v[i]);
  for (int32_t count : {1, 40, 104, 4096}) {
    CAPTURE(count);
    std::vector<int32_t> order(v.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)]; });
    order.resize(static_cast<size_t>(count));
    std::sort(order.begin(), order.end());
    CHECK(top(v, count) == order);
  }
}
